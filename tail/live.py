"""The live view shared by `tcpscope-tail` and `tcpscope-sim`: which event kinds it shows by
default, and a small bounded reorder buffer that prints events in time order.

By default the view shows what an SRE watches: connection lifecycles (one line per connection, at
its end), resets, socket errors, flows (aggregated ordinary connections) and the anomalies past the
agents' budget (aggregated in the kernel: one row per key and interval). State changes,
retransmits, SYN-ACK retransmits and probes come on request (`--kind state,...` or `--kind all`):
they are several lines per connection and bury the rows that matter.

Events reach a reader out of order: each agent sends a batch every half second or so, the collector
publishes batches to several partitions, and a consumer gets each poll's records partition by
partition. `Reorder` holds each event for `hold` seconds after it arrived and releases events in
order of their own timestamps, so any two events that arrive within `hold` of each other print in
time order. It holds at most `max_held` events (the oldest goes out first when it is full), so a
reader catching up on history cannot grow without bound. An event that arrives later than `hold`
after a newer one was printed is printed as it comes (no event is ever dropped for being late).

Flows are late by design: an agent reports them at the end of each flow interval (10 s by default),
and a flow's time is the close of its last connection. Received resets can be late too: the reset
hold (tail/resetcause.py) keeps one up to 5 s waiting for the peer's send before judging it.
Ordering those with the rest takes a hold of the longer of the two plus a batch age: the simulator
(2 s flows) holds 5.5 s and prints in order (a 30 s run: 219 rows, 0 out of order; with a 1 s hold,
36 of 182 rows came after newer rows, by at most 0.6 s). tcpscope-tail holds 1 s by default, for a
view that follows closely; `--reorder-window 11` orders 10 s flows and judged resets as well.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tail import resetcause
from tcpscope.v1.events_pb2 import EventBatch, TcpEvent

# the --kind names (the agent's --events names) -> TcpEvent `kind` oneof field names
KINDS: dict[str, str] = {
    "lifecycle": "lifecycle",
    "state": "state_change",
    "retransmit": "retransmit",
    "synack": "synack_retransmit",
    "reset": "reset",
    "error": "socket_error",
    "probe": "probe",
    "flow": "flow",
    "anomalies": "anomalies",
}
DEFAULT_KINDS: tuple[str, ...] = ("lifecycle", "reset", "error", "flow", "anomalies")
DEFAULT_HOLD_S = 1.0
"""Long enough for the agents' batch age (0.5 s by default) plus the collector's linger."""


KINDS_HELP = (
    f"event kinds, comma separated, or 'all': {','.join(KINDS)} (default: {','.join(DEFAULT_KINDS)}, what an SRE "
    "watches)"
)
"""The help of every flag that takes `parse_kinds`' text (tcpscope-tail --kind, tcpscope-sim --show)."""


def parse_kinds(text: str) -> frozenset[str]:
    """'lifecycle,reset' -> oneof field names; '' -> the default view; 'all' -> every kind (empty set)."""
    names = [k.strip() for k in text.split(",") if k.strip()] or list(DEFAULT_KINDS)
    if "all" in names:
        return frozenset()
    unknown = [k for k in names if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; known: {', '.join(KINDS)}, all")
    return frozenset(KINDS[k] for k in names)


T = TypeVar("T")


@dataclass
class Reorder(Generic[T]):
    """Items keyed by their event time in, out in time order once held `hold` seconds (module doc)."""

    hold: float = DEFAULT_HOLD_S
    max_held: int = 100_000
    _heap: list[tuple[int, int, float, T]] = field(default_factory=list, init=False)
    _seq: Iterator[int] = field(default_factory=itertools.count, init=False)

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, time_ns: int, now: float, item: T) -> None:
        heapq.heappush(self._heap, (time_ns, next(self._seq), now, item))

    def ready(self, now: float) -> Iterator[T]:
        """The items due at monotonic time `now`, oldest event time first."""
        h = self._heap
        while h and (h[0][2] + self.hold <= now or len(h) > self.max_held):
            yield heapq.heappop(h)[3]

    def flush(self) -> Iterator[T]:
        """Everything still held, in time order (at the end of a run)."""
        while self._heap:
            yield heapq.heappop(self._heap)[3]


def event_ns(ev: TcpEvent) -> int:
    return ev.time.seconds * 1_000_000_000 + ev.time.nanos


class LiveView:
    """The live view's pipeline, shared by tail and the sim: the kinds filter, then the reset-cause
    hold (tail/resetcause.py: a received reset waits, bounded, for the peer's evidence and comes
    out marked with who sent it), then the reorder buffer. Methods return the lines now due, in
    order; `now` is the reader's monotonic clock in seconds."""

    def __init__(
        self,
        render: Callable[[TcpEvent, resetcause.Verdict | None], str],
        kinds: frozenset[str] = frozenset(),
        hold: float = DEFAULT_HOLD_S,
        keep: Callable[[TcpEvent], bool] | None = None,
    ) -> None:
        self.render = render
        self.kinds = kinds
        self.keep = keep
        self.resets = resetcause.LiveHold()
        self.order: Reorder[str] = Reorder(hold)

    def _shown(self, ev: TcpEvent) -> bool:
        if self.kinds and ev.WhichOneof("kind") not in self.kinds:
            return False
        return self.keep is None or self.keep(ev)

    def _take(self, done: list[tuple[TcpEvent, resetcause.Verdict]], now: float) -> None:
        for ev, v in done:
            self.order.push(event_ns(ev), now, self.render(ev, v))

    def add(self, ev: TcpEvent, now: float) -> list[str]:
        """One event (every event is evidence for the reset join, shown or not)."""
        shown = self._shown(ev)
        held, done = self.resets.add(ev, int(now * 1e9), shown)
        if shown and not held:
            # received RSTs past the budget: the cause of their exemplars' class (docs/reset-cause.md)
            verdict = self.resets.join.aggregate_verdict(ev)
            self.order.push(event_ns(ev), now, self.render(ev, verdict))
        self._take(done, now)
        return list(self.order.ready(now))

    def add_batch(self, agent_id: str, summary: EventBatch) -> None:
        """A batch's summary record (the reset join uses its loss counters)."""
        self.resets.join.add_batch(agent_id, summary)

    def tick(self, now: float) -> list[str]:
        """What is due now without a new event."""
        self._take(self.resets.release(int(now * 1e9)), now)
        return list(self.order.ready(now))

    def close(self, now: float) -> list[str]:
        """Everything still held (the end of a run), in time order."""
        self._take(self.resets.release(int(now * 1e9), everything=True), now)
        return list(self.order.flush())


class OrderedPrinter:
    """A thread-safe `on_event` callback over a LiveView, with its own ticker thread so held rows
    go out even when no new events arrive. `close()` prints what is left."""

    def __init__(
        self,
        print_line: Callable[[str], None],
        view: LiveView,
        clock: Callable[[], float] | None = None,
        tick: float = 0.1,
    ) -> None:
        import time

        self._print = print_line
        self._clock = clock or time.monotonic
        self.view = view
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tick = tick
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="live-reorder", daemon=True)
        self._thread.start()

    def _show(self, lines: list[str]) -> None:
        for line in lines:
            self._print(line)

    def __call__(self, ev: TcpEvent) -> None:
        with self._lock:
            if not self._closed:
                self._show(self.view.add(ev, self._clock()))

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            with self._lock:
                self._show(self.view.tick(self._clock()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._show(self.view.close(self._clock()))
