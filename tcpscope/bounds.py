"""The documented bounds of a well-formed tcpscope record (docs/kafka.md, "Bounds"). Pure code.

The collector is the trust boundary: it checks every batch and event against these bounds, with the
times also held to a window around its own clock (collector/validation.py), and leaves out or clamps
what is outside them, counted by reason. Readers check every record they decode against the same
bounds (without the collector's clock: a topic is read long after it was written) and skip, count
and name what is outside them (`OutOfBounds`), so one record from an old or foreign producer cannot
stop them. Each bound is far above what an agent produces; a value beyond one is a bug or a forgery.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tcpscope.v1.events_pb2 import (
    Direction,
    Ending,
    Endpoint,
    EndpointKind,
    EventBatch,
    FlowSource,
    Role,
    TcpEvent,
    TcpState,
)

# Times (seconds since the epoch) any record may carry: 1970-01-01 up to 2100-01-01. Far wider than
# a sane clock, narrow enough that every renderer and date library handles them.
TIME_MIN_S = 0
TIME_MAX_S = 4_102_444_800

FLOW_BUCKETS_MAX = 32  # Flow.duration_us_log2: log2 buckets of a u64 microsecond count, 0..31
LABELS_MAX = 64  # Endpoint.labels entries (an allow-list picks them)
SERVICES_MAX = 64  # Endpoint.services entries (the Service ports one endpoint serves)
UNOBSERVED_MAX = 64  # UnobservedWindow entries on one batch
UNACKED_SEQUENCES_MAX = 1_000_000  # UnobservedWindow.unacked_sequences
LOSS_REASONS_MAX = 256  # Losses.by_reason entries
REASON_CHARS_MAX = 128  # a loss reason's name
PORT_MAX = 65535

# string fields: the longest value accepted, in characters
NAME_MAX = 253  # Kubernetes object names (DNS subdomain), node names, workload names
SHORT_MAX = 64  # ip, uid, comm, errno and reason names, label values, kinds
LABEL_KEY_MAX = 317  # prefix (253) + "/" + name (63)
CONTAINER_ID_MAX = 128
PATH_MAX = 4096  # Process.cgroup_path

_ENUM_MAX = {
    "state": max(TcpState.values()),
    "role": max(Role.values()),
    "ending": max(Ending.values()),
    "direction": max(Direction.values()),
    "kind": max(EndpointKind.values()),
    "source": max(FlowSource.values()),
}


class OutOfBounds(ValueError):
    """A decodable record outside the bounds; `reason` names the bound (time, port, enum, ...)."""

    def __init__(self, reason: str, details: str) -> None:
        super().__init__(f"out of bounds ({reason}): {details}")
        self.reason = reason


@dataclass(frozen=True)
class TimeWindow:
    """The times (seconds since the epoch) accepted: [lo_s, hi_s)."""

    lo_s: int = TIME_MIN_S
    hi_s: int = TIME_MAX_S

    @staticmethod
    def around(now_s: float, max_age_s: float, max_ahead_s: float) -> TimeWindow:
        """The collector's window: from max_age_s before its clock to max_ahead_s after it."""
        return TimeWindow(max(TIME_MIN_S, int(now_s - max_age_s)), min(TIME_MAX_S, int(now_s + max_ahead_s) + 1))

    def holds(self, ts: Timestamp) -> bool:
        """A timestamp inside the window (nanos in range too)."""
        return self.lo_s <= ts.seconds < self.hi_s and 0 <= ts.nanos < 1_000_000_000


ANY_TIME = TimeWindow()


_FAMILIES: dict[str, int] = {}  # address -> family, a bounded cache: a node talks to few addresses
_FAMILIES_MAX = 4096


def _family(ip: str) -> int:
    """4 or 6 for a textual address (scoped IPv6 allowed), 0 for none, -1 for garbage."""
    f = _FAMILIES.get(ip)
    if f is not None:
        return f
    f = _parse_family(ip)
    if len(_FAMILIES) >= _FAMILIES_MAX:
        _FAMILIES.clear()
    _FAMILIES[ip] = f
    return f


def _parse_family(ip: str) -> int:
    if not ip:
        return 0
    try:
        if ":" in ip:
            socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0])
            return 6
        socket.inet_pton(socket.AF_INET, ip)
        return 4
    except OSError:
        return -1


def _endpoint_problem(e: Endpoint) -> str | None:
    if e.port > PORT_MAX:
        return "port"
    if e.kind > _ENUM_MAX["kind"]:
        return "enum"
    if any(s.port > PORT_MAX for s in e.services):
        return "port"
    if e.ByteSize() <= SHORT_MAX:  # no string, and no more labels, than the smallest bound allows
        return None
    if (
        len(e.ip) > SHORT_MAX
        or len(e.namespace) > NAME_MAX
        or len(e.name) > NAME_MAX
        or len(e.uid) > SHORT_MAX
        or len(e.container) > NAME_MAX
        or len(e.container_id) > CONTAINER_ID_MAX
        or len(e.node) > NAME_MAX
        or len(e.workload.kind) > SHORT_MAX
        or len(e.workload.name) > NAME_MAX
    ):
        return "string"
    labels = e.labels
    if labels:
        if len(labels) > LABELS_MAX:
            return "repeated"
        if any(len(k) > LABEL_KEY_MAX or len(v) > SHORT_MAX for k, v in labels.items()):
            return "string"
    return _services_problem(e)


