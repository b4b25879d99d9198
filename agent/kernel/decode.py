"""Raw kernel records -> TcpEvent. Pure: the Python mirror of bpf/events.h, and the one place that
builds events from what the kernel reports.

`EVENT_FIELDS` lists `struct tcpscope_event`'s fields in order with their struct codes, and
`FLOW_KEY_FIELDS` / `FLOW_VAL_FIELDS` those of `struct flow_key` / `struct flow_val` (the flow maps'
entries, which agent/kernel/flows.py reads out); a test checks each against bpf/events.h compiled
with gcc (offsetof/sizeof), field by field. `Decoder.decode` turns a ring/perf buffer record into an
event, `decode_flow` a flow map entry into a Flow event.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Mapping

from agent.kernel.connid import ConnectionIds
from tcpscope import kinds
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    AGGREGATE,
    ANOMALY_LIFECYCLE,
    ANOMALY_RESET_RECEIVED,
    ANOMALY_RESET_SENT,
    ANOMALY_RETRANSMIT,
    ANOMALY_SOCKET_ERROR,
    ANOMALY_SYNACK_RETRANSMIT,
    PASSIVE,
    RESET_SENT,
    SPILL,
    Direction,
    Ending,
    Role,
    TcpEvent,
)

# (name, struct code) in the order of struct tcpscope_event
EVENT_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts_ns", "Q"),
    ("socket_id", "Q"),
    ("cgroup_id", "Q"),
    ("duration_ns", "Q"),
    ("tx_bytes", "Q"),
    ("rx_bytes", "Q"),
    ("netns", "I"),
    ("pid", "I"),
    ("saddr", "16s"),
    ("daddr", "16s"),
    ("sport", "H"),
    ("dport", "H"),
    ("family", "H"),
    ("kind", "B"),
    ("role", "B"),
    ("state", "B"),
    ("new_state", "B"),
    ("ending", "B"),
    ("pad0", "B"),
    ("err", "i"),
    ("reason", "I"),
    ("retransmits", "I"),
    ("snd_cwnd", "I"),
    ("srtt_us", "I"),
    ("snd_wnd", "I"),
    ("data_len", "I"),
    ("isn_client", "I"),
    ("isn_server", "I"),
    ("comm", "16s"),
)
EVENT = struct.Struct("<" + "".join(code for _n, code in EVENT_FIELDS))

FLOW_BUCKETS = 32  # bpf/events.h FLOW_BUCKETS

FLOW_KEY_FIELDS: tuple[tuple[str, str], ...] = (
    ("laddr", "16s"),
    ("raddr", "16s"),
    ("cgroup_id", "Q"),
    ("netns", "I"),
    ("server_port", "H"),
    ("family", "H"),
    ("role", "B"),
    ("pad", "7s"),
)
FLOW_VAL_FIELDS: tuple[tuple[str, str], ...] = (
    ("connections", "Q"),
    ("tx_bytes", "Q"),
    ("rx_bytes", "Q"),
    ("duration_sum_ns", "Q"),
    ("first_close_ns", "Q"),
    ("last_close_ns", "Q"),
    ("buckets", f"{FLOW_BUCKETS}Q"),
    ("pid", "I"),
    ("pad", "I"),
    ("comm", "16s"),
)
FLOW_KEY = struct.Struct("<" + "".join(c for _n, c in FLOW_KEY_FIELDS))
FLOW_VAL = struct.Struct("<" + "".join(c for _n, c in FLOW_VAL_FIELDS))

# bpf/events.h EV_*
EV_LIFECYCLE, EV_STATE, EV_RETRANSMIT, EV_SYNACK, EV_RESET_SENT, EV_RESET_RECEIVED, EV_SOCKET_ERROR, EV_PROBE = range(
    1, 9
)
# each record kind -> the event kind it becomes (tcpscope/kinds.py: its --events name, its TcpEvent field)
KIND_OF = {
    EV_LIFECYCLE: kinds.LIFECYCLE,
    EV_STATE: kinds.STATE,
    EV_RETRANSMIT: kinds.RETRANSMIT,
    EV_SYNACK: kinds.SYNACK,
    EV_RESET_SENT: kinds.RESET,
    EV_RESET_RECEIVED: kinds.RESET,
    EV_SOCKET_ERROR: kinds.ERROR,
    EV_PROBE: kinds.PROBE,
}
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_SENT, _RECEIVED = Direction.SENT, Direction.RECEIVED
_ENDING_RESET_SENT = Ending.RESET_SENT
_ROLE_UNKNOWN = Role.ROLE_UNSPECIFIED  # ROLE_UNKNOWN in bpf/events.h: inserted after the start


def errno_name(code: int) -> str:
    return errno.errorcode.get(abs(code), str(abs(code))) if code else ""


class Decoder:
    """Turns records into TcpEvents; holds the per-run constants (node, clock offset, reason names,
    the connection id key: a random one of this decoder when none is given)."""

    def __init__(
        self,
        node: str,
        boot_to_wall_ns: int,
        rst_reasons: Mapping[int, str],
        connection_ids: ConnectionIds | None = None,
    ) -> None:
        self.node = node
        self.offset_ns = boot_to_wall_ns
        self.rst_reasons = dict(rst_reasons)
        self.connection_ids = connection_ids if connection_ids is not None else ConnectionIds()
        self._addr_cache: dict[tuple[int, bytes], str] = {}
        self._comm_cache: dict[bytes, str] = {}

    def ip(self, family: int, raw: bytes) -> str:
        """Textual address; v4-mapped IPv6 is given as IPv4."""
        key = (family, raw)
        s = self._addr_cache.get(key)
        if s is None:
            if family == socket.AF_INET:
                s = socket.inet_ntop(socket.AF_INET, raw[:4])
            elif family == socket.AF_INET6:
                s = (
                    socket.inet_ntop(socket.AF_INET, raw[12:])
                    if raw[:12] == _V4_MAPPED
                    else socket.inet_ntop(socket.AF_INET6, raw)
                )
            else:
                s = ""
            if len(self._addr_cache) > 4096:
                self._addr_cache.clear()
            self._addr_cache[key] = s
        return s

    def comm(self, raw: bytes) -> str:
        s = self._comm_cache.get(raw)
        if s is None:
            s = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            if len(self._comm_cache) > 4096:
                self._comm_cache.clear()
            self._comm_cache[raw] = s
        return s

    def reason_name(self, reason: int) -> str:
        """The kernel's name for a reset reason; empty on kernels without reasons (before 6.10)."""
        if not self.rst_reasons:
            return ""
        return self.rst_reasons.get(reason, str(reason))

    def decode(self, raw: bytes) -> TcpEvent:
        """One record (at least EVENT.size bytes) -> TcpEvent."""
        (
            ts,
            sock_id,
            cgroup_id,
            duration,
            tx,
            rx,
            _netns,
            pid,
            saddr,
            daddr,
            sport,
            dport,
            family,
            kind,
            role,
            state,
            new_state,
            ending,
            _pad,
            err,
            reason,
            retrans,
            cwnd,
            srtt,
            snd_wnd,
            data_len,
            isn_client,
            isn_server,
            comm,
        ) = EVENT.unpack_from(raw)
        # the sequence numbers end here: only their keyed hash is published
        ev = TcpEvent(node=self.node, socket_id=sock_id, connection_id=self.connection_ids.of(isn_client, isn_server))
        wall = ts + self.offset_ns
        ev.time.seconds = wall // 1_000_000_000
        ev.time.nanos = wall % 1_000_000_000
        local = ev.local
        local.ip = self.ip(family, saddr)
        local.port = sport
        remote = ev.remote
        remote.ip = self.ip(family, daddr)
        remote.port = dport
        proc = ev.process
        proc.pid = pid
        proc.comm = self.comm(comm)
        proc.cgroup_id = cgroup_id
        if kind == EV_LIFECYCLE:
            lc = ev.lifecycle
            lc.role = role
            lc.duration_ns = duration
            if role == _ROLE_UNKNOWN:  # tracked mid-life: does the kernel's count include our SYN? unknown
                lc.tracked_mid_life = True
            else:
                lc.tx_bytes = tx
            lc.rx_bytes = rx
            lc.ending = ending
            lc.errno = err
            lc.errno_name = errno_name(err)
            lc.last_state = new_state
            lc.retransmits = retrans
            if ending == _ENDING_RESET_SENT:
                lc.reset_reason = reason
                lc.reset_reason_name = self.reason_name(reason)
        elif kind == EV_STATE:
            sc = ev.state_change
            sc.old_state = state
            sc.new_state = new_state
            sc.time_in_old_state_ns = duration
        elif kind == EV_RETRANSMIT:
            ev.retransmit.state = state
        elif kind == EV_SYNACK:
            ev.synack_retransmit.SetInParent()
            ev.synack_retransmit.request_retransmit = retrans  # bpf/retransmit.h handle_synack()
        elif kind in (EV_RESET_SENT, EV_RESET_RECEIVED):
            rs = ev.reset
            rs.direction = _SENT if kind == EV_RESET_SENT else _RECEIVED
            rs.state = state
            if kind == EV_RESET_SENT:
                rs.reason = reason
                rs.reason_name = self.reason_name(reason)
        elif kind == EV_SOCKET_ERROR:
            se = ev.socket_error
            se.errno = err
            se.errno_name = errno_name(err)
            se.state = state
        elif kind == EV_PROBE:
            pr = ev.probe
            pr.snd_cwnd = cwnd
            pr.srtt_us = srtt
            pr.snd_wnd = snd_wnd
            pr.data_len = data_len
        return ev


