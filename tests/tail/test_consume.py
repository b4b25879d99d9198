"""tail/consume.py, the readers' one Kafka read loop, against a consumer stand-in: where it
starts, when it stops (end, deadline, --until, cancel), what it drops as a repeat and what it keeps.
The same loop against a real broker: test_tail*.py, test_summary.py, tests/sim/test_watch.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import TopicPartition

from tail import consume
from tcpscope.kafka_client import KafkaSecurity
from tcpscope.kafka_layout import LAYOUT_PACKED, RECORD_EVENT, RECORD_SUMMARY, Decoded, batch_records, decode_records
from tcpscope.v1.events_pb2 import EventBatch
from tests.support.events import make_event

TOPIC = "t"


@dataclass
class Rec:
    partition: int
    offset: int
    headers: list[tuple[str, bytes]]
    value: bytes | None


@dataclass
class FakeConsumer:
    """Partitions as lists of records; each poll returns up to `per_poll` records of each partition
    and advances the clock by the poll's timeout when it returns nothing."""

    logs: dict[int, list[Rec]]
    clock: list[float]
    per_poll: int = 2
    visible_after: int = 0  # partitions_for_topic answers None this many times first
    kwargs: dict[str, Any] = field(default_factory=dict)
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    closed: bool = False
    subscribed: bool = False  # a group: its first poll assigns every partition
    end_lag: int = 0  # the end offsets it reports trail the last record + 1 by this much (tansu's quirk)
    highwaters: dict[TopicPartition, int] = field(default_factory=dict)  # of the last poll ("fetch")

    def add(self, partition: int, headers: list[tuple[str, bytes]], value: bytes | None) -> None:
        log = self.logs.setdefault(partition, [])
        log.append(Rec(partition, len(log), headers, value))

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        if self.visible_after > 0:
            self.visible_after -= 1
            return None
        return set(self.logs) if topic == TOPIC else None

    def subscribe(self, topics: list[str]) -> None:
        self.calls.append(f"subscribe {topics}")
        self.subscribed = True

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.positions = dict.fromkeys(partitions, -1)

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.calls.append("beginning")
        for tp in tps:
            self.positions[tp] = 0

    def seek_to_end(self, *tps: TopicPartition) -> None:
        self.calls.append("end")
        for tp in tps:
            self.positions[tp] = self._end(tp)

    def _end(self, tp: TopicPartition) -> int:
        return max(0, len(self.logs[tp.partition]) - self.end_lag)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._end(tp) for tp in tps}

    def offsets_for_times(self, want: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
        return dict.fromkeys(want)  # a broker with no record that recent

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Rec]]:
        if self.subscribed and not self.positions:  # a group's first poll: the rebalance, no records
            self.positions = {TopicPartition(TOPIC, p): 0 for p in self.logs}  # earliest (no commits)
            self.clock[0] += timeout_ms / 1000
            return {}
        out: dict[TopicPartition, list[Rec]] = {}
        for tp, pos in self.positions.items():
            self.highwaters[tp] = len(self.logs[tp.partition])
            got = self.logs[tp.partition][pos : pos + self.per_poll]
            if got:
                out[tp] = got
                self.positions[tp] = pos + len(got)
        if not out:
            self.clock[0] += timeout_ms / 1000
        return out

    def close(self) -> None:
        self.closed = True


def _batch(agent: str, seq: int, first: int, n: int) -> EventBatch:
    return EventBatch(
        schema_version=1, node="n", agent_id=agent, sequence=seq, events=[make_event(first + i) for i in range(n)]
    )


def _publish(k: FakeConsumer, partition: int, batch: EventBatch, layout: str = "event") -> None:
    for r in batch_records(batch, layout=layout, partitions=1 if layout == LAYOUT_PACKED else 0):
        k.add(partition, r.headers, r.value)


def _reader(k: FakeConsumer, **kw: Any) -> consume.Reader:
    src = kw.pop("source", consume.Source(("k:9092",), TOPIC, from_beginning=True))

    def connect(kwargs: dict[str, Any]) -> FakeConsumer:
        k.kwargs = kwargs
        return k

    return consume.Reader(src, connect=connect, clock=lambda: k.clock[0], wall_ns=lambda: 10**18, **kw)


def _ids(ds: Iterator[Decoded] | list[Decoded]) -> list[tuple[str, str, int, int]]:
    return [(d.kind, d.agent_id, d.sequence, d.index) for d in ds]


