"""Raw kernel records -> TcpEvent. Pure: the Python mirror of bpf/events.h.

`EVENT_FIELDS` lists the C struct's fields in order with their struct codes; a test checks it
against bpf/events.h compiled with gcc (offsetof/sizeof), field by field.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Mapping

from tcpscope.v1.events_pb2 import Direction, Ending, TcpEvent

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
    ("comm", "16s"),
)
EVENT = struct.Struct("<" + "".join(code for _n, code in EVENT_FIELDS))

# bpf/events.h EV_*
EV_LIFECYCLE, EV_STATE, EV_RETRANSMIT, EV_SYNACK, EV_RESET_SENT, EV_RESET_RECEIVED, EV_SOCKET_ERROR, EV_PROBE = range(
    1, 9
)
KIND_NAMES = {
    EV_LIFECYCLE: "lifecycle",
    EV_STATE: "state",
    EV_RETRANSMIT: "retransmit",
    EV_SYNACK: "synack",
    EV_RESET_SENT: "reset",
    EV_RESET_RECEIVED: "reset",
    EV_SOCKET_ERROR: "error",
    EV_PROBE: "probe",
}
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_SENT, _RECEIVED = Direction.SENT, Direction.RECEIVED
_ENDING_RESET_SENT = Ending.RESET_SENT


def errno_name(code: int) -> str:
    return errno.errorcode.get(abs(code), str(abs(code))) if code else ""


class Decoder:
    """Turns records into TcpEvents; holds the per-run constants (node, clock offset, reason names)."""

    def __init__(self, node: str, boot_to_wall_ns: int, rst_reasons: Mapping[int, str]) -> None:
        self.node = node
        self.offset_ns = boot_to_wall_ns
        self.rst_reasons = dict(rst_reasons)
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
            comm,
        ) = EVENT.unpack_from(raw)
        ev = TcpEvent(node=self.node, socket_id=sock_id)
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
