"""Flows: ordinary connections aggregated in the kernel (bpf/flow.h), read out per key.

`FlowMaps` owns the two swapping maps of a loaded program: `flush()` flips the active map, waits
for programs still adding to the old one, then reads and clears it with one batch operation, so a
flush costs per key, not per connection. Each (flow_key, flow_val) entry read becomes a Flow event
in agent/kernel/decode.py (`decode_flow`, pure), where every event is built from kernel records.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.kernel.decode import Decoder, decode_flow
from tcpscope.v1.events_pb2 import TcpEvent

log = logging.getLogger(__name__)

# bpf/events.h FLOWC_*: flow counters by index (reported as flows.<name>)
FLOW_COUNTERS: tuple[str, ...] = ("aggregated", "map_full")


def wait_for_programs(outer: Any, slot: int, inner_fd: int) -> None:
    """Return once no program can still add to the map in `slot` of `outer` (a map-in-map the
    programs reach their map through), after a flip made them pick the other one.

    A program that read the old index just before the flip may still be adding to the old map; read
    and cleared under it, that addition would be lost, and no fixed sleep bounds it (a vCPU the
    hypervisor deschedules mid-program stays there as long as it likes). The kernel has the exact
    wait: an update of a map-in-map from user space returns only after synchronize_rcu()
    (kernel/bpf/syscall.c maybe_wait_bpf_programs(), Linux 5.0+, so that user space knows no program
    still uses an old inner map), and tracepoint and raw tracepoint programs run inside an RCU
    read-side section (trace_call_bpf(), __bpf_trace_run()). So the slot is rewritten with the map
    it already holds: when that returns, every program that began before it has returned. One grace
    period, milliseconds, once per flush. Shared with agent/kernel/anomalies.py."""
    outer[ctypes.c_int(slot)] = ctypes.c_int(inner_fd)


class FlowMaps:
    """The flow maps of a loaded program: flip, drain, decode."""

    def __init__(
        self,
        bpf: Any,
        decoder: Decoder,
        interval_s: float,
        aggregate: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bpf = bpf
        self._decoder = decoder
        self._interval_s = interval_s
        self._aggregate = aggregate
        self._clock = clock
        self._maps = [bpf[b"flows0"], bpf[b"flows1"]]
        self._outer = bpf[b"flow_maps"]
        for i, m in enumerate(self._maps):
            self._outer[ctypes.c_int(i)] = ctypes.c_int(m.map_fd)
        self._ctl = bpf[b"flow_ctl"]
        self._counts = bpf[b"flow_counts"]
        self._active = 0
        self._ctl[ctypes.c_int(0)] = ctypes.c_uint32(0)
        self._last_flush = clock()
        self._batch_ops = True  # off after the first failure (kernels before 5.6 have none)

    def due(self) -> bool:
        """Whether --flow-interval has passed since the last flush."""
        return self._clock() - self._last_flush >= self._interval_s

    def flush(self) -> list[TcpEvent]:
        """Flip the active map and read out the old one: one Flow event per key."""
        now = self._clock()
        interval_ns = int((now - self._last_flush) * 1e9)
        self._last_flush = now
        old = self._active
        self._active = 1 - old
        self._ctl[ctypes.c_int(0)] = ctypes.c_uint32(self._active)
        wait_for_programs(self._outer, old, self._maps[old].map_fd)
        return self._drain(self._maps[old], interval_ns)

    def flush_all(self) -> list[TcpEvent]:
        """At shutdown (programs detached): both maps, the active one included."""
        out = self.flush()
        out += self._drain(self._maps[self._active], 0)
        return out

    def _drain(self, table: Any, interval_ns: int) -> list[TcpEvent]:
        pairs: list[tuple[bytes, bytes]] = []
        if self._batch_ops:
            try:
                pairs = [(bytes(k), bytes(v)) for k, v in table.items_lookup_and_delete_batch()]
            except Exception as e:  # kernels before 5.6 have no batch operations on hash maps
                log.info("flow maps: batch lookup unavailable (%s); reading key by key", e)
                self._batch_ops = False
        # what the batch left (none expected on an inactive map), or everything without batch ops
        for k in list(table.keys()):
            try:
                v = table[k]
            except KeyError:
                continue
            pairs.append((bytes(k), bytes(v)))
            with contextlib.suppress(KeyError):
                del table[k]
        decoder = self._decoder
        aggregate = self._aggregate
        return [decode_flow(decoder, k, v, interval_ns, aggregate) for k, v in pairs]

    def counters(self) -> dict[str, int]:
        """Cumulative flows.<name> counters (FLOWC_*): connections aggregated, and reported
        individually because the map was full."""
        return {f"flows.{name}": int(sum(self._counts[ctypes.c_int(idx)])) for idx, name in enumerate(FLOW_COUNTERS)}