def test_reads_both_layouts_to_the_end_as_it_was_and_drops_repeats() -> None:
    k = FakeConsumer({0: [], 1: []}, [0.0])
    _publish(k, 0, _batch("a", 1, 0, 2))
    _publish(k, 1, _batch("b", 1, 10, 3), LAYOUT_PACKED)
    _publish(k, 0, _batch("a", 1, 0, 2))  # resent whole (at least once): dropped, counted
    with _reader(k, dedup_window=100) as r:
        got = list(r.records(consume.Stop(at_end=True)))
    assert k.closed and k.calls == ["beginning"]
    assert sorted(_ids(got)) == sorted(
        [
            *((RECORD_EVENT, "a", 1, i) for i in range(2)),
            (RECORD_SUMMARY, "a", 1, -1),
            *((RECORD_EVENT, "b", 1, i) for i in range(3)),
            (RECORD_SUMMARY, "b", 1, -1),
        ]
    )
    assert (r.repeats, r.conflicts) == (3, 0)
    # within a partition, in order; the packed record yields its events one by one
    assert [d.index for d in got if d.agent_id == "b"] == [0, 1, 2, -1]


def test_conflicts_are_kept_and_reported_foreign_records_pass_and_bad_ones_are_handed_over() -> None:
    k = FakeConsumer({0: []}, [0.0])
    real, forged = _batch("a", 1, 0, 1), _batch("a", 1, 5, 1)
    _publish(k, 0, real)
    k.add(0, [("tcpscope-record", b"something-else")], b"x")  # another producer's record
    k.add(0, [("tcpscope-record", b"event")], b"\xff\xff")  # not a TcpEvent
    _publish(k, 0, forged)
    bad: list[tuple[int, int]] = []
    conflicts: list[Decoded] = []
    with _reader(k, dedup_window=100) as r:
        got = list(
            r.records(
                consume.Stop(at_end=True),
                on_undecodable=lambda p, off, e: bad.append((p, off)),
                on_conflict=conflicts.append,
            )
        )
    assert _ids(got) == [
        (RECORD_EVENT, "a", 1, 0),
        (RECORD_SUMMARY, "a", 1, -1),
        ("", "", 0, -1),
        (RECORD_EVENT, "a", 1, 0),  # other content under a seen key: kept, after on_conflict
    ]
    assert bad == [(0, 3)]
    assert _ids(conflicts) == [(RECORD_EVENT, "a", 1, 0)] and r.conflicts == 1 and r.repeats == 1
    with _reader(FakeConsumer({0: list(k.logs[0])}, [0.0])) as r2, pytest.raises(Exception, match="Error parsing"):
        list(r2.records(consume.Stop(at_end=True)))  # no on_undecodable: the error is raised


def test_the_end_is_where_it_was_when_the_read_began() -> None:
    k = FakeConsumer({0: []}, [0.0], per_poll=10)
    _publish(k, 0, _batch("a", 1, 0, 1))
    with _reader(k) as r:
        records = r.records(consume.Stop(at_end=True))
        first = next(records)
        _publish(k, 0, _batch("a", 2, 5, 1))  # after the first fetch: past the end
        assert _ids([first, *records]) == [(RECORD_EVENT, "a", 1, 0), (RECORD_SUMMARY, "a", 1, -1)]
    with _reader(FakeConsumer({0: []}, [0.0])) as r:  # an empty topic: one poll, then the end
        assert list(r.records(consume.Stop(at_end=True))) == []


def test_a_group_reads_to_the_end_its_first_poll_assigned() -> None:
    """A group learns its partitions in its first poll (which returns no records): the end is taken
    then, not before (an empty assignment would end the read after that one poll)."""
    k = FakeConsumer({0: [], 1: []}, [0.0])
    _publish(k, 0, _batch("a", 1, 0, 3))
    _publish(k, 1, _batch("b", 1, 10, 2))
    group = consume.Source(("k:9092",), TOPIC, from_beginning=True, group="g")
    with _reader(k, source=group) as r:
        got = _ids(r.records(consume.Stop(at_end=True)))
    assert sorted(got) == sorted(
        [(RECORD_EVENT, "a", 1, i) for i in range(3)]
        + [(RECORD_EVENT, "b", 1, i) for i in range(2)]
        + [(RECORD_SUMMARY, "a", 1, -1), (RECORD_SUMMARY, "b", 1, -1)]
    )


def test_no_dedup_window_hands_every_copy_over() -> None:
    k = FakeConsumer({0: []}, [0.0])
    for _ in range(2):
        _publish(k, 0, _batch("a", 1, 0, 1))
    with _reader(k) as r:
        assert len(list(r.records(consume.Stop(at_end=True)))) == 4 and r.repeats == 0