def decode_flow(decoder: Decoder, key: bytes, val: bytes, interval_ns: int, aggregate: bool) -> TcpEvent:
    """One (flow_key, flow_val) pair -> a TcpEvent whose kind is `flow`."""
    laddr, raddr, cgroup_id, _netns, server_port, family, role, _pad = FLOW_KEY.unpack_from(key)
    vals = FLOW_VAL.unpack_from(val)
    connections, tx, rx, dur_sum, first_ns, last_ns = vals[:6]
    buckets = list(vals[6 : 6 + FLOW_BUCKETS])
    pid, _vpad, comm = vals[6 + FLOW_BUCKETS :]
    ev = TcpEvent(node=decoder.node)
    wall = last_ns + decoder.offset_ns
    ev.time.seconds, ev.time.nanos = divmod(wall, 1_000_000_000)
    ev.local.ip = decoder.ip(family, laddr)
    ev.remote.ip = decoder.ip(family, raddr)
    if role == PASSIVE:  # the server port is ours
        ev.local.port = server_port
    else:
        ev.remote.port = server_port
    ev.process.pid = pid
    ev.process.comm = decoder.comm(comm)
    ev.process.cgroup_id = cgroup_id
    fl = ev.flow
    fl.role = role
    fl.connections = connections
    fl.tx_bytes = tx
    fl.rx_bytes = rx
    while buckets and buckets[-1] == 0:
        buckets.pop()
    fl.duration_us_log2.extend(buckets)
    fl.duration_sum_ns = dur_sum
    for ts, stamp in ((first_ns, fl.first_close), (last_ns, fl.last_close)):
        stamp.seconds, stamp.nanos = divmod(ts + decoder.offset_ns, 1_000_000_000)
    fl.interval_ns = interval_ns
    fl.source = AGGREGATE if aggregate else SPILL
    return ev