def _services_problem(e: Endpoint) -> str | None:
    """Endpoint.services: the Service ports a server's end is an endpoint of (--resolve-backends)."""
    services = e.services
    if not services:
        return None
    if len(services) > SERVICES_MAX:
        return "repeated"
    if any(len(s.namespace) > NAME_MAX or len(s.name) > NAME_MAX for s in services):
        return "string"
    return None


def _kind_problem(ev: TcpEvent, kind: str, window: TimeWindow) -> str | None:
    """The bounds of the event's own kind."""
    if kind == "lifecycle":
        lc = ev.lifecycle
        if lc.role > _ENUM_MAX["role"] or lc.ending > _ENUM_MAX["ending"] or lc.last_state > _ENUM_MAX["state"]:
            return "enum"
        if len(lc.errno_name) > SHORT_MAX or len(lc.reset_reason_name) > SHORT_MAX:
            return "string"
    elif kind == "state_change":
        if ev.state_change.old_state > _ENUM_MAX["state"] or ev.state_change.new_state > _ENUM_MAX["state"]:
            return "enum"
    elif kind == "retransmit":
        if ev.retransmit.state > _ENUM_MAX["state"]:
            return "enum"
    elif kind == "reset":
        r = ev.reset
        if r.direction > _ENUM_MAX["direction"] or r.state > _ENUM_MAX["state"]:
            return "enum"
        if len(r.reason_name) > SHORT_MAX:
            return "string"
    elif kind == "socket_error":
        if ev.socket_error.state > _ENUM_MAX["state"]:
            return "enum"
        if len(ev.socket_error.errno_name) > SHORT_MAX:
            return "string"
    elif kind == "flow":
        return _flow_problem(ev, window)
    return None


def _flow_problem(ev: TcpEvent, window: TimeWindow) -> str | None:
    fl = ev.flow
    if fl.role > _ENUM_MAX["role"] or fl.source > _ENUM_MAX["source"]:
        return "enum"
    if len(fl.duration_us_log2) > FLOW_BUCKETS_MAX:
        return "repeated"
    if (fl.HasField("first_close") and not window.holds(fl.first_close)) or (
        fl.HasField("last_close") and not window.holds(fl.last_close)
    ):
        return "time"
    return None


def event_problem(ev: TcpEvent, window: TimeWindow = ANY_TIME) -> str | None:
    """Why an event is outside the bounds (a short reason: empty, time, port, address, enum, string,
    repeated), or None when it is within them."""
    kind = ev.WhichOneof("kind")
    if kind is None:
        return "empty"
    if not ev.HasField("time") or not window.holds(ev.time):
        return "time"
    if len(ev.node) > NAME_MAX:
        return "string"
    for ep in (ev.local, ev.remote):
        bad = _endpoint_problem(ep)
        if bad is not None:
            return bad
    fl, fr = _family(ev.local.ip), _family(ev.remote.ip)
    if fl < 0 or fr < 0 or (fl and fr and fl != fr):
        return "address"
    pr = ev.process
    if len(pr.comm) > SHORT_MAX or len(pr.cgroup_path) > PATH_MAX:
        return "string"
    return _kind_problem(ev, kind, window)


def batch_problem(batch: EventBatch) -> str | None:
    """Why a batch's own fields (not its events, not its times) are outside the bounds, or None."""
    if len(batch.node) > NAME_MAX or len(batch.agent_id) > 2 * NAME_MAX:
        return "string"
    if len(batch.unobserved) > UNOBSERVED_MAX or len(batch.lost.by_reason) > LOSS_REASONS_MAX:
        return "repeated"
    if any(len(k) > REASON_CHARS_MAX for k in batch.lost.by_reason):
        return "string"
    for w in batch.unobserved:
        if len(w.unacked_sequences) > UNACKED_SEQUENCES_MAX:
            return "repeated"
        if (
            len(w.node) > NAME_MAX
            or len(w.cause) > SHORT_MAX
            or max(len(w.previous_agent_id), len(w.agent_id)) > 2 * NAME_MAX
        ):
            return "string"
    return None


def batch_time_fields(batch: EventBatch) -> list[tuple[str, Message, str]]:
    """(name, message, field) of every time a batch carries itself (not its events'), set or not."""
    out: list[tuple[str, Message, str]] = [("sent_time", batch, "sent_time"), ("last_ack_time", batch, "last_ack_time")]
    for w in batch.unobserved:
        out += [("unobserved_time", w, f) for f in ("from_time", "to_time", "last_alive_time")]
    if batch.HasField("collector"):
        out.append(("received_time", batch.collector, "received_time"))
    return out


def summary_problem(batch: EventBatch) -> str | None:
    """A batch summary record as a reader sees it: a batch id (an empty value is no summary), the
    batch's own bounds, and its times in range."""
    if not batch.agent_id or not batch.sequence:
        return "empty"
    bad = batch_problem(batch)
    if bad is not None:
        return bad
    if any(not ANY_TIME.holds(getattr(m, f)) for _, m, f in batch_time_fields(batch)):
        return "time"
    return None
