"""Anomalies past the budget, aggregated in the kernel (bpf/anomaly.h), read out per key.

`ANOMALY_KEY_FIELDS` and `ANOMALY_VAL_FIELDS` mirror `struct anomaly_key` and `struct anomaly_val` of
bpf/events.h (a test checks them against the C structs compiled with gcc); `decode_anomaly` is pure.
`AnomalyMaps` owns the two swapping maps of a loaded program: `flush()` flips the active map, waits
for programs still adding to the old one, reads and clears it with one batch operation and zeroes
its key count. Keys whose anomalies were all sent as events (count 0) are read and dropped: the
events are what a reader needs of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

from agent.kernel.decode import (
    EV_LIFECYCLE,
    EV_RESET_RECEIVED,
    EV_RESET_SENT,
    EV_RETRANSMIT,
    EV_SOCKET_ERROR,
    EV_SYNACK,
    Decoder,
    errno_name,
)
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    ANOMALY_LIFECYCLE,
    ANOMALY_RESET_RECEIVED,
    ANOMALY_RESET_SENT,
    ANOMALY_RETRANSMIT,
    ANOMALY_SOCKET_ERROR,
    ANOMALY_SYNACK_RETRANSMIT,
    RESET_SENT,
    TcpEvent,
)

log = logging.getLogger(__name__)

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

# bpf/events.h ANOMC_*: anomaly counters by index (reported as anomalies.<name>)
ANOMALY_COUNTERS: tuple[str, ...] = (
    "individual",
    "aggregated",
    "over_key",
    "over_node",
    "output_full",
    "coarse",
    "no_key",
)
# bpf/events.h AK_*
AK_ESTABLISHED, AK_RETRANSMITTED, AK_FIRST_SYNACK, AK_NO_SOCKET, AK_COARSE = 1, 2, 4, 8, 16
# bpf/events.h EV_* -> tcpscope.v1.AnomalyKind
KIND_OF_EVENT: dict[int, int] = {
    EV_LIFECYCLE: ANOMALY_LIFECYCLE,
    EV_RETRANSMIT: ANOMALY_RETRANSMIT,
    EV_SYNACK: ANOMALY_SYNACK_RETRANSMIT,
    EV_RESET_SENT: ANOMALY_RESET_SENT,
    EV_RESET_RECEIVED: ANOMALY_RESET_RECEIVED,
    EV_SOCKET_ERROR: ANOMALY_SOCKET_ERROR,
}

# as for the flow maps (agent/kernel/flows.py): programs still on the old map finish within microseconds
FLIP_GRACE_S = 0.005


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


class AnomalyMaps:
    """The anomaly maps of a loaded program: flip, drain, decode."""

    def __init__(self, bpf: Any, decoder: Decoder, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self._bpf = bpf
        self._decoder = decoder
        self._interval_s = interval_s
        self._clock = clock
        self._maps = [bpf[b"anom0"], bpf[b"anom1"]]
        outer = bpf[b"anom_maps"]
        for i, m in enumerate(self._maps):
            outer[ctypes.c_int(i)] = ctypes.c_int(m.map_fd)
        self._ctl = bpf[b"anom_ctl"]
        self._keys = bpf[b"anom_keys"]
        self._counts = bpf[b"anomaly_counts"]
        self._active = 0
        self._ctl[ctypes.c_int(0)] = ctypes.c_uint32(0)
        self._last_flush = clock()
        self._batch_ops = True  # off after the first failure (kernels before 5.6 have none)
        self.reported = 0  # anomalies reported in aggregates (the sum of their counts)

    def due(self) -> bool:
        """Whether --flow-interval has passed since the last flush."""
        return self._clock() - self._last_flush >= self._interval_s

    def flush(self) -> list[TcpEvent]:
        """Flip the active map and read out the old one: one event per key with aggregated anomalies."""
        now = self._clock()
        interval_ns = int((now - self._last_flush) * 1e9)
        self._last_flush = now
        old = self._active
        self._active = 1 - old
        self._ctl[ctypes.c_int(0)] = ctypes.c_uint32(self._active)
        time.sleep(FLIP_GRACE_S)
        return self._drain(old, interval_ns)

    def flush_all(self) -> list[TcpEvent]:
        """At shutdown (programs detached): both maps, the active one included."""
        out = self.flush()
        out += self._drain(self._active, 0)
        return out

    def _drain(self, idx: int, interval_ns: int) -> list[TcpEvent]:
        table = self._maps[idx]
        pairs: list[tuple[bytes, bytes]] = []
        if self._batch_ops:
            try:
                pairs = [(bytes(k), bytes(v)) for k, v in table.items_lookup_and_delete_batch()]
            except Exception as e:  # kernels before 5.6 have no batch operations on hash maps
                log.info("anomaly maps: batch lookup unavailable (%s); reading key by key", e)
                self._batch_ops = False
        for k in list(table.keys()):
            try:
                v = table[k]
            except KeyError:
                continue
            pairs.append((bytes(k), bytes(v)))
            with contextlib.suppress(KeyError):
                del table[k]
        self._keys[ctypes.c_int(idx)] = ctypes.c_uint64(0)
        out = []
        for k, v in pairs:
            if ANOMALY_VAL.unpack_from(v)[0]:  # count: anything aggregated
                ev = decode_anomaly(self._decoder, k, v, interval_ns)
                self.reported += ev.anomalies.count
                out.append(ev)
        return out

    def counters(self) -> dict[str, int]:
        """Cumulative anomalies.<name> counters (ANOMC_*)."""
        return {
            f"anomalies.{name}": int(sum(self._counts[ctypes.c_int(idx)])) for idx, name in enumerate(ANOMALY_COUNTERS)
        }
