"""The kernel EventSource: drains the ring buffer (or perf buffer) and decodes records."""

from __future__ import annotations

import ctypes
import time
from typing import Any

from agent.kernel.anomalies import AnomalyMaps
from agent.kernel.decode import EVENT, Decoder
from agent.kernel.flows import FlowMaps
from agent.kernel.loader import Loaded
from tcpscope.v1.events_pb2 import TcpEvent

# struct bpf_prog_info (include/uapi/linux/bpf.h) is stable ABI: recursion_misses is the u64 at
# byte 208, added in Linux 5.12; older kernels return a shorter info_len.
_PROG_INFO_SIZE = 256
_RECURSION_MISSES_OFF = 208


def recursion_misses(prog_fds: list[int]) -> int | None:
    """Runs of these programs the kernel skipped because another BPF program was already running on
    that CPU (e.g. a softirq tracepoint firing while one of ours runs). Each skipped run may have
    been an event, so they count as kernel losses. None when the kernel does not report them."""
    from bcc.libbcc import lib

    total = 0
    for fd in prog_fds:
        buf = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        size = ctypes.c_uint32(_PROG_INFO_SIZE)
        if lib.bpf_obj_get_info(fd, buf, ctypes.byref(size)) != 0 or size.value < _RECURSION_MISSES_OFF + 8:
            return None
        total += int.from_bytes(buf.raw[_RECURSION_MISSES_OFF : _RECURSION_MISSES_OFF + 8], "little")
    return total


def boot_to_wall_offset_ns() -> int:
    """Offset from CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall-clock time, measured now.

    The smallest-gap bracket of a few readings keeps the error to a microsecond or so."""
    best: tuple[int, int] | None = None
    for _ in range(5):
        m0 = time.monotonic_ns()
        w = time.time_ns()
        m1 = time.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, w - (m0 + m1) // 2)
    assert best is not None
    return best[1]