# Anomalies past the budget (bpf/anomaly.h): the key and value of the anomaly maps
ANOMALY_KEY_FIELDS: tuple[tuple[str, str], ...] = (
    ("laddr", "16s"),
    ("raddr", "16s"),
    ("cgroup_id", "Q"),
    ("netns", "I"),
    ("err", "i"),
    ("reason", "I"),
    ("server_port", "H"),
    ("family", "H"),
    ("kind", "B"),
    ("role", "B"),
    ("state", "B"),
    ("ending", "B"),
    ("flags", "B"),
    ("pad", "3s"),
)
ANOMALY_VAL_FIELDS: tuple[tuple[str, str], ...] = (
    ("count", "Q"),
    ("exemplars", "Q"),
    ("first_ns", "Q"),
    ("last_ns", "Q"),
    ("tx_bytes", "Q"),
    ("rx_bytes", "Q"),
    ("duration_sum_ns", "Q"),
    ("retransmits", "Q"),
    ("pid", "I"),
    ("pad", "I"),
    ("comm", "16s"),
)
ANOMALY_KEY = struct.Struct("<" + "".join(c for _n, c in ANOMALY_KEY_FIELDS))
ANOMALY_VAL = struct.Struct("<" + "".join(c for _n, c in ANOMALY_VAL_FIELDS))

