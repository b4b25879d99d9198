"""Text renderings of a TcpEvent: a tcplife/tcpstates-like table line and a JSON line.

`json_line(ev)` is byte-for-byte `json_format.MessageToJson(ev, preserving_proto_field_name=True,
indent=None)` (proto field names, enums as names, 64-bit integers as strings, RFC 3339 time),
written by hand because json_format costs several times more per event; a test checks they agree.
`event_line(ev, fmt, cause)` is either, with who sent a received reset when a reader judged it
(tail/resetcause.py). Shared by the agent's stdout sink, tcpscope-tail and tcpscope-sim.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tcpscope.v1.events_pb2 import (
    ANOMALY_LIFECYCLE,
    ANOMALY_RESET_RECEIVED,
    ANOMALY_RESET_SENT,
    ANOMALY_RETRANSMIT,
    ANOMALY_SOCKET_ERROR,
    ANOMALY_SYNACK_RETRANSMIT,
    Direction,
    Ending,
    Flow,
    Lifecycle,
    OpenConnection,
    Role,
    TcpEvent,
    TcpState,
)

_TYPE_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
_TYPE_INT32 = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
}
_TIMESTAMP = "google.protobuf.Timestamp"


@functools.lru_cache(maxsize=8)
def _second_text(sec: int) -> str:
    """RFC 3339 'YYYY-MM-DDTHH:MM:SS' of a second (a pure function; cached: events come in order).
    A second no calendar of this platform holds (readers skip such records: tcpscope/bounds.py) is
    shown as its number, never an exception."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    except (OverflowError, ValueError, OSError):
        return f"@{sec}"


