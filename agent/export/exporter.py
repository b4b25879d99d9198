"""The exporter Sink: batches events, holds them until the collector acks, accounts every loss.

Policy (the transport only sends and resends; every decision about what to keep lives here):

- Batching: a batch is sealed when it has `batch_max_events` events, when its oldest event is
  `batch_max_age` seconds old, at shutdown, and (with no events) when losses are waiting to be
  reported or no batch went out for `heartbeat_s` (so consumers can tell a quiet node from a dead one).
- Buffer: open + sealed-unsent + sent-unacked events are bounded by `buffer_max_events`. When an
  emit would exceed it, the *oldest* sealed batches are dropped whole (a sent batch's content is
  fixed: its id must keep meaning the same events on resend). Each dropped event is counted under
  `agent.buffer_full`, and a dropped batch's own loss counters are carried forward, so the next
  batch reports them. A dropped batch that had been sent may still reach Kafka (its ack lost):
  loss accounting errs on the side of counting.
- Loss deltas: `emit()` receives cumulative upstream losses by reason; each batch carries the
  increase since the previous batch plus the exporter's own drops, in `EventBatch.lost`.
- Refused batches: when the collector refuses one batch for what it is (tcpscope/refusal.py: too
  many events or bytes), that batch is split in two halves under new sequences, sent first, and
  `batch_max_events` is lowered to the half for the batches still to come; a single event refused
  is dropped and counted under `agent.collector_refused`. (It never reached Kafka, so new ids do
  not duplicate anything.) Any other refusal leaves the batches alone: the transport retries.
- Shutdown: `close(grace_s)` seals what is open, waits up to grace_s for acks, then counts what is
  still unacked under `agent.shutdown_unsent` (logged; it can no longer travel in the stream).
- Unobserved windows (agent/export/journal.py, with `--state-dir`): the journal is told of every
  seal and settled batch, so the next incarnation can report what this one could not deliver;
  windows to report (`report_unobserved`) ride on the next batch and, like loss counts, move on to
  a later batch when theirs is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.metrics import AgentMetrics
from tcpscope.kafka_layout import SCHEMA_VERSION
from tcpscope.losses import POSSIBLE_LOSS_REASONS, UNTRACKED_SOCKET_REASONS
from tcpscope.refusal import SPLITTABLE
from tcpscope.v1.events_pb2 import EventBatch, Losses, TcpEvent, UnobservedWindow

log = logging.getLogger(__name__)

REASON_BUFFER_FULL = "agent.buffer_full"
REASON_SHUTDOWN = "agent.shutdown_unsent"
REASON_REFUSED = "agent.collector_refused"


@dataclass
class OutgoingBatch:
    """A sealed batch: its id, its serialized bytes (sent as is, also on resend), what it carries."""

    sequence: int
    data: bytes
    events: int
    lost: dict[str, int]
    sends: int = 0
    windows: list[UnobservedWindow] = field(default_factory=list)


class BatchSource(Protocol):
    """What the transport sees of the exporter."""

    def begin_stream(self) -> int:
        """A new stream starts: returns its generation, which next_batch() must present."""
        ...

    def next_batch(self, timeout_s: float, generation: int) -> OutgoingBatch | None:
        """The next batch to send on stream `generation`, waiting up to timeout_s (None if stale)."""
        ...

    def on_ack(self, agent_id: str, sequence: int) -> None: ...

    def on_refused(self, sequence: int, reason: str, details: str) -> None:
        """The collector refused batch `sequence` for what it is (before on_stream_reset)."""
        ...

    def on_stream_reset(self) -> None:
        """The stream broke: every sent-unacked batch goes back to be sent again, in order."""
        ...


class Journal(Protocol):
    """What the exporter tells the node journal (agent/export/journal.py)."""

    def sealed(self, sequence: int, events: int, sent_ns: int, carries_windows: bool) -> None: ...

    def settled(self, sequence: int, acked: bool) -> None: ...

    def closed(self, drained: bool) -> None: ...

    def attached(self) -> list[UnobservedWindow]: ...

    def detached(self) -> None: ...

    def take_over(self) -> list[UnobservedWindow]: ...

    @property
    def takeover_pending(self) -> bool: ...


class Transport(Protocol):
    def start(self, source: BatchSource) -> None: ...

    def stop(self, timeout_s: float) -> None: ...


def split_losses(by_reason: dict[str, int]) -> Losses:
    """Sum reasons into the Losses buckets: 'enrich*' -> enrichment, 'agent*' -> agent_buffer, possible
    losses (POSSIBLE_LOSS_REASONS) -> kernel_skipped_runs, sockets not tracked (UNTRACKED_SOCKET_REASONS)
    -> sockets_untracked, everything else (kernel.*, and unknown
    prefixes, which can only come from the source) -> kernel."""
    out = Losses()
    for reason, n in by_reason.items():
        if n <= 0:
            continue
        out.by_reason[reason] = n
        if reason in POSSIBLE_LOSS_REASONS:
            out.kernel_skipped_runs += n
        elif reason in UNTRACKED_SOCKET_REASONS:
            out.sockets_untracked += n  # sockets, not events
        elif reason.startswith("enrich"):
            out.enrichment += n
        elif reason.startswith("agent"):
            out.agent_buffer += n
        else:
            out.kernel += n
    return out


@dataclass
class ExporterSettings:
    node: str
    agent_id: str
    batch_max_events: int = 1000
    batch_max_age: float = 0.5
    buffer_max_events: int = 200_000
    heartbeat_s: float = 10.0


@dataclass
class _State:
    open: list[TcpEvent] = field(default_factory=list)
    open_since: float | None = None
    unsent: deque[OutgoingBatch] = field(default_factory=deque)
    inflight: OrderedDict[int, OutgoingBatch] = field(default_factory=OrderedDict)
    held_events: int = 0  # events in unsent + inflight
    pending_lost: dict[str, int] = field(default_factory=dict)
    pending_windows: list[UnobservedWindow] = field(default_factory=list)
    last_upstream: dict[str, int] = field(default_factory=dict)
    own_lost: dict[str, int] = field(default_factory=dict)
    next_seq: int = 1
    generation: int = 0
    last_seal: float = 0.0
    closing: bool = False
    last_ack: tuple[int, int] = (0, 0)  # (sequence, wall ns when it arrived): echoed on the next batch
    next_takeover: float = 0.0  # when to look for the node journal's lock again (Exporter._take_over)


class Exporter:
    """agent.pipeline.Sink that streams batches through a Transport (which runs its own thread)."""

    def __init__(
        self,
        settings: ExporterSettings,
        transport: Transport,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        if not 1 <= settings.batch_max_events <= settings.buffer_max_events:
            raise ValueError("need 1 <= batch_max_events <= buffer_max_events")
        self._s = settings
        self._transport = transport
        self._metrics = metrics or AgentMetrics()
        self._clock = clock
        self._wall = wall
        self._cond = threading.Condition()
        self._st = _State(last_seal=clock())
        self._cap = settings.batch_max_events  # lowered when the collector refuses a batch as too big
        self._metrics.buffer_capacity.set(settings.buffer_max_events)
        self._started = False
        self._journal = journal

    @property
    def metrics(self) -> AgentMetrics:
        return self._metrics

    def start(self) -> None:
        """Start the transport thread (idempotent; emit() starts it on first use)."""
        with self._cond:
            if self._started:
                return
            self._started = True
        self._transport.start(self)

    # --- Sink ------------------------------------------------------------------------------------
    def emit(self, events: Sequence[TcpEvent], upstream_losses: dict[str, int]) -> None:
        """Take events (never blocks on the network): batch, seal, and evict beyond the bound."""
        if not self._started:
            self.start()
        now = self._clock()
        with self._cond:
            st = self._st
            self._account_upstream(upstream_losses)
            if self._journal is not None and self._journal.takeover_pending:
                self._take_over(now)
            if events:
                self._metrics.events_in.inc(len(events))
                i, n, cap = 0, len(events), self._cap
                while i < n:
                    if st.open_since is None:
                        st.open_since = now
                    take = min(cap - len(st.open), n - i)
                    st.open.extend(events[i : i + take])
                    i += take
                    if len(st.open) >= cap:
                        self._seal(now)
            self._seal_if_due(now)
            self._evict()
            self._metrics.buffer_events.set(len(st.open) + st.held_events)
            self._cond.notify_all()

    def losses(self) -> dict[str, int]:
        with self._cond:
            return dict(self._st.own_lost)

    def attached(self) -> None:
        """The agent is attached to the kernel: report the windows the node journal knows of."""
        if self._journal is not None:
            self.report_unobserved(self._journal.attached())

    def detached(self) -> None:
        """The agent stopped observing (its programs are detached; the drain follows): noted in the
        node journal, where the next agent's window starts."""
        if self._journal is not None:
            with self._cond:
                self._journal.detached()

    def _take_over(self, now: float) -> None:
        """Attached while another agent of the node held its journal: poll (twice a second) for the
        handover's windows once that agent has exited; they ride on the next batch."""
        assert self._journal is not None
        if now < self._st.next_takeover:
            return
        self._st.next_takeover = now + 0.5
        windows = self._journal.take_over()
        if windows:
            self._st.pending_windows.extend(windows)
            if self._st.open_since is None:
                self._st.open_since = now

    def report_unobserved(self, windows: Sequence[UnobservedWindow]) -> None:
        """Send these windows nobody observed with the next batch (sealed within batch_max_age)."""
        if not windows:
            return
        with self._cond:
            self._st.pending_windows.extend(windows)
            if self._st.open_since is None:
                self._st.open_since = self._clock()
            self._cond.notify_all()

    def close(self, grace_s: float) -> None:
        """Seal what is open, wait up to grace_s for the collector to ack everything, count the rest."""
        deadline = self._clock() + grace_s
        with self._cond:
            st = self._st
            st.closing = True
            if st.open or st.pending_lost or st.pending_windows:
                self._seal(self._clock())
            self._cond.notify_all()
            while (st.unsent or st.inflight) and self._started:
                left = deadline - self._clock()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
                if st.pending_lost or st.pending_windows:  # a loss while closing (a refused batch
                    # dropped): report it too
                    self._seal(self._clock())
                    self._cond.notify_all()
        self._transport.stop(timeout_s=2.0)
        with self._cond:
            left_events = st.held_events
            if left_events:
                self._count_own(REASON_SHUTDOWN, left_events)
                log.warning(
                    "shutdown: %d events in %d batches not acknowledged by the collector within "
                    "%.1fs: counted lost (%s)",
                    left_events,
                    len(st.unsent) + len(st.inflight),
                    grace_s,
                    REASON_SHUTDOWN,
                )
                st.unsent.clear()
                st.inflight.clear()
                st.held_events = 0
            self._metrics.buffer_events.set(0)
            if self._journal is not None:
                self._journal.closed(drained=not left_events)

    # --- BatchSource (called from the transport thread) --------------------------------------------
    def begin_stream(self) -> int:
        with self._cond:
            return self._st.generation

    def next_batch(self, timeout_s: float, generation: int) -> OutgoingBatch | None:
        deadline = self._clock() + timeout_s
        with self._cond:
            st = self._st
            while True:
                if generation != st.generation:
                    return None  # that stream is gone: a batch taken now would never be resent
                now = self._clock()
                self._seal_if_due(now)
                if st.unsent:
                    b = st.unsent.popleft()
                    st.inflight[b.sequence] = b
                    b.sends += 1
                    self._metrics.batches_sent.inc()
                    if b.sends > 1:
                        self._metrics.batches_resent.inc()
                    return b
                left = deadline - now
                if left <= 0:
                    return None
                due = self._next_due(now)
                self._cond.wait(max(0.001, min(left, due)))

    def on_ack(self, agent_id: str, sequence: int) -> None:
        with self._cond:
            if agent_id != self._s.agent_id:
                log.warning("ack for another agent id %r ignored", agent_id)
                return
            self._st.last_ack = (sequence, int(self._wall() * 1e9))
            b = self._st.inflight.pop(sequence, None)
            if b is None:
                return  # a duplicate ack, or a batch dropped meanwhile
            if self._journal is not None:
                self._journal.settled(sequence, acked=True)
            self._st.held_events -= b.events
            self._metrics.batches_acked.inc()
            self._metrics.events_acked.inc(b.events)
            self._metrics.buffer_events.set(len(self._st.open) + self._st.held_events)
            self._cond.notify_all()

    def on_refused(self, sequence: int, reason: str, details: str) -> None:
        with self._cond:
            st = self._st
            b = st.inflight.pop(sequence, None)
            if b is None:
                log.warning("collector refused batch %d (%s), which is no longer held", sequence, reason)
                return
            st.held_events -= b.events
            self._metrics.batches_refused.labels(reason).inc()
            if reason in SPLITTABLE and b.events > 1:
                events = list(EventBatch.FromString(b.data).events)
                half = (len(events) + 1) // 2
                if half < self._cap:
                    self._cap = half
                    log.warning(
                        "collector refused batch %d of %d events (%s: %s): splitting it, and "
                        "batches now hold at most %d events",
                        sequence,
                        b.events,
                        reason,
                        details,
                        half,
                    )
                first = self._make_batch(events[:half], b.lost, b.windows)
                second = self._make_batch(events[half:], {}, [])
                st.unsent.extendleft((second, first))
                st.held_events += b.events
            else:
                self._report_dropped([b], REASON_REFUSED)
                log.error(
                    "collector refused batch %d (%s: %s): %d events dropped, counted as %s",
                    sequence,
                    reason,
                    details,
                    b.events,
                    REASON_REFUSED,
                )
            if self._journal is not None:
                self._journal.settled(sequence, acked=False)
            self._metrics.buffer_events.set(len(st.open) + st.held_events)
            self._cond.notify_all()

    def on_stream_reset(self) -> None:
        with self._cond:
            st = self._st
            st.generation += 1
            if st.inflight:
                st.unsent.extendleft(reversed(st.inflight.values()))
                st.inflight.clear()
            self._cond.notify_all()

    # --- internals (hold self._cond) ---------------------------------------------------------------
    def _account_upstream(self, cumulative: dict[str, int]) -> None:
        st = self._st
        for reason, total in cumulative.items():
            d = total - st.last_upstream.get(reason, 0)
            if d > 0:
                st.pending_lost[reason] = st.pending_lost.get(reason, 0) + d
                self._metrics.upstream_lost.labels(reason).inc(d)
                if st.open_since is None:
                    st.open_since = self._clock()
            st.last_upstream[reason] = total

    def _count_own(self, reason: str, n: int) -> None:
        st = self._st
        st.own_lost[reason] = st.own_lost.get(reason, 0) + n
        self._metrics.dropped.labels(reason.removeprefix("agent.")).inc(n)

    def _next_due(self, now: float) -> float:
        st = self._st
        if st.open_since is not None:
            return st.open_since + self._s.batch_max_age - now
        return st.last_seal + self._s.heartbeat_s - now

    def _seal_if_due(self, now: float) -> None:
        st = self._st
        if st.closing and not (st.open or st.pending_lost or st.pending_windows):
            return
        if st.open_since is not None and now - st.open_since >= self._s.batch_max_age:
            self._seal(now)
        elif st.open_since is None and now - st.last_seal >= self._s.heartbeat_s:
            self._seal(now)  # heartbeat: an empty batch with zero losses

    def _make_batch(
        self, events: Sequence[TcpEvent], lost: dict[str, int], windows: Sequence[UnobservedWindow]
    ) -> OutgoingBatch:
        """Serialize events, loss deltas and unobserved windows as the next sequence (the caller
        queues and counts it)."""
        st = self._st
        batch = EventBatch(
            schema_version=SCHEMA_VERSION, node=self._s.node, agent_id=self._s.agent_id, sequence=st.next_seq
        )
        batch.events.extend(events)
        batch.lost.CopyFrom(split_losses(lost))
        batch.unobserved.extend(windows)
        sent_ns = int(self._wall() * 1e9)
        batch.sent_time.FromNanoseconds(sent_ns)
        if st.last_ack[0]:  # the collector bounds our clock offset with it (docs/kafka.md, "Clocks")
            batch.last_ack_sequence = st.last_ack[0]
            batch.last_ack_time.FromNanoseconds(st.last_ack[1])
        st.next_seq += 1
        if self._journal is not None:
            self._journal.sealed(batch.sequence, len(events), sent_ns, bool(windows))
        return OutgoingBatch(batch.sequence, batch.SerializeToString(), len(events), dict(lost), windows=list(windows))

    def _seal(self, now: float) -> None:
        st = self._st
        st.unsent.append(self._make_batch(st.open, st.pending_lost, st.pending_windows))
        st.pending_windows = []
        st.held_events += len(st.open)
        st.open = []
        st.open_since = None
        st.pending_lost = {}
        st.last_seal = now

    def _report_dropped(self, batches: Sequence[OutgoingBatch], reason: str) -> int:
        """Batches given up (already out of the buffer): count their events under `reason`, and send
        that loss and the batches' own loss reports with the next batch. Returns the events dropped."""
        st = self._st
        dropped = sum(b.events for b in batches)
        for b in batches:
            for r, n in b.lost.items():  # its loss report must still reach the stream
                st.pending_lost[r] = st.pending_lost.get(r, 0) + n
            st.pending_windows.extend(b.windows)  # and so must its unobserved windows
            if self._journal is not None:
                self._journal.settled(b.sequence, acked=False)
        if dropped:
            self._count_own(reason, dropped)
            st.pending_lost[reason] = st.pending_lost.get(reason, 0) + dropped
        if (st.pending_lost or st.pending_windows) and st.open_since is None:
            st.open_since = self._clock()
        return dropped

    def _evict(self) -> None:
        """Drop the oldest sealed batches until open + held events fit the bound; count exactly."""
        st = self._st
        evicted: list[OutgoingBatch] = []
        while len(st.open) + st.held_events > self._s.buffer_max_events:
            if st.inflight:
                _, b = st.inflight.popitem(last=False)
            elif st.unsent:
                b = st.unsent.popleft()
            else:
                break
            st.held_events -= b.events
            evicted.append(b)
        dropped = self._report_dropped(evicted, REASON_BUFFER_FULL)
        if dropped:
            log.warning("export buffer full (%d events): dropped the %d oldest", self._s.buffer_max_events, dropped)