# bpf/events.h AK_*
AK_ESTABLISHED, AK_RETRANSMITTED, AK_FIRST_SYNACK, AK_NO_SOCKET, AK_COARSE = 1, 2, 4, 8, 16
# bpf/events.h EV_* -> tcpscope.v1.AnomalyKind (agent/kernel/anomalies.py reads the maps)
KIND_OF_EVENT: dict[int, int] = {
    EV_LIFECYCLE: ANOMALY_LIFECYCLE,
    EV_RETRANSMIT: ANOMALY_RETRANSMIT,
    EV_SYNACK: ANOMALY_SYNACK_RETRANSMIT,
    EV_RESET_SENT: ANOMALY_RESET_SENT,
    EV_RESET_RECEIVED: ANOMALY_RESET_RECEIVED,
    EV_SOCKET_ERROR: ANOMALY_SOCKET_ERROR,
}


def decode_anomaly(decoder: Decoder, key: bytes, val: bytes, interval_ns: int) -> TcpEvent:
    """One (anomaly_key, anomaly_val) pair -> a TcpEvent whose kind is `anomalies`."""
    (laddr, raddr, cgroup_id, _netns, err, reason, server_port, family, kind, role, state, ending, flags, _pad) = (
        ANOMALY_KEY.unpack_from(key)
    )
    (count, exemplars, first_ns, last_ns, tx, rx, dur_sum, retrans, pid, _vpad, comm) = ANOMALY_VAL.unpack_from(val)
    ev = TcpEvent(node=decoder.node)
    ev.time.seconds, ev.time.nanos = divmod(last_ns + decoder.offset_ns, 1_000_000_000)
    coarse = bool(flags & AK_COARSE)
    ev.local.ip = decoder.ip(family, laddr)
    if not coarse:
        ev.remote.ip = decoder.ip(family, raddr)
        if role == ACTIVE:
            ev.remote.port = server_port
        else:
            ev.local.port = server_port
    ev.process.pid = pid
    ev.process.comm = decoder.comm(comm)
    ev.process.cgroup_id = cgroup_id
    a = ev.anomalies
    a.kind = KIND_OF_EVENT.get(kind, 0)  # type: ignore[assignment]
    a.count = count
    a.exemplars = exemplars
    for ts, stamp in ((first_ns, a.first), (last_ns, a.last)):
        stamp.seconds, stamp.nanos = divmod(ts + decoder.offset_ns, 1_000_000_000)
    a.interval_ns = interval_ns
    a.role = role
    a.state = state
    a.errno = err
    a.errno_name = errno_name(err)
    if kind == EV_RESET_SENT or (kind == EV_LIFECYCLE and ending == RESET_SENT):
        a.reason = reason
        a.reason_name = decoder.reason_name(reason)
    if kind == EV_LIFECYCLE:
        a.ending = ending
        a.established = bool(flags & AK_ESTABLISHED)
        a.retransmitted = bool(flags & AK_RETRANSMITTED)
        a.tx_bytes = tx
        a.rx_bytes = rx
        a.duration_sum_ns = dur_sum
        a.retransmits = retrans
    a.first_of_request = bool(flags & AK_FIRST_SYNACK)
    a.no_socket = bool(flags & AK_NO_SOCKET)
    a.coarse = coarse
    return ev