def _clock_text(sec: int) -> str:
    """Local 'HH:MM:SS' of a second, or its number when the platform cannot convert it."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(sec))
    except (OverflowError, ValueError, OSError):
        return f"@{sec}"


def timestamp_json(seconds: int, nanos: int) -> str:
    """As google.protobuf.Timestamp.ToJsonString: 0, 3, 6 or 9 fraction digits, 'Z'."""
    base = _second_text(seconds)
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{base}.{nanos // 1000:06d}Z"
    return f"{base}.{nanos:09d}Z"


def _scalar(fd: FieldDescriptor, v: Any) -> str:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return encode_basestring_ascii(v)
    if t in _TYPE_INT64:
        return f'"{v}"'
    if t in _TYPE_INT32:
        return str(v)
    if t == FieldDescriptor.TYPE_ENUM:
        et = fd.enum_type
        ev = et.values_by_number.get(v) if et is not None else None
        return encode_basestring_ascii(ev.name) if ev is not None else str(v)
    if t == FieldDescriptor.TYPE_BOOL:
        return "true" if v else "false"
    raise TypeError(f"no fast JSON for field {fd.full_name}")


def _message(msg: Message) -> str:
    if msg.DESCRIPTOR.full_name == _TIMESTAMP:
        return '"' + timestamp_json(msg.seconds, msg.nanos) + '"'  # type: ignore[attr-defined]
    parts = []
    for fd, value in msg.ListFields():
        key = '"' + fd.name + '": '
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            items = [
                f"{encode_basestring_ascii(str(k))}: "
                + (_message(value[k]) if vfd.message_type is not None else _scalar(vfd, value[k]))
                for k in value
            ]
            parts.append(key + "{" + ", ".join(items) + "}")
        elif fd.is_repeated:
            if fd.message_type is not None:
                parts.append(key + "[" + ", ".join(_message(v) for v in value) + "]")
            else:
                parts.append(key + "[" + ", ".join(_scalar(fd, v) for v in value) + "]")
        elif fd.message_type is not None:
            parts.append(key + _message(value))
        else:
            parts.append(key + _scalar(fd, value))
    return "{" + ", ".join(parts) + "}"


def _enum_names(msg_desc: Any, field: str) -> dict[int, str]:
    et = msg_desc.fields_by_name[field].enum_type
    return {v.number: v.name for v in et.values}


_EP = TcpEvent.DESCRIPTOR.fields_by_name["local"].message_type
_LCD = TcpEvent.DESCRIPTOR.fields_by_name["lifecycle"].message_type
_KIND_NAMES = _enum_names(_EP, "kind")
_STATE_NAMES = _enum_names(_LCD, "last_state")
_ROLE_NAMES = _enum_names(_LCD, "role")
_ENDING_NAMES = _enum_names(_LCD, "ending")

# The hand-written paths below know exactly these fields; if the schema grows (fields are only
# ever appended), the generic path takes over until they are taught the new ones.
_KNOWN = {
    "TcpEvent": [
        "time",
        "node",
        "socket_id",
        "local",
        "remote",
        "process",
        "connection_id",
        "lifecycle",
        "state_change",
        "retransmit",
        "synack_retransmit",
        "reset",
        "socket_error",
        "probe",
        "flow",
        "open",
        "anomalies",
    ],
    "Endpoint": [
        "ip",
        "port",
        "kind",
        "namespace",
        "name",
        "uid",
        "labels",
        "container",
        "container_id",
        "workload",
        "node",
        "services",
    ],
    "Process": ["pid", "comm", "cgroup_id", "cgroup_path"],
    "Lifecycle": [
        "role",
        "duration_ns",
        "tx_bytes",
        "rx_bytes",
        "ending",
        "errno",
        "errno_name",
        "last_state",
        "retransmits",
        "reset_reason",
        "reset_reason_name",
        "tracked_mid_life",
        "reported_tx_bytes",
        "reported_rx_bytes",
        "reported_retransmits",
        "connect_latency_ns",
        "connect_latency_reported",
        "srtt_us",
        "min_rtt_us",
        "seeded",
    ],
    "StateChange": ["old_state", "new_state", "time_in_old_state_ns"],
}


def _fields_known(d: Any) -> bool:
    return d is not None and [f.name for f in sorted(d.fields, key=lambda f: f.number)] == _KNOWN.get(d.name)


_FAST = all(
    _fields_known(d)
    for d in (
        TcpEvent.DESCRIPTOR,
        _EP,
        TcpEvent.DESCRIPTOR.fields_by_name["process"].message_type,
        _LCD,
        TcpEvent.DESCRIPTOR.fields_by_name["state_change"].message_type,
    )
)


def _enum(names: dict[int, str], v: int) -> str:
    n = names.get(v)
    return f'"{n}"' if n is not None else str(v)


def _endpoint(ep: Any) -> str:
    p = []
    if ep.ip:
        p.append('"ip": ' + encode_basestring_ascii(ep.ip))
    if ep.port:
        p.append(f'"port": {ep.port}')
    if ep.kind:
        p.append('"kind": ' + _enum(_KIND_NAMES, ep.kind))
    if ep.namespace:
        p.append('"namespace": ' + encode_basestring_ascii(ep.namespace))
    if ep.name:
        p.append('"name": ' + encode_basestring_ascii(ep.name))
    if ep.uid:
        p.append('"uid": ' + encode_basestring_ascii(ep.uid))
    if ep.labels:
        items = ", ".join(f"{encode_basestring_ascii(k)}: {encode_basestring_ascii(ep.labels[k])}" for k in ep.labels)
        p.append('"labels": {' + items + "}")
    if ep.container:
        p.append('"container": ' + encode_basestring_ascii(ep.container))
    if ep.container_id:
        p.append('"container_id": ' + encode_basestring_ascii(ep.container_id))
    if ep.HasField("workload"):
        p.append('"workload": ' + _message(ep.workload))
    if ep.node:
        p.append('"node": ' + encode_basestring_ascii(ep.node))
    if ep.services:
        p.append('"services": [' + ", ".join(_message(sp) for sp in ep.services) + "]")
    return "{" + ", ".join(p) + "}"


def _process(pr: Any) -> str:
    p = []
    if pr.pid:
        p.append(f'"pid": {pr.pid}')
    if pr.comm:
        p.append('"comm": ' + encode_basestring_ascii(pr.comm))
    if pr.cgroup_id:
        p.append(f'"cgroup_id": "{pr.cgroup_id}"')
    if pr.cgroup_path:
        p.append('"cgroup_path": ' + encode_basestring_ascii(pr.cgroup_path))
    return "{" + ", ".join(p) + "}"


def _lifecycle(lc: Any) -> str:
    p = []
    if lc.role:
        p.append('"role": ' + _enum(_ROLE_NAMES, lc.role))
    if lc.duration_ns:
        p.append(f'"duration_ns": "{lc.duration_ns}"')
    if lc.tx_bytes:
        p.append(f'"tx_bytes": "{lc.tx_bytes}"')
    if lc.rx_bytes:
        p.append(f'"rx_bytes": "{lc.rx_bytes}"')
    if lc.ending:
        p.append('"ending": ' + _enum(_ENDING_NAMES, lc.ending))
    if lc.errno:
        p.append(f'"errno": {lc.errno}')
    if lc.errno_name:
        p.append('"errno_name": ' + encode_basestring_ascii(lc.errno_name))
    if lc.last_state:
        p.append('"last_state": ' + _enum(_STATE_NAMES, lc.last_state))
    if lc.retransmits:
        p.append(f'"retransmits": {lc.retransmits}')
    if lc.reset_reason:
        p.append(f'"reset_reason": {lc.reset_reason}')
    if lc.reset_reason_name:
        p.append('"reset_reason_name": ' + encode_basestring_ascii(lc.reset_reason_name))
    if lc.tracked_mid_life:
        p.append('"tracked_mid_life": true')
    return "{" + ", ".join(p + _lifecycle_reports(lc)) + "}"


def _lifecycle_reports(lc: Any) -> list[str]:
    """The lifecycle's open-report and latency fields (40 and up)."""
    p = []
    if lc.reported_tx_bytes:
        p.append(f'"reported_tx_bytes": "{lc.reported_tx_bytes}"')
    if lc.reported_rx_bytes:
        p.append(f'"reported_rx_bytes": "{lc.reported_rx_bytes}"')
    if lc.reported_retransmits:
        p.append(f'"reported_retransmits": {lc.reported_retransmits}')
    if lc.connect_latency_ns:
        p.append(f'"connect_latency_ns": "{lc.connect_latency_ns}"')
    if lc.connect_latency_reported:
        p.append('"connect_latency_reported": true')
    if lc.srtt_us:
        p.append(f'"srtt_us": {lc.srtt_us}')
    if lc.min_rtt_us:
        p.append(f'"min_rtt_us": {lc.min_rtt_us}')
    if lc.seeded:
        p.append('"seeded": true')
    return p