def _decoded(*batches: EventBatch) -> list[Decoded]:
    return [d for b in batches for r in batch_records(b) for d in decode_records(r.headers, r.value)]


def test_dedup_drops_repeats_keeps_and_reports_conflicts_with_exact_counts() -> None:
    """The one dedup policy of every reader (the live view, --summary, --connection, the sim's watch)."""
    real, forged, other = _batch("a", 1, 0, 3), _batch("a", 1, 50, 3), _batch("a", 2, 10, 2)
    forged.lost.kernel = 1  # its summary differs too: a conflict, not a repeat
    dedup = consume.Dedup(100)
    conflicts: list[Decoded] = []
    kept = [
        d
        for d in _decoded(real, real, forged, other, forged, real, other)
        + [Decoded("", "", 0, -1, None, None)] * 2  # another producer's records: always passed on
        if dedup.keep(d, conflicts.append)
    ]
    # real: 4 records kept; its resend: 4 repeats; forged: 4 conflicts (kept); other: 3 kept;
    # forged and real again, other again: 4 + 4 + 3 repeats (either version resent is a plain repeat)
    assert (len(kept), dedup.repeats, dedup.conflicts) == (4 + 4 + 3 + 2, 4 + 4 + 4 + 3, 4)
    assert _ids(conflicts) == [*((RECORD_EVENT, "a", 1, i) for i in range(3)), (RECORD_SUMMARY, "a", 1, -1)]
    assert [d.event.socket_id for d in kept if d.event is not None] == [1, 2, 3, 51, 52, 53, 11, 12]
    # a window of 2 keys forgets: the third record's key pushes the first out, whose copy is then new
    small = consume.Dedup(2)
    first = _decoded(_batch("b", 1, 0, 2))  # 2 events and a summary: 3 keys
    assert [small.keep(d) for d in [*first, first[0], first[2]]] == [True, True, True, True, False]
    assert (small.repeats, small.conflicts) == (1, 0)


def test_a_summary_read_counts_what_the_reader_dropped_and_kept() -> None:
    """tail --summary's figures come from the reader's dedup: duplicates = its repeats, conflicts =
    what its on_conflict handed over; the report itself counts every record it is given."""
    from tail.summary import Report, Summarizer, SummaryOptions

    k = FakeConsumer({0: []}, [0.0])
    real, forged = _batch("a", 1, 0, 2), _batch("a", 1, 50, 2)
    for b in (real, real, forged, forged):
        _publish(k, 0, b)
    report = Report(Summarizer())
    with _reader(k, dedup_window=100) as r:
        for d in r.records(consume.Stop(at_end=True), on_conflict=report.conflicts.add):
            report.take(d)
    report.duplicates = r.repeats
    doc = json.loads(report.render("json", SummaryOptions()))
    # real 3 records, its resend 3 repeats, forged: 2 events in conflict (kept), its summary (same
    # header, no losses) a repeat; forged again: 3 repeats
    assert (doc["events"], doc["batches"], doc["duplicates"], doc["conflicts"]) == (4, 1, 7, 2)
    assert (r.repeats, r.conflicts) == (7, 2)
    alone = Report(Summarizer())
    for d in _decoded(real, real):
        alone.take(d)  # no reader: nothing dropped (the report does not deduplicate on its own)
    assert (alone.events, alone.batches, alone.duplicates) == (4, 2, 0)


def test_duration_from_the_call_and_idle_after_every_poll() -> None:
    k = FakeConsumer({0: []}, [100.0])
    idle: list[float] = []
    with _reader(k, source=consume.Source(("k:9092",), TOPIC)) as r:
        assert k.calls == ["end"]  # neither --from-beginning nor --since: only what comes next
        k.clock[0] = 200.0  # the duration counts from the call
        records = r.records(consume.Stop(duration_s=1.0), poll_ms=375, on_idle=lambda: idle.append(k.clock[0]))
        assert list(records) == []
    # polls of 375, 375 and the 250 ms left: never past the deadline
    assert idle == [200.375, 200.75, 201.0]


