"""Reads the run's events back from Kafka: to know when the agents have shipped everything, to show
the live table, and to print the summary at the end."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tail import clock
from tail.consume import Reader, Source
from tcpscope.agent_id import prefix_of
from tcpscope.bounds import OutOfBounds
from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, Decoded
from tcpscope.losses import add_counts
from tcpscope.v1.events_pb2 import ANOMALY_LIFECYCLE, ANOMALY_SYNACK_RETRANSMIT, LISTEN, EventBatch, TcpEvent

log = logging.getLogger(__name__)


def connection_ends(ev: TcpEvent) -> int:
    """Connection sockets whose end this event reports: 1 for a lifecycle of a connection socket
    (listening sockets closing do not count), a flow's `connections`, an aggregate of lifecycles'
    `count` (past the agent's anomaly budget), else 0."""
    kind = ev.WhichOneof("kind")
    if kind == "lifecycle":
        return 1 if ev.lifecycle.last_state != LISTEN and ev.remote.port != 0 else 0
    if kind == "flow":
        return ev.flow.connections
    if kind == "anomalies" and ev.anomalies.kind == ANOMALY_LIFECYCLE:
        return ev.anomalies.count
    return 0


def synack_retransmits(ev: TcpEvent) -> int:
    """SYN-ACK retransmits this event reports: 1 for an event, an aggregate's `count`, else 0."""
    kind = ev.WhichOneof("kind")
    if kind == "synack_retransmit":
        return 1
    if kind == "anomalies" and ev.anomalies.kind == ANOMALY_SYNACK_RETRANSMIT:
        return ev.anomalies.count
    return 0


WATCH_DEDUP_WINDOW = 1_000_000
"""Records remembered to drop at-least-once repeats: more than a run of the simulator produces."""


@dataclass
class TopicWatch:
    """A background reader of one topic (tail/consume.py: from the beginning, no consumer group),
    keeping the events and batch loss counters of the given agents, once each (at-least-once
    delivery may repeat a batch; the reader drops repeats by agent id, batch sequence and index)."""

    bootstrap: str
    topic: str
    agent_ids: set[str]  # the agents' --agent-id prefixes
    on_event: Callable[[TcpEvent], None] | None = None
    events: list[TcpEvent] = field(default_factory=list)
    losses: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    summaries: list[tuple[str, EventBatch]] = field(default_factory=list)
    """(agent id, batch summary) of every batch: node and losses, for the reset join's loss rule"""
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _catch_up: threading.Event = field(default_factory=threading.Event)
    _caught_up: threading.Event = field(default_factory=threading.Event)
    _target: Mapping[Any, int] | None = None  # the reading thread's: the end offsets catch_up waits for
    error: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # records skipped: foreign, bounds (outside them)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="topic-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        # the topic may not be there yet (the collector creates it): wait for it until stopped
        source = Source(tuple(self.bootstrap.split(",")), self.topic, from_beginning=True, topic_wait_s=None)
        try:
            with Reader(source, dedup_window=WATCH_DEDUP_WINDOW, cancel=self._stop) as reader:
                for d in reader.records(on_idle=lambda: self._check_caught_up(reader), on_undecodable=self._skip):
                    clock.correct(d)  # times on one clock (tail/clock.py)
                    self._take_one(d)
        except Exception as e:  # a broken watch must not hang the run: waiters see the error
            log.exception("reading %s failed", self.topic)
            with self._cv:
                self.error = f"{type(e).__name__}: {e}"
                self._cv.notify_all()

    def _skip(self, partition: int, offset: int, e: Exception) -> None:
        """A record that does not decode, or lies outside the bounds: counted, never the end of the watch."""
        with self._cv:
            key = "bounds" if isinstance(e, OutOfBounds) else "foreign"
            self.skipped[key] = self.skipped.get(key, 0) + 1

    def _check_caught_up(self, reader: Reader) -> None:
        """After every poll, in the reading thread: has it read what the topic held at catch_up()?"""
        if not self._catch_up.is_set():
            return
        if self._target is None:
            self._target = reader.end_offsets()
        if reader.reached(self._target):
            self._catch_up.clear()
            self._target = None
            self._caught_up.set()

    def _take_one(self, d: Decoded) -> None:
        if prefix_of(d.agent_id) not in self.agent_ids:  # --agent-id is a prefix (tcpscope/agent_id.py)
            return
        with self._cv:
            if d.kind == RECORD_EVENT and d.event is not None:
                self.events.append(d.event)
                if self.on_event is not None:
                    self.on_event(d.event)
            elif d.kind == RECORD_SUMMARY and d.summary is not None:
                self.batches += 1
                self.summaries.append((d.agent_id, d.summary))
                add_counts(self.losses, d.summary.lost)
            self._cv.notify_all()

    def catch_up(self, timeout: float) -> bool:
        """Wait until everything in the topic right now has been read."""
        self._caught_up.clear()
        self._catch_up.set()
        return self._caught_up.wait(timeout)

    def connection_ends(self) -> int:
        with self._cv:
            return sum(connection_ends(e) for e in self.events)

    def wait_for(self, want: int, timeout: float) -> int:
        """Block until `want` connection ends (lifecycles, and connections in flows) arrived, or the
        timeout; return the count."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                n = sum(connection_ends(e) for e in self.events)
                left = deadline - time.monotonic()
                if n >= want or left <= 0 or self.error:
                    return n
                self._cv.wait(min(left, 0.5))

    def snapshot(self) -> tuple[list[TcpEvent], dict[str, int], int]:
        with self._cv:
            return list(self.events), dict(self.losses), self.batches
