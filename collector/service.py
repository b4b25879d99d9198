"""The Collector.Stream service: the stream loop, the record-size policy and publishing, with an ack
only after Kafka acked. Who may send is collector/auth.py; what is accepted, collector/validation.py.

Ack policy: a batch is acknowledged to its agent only when Kafka has acknowledged every record of
it. At most `max_inflight_batches` batches (all streams together) await Kafka; beyond that the
streams are not read, so gRPC flow control pushes back to the agents, which buffer. A Kafka failure
ends the stream with UNAVAILABLE: the agent reconnects and resends everything not yet acked.

Each batch is prepared off the event loop on one worker thread: remote-end enrichment when
`--resolve-remote` (collector/remote_ends.py), then its Kafka records in the configured layout.

The handler is registered with no request deserializer, so it sees raw bytes: malformed and
oversized messages are answered with a precise status and counted instead of failing inside gRPC.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from collector.auth import Authenticator
from collector.clocks import ClockEstimator, Offset
from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.node_binding import TokenReviewer
from collector.pair_metrics import BatchObserver
from collector.publisher import Publisher
from collector.remote_ends import BatchEnricher
from collector.validation import Refusal, clamp_batch_times, drop_invalid_events, validate, window
from tcpscope.kafka_layout import LAYOUT_PACKED, Record, batch_records
from tcpscope.ratelimit import Throttle, held_note
from tcpscope.refusal import MD_REASON, MD_SEQUENCE
from tcpscope.v1.collector_pb2 import BatchAck
from tcpscope.v1.events_pb2 import EventBatch

log = logging.getLogger(__name__)

SERVICE_NAME = "tcpscope.v1.Collector"


_SHUTTING_DOWN = Refusal(
    grpc.StatusCode.UNAVAILABLE, "shutting_down", "collector shutting down: reconnect and resend what was not acked"
)


@dataclass
class _StreamEnd:
    """How one stream ended (agent_closed: the agent half-closed; refused; broken: anything else),
    the last batch read on it (node, agent id, sequence), and its agents' clocks (agent id -> node
    and estimator: the offset gauge of each is removed when the stream ends)."""

    how: str = "broken"
    last: tuple[str, str, int] | None = None
    clocks: dict[str, ClockEstimator] = field(default_factory=dict)
    agents: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class _Stream:
    """An open Collector.Stream call, as drain() sees it."""

    out: asyncio.Queue[BatchAck | Refusal | None]
    reader: asyncio.Task[None]
    publishing: set[asyncio.Task[None]]
    closer: asyncio.Task[None] | None = None


# a Kafka record's size beyond its key, value and headers (record and batch framing), counted
# against the topic's max.message.bytes so a record that fits here also fits the broker
RECORD_OVERHEAD = 128
REASON_RECORD_TOO_LARGE = "collector.record_too_large"


def record_size(r: Record) -> int:
    """Uncompressed bytes of one record as the broker's limit sees it (compression can only shrink
    it, so a record refused here might have fit: the check errs on the side of never being stuck)."""
    return len(r.key or b"") + len(r.value) + sum(len(k) + len(v) for k, v in r.headers) + RECORD_OVERHEAD


def error_text(e: BaseException) -> str:
    """'Type: message', without the type twice (kafka-python's messages often start with it)."""
    text, name = str(e), type(e).__name__
    return text if text.startswith(name) else f"{name}: {text}"


class CollectorService:
    """One instance per process; every stream shares the in-flight bound and the publisher."""

    def __init__(
        self,
        cfg: CollectorConfig,
        publisher: Publisher,
        metrics: CollectorMetrics,
        token: str | None,
        enricher: BatchEnricher | None = None,
        observer: BatchObserver | None = None,
        reviewer: TokenReviewer | None = None,
        on_publish: Callable[[bool], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._observer = observer
        self._on_publish = on_publish  # health: told every publish outcome
        # the largest record the topic takes (server.py learns it from the topic or --kafka-max-record-bytes)
        self.max_record_bytes = cfg.kafka_max_record_bytes or 1048588
        self._publish_log = Throttle(30.0)
        self._refuse_log = Throttle(30.0)
        self._invalid_log = Throttle(30.0)
        self._clock_log = Throttle(60.0)
        self._publisher = publisher
        self._metrics = metrics
        self._auth = Authenticator(token, bool(cfg.tls_client_ca), reviewer)
        self._enricher = enricher
        self._slots = asyncio.Semaphore(cfg.max_inflight_batches)
        # one thread: enrichment state is single-threaded and batches are prepared in arrival order
        self._prepare_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prepare")
        self._draining = False
        self._streams: set[_Stream] = set()

    def close(self) -> None:
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)

    async def drain(self, timeout_s: float) -> int:
        """Shutdown, before the server stops: refuse new streams, stop reading batches on open ones,
        let the batches already read reach Kafka and be acked, then end each stream with UNAVAILABLE
        so its agent reconnects (to another replica) and resends what was never read. Returns the
        streams still open after timeout_s (the server's stop() cancels those)."""
        self._draining = True
        for s in list(self._streams):
            s.reader.cancel()  # what it has not read stays unacked at the agent: resent, not lost

            async def finish(s: _Stream = s) -> None:
                await asyncio.gather(*list(s.publishing), return_exceptions=True)
                await s.out.put(_SHUTTING_DOWN)  # after its read batches are acked

            s.closer = asyncio.create_task(finish())
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._streams and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        return len(self._streams)

    def prepare(self, batch: EventBatch, dropped: dict[str, int]) -> list[Record] | Refusal:
        """Leave out the events outside the bounds (collector/validation.py), enrich remote ends (if
        on) and build the batch's Kafka records; runs on the prepare thread. What it leaves out is
        added to `dropped` by reason (counted in the batch's loss report, and told to the agent).

        A record above the topic's limit would be refused by Kafka (not retriable), and the agent
        would resend its batch forever: it is never sent. A packed record of several events refuses
        the batch as oversized (the agent splits it, tcpscope/refusal.py); an event alone too big is
        left out and counted in the batch's own loss report (collector.record_too_large)."""
        invalid = drop_invalid_events(batch, window(self._cfg, time.time()))
        if invalid:
            dropped.update(invalid)
            for reason, n in invalid.items():
                self._metrics.dropped.labels(reason).inc(n)
            if (held := self._invalid_log.ready()) is not None:
                log.warning(
                    "batch %s/%d: events outside the bounds left out, counted in its loss report: %s%s",
                    batch.agent_id[:128],
                    batch.sequence,
                    dict(sorted(invalid.items())),
                    held_note(held),
                )
        if self._enricher is not None:
            self._enricher.enrich(batch)
        layout = self._cfg.record_layout
        # per-event records also get their partition, so the publisher watches one future per partition
        partitions = self._publisher.partitions()
        if layout == LAYOUT_PACKED and partitions < 1:
            raise RuntimeError(f"topic {self._cfg.topic!r} has no known partitions")
        records = batch_records(batch, self._cfg.value_format, layout, partitions)
        limit = self.max_record_bytes
        if all(record_size(r) <= limit for r in records):
            return records
        if layout == LAYOUT_PACKED:
            if len(batch.events) > 1:
                biggest = max(record_size(r) for r in records)
                return Refusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "oversized",
                    f"a Kafka record of {biggest} bytes for this batch exceeds the topic's limit of {limit} bytes",
                    batch.sequence,
                )
            too_big = list(range(len(batch.events)))
        else:  # one record per event, in event order, the summary last
            too_big = [i for i, r in enumerate(records[: len(batch.events)]) if record_size(r) > limit]
        keep = [ev for i, ev in enumerate(batch.events) if i not in set(too_big)]
        del batch.events[:]
        batch.events.extend(keep)
        n = len(too_big)
        dropped[REASON_RECORD_TOO_LARGE] = dropped.get(REASON_RECORD_TOO_LARGE, 0) + n
        batch.lost.by_reason[REASON_RECORD_TOO_LARGE] += n
        batch.lost.kernel += n  # the bucket of reasons outside agent/enrichment (agent/export: split_losses)
        self._metrics.dropped.labels(REASON_RECORD_TOO_LARGE).inc(n)
        log.error(
            "batch %s/%d: %d events whose Kafka record exceeds the topic's limit of %d bytes left out, counted as %s",
            batch.agent_id,
            batch.sequence,
            n,
            limit,
            REASON_RECORD_TOO_LARGE,
        )
        return batch_records(batch, self._cfg.value_format, layout, partitions)

    def _observe(self, batch: EventBatch) -> None:
        """Count a published batch in the traffic metrics (collector/pair_metrics.py); never fails the batch."""
        assert self._observer is not None
        try:
            self._observer.observe(batch)
        except Exception:
            log.exception("traffic metrics: batch %s/%d not counted", batch.agent_id, batch.sequence)

    async def _refuse(self, context: grpc.aio.ServicerContext[bytes, BatchAck], r: Refusal) -> None:
        self._metrics.rejected.labels(r.reason).inc()
        held = self._refuse_log.ready(r.reason)  # per reason: a flood of bad tokens is not a flood of lines
        if held is not None:
            log.warning("refusing stream from %s: %s (%s)%s", context.peer(), r.details, r.code.name, held_note(held))
        trailing: tuple[tuple[str, str], ...] = ()
        if r.sequence:
            trailing = ((MD_SEQUENCE, str(r.sequence)), (MD_REASON, r.reason))
        await context.abort(r.code, r.details, trailing_metadata=trailing)

    async def stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, BatchAck]) -> None:
        """Collector.Stream: read batches, publish each, write its ack once Kafka acked it."""
        metadata = list(context.invocation_metadata() or ())
        refusal = self._auth.check_token(metadata)
        if refusal:
            await self._refuse(context, refusal)
            return
        if self._draining:
            await self._refuse(context, _SHUTTING_DOWN)
            return
        peer_names = await self._auth.nodes(context, metadata)
        if isinstance(peer_names, Refusal):
            await self._refuse(context, peer_names)
            return
        out: asyncio.Queue[BatchAck | Refusal | None] = asyncio.Queue()  # None: the reader is done
        publishing: set[asyncio.Task[None]] = set()
        end = _StreamEnd()

        async def read() -> None:
            try:
                async for raw in requests:
                    received = time.monotonic()
                    received_ns = time.time_ns()
                    checked = validate(raw, self._cfg, peer_names)
                    if isinstance(checked, Refusal):
                        end.how = "refused"
                        await out.put(checked)
                        return
                    end.last = (checked.node, checked.agent_id, checked.sequence)
                    self._note(checked, received_ns, end)
                    self._count_received(checked)
                    await self._slots.acquire()  # backpressure: stop reading at the in-flight bound
                    self._metrics.inflight.inc()
                    task = asyncio.create_task(self._publish(checked, received, out))
                    publishing.add(task)
                    task.add_done_callback(publishing.discard)
                # grpc.aio ends the request iterator the same way when the client half-closes and when
                # its call is cancelled or its connection drops; the cancellation reaches this task
                # just after. Wait for it briefly before calling the end clean (best effort).
                await asyncio.sleep(0.1)
                end.how = "agent_closed"  # the agent half-closed: a clean end
                if publishing:  # finish what is in flight, then end
                    await asyncio.gather(*publishing, return_exceptions=True)
            finally:
                if not self._draining:  # when draining, drain() ends the stream after its acks
                    await out.put(None)

        self._metrics.streams_active.inc()
        reader = asyncio.create_task(read())
        me = _Stream(out, reader, publishing)
        self._streams.add(me)
        try:
            while (item := await out.get()) is not None:
                if isinstance(item, Refusal):
                    end.how = "refused"
                    await self._refuse(context, item)
                    return
                clock = end.clocks.get(item.agent_id)
                if clock is not None:  # the agent echoes when this ack arrived: an upper bound of its offset
                    clock.ack_sent(item.sequence, time.time_ns())
                await context.write(item)
        finally:
            self._streams.discard(me)
            self._metrics.streams_active.dec()
            self._stream_ended(end)
            for agent_id, node in end.agents.items():
                with contextlib.suppress(KeyError):
                    self._metrics.clock_offset.remove(node, agent_id)
            reader.cancel()
            for t in list(publishing):
                t.cancel()

    def _stream_ended(self, end: _StreamEnd) -> None:
        """Count how a stream ended; an agent that vanished mid-stream (killed, node gone) is named, so
        an unclean end is seen here even if no agent ever comes back to report its window."""
        how = "draining" if self._draining and end.how == "broken" else end.how
        self._metrics.streams_ended.labels(how).inc()
        if how == "broken" and end.last is not None:
            node, agent_id, seq = end.last
            log.warning(
                "stream of agent %s (node %s) ended without closing after batch %d: the agent "
                "stopped without draining, or its connection broke",
                agent_id,
                node,
                seq,
            )

    def _note(self, batch: EventBatch, received_ns: int, end: _StreamEnd) -> None:
        """On arrival, on the event loop: clear the batch's own times outside the accepted window,
        measure its agent's clock (collector/clocks.py), and write both into the note the summary
        record carries (EventBatch.collector)."""
        clamped = clamp_batch_times(batch, window(self._cfg, received_ns / 1e9))
        for name, n in clamped.items():
            self._metrics.clamped.labels(name).inc(n)
        clock = end.clocks.get(batch.agent_id)
        if clock is None:
            if len(end.clocks) >= 16:  # one agent per stream; a client cycling ids is not given memory
                end.clocks.clear()
            clock = end.clocks[batch.agent_id] = ClockEstimator()
        offset = clock.observe(batch, received_ns)
        note = batch.collector
        note.Clear()
        note.received_time.FromNanoseconds(received_ns)
        for name, n in clamped.items():
            note.clamped[name] = n
        if offset is not None:
            note.clock_offset_ns = offset.offset_ns
            note.clock_offset_error_ns = offset.error_ns
            note.clock_offset_bounded = offset.bounded
            self._clock_measured(batch, offset, end)

    def _clock_measured(self, batch: EventBatch, offset: Offset, end: _StreamEnd) -> None:
        end.agents[batch.agent_id] = batch.node
        self._metrics.clock_offset.labels(batch.node, batch.agent_id).set(offset.offset_ns / 1e9)
        off_s, err_s = abs(offset.offset_ns) / 1e9, offset.error_ns / 1e9
        if offset.bounded and off_s - err_s > self._cfg.clock_offset_warn:
            held = self._clock_log.ready(batch.agent_id)
            if held is not None:
                log.warning(
                    "agent %s (node %s): its clock is %+.3f s (+-%.3f) off this collector's; readers correct "
                    "event times by it (docs/kafka.md, Clocks)%s",
                    batch.agent_id,
                    batch.node,
                    offset.offset_ns / 1e9,
                    err_s,
                    held_note(held),
                )

    def _count_received(self, batch: EventBatch) -> None:
        m = self._metrics
        m.batches_received.inc()
        m.events_received.inc(len(batch.events))
        for reason, n in batch.lost.by_reason.items():
            if n:
                m.lost_reported.labels(reason).inc(n)
        if batch.HasField("sent_time"):
            m.batch_lag_seconds.observe(max(0.0, time.time() - batch.sent_time.ToNanoseconds() / 1e9))

    async def _publish(self, batch: EventBatch, received: float, out: asyncio.Queue[BatchAck | Refusal | None]) -> None:
        try:
            loop = asyncio.get_running_loop()
            dropped: dict[str, int] = {}
            records = await loop.run_in_executor(self._prepare_pool, self.prepare, batch, dropped)
            if isinstance(records, Refusal):
                await out.put(records)
                return
            await self._publisher.publish(records)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._metrics.kafka_errors.labels(type(e).__name__).inc()
            if self._on_publish is not None:
                self._on_publish(False)
            held = self._publish_log.ready()
            if held is not None:  # one line per 30 s while Kafka is down, not one per batch
                log.warning(
                    "Kafka publish of batch %s/%d failed: %s%s",
                    batch.agent_id,
                    batch.sequence,
                    error_text(e),
                    held_note(held),
                )
            await out.put(Refusal(grpc.StatusCode.UNAVAILABLE, "kafka_error", f"Kafka publish failed: {error_text(e)}"))
        else:
            if self._on_publish is not None:
                self._on_publish(True)
            self._publish_log.reset()
            self._metrics.records_published.inc(len(records))
            self._metrics.batches_acked.inc()
            self._metrics.publish_seconds.observe(time.monotonic() - received)
            if self._observer is not None:  # traffic metrics: on the prepare thread, not delaying the ack
                with contextlib.suppress(RuntimeError):  # the pool is shut down: the process is stopping
                    self._prepare_pool.submit(self._observe, batch)
            await out.put(
                BatchAck(
                    agent_id=batch.agent_id,
                    sequence=batch.sequence,
                    dropped=dropped,
                    clamped=dict(batch.collector.clamped),
                )
            )
        finally:
            self._slots.release()
            self._metrics.inflight.dec()