def test_until_in_the_past_stops_at_the_stop_offsets_and_in_the_future_after_the_slack() -> None:
    k = FakeConsumer({0: [], 1: []}, [0.0])
    _publish(k, 0, _batch("a", 1, 0, 2))
    with _reader(k) as r:  # the stand-in has no record that recent: stop at the end now
        assert len(list(r.records(consume.Stop(until_ns=10**18 - 1)))) == 3
    k = FakeConsumer({0: []}, [0.0])
    with _reader(k) as r:
        list(r.records(consume.Stop(until_ns=10**18 + 5 * 10**9), poll_ms=1000))
    assert k.clock[0] == 5 + consume.TIME_SLACK_MS / 1000
    # with a group, partitions are not known up front: --until does not end the read (--duration does)
    k = FakeConsumer({0: []}, [0.0])
    group = consume.Source(("k:9092",), TOPIC, group="g")
    with _reader(k, source=group) as r:
        list(r.records(consume.Stop(duration_s=2.0, until_ns=10**18 - 1), poll_ms=250))
    assert k.clock[0] == 2.0


def test_settings_security_and_group() -> None:
    k = FakeConsumer({0: []}, [0.0])
    sec = KafkaSecurity("SSL", ssl_cafile="/ca.crt")
    _reader(k, source=consume.Source(("a:1", "b:2"), TOPIC, sec)).close()
    assert k.kwargs == {
        "bootstrap_servers": ["a:1", "b:2"],
        "enable_auto_commit": False,
        "bootstrap_timeout_ms": consume.BOOTSTRAP_TIMEOUT_MS,
        "security_protocol": "SSL",
        "ssl_cafile": "/ca.crt",
    }
    k = FakeConsumer({0: []}, [0.0])
    _reader(k, source=consume.Source(("a:1",), TOPIC, from_beginning=True, group="g")).close()
    assert k.calls == [f"subscribe {[TOPIC]}"]
    assert k.kwargs["group_id"] == "g" and k.kwargs["enable_auto_commit"] is True
    assert k.kwargs["auto_offset_reset"] == "earliest"


def test_a_missing_topic_is_an_error_after_the_wait_or_waited_for_until_cancelled() -> None:
    k = FakeConsumer({}, [0.0])
    with pytest.raises(consume.ReadError, match="topic 't' not found on k:9092"):
        _reader(k, source=consume.Source(("k:9092",), TOPIC, topic_wait_s=0.0))
    assert k.closed
    k = FakeConsumer({0: []}, [0.0], visible_after=2)  # appears on the third look
    _publish(k, 0, _batch("a", 1, 0, 1))
    forever = consume.Source(("k:9092",), TOPIC, from_beginning=True, topic_wait_s=None)
    with _reader(k, source=forever) as r:
        assert len(list(r.records(consume.Stop(at_end=True)))) == 2
    cancel = threading.Event()
    cancel.set()
    with _reader(FakeConsumer({}, [0.0]), source=forever, cancel=cancel) as r:
        assert list(r.records()) == []  # cancelled before the topic appeared: nothing, no error


def test_cancel_from_another_thread_ends_a_read_without_a_stop() -> None:
    k = FakeConsumer({0: []}, [0.0])
    cancel = threading.Event()
    polls = 0

    def idle() -> None:
        nonlocal polls
        polls += 1
        if polls == 3:
            threading.Thread(target=cancel.set).start()
            while not cancel.is_set():
                pass

    with _reader(k, cancel=cancel) as r:
        assert list(r.records(on_idle=idle)) == []
    assert polls == 3


def test_an_early_end_offset_neither_stops_a_read_short_nor_replays_old_records_live() -> None:
    """tansu reports a partition's end as its last record batch's start + 1 while its fetches carry
    the true high watermark (tail/consume.py): 12 records, one batch, reported end 1."""
    k = FakeConsumer({0: []}, [0.0], per_poll=5, end_lag=11)
    _publish(k, 0, _batch("a", 1, 0, 11))  # 11 events and the batch's summary: 12 records
    with _reader(k) as r:  # to the end: past the early end offset, to the high watermark
        assert len(list(r.records(consume.Stop(at_end=True)))) == 12
    k = FakeConsumer({0: list(k.logs[0])}, [0.0], per_poll=5, end_lag=11)
    with _reader(k, source=consume.Source(("k:9092",), TOPIC)) as r:  # live: from the end
        assert k.position(TopicPartition(TOPIC, 0)) == 1  # where the early end offset puts it
        polls = 0

        def more() -> None:
            nonlocal polls
            polls += 1
            if polls == 2:  # after the first fetch found the true end: a new batch, shown
                _publish(k, 0, _batch("a", 2, 20, 2))

        records = r.records(consume.Stop(duration_s=1.0), poll_ms=100, on_idle=more)
        assert _ids(records) == [(RECORD_EVENT, "a", 2, 0), (RECORD_EVENT, "a", 2, 1), (RECORD_SUMMARY, "a", 2, -1)]
        assert r.skipped_at_start == 11 and r.start_found()  # offsets 1..11: there before it started
