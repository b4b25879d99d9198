"""The live view shared by `tcpscope-tail` and `tcpscope-sim`: which rows it shows, and a small
bounded reorder buffer that prints them in time order.

By default (`--rows connection`) the view prints one row per connection when it ends, both ends'
events joined (tail/connections.py: client and server, the Service it went through, how it ended,
who sent the reset and why, duration, bytes), and one row per pair per flow interval for the
ordinary connections the agents aggregate, each counted once (from the client's flows, as the
summary counts them); the anomalies the agents aggregated past their budget print as their own rows
(one per key and interval, with their exemplars' reset cause). `--rows socket` prints each socket's
events as the agent's `--stdout` does: lifecycles, resets, socket errors, flows and anomaly
aggregates by default; state changes, retransmits, SYN-ACK retransmits and probes on request
(`--kind state,...` or `--kind all`, which choose socket rows by themselves: those kinds have no
connection row).

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

from tail import connections, resetcause
from tcpscope import kinds
from tcpscope.kinds import parse_view
from tcpscope.v1.events_pb2 import EventBatch, TcpEvent

# the kinds: tcpscope/kinds.py (its `parse_view` reads --kind and the sim's --show, with the defaults)
DEFAULT_HOLD_S = 1.0
"""Long enough for the agents' batch age (0.5 s by default) plus the collector's linger."""


ROWS: tuple[str, ...] = ("connection", "socket")
ROWS_HELP = (
    "connection (the default): one row per connection when it ends, both ends joined: client and server "
    "(through a Service: the backend, 'via' the Service), how it ended, who sent the reset (app, kernel or "
    "network) and why, duration, bytes; and one row per pair per flow interval, each connection once. "
    "socket: every socket's own events, as the agent prints them (the default with --kind state, "
    "retransmit, synack, probe or all)"
)


def parse_rows(rows: str | None, kinds_text: str) -> str:
    """--rows as given, else what --kind calls for; ValueError for kinds connection rows cannot show."""
    parse_view(kinds_text)  # unknown kinds first
    names = {k.strip() for k in kinds_text.split(",") if k.strip()}
    socket_only = sorted(names - kinds.CONNECTION_VIEW)
    if rows is None:
        return "socket" if socket_only else "connection"
    if rows not in ROWS:
        raise ValueError(f"--rows wants one of {', '.join(ROWS)}, not {rows!r}")
    if rows == "connection" and socket_only:
        raise ValueError(f"kinds {','.join(socket_only)} have no connection rows: use --rows socket")
    return rows


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
    """The live view's pipeline, shared by tail and the sim. Socket rows (no `render_row`): the kinds
    filter, then the reset-cause hold (tail/resetcause.py: a received reset waits, bounded, for the
    peer's evidence and comes out marked with who sent it), then the reorder buffer. Connection rows
    (`render_row` given): the join of tail/connections.py, then the filters, then the reorder
    buffer. Methods return the lines now due, in order; `now` is the reader's monotonic clock in
    seconds."""

    def __init__(
        self,
        render: Callable[[TcpEvent, resetcause.Verdict | None], str],
        kinds: frozenset[str] = frozenset(),
        hold: float = DEFAULT_HOLD_S,
        keep: Callable[[TcpEvent], bool] | None = None,
        render_row: Callable[[connections.Row], str] | None = None,
        join_hold: float = connections.DEFAULT_HOLD_S,
    ) -> None:
        self.render = render
        self.kinds = kinds
        self.keep = keep
        self.resets = resetcause.LiveHold()
        self.order: Reorder[str] = Reorder(hold)
        self.render_row = render_row
        self.connections = connections.ConnectionRows(join_hold) if render_row is not None else None

    def _row_shown(self, row: connections.Row) -> bool:
        if isinstance(row, connections.SocketRow):
            return self._shown(row.event)
        if isinstance(row, connections.FlowRow):
            return (not self.kinds or kinds.FLOW.field in self.kinds) and (self.keep is None or self.keep(row.flow))
        k = self.kinds
        if k and kinds.LIFECYCLE.field not in k:
            errno = any(e.lifecycle.errno for e in row.sockets)
            if not ((kinds.RESET.field in k and row.reset_by is not None) or (kinds.ERROR.field in k and errno)):
                return False
        return self.keep is None or any(self.keep(e) for e in row.sockets)

    def _rows(self, rows: list[connections.Row], now: float) -> list[str]:
        assert self.render_row is not None
        for row in rows:
            if self._row_shown(row):
                self.order.push(row.time_ns(), now, self.render_row(row))
        return list(self.order.ready(now))

    def _shown(self, ev: TcpEvent) -> bool:
        if self.kinds and ev.WhichOneof("kind") not in self.kinds:
            return False
        return self.keep is None or self.keep(ev)

    def _take(self, done: list[tuple[TcpEvent, resetcause.Verdict]], now: float) -> None:
        for ev, v in done:
            self.order.push(event_ns(ev), now, self.render(ev, v))

    def add(self, ev: TcpEvent, now: float) -> list[str]:
        """One event (every event is evidence for the reset join, shown or not)."""
        if self.connections is not None:
            return self._rows(self.connections.add(ev, now), now)
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
        if self.connections is not None:
            self.connections.add_batch(agent_id, summary)
        self.resets.join.add_batch(agent_id, summary)

    def tick(self, now: float) -> list[str]:
        """What is due now without a new event."""
        if self.connections is not None:
            return self._rows(self.connections.tick(now), now)
        self._take(self.resets.release(int(now * 1e9)), now)
        return list(self.order.ready(now))

    def close(self, now: float) -> list[str]:
        """Everything still held (the end of a run), in time order."""
        if self.connections is not None:
            ready = self._rows(self.connections.close(now), now)  # rows whose hold ended since the last tick
            return ready + list(self.order.flush())
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
