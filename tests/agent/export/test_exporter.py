"""The exporter's policy with a fake transport and a fake clock: batching, loss deltas, resend, drops."""

from __future__ import annotations

from agent.export.exporter import BatchSource, Exporter, ExporterSettings, OutgoingBatch, split_losses
from tcpscope.v1.events_pb2 import EventBatch
from tests.support.events import make_event


class FakeTransport:
    def __init__(self) -> None:
        self.source: BatchSource | None = None

    def start(self, source: BatchSource) -> None:
        self.source = source

    def stop(self, timeout_s: float) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _make(batch: int = 3, buffer: int = 9, age: float = 1.0) -> tuple[Exporter, Clock]:
    clock = Clock()
    exp = Exporter(
        ExporterSettings("n1", "a1", batch, age, buffer, heartbeat_s=5.0),
        FakeTransport(),
        clock=clock,
        wall=lambda: 1_700_000_000.0,
    )
    return exp, clock


def _take(exp: Exporter, gen: int) -> list[OutgoingBatch]:
    out = []
    while (b := exp.next_batch(0, gen)) is not None:
        out.append(b)
    return out


def test_batches_on_size_then_age_and_losses_are_deltas() -> None:
    exp, clock = _make()
    exp.emit([make_event(i) for i in range(7)], {"kernel.ringbuf_full": 2})
    gen = exp.begin_stream()
    first = _take(exp, gen)
    assert [b.events for b in first] == [3, 3]  # size-sealed; 1 event still open
    clock.t += 1.0
    exp.emit([], {"kernel.ringbuf_full": 5, "enrich.pending_overflow": 1})
    (last,) = _take(exp, gen)
    batches = [EventBatch.FromString(b.data) for b in [*first, last]]
    assert [b.sequence for b in batches] == [1, 2, 3]
    assert [len(b.events) for b in batches] == [3, 3, 1]
    assert [e.socket_id for b in batches for e in b.events] == list(range(1, 8))
    assert dict(batches[0].lost.by_reason) == {"kernel.ringbuf_full": 2}
    assert dict(batches[1].lost.by_reason) == {}
    assert dict(batches[2].lost.by_reason) == {"kernel.ringbuf_full": 3, "enrich.pending_overflow": 1}
    assert (batches[2].lost.kernel, batches[2].lost.enrichment) == (3, 1)


def test_reset_resends_unacked_in_order_and_stale_stream_gets_nothing() -> None:
    exp, _ = _make()
    exp.emit([make_event(i) for i in range(9)], {})
    g1 = exp.begin_stream()
    a, b = exp.next_batch(0, g1), exp.next_batch(0, g1)
    assert a is not None and b is not None
    exp.on_ack("a1", a.sequence)
    exp.on_stream_reset()
    assert exp.next_batch(0, g1) is None  # the old stream may not take batches any more
    g2 = exp.begin_stream()
    assert [x.sequence for x in _take(exp, g2)] == [2, 3]
    assert exp.metrics.value("tcpscope_agent_batches_resent_total") == 1


def test_overflow_drops_oldest_batches_and_reports_them() -> None:
    exp, clock = _make(batch=3, buffer=9)
    exp.emit([make_event(i) for i in range(14)], {"kernel.x": 1})  # 4 sealed + 2 open > 9
    assert exp.losses() == {"agent.buffer_full": 6}
    clock.t += 1.0
    exp.emit([], {"kernel.x": 1})
    batches = [EventBatch.FromString(b.data) for b in _take(exp, exp.begin_stream())]
    assert [b.sequence for b in batches] == [3, 4, 5]
    assert [e.socket_id for b in batches for e in b.events] == list(range(7, 15))
    # batch 1 carried kernel.x=1 and was dropped: its report moves to the next batch sealed
    assert dict(batches[-1].lost.by_reason) == {"agent.buffer_full": 6, "kernel.x": 1}
    assert batches[-1].lost.agent_buffer == 6