def _state_change(sc: Any) -> str:
    p = []
    if sc.old_state:
        p.append('"old_state": ' + _enum(_STATE_NAMES, sc.old_state))
    if sc.new_state:
        p.append('"new_state": ' + _enum(_STATE_NAMES, sc.new_state))
    if sc.time_in_old_state_ns:
        p.append(f'"time_in_old_state_ns": "{sc.time_in_old_state_ns}"')
    return "{" + ", ".join(p) + "}"


def json_line(ev: Message) -> str:
    """The protobuf JSON mapping of ev on one line (proto field names, enums as names)."""
    if not _FAST or not isinstance(ev, TcpEvent):
        return _message(ev)
    p = []
    if ev.HasField("time"):
        p.append('"time": "' + timestamp_json(ev.time.seconds, ev.time.nanos) + '"')
    if ev.node:
        p.append('"node": ' + encode_basestring_ascii(ev.node))
    if ev.socket_id:
        p.append(f'"socket_id": "{ev.socket_id}"')
    if ev.HasField("local"):
        p.append('"local": ' + _endpoint(ev.local))
    if ev.HasField("remote"):
        p.append('"remote": ' + _endpoint(ev.remote))
    if ev.HasField("process"):
        p.append('"process": ' + _process(ev.process))
    if ev.connection_id:
        p.append(f'"connection_id": "{ev.connection_id}"')
    kind = ev.WhichOneof("kind")
    if kind == "lifecycle":
        p.append('"lifecycle": ' + _lifecycle(ev.lifecycle))
    elif kind == "state_change":
        p.append('"state_change": ' + _state_change(ev.state_change))
    elif kind is not None:
        p.append(f'"{kind}": ' + _message(getattr(ev, kind)))
    return "{" + ", ".join(p) + "}"


# ---- table --------------------------------------------------------------------------------------

TABLE_HEADER = f"{'TIME':<12} {'PID':>7} {'COMM':<15} {'LOCAL':<30} {'REMOTE':<30} {'EVENT':<11} DETAILS"

_STATE = {v: k for k, v in TcpState.items()} | {0: "-"}
_ROLE = {v: k for k, v in Role.items()}
_ENDING = {v: k for k, v in Ending.items()}


def endpoint_text(ep: Any) -> str:
    """'ns/name:port' when enrichment resolved the endpoint, else 'ip:port' ('[v6]:port'). The port
    stays: a pod listens on several, and a refused connection is about one of them."""
    if ep.name:
        name = f"{ep.namespace}/{ep.name}" if ep.namespace else ep.name
        return f"{name}:{ep.port}" if ep.port else name
    ip = ep.ip or "-"
    return f"[{ip}]:{ep.port}" if ":" in ip else f"{ip}:{ep.port}"


