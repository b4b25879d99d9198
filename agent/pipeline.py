"""The agent's pipeline stages and the loop that drives them.

    source (kernel) -> enrichers (in order) -> sink (stdout | exporter)

Each stage is a narrow Protocol so tests can swap any of them for a fake. The loop is single
threaded: stages that need threads (the gRPC exporter, the pod watch) own them privately.
Every stage reports what it lost through `losses()`: counts by reason, cumulative.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tcpscope.v1.events_pb2 import TcpEvent

log = logging.getLogger(__name__)


class EventSource(Protocol):
    """Where events come from (the BPF programs, or a fake in tests)."""

    def poll(self, timeout_ms: int) -> list[TcpEvent]:
        """Wait up to timeout_ms for events and return what arrived (possibly nothing)."""
        ...

    def losses(self) -> dict[str, int]:
        """Cumulative events lost before reaching user space, by reason (e.g. 'kernel.ringbuf_full')."""
        ...

    def stop(self) -> None:
        """Stop producing (detach): what is already produced still comes out of poll() until it
        returns nothing."""
        ...

    def close(self) -> None: ...


class Enricher(Protocol):
    """Adds metadata to events. May hold events back briefly (returns them later from process/flush)."""

    def process(self, events: list[TcpEvent], now: float) -> list[TcpEvent]:
        """Enrich these events; return the events ready to go on (in arrival order where possible)."""
        ...

    def flush(self) -> list[TcpEvent]:
        """Release every held event, enriched as well as possible (at shutdown)."""
        ...

    def losses(self) -> dict[str, int]: ...

    def stats(self) -> dict[str, int]:
        """Counters that are not losses (cache sizes, misses, degraded events)."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Where events go (stdout, the exporter to the collector)."""

    def emit(self, events: Sequence[TcpEvent], upstream_losses: dict[str, int]) -> None:
        """Take events; upstream_losses is the cumulative loss map of the stages before the sink."""
        ...

    def close(self, grace_s: float) -> None:
        """Flush what can be flushed within grace_s."""
        ...

    def losses(self) -> dict[str, int]: ...


class FanOut:
    """A Sink that hands every event to several sinks (e.g. --stdout and --collector together)."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self._sinks = list(sinks)

    def emit(self, events: Sequence[TcpEvent], upstream_losses: dict[str, int]) -> None:
        for s in self._sinks:
            s.emit(events, upstream_losses)

    def close(self, grace_s: float) -> None:
        for s in self._sinks:
            s.close(grace_s)

    def losses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self._sinks:
            for k, v in s.losses().items():
                out[k] = out.get(k, 0) + v
        return out


@dataclass
class Pipeline:
    source: EventSource
    enrichers: Sequence[Enricher]
    sink: Sink
    clock: Callable[[], float] = time.monotonic
    poll_timeout_ms: int = 100
    # Reading the kernel's loss counters costs syscalls per CPU and per program; the sink gets a
    # reading at most this old. A loss read late is carried by the next batch, never dropped, and
    # shutdown always reads them fresh.
    loss_refresh_s: float = 0.25
    # When events trickle in, every buffer wakeup brings one or two and each stage's per-call cost
    # dominates: after a small step, wait up to linger_s so the next step takes a batch. Bounds the
    # added latency; the kernel buffer (megabytes) absorbs a linger at any realistic rate.
    linger_s: float = 0.02
    batch_target: int = 256
    # Called on this loop's thread when the losses are read (every loss_refresh_s) and at the end of
    # shutdown: where the stages' statistics are copied for other threads (agent/metrics.py Snapshot).
    on_refresh: Sequence[Callable[[], None]] = ()
    # Called at shutdown just before the source stops producing (its programs are detached, one by
    # one), and so before the drain: the exporter's journal notes when this agent stopped observing
    # (agent/export/journal.py).
    on_detach: Sequence[Callable[[], None]] = ()
    events_out: int = field(default=0, init=False)
    _losses: dict[str, int] = field(default_factory=dict, init=False)
    _losses_read_at: float = field(default=float("-inf"), init=False)

    def upstream_losses(self) -> dict[str, int]:
        out = dict(self.source.losses())
        for e in self.enrichers:
            for k, v in e.losses().items():
                out[k] = out.get(k, 0) + v
        return out

    def all_losses(self) -> dict[str, int]:
        out = self.upstream_losses()
        for k, v in self.sink.losses().items():
            out[k] = out.get(k, 0) + v
        return out

    def _recent_upstream_losses(self, now: float) -> dict[str, int]:
        if now - self._losses_read_at >= self.loss_refresh_s:
            self._losses = self.upstream_losses()
            self._losses_read_at = now
            self._refresh()
        return self._losses

    def _refresh(self) -> None:
        for hook in self.on_refresh:
            hook()

    def step(self) -> int:
        events = self.source.poll(self.poll_timeout_ms)
        now = self.clock()
        for enricher in self.enrichers:
            events = enricher.process(events, now)
        self.sink.emit(events, self._recent_upstream_losses(now))
        self.events_out += len(events)
        return len(events)

    def run(self, stop: threading.Event, deadline: float | None = None) -> None:
        """Drive the stages until stop is set or the monotonic deadline passes."""
        while not stop.is_set():
            started = self.clock()
            if deadline is not None and started >= deadline:
                break
            if 0 < self.step() < self.batch_target:
                rest = self.linger_s - (self.clock() - started)
                if rest > 0:
                    stop.wait(rest)

    def shutdown(self, grace_s: float) -> None:
        """Release held events, flush the sink, close everything."""
        # a final non-blocking drain of the source (a poll returns a bounded batch: repeat until it
        # is empty); each enricher releases what it held, and the next enricher sees those too
        for hook in self.on_detach:  # first: observing ends as the first program is detached
            hook()
        self.source.stop()
        events = self.source.poll(0)
        while events:
            more = self.source.poll(0)
            if not more:
                break
            now = self.clock()
            for enricher in self.enrichers:
                events = enricher.process(events, now)
            self.sink.emit(events, self.upstream_losses())
            self.events_out += len(events)
            events = more
        now = self.clock()
        for enricher in self.enrichers:
            events = enricher.process(events, now) + enricher.flush()
        self.sink.emit(events, self.upstream_losses())
        self.events_out += len(events)
        self.sink.close(grace_s)
        for enricher in self.enrichers:
            enricher.close()
        self.source.close()
        self._refresh()  # the final counts (the source's are kept once it is closed)