def test_heartbeat_and_shutdown_accounting() -> None:
    exp, clock = _make()
    exp.emit([], {})
    clock.t += 5.0
    gen = exp.begin_stream()
    (hb,) = _take(exp, gen)
    assert hb.events == 0 and EventBatch.FromString(hb.data).lost.ByteSize() == 0
    exp.emit([make_event(1), make_event(2)], {})
    exp.close(0)
    assert exp.losses() == {"agent.shutdown_unsent": 2}
    assert exp.metrics.value("tcpscope_agent_dropped_events_total", reason="shutdown_unsent") == 2


def test_batch_refused_as_too_big_is_split_under_new_ids_and_the_cap_follows() -> None:
    exp, clock = _make(batch=6, buffer=100)
    exp.emit([make_event(i) for i in range(12)], {"kernel.x": 2})  # batches 1 and 2, 6 events each
    g1 = exp.begin_stream()
    b1, _ = _take(exp, g1)
    exp.on_refused(b1.sequence, "too_many_events", "6 events exceed --max-batch-events 4")
    exp.on_stream_reset()
    g2 = exp.begin_stream()
    resent = [EventBatch.FromString(b.data) for b in _take(exp, g2)]
    # batch 2 was sent after the refused one: it goes again first, then the halves of batch 1
    assert [(b.sequence, len(b.events)) for b in resent] == [(2, 6), (3, 3), (4, 3)]
    assert [e.socket_id for b in resent[1:] for e in b.events] == [1, 2, 3, 4, 5, 6]
    # batch 1's loss report goes with its first half, once
    assert dict(resent[1].lost.by_reason) == {"kernel.x": 2} and resent[2].lost.ByteSize() == 0
    # new batches obey the lowered cap
    exp.emit([make_event(i) for i in range(100, 107)], {"kernel.x": 2})
    clock.t += 1.0
    exp.emit([], {"kernel.x": 2})
    assert [b.events for b in _take(exp, g2)] == [3, 3, 1]
    assert exp.losses() == {}
    assert exp.metrics.value("tcpscope_agent_batches_refused_total", reason="too_many_events") == 1
    assert exp.metrics.value("tcpscope_agent_buffer_events") == 19


def test_single_event_refused_is_dropped_counted_and_reported() -> None:
    exp, clock = _make(batch=2, buffer=100)
    exp.emit([make_event(1)], {"kernel.x": 1})
    clock.t += 1.0
    exp.emit([], {})
    g = exp.begin_stream()
    (b1,) = _take(exp, g)
    exp.on_refused(b1.sequence, "oversized", "batch of 5000 bytes exceeds --max-message-bytes 4000")
    exp.on_refused(99, "oversized", "not held: ignored")
    exp.on_stream_reset()
    assert exp.losses() == {"agent.collector_refused": 1}
    assert exp.metrics.value("tcpscope_agent_dropped_events_total", reason="collector_refused") == 1
    clock.t += 1.0
    exp.emit([make_event(2)], {"kernel.x": 1})
    clock.t += 1.0
    exp.emit([], {})
    (b2,) = [EventBatch.FromString(b.data) for b in _take(exp, exp.begin_stream())]
    assert [e.socket_id for e in b2.events] == [3]  # make_event(2)
    # the dropped batch's own report (kernel.x=1) and its loss travel in the next batch
    assert dict(b2.lost.by_reason) == {"kernel.x": 1, "agent.collector_refused": 1}
    assert b2.lost.agent_buffer == 1 and b2.lost.kernel == 1


def test_split_losses() -> None:
    lost = split_losses({"kernel.a": 1, "enrich.b": 2, "agent.buffer_full": 3, "other": 4, "zero": 0})
    assert (lost.kernel, lost.enrichment, lost.agent_buffer) == (5, 2, 3)
    assert "zero" not in lost.by_reason
    # a possible loss is kept apart from the definite buckets, and still named by reason
    lost = split_losses({"kernel.ringbuf_full": 2, "kernel.recursion_misses": 7})
    assert (lost.kernel, lost.kernel_skipped_runs) == (2, 7)
    assert dict(lost.by_reason) == {"kernel.ringbuf_full": 2, "kernel.recursion_misses": 7}
