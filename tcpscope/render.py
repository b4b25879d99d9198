"""Text renderings of a TcpEvent: a tcplife/tcpstates-like table line and a JSON line.

`json_line(ev)` is byte-for-byte `json_format.MessageToJson(ev, preserving_proto_field_name=True,
indent=None)` (proto field names, enums as names, 64-bit integers as strings, RFC 3339 time),
written by hand because json_format costs several times more per event; a test checks they agree.
Shared by the agent's stdout sink and tcpscope-tail.
"""

from __future__ import annotations

import functools
import time
from json.encoder import encode_basestring_ascii
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tcpscope.v1.events_pb2 import Ending, Role, TcpEvent, TcpState

_TYPE_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
               FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_TYPE_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_SINT32,
               FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32}
_TIMESTAMP = "google.protobuf.Timestamp"


@functools.lru_cache(maxsize=8)
def _second_text(sec: int) -> str:
    """RFC 3339 'YYYY-MM-DDTHH:MM:SS' of a second (a pure function; cached: events come in order)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


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
            items = [f"{encode_basestring_ascii(str(k))}: "
                     + (_message(value[k]) if vfd.message_type is not None else _scalar(vfd, value[k]))
                     for k in value]
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


def json_line(ev: Message) -> str:
    """The protobuf JSON mapping of ev on one line (proto field names, enums as names)."""
    return _message(ev)


# ---- table --------------------------------------------------------------------------------------

TABLE_HEADER = f"{'TIME':<12} {'PID':>7} {'COMM':<15} {'LOCAL':<30} {'REMOTE':<30} {'EVENT':<11} DETAILS"

_STATE = {v: k for k, v in TcpState.items()} | {0: "-"}
_ROLE = {v: k for k, v in Role.items()}
_ENDING = {v: k for k, v in Ending.items()}


def endpoint_text(ep: Any) -> str:
    """'ns/name' when enrichment resolved the endpoint, else 'ip:port' ('[v6]:port')."""
    if ep.name:
        return f"{ep.namespace}/{ep.name}" if ep.namespace else ep.name
    ip = ep.ip or "-"
    return f"[{ip}]:{ep.port}" if ":" in ip else f"{ip}:{ep.port}"


def _details(ev: TcpEvent) -> tuple[str, str]:
    kind = ev.WhichOneof("kind")
    if kind == "lifecycle":
        lc = ev.lifecycle
        d = (f"role={_ROLE.get(lc.role, lc.role)} tx={lc.tx_bytes} rx={lc.rx_bytes} "
             f"ms={lc.duration_ns / 1e6:.3f} end={_ENDING.get(lc.ending, lc.ending)}")
        if lc.errno:
            d += f" errno={lc.errno_name or lc.errno}"
        if lc.reset_reason_name:
            d += f" reason={lc.reset_reason_name}"
        if lc.retransmits:
            d += f" retrans={lc.retransmits}"
        return "LIFECYCLE", d
    if kind == "state_change":
        sc = ev.state_change
        return "STATE", (f"{_STATE.get(sc.old_state, sc.old_state)} -> {_STATE.get(sc.new_state, sc.new_state)}"
                         f" ms={sc.time_in_old_state_ns / 1e6:.3f}")
    if kind == "retransmit":
        return "RETRANS", f"state={_STATE.get(ev.retransmit.state, ev.retransmit.state)}"
    if kind == "synack_retransmit":
        return "SYNACK_RTX", ""
    if kind == "reset":
        r = ev.reset
        d = f"state={_STATE.get(r.state, r.state)}"
        if r.reason_name:
            d += f" reason={r.reason_name}"
        return ("RST_SENT" if r.direction == 1 else "RST_RECV"), d
    if kind == "socket_error":
        se = ev.socket_error
        return "ERROR", f"errno={se.errno_name or se.errno} state={_STATE.get(se.state, se.state)}"
    if kind == "probe":
        p = ev.probe
        return "PROBE", f"cwnd={p.snd_cwnd} srtt_us={p.srtt_us} snd_wnd={p.snd_wnd} len={p.data_len}"
    return "?", ""


def table_line(ev: TcpEvent) -> str:
    """One fixed-column line: TIME PID COMM LOCAL REMOTE EVENT DETAILS."""
    t = ev.time
    clock = time.strftime("%H:%M:%S", time.localtime(t.seconds)) + f".{t.nanos // 1_000_000:03d}"
    event, details = _details(ev)
    return (f"{clock:<12} {ev.process.pid:>7} {ev.process.comm or '-':<15} {endpoint_text(ev.local):<30} "
            f"{endpoint_text(ev.remote):<30} {event:<11} {details}").rstrip()