class KernelSource:
    """EventSource over the loaded programs. poll() returns decoded events; losses() reads the
    kernel's per-CPU loss counters (and perf buffer losses reported to user space)."""

    # libbpf's ring_buffer__poll keeps consuming while the producer keeps producing: at saturation
    # one poll would never return and the batch would grow without bound (the benchmark saw 1.4 GB).
    # A callback returning < 0 stops it, but libbpf has already consumed that record
    # (ringbuf_process_ring advances the consumer position before calling back): so the callback
    # keeps the record it was handed and asks to stop after it.
    MAX_EVENTS_PER_POLL = 4096

    def __init__(self, loaded: Loaded, decoder: Decoder, perf_pages: int = 256, flow_interval_s: float = 10.0) -> None:
        self._loaded = loaded
        self._bpf = loaded.bpf
        self._decoder = decoder
        self._batch: list[TcpEvent] = []
        self._perf_lost = 0
        self._reasons = loaded.plan.loss_reasons
        self._losses_map = self._bpf[b"losses"]
        decode = decoder.decode
        batch = self._batch
        size = EVENT.size

        cap = self.MAX_EVENTS_PER_POLL

        def on_event(_ctx: Any, data: Any, _size: int) -> int:
            batch.append(decode(ctypes.string_at(data, size)))
            return -1 if len(batch) >= cap else 0  # -1: stop this poll after this record

        def on_lost(lost: int) -> None:
            self._perf_lost += lost

        self._on_event = on_event  # keep the callbacks alive
        self._on_lost = on_lost
        self._consume_fn: Any = None
        if loaded.plan.use_ringbuf:
            self._bpf[b"events"].open_ring_buffer(on_event)
            self._poll_fn = self._bpf.ring_buffer_poll
            # most records do not wake the reader (bpf/maps.h, ring_wake_flag): after the wait,
            # consume whatever is there whether or not a wakeup came
            self._consume_fn = self._bpf.ring_buffer_consume
        else:
            self._bpf[b"events"].open_perf_buffer(on_event, page_cnt=perf_pages, lost_cb=on_lost)
            self._poll_fn = self._bpf.perf_buffer_poll
        self._closed = False
        self._stopped = False
        self._flows = (
            FlowMaps(self._bpf, decoder, flow_interval_s, aggregate=loaded.plan.connections == "aggregate")
            if loaded.plan.flows_on
            else None
        )
        self._anomalies = AnomalyMaps(self._bpf, decoder, flow_interval_s) if loaded.plan.anomalies_on else None
        self._final_losses: dict[str, int] = {}
        self._final_flow_counters: dict[str, int] = {}
        self._final_anomaly_counters: dict[str, int] = {}
        self._prog_fds = [int(fn.fd) for fn in self._bpf.funcs.values()]

    def poll(self, timeout_ms: int) -> list[TcpEvent]:
        """Records from the buffer; every --flow-interval (and once after stop()) the flows and the
        anomaly aggregates too."""
        self._poll_fn(timeout_ms)
        if self._consume_fn is not None and len(self._batch) < self.MAX_EVENTS_PER_POLL:
            self._consume_fn()
        out = self._batch[:]
        self._batch.clear()
        flows = self._flows
        if flows is not None and not self._closed:
            if self._stopped:
                if not out:  # the buffer is drained: nothing can reach the maps any more
                    out = flows.flush_all()
                    self._final_flow_counters = flows.counters()
                    self._flows = None
            elif flows.due():
                out.extend(flows.flush())
        anomalies = self._anomalies
        if anomalies is not None and not self._closed:
            if self._stopped:
                if not out:  # as for the flows: nothing can reach the maps any more
                    out = anomalies.flush_all()
                    self._final_anomaly_counters = anomalies.counters()
                    self._anomalies = None
            elif anomalies.due():
                out.extend(anomalies.flush())
        return out

    def stop(self) -> None:
        """Detach the programs: nothing new enters the buffer or the flow maps. Keep polling until
        poll() returns nothing: the last polls drain the buffer, then both flow maps."""
        if not self._stopped and not self._closed:
            self._stopped = True
            self._loaded.detach()

    def flow_counters(self) -> dict[str, int]:
        """flows.aggregated (ordinary connections counted in flows) and flows.map_full (reported as
        their own lifecycle because the flow map was full); empty when flows are off."""
        if self._flows is not None and not self._closed:
            return self._flows.counters()
        return dict(self._final_flow_counters)

    def anomaly_counters(self) -> dict[str, int]:
        """anomalies.<name> (bpf/anomaly.h ANOMC_*): anomalies sent as events, aggregated (and why),
        under coarse keys, without a key; empty when the budgets are off."""
        if self._anomalies is not None and not self._closed:
            return self._anomalies.counters()
        return dict(self._final_anomaly_counters)

    def kernel_counters(self) -> dict[str, int]:
        """The in-kernel accounting counters, flows.* and anomalies.* (not losses)."""
        return {**self.flow_counters(), **self.anomaly_counters()}

    def losses(self) -> dict[str, int]:
        if self._closed:
            return dict(self._final_losses)
        out = {f"kernel.{name}": 0 for name in self._reasons}
        for idx, name in enumerate(self._reasons):
            vals = self._losses_map[ctypes.c_int(idx)]
            out[f"kernel.{name}"] = int(sum(vals))
        if not self._loaded.plan.use_ringbuf:
            out["kernel.perf_lost"] = self._perf_lost
        misses = recursion_misses(self._prog_fds)
        if misses is not None:
            out["kernel.recursion_misses"] = misses
        return out

    def tracked_sockets(self) -> int:
        """Entries in the per-socket map now (for tests and stats; walks the map)."""
        return sum(1 for _ in self._bpf[b"sockets"])

    def seeded_listeners(self) -> int:
        """Owners of listeners older than the agent, written into the listener map at load."""
        return self._loaded.listeners_seeded

    def close(self) -> None:
        if not self._closed:
            self._final_losses = self.losses()
            self._final_flow_counters = self.flow_counters()
            self._final_anomaly_counters = self.anomaly_counters()
            self._closed = True
            self._loaded.close()