def _details(ev: TcpEvent) -> tuple[str, str]:
    kind = ev.WhichOneof("kind")
    if kind == "lifecycle":
        return "LIFECYCLE", _lifecycle_details(ev.lifecycle)
    if kind == "state_change":
        sc = ev.state_change
        return "STATE", (
            f"{_STATE.get(sc.old_state, sc.old_state)} -> {_STATE.get(sc.new_state, sc.new_state)}"
            f" ms={sc.time_in_old_state_ns / 1e6:.3f}"
        )
    if kind == "retransmit":
        return "RETRANS", f"state={_STATE.get(ev.retransmit.state, ev.retransmit.state)}"
    if kind == "synack_retransmit":
        n = ev.synack_retransmit.request_retransmit
        return "SYNACK_RTX", f"request_retransmit={n}" if n else ""
    if kind == "reset":
        r = ev.reset
        d = f"state={_STATE.get(r.state, r.state)}"
        if r.reason_name:
            d += f" reason={r.reason_name}"
        return ("RST_SENT" if r.direction == Direction.SENT else "RST_RECV"), d
    if kind == "socket_error":
        se = ev.socket_error
        return "ERROR", f"errno={se.errno_name or se.errno} state={_STATE.get(se.state, se.state)}"
    if kind == "probe":
        p = ev.probe
        return "PROBE", f"cwnd={p.snd_cwnd} srtt_us={p.srtt_us} snd_wnd={p.snd_wnd} len={p.data_len}"
    if kind == "flow":
        return "FLOW", _flow_details(ev.flow)
    if kind == "open":
        return "OPEN", _open_details(ev.open)
    if kind == "anomalies":
        return "AGGREGATED", anomaly_details(ev.anomalies)
    return "?", ""


def _lifecycle_details(lc: Lifecycle) -> str:
    tx = "?" if lc.tracked_mid_life else lc.tx_bytes  # role unknown: SYN counted or not (events.proto)
    d = (
        f"role={_ROLE.get(lc.role, lc.role)} tx={tx} rx={lc.rx_bytes} "
        f"ms={lc.duration_ns / 1e6:.3f} end={_ENDING.get(lc.ending, lc.ending)}"
    )
    if lc.tracked_mid_life:
        d += " tracked_mid_life"
    if lc.errno:
        d += f" errno={lc.errno_name or lc.errno}"
    if lc.reset_reason_name:
        d += f" reason={lc.reset_reason_name}"
    if lc.retransmits:
        d += f" retrans={lc.retransmits}"
    return d + latency_text(lc.srtt_us, lc.connect_latency_ns) + (" seeded" if lc.seeded else "")


def _flow_details(fl: Flow) -> str:
    opened = f" open={fl.open_connections}" if fl.open_connections else ""
    return (
        f"role={_ROLE.get(fl.role, fl.role)} conns={fl.connections}{opened} tx={fl.tx_bytes} "
        f"rx={fl.rx_bytes} {flow_latency_text(fl)} every={duration_text(fl.interval_ns)}"
    )


def _open_details(o: OpenConnection) -> str:
    return (
        f"role={_ROLE.get(o.role, o.role)} +tx={o.tx_bytes} +rx={o.rx_bytes} "
        f"age={duration_text(o.age_ns)} state={_STATE.get(o.state, o.state)}"
        + (f" retrans+={o.retransmits}" if o.retransmits else "")
        + latency_text(o.srtt_us, o.connect_latency_ns)
        + (" seeded" if o.seeded else "")
    )


def latency_text(srtt_us: int, connect_ns: int) -> str:
    """` rtt=120us connect=310us` where known (srtt_us, connect latency), else nothing."""
    out = f" rtt={duration_text(srtt_us * 1e3)}" if srtt_us else ""
    return out + (f" connect={duration_text(connect_ns)}" if connect_ns else "")


def event_details(ev: TcpEvent) -> tuple[str, str]:
    """(EVENT, DETAILS) of a table line (tail/connections.py shows stray events in its own columns)."""
    return _details(ev)


def duration_text(ns: float) -> str:
    """A duration for people, two significant digits: 850ns, 32us, 4.2ms, 66ms, 4.2s, 2m05s, 1h02m."""
    for unit, size in (("ns", 1.0), ("us", 1e3), ("ms", 1e6), ("s", 1e9)):
        v = ns / size
        if v < (59.95 if unit == "s" else 999.5):
            return f"{v:.1f}{unit}" if v < 9.95 and unit != "ns" else f"{v:.0f}{unit}"
    s = round(ns / 1e9)
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s // 60 % 60:02d}m"


