"""Anomalies past the budget, aggregated in the kernel (bpf/anomaly.h), read out per key.

The mirrors of `struct anomaly_key` and `struct anomaly_val` and `decode_anomaly` are in
agent/kernel/decode.py, with the other kernel records. `AnomalyMaps` owns the two swapping maps of a
loaded program: `flush()` flips the active map, waits for programs still adding to the old one,
reads and clears it with one batch operation and zeroes its key count. Keys whose anomalies were all
sent as events (count 0) are read and dropped: the events are what a reader needs of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.kernel.decode import ANOMALY_VAL, Decoder, decode_anomaly
from agent.kernel.flows import wait_for_programs
from tcpscope.v1.events_pb2 import TcpEvent

log = logging.getLogger(__name__)

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


class AnomalyMaps:
    """The anomaly maps of a loaded program: flip, drain, decode."""

    def __init__(self, bpf: Any, decoder: Decoder, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self._bpf = bpf
        self._decoder = decoder
        self._interval_s = interval_s
        self._clock = clock
        self._maps = [bpf[b"anom0"], bpf[b"anom1"]]
        self._outer = bpf[b"anom_maps"]
        for i, m in enumerate(self._maps):
            self._outer[ctypes.c_int(i)] = ctypes.c_int(m.map_fd)
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
        wait_for_programs(self._outer, old, self._maps[old].map_fd)
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