def flow_latency_text(fl: Any) -> str:
    """`mean=3.1ms p50<4.2ms p99<8.4ms` of a Flow's connection durations. The mean is exact
    (duration_sum_ns); p50 and p99 are the upper edges of the log2 buckets that hold them
    (Flow.duration_us_log2: bucket i holds [2^i, 2^(i+1)) us), so each quantile lies below its
    figure and at or above half of it."""
    if not fl.connections:
        return "mean=-"
    p50, p99 = duration_quantile_us(fl, 0.5), duration_quantile_us(fl, 0.99)
    mean = duration_text(fl.duration_sum_ns / fl.connections)
    return f"mean={mean} p50<{duration_text(p50 * 1e3)} p99<{duration_text(p99 * 1e3)}"


# an AnomalyAggregate's kind, as the EVENT column names the events it stands for
ANOMALY_EVENT: dict[int, str] = {
    ANOMALY_LIFECYCLE: "LIFECYCLE",
    ANOMALY_RETRANSMIT: "RETRANS",
    ANOMALY_SYNACK_RETRANSMIT: "SYNACK_RTX",
    ANOMALY_RESET_SENT: "RST_SENT",
    ANOMALY_RESET_RECEIVED: "RST_RECV",
    ANOMALY_SOCKET_ERROR: "ERROR",
}


def anomaly_details(a: Any) -> str:
    """An AnomalyAggregate in a few words: what, how many past the budget (and how many were sent as
    events), and the key's why (state, ending, errno, reason, flags)."""
    d = f"{ANOMALY_EVENT.get(a.kind, '?')} x{a.count} (+{a.exemplars} as events)"
    if a.kind == ANOMALY_LIFECYCLE:
        d += f" role={_ROLE.get(a.role, a.role)} end={_ENDING.get(a.ending, a.ending)}"
    if a.state:
        d += f" state={_STATE.get(a.state, a.state)}"
    if a.errno:
        d += f" errno={a.errno_name or a.errno}"
    if a.reason_name:
        d += f" reason={a.reason_name}"
    flags = [n for n in ("retransmitted", "first_of_request", "no_socket", "coarse") if getattr(a, n)]
    if flags:
        d += " " + ",".join(flags)
    if a.kind == ANOMALY_LIFECYCLE:
        d += f" tx={a.tx_bytes} rx={a.rx_bytes}"
    return d + f" every={duration_text(a.interval_ns)}"


def duration_quantile_us(fl: Any, q: float) -> float:
    """An upper bound of the q-quantile of a Flow's durations, in microseconds: the upper edge of
    the log2 bucket (Flow.duration_us_log2) that holds it; 0 with no connections."""
    return log2_quantile_us(fl.duration_us_log2, q)


def log2_quantile_us(buckets: Sequence[int], q: float) -> float:
    """An upper bound of the q-quantile of a log2 microsecond histogram (bucket i holds [2^i,
    2^(i+1)) us: Flow.duration_us_log2, srtt_us_log2, connect_latency_us_log2): the upper edge of
    the bucket that holds it; 0 when empty."""
    total = sum(buckets)
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank and n:
            return float(2 ** min(i + 1, _LOG2_TOP))
    return float(2 ** min(len(buckets), _LOG2_TOP))


_LOG2_TOP = 64  # a u64 of microseconds has 64 log2 buckets: a longer histogram is not the agent's (bounds.py)


def table_line(ev: TcpEvent) -> str:
    """One fixed-column line: TIME PID COMM LOCAL REMOTE EVENT DETAILS."""
    t = ev.time
    clock = _clock_text(t.seconds) + f".{t.nanos // 1_000_000:03d}"
    event, details = _details(ev)
    return (
        f"{clock:<12} {ev.process.pid:>7} {ev.process.comm or '-':<15} {endpoint_text(ev.local):<30} "
        f"{endpoint_text(ev.remote):<30} {event:<11} {details}"
    ).rstrip()


# ---- either, with a reset's cause -----------------------------------------------------------------


class Cause(Protocol):
    """Who sent a received reset, as a reader judged it (tail/resetcause.py's Verdict)."""

    @property
    def label(self) -> str: ...  # `cause/detail`, for the table

    def to_json(self) -> Mapping[str, str]: ...  # for the JSON line


def event_line(ev: TcpEvent, fmt: str = "table", cause: Cause | None = None) -> str:
    """`table_line` or (fmt 'json') `json_line`, with a received reset's cause when there is one:
    ` cause=LABEL` at the end of the table line, a last member `"reset_cause": {...}` in the JSON."""
    if fmt == "json":
        text = json_line(ev)
        if cause is None:
            return text
        return text[:-1] + (", " if text != "{}" else "") + '"reset_cause": ' + json.dumps(cause.to_json()) + "}"
    text = table_line(ev)
    return text if cause is None else f"{text} cause={cause.label}"
