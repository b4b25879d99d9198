"""The readers' one Kafka read loop: tcpscope-tail (events, --summary, --connection) and tcpscope-sim's
topic watch read the events topic through `Reader`, and nothing else in them talks to kafka-python.

A `Reader` opens a consumer with the collector's security settings (tcpscope/kafka_client.py) and
positions it: at the end, at the beginning, or by time (--since, through the broker's offsets for
times); with a consumer group it subscribes instead. `Reader.records(stop)` then yields the decoded
records (tcpscope/kafka_layout.py: both record layouts) until the `Stop` says so, or until the
reader's `cancel` event is set from another thread.

Deduplication happens here and only here (`Dedup`), for every reader (the live view, --summary,
--connection, the sim's watch): with a dedup window, repeats that at-least-once delivery published
twice are dropped and counted (`Reader.repeats`); records under a seen key with other content
(CONFLICT) are kept, counted and handed to `on_conflict` first. Records of other producers (kind '')
pass through undeduplicated: each reader counts them its own way.

Where a partition ends is taken from two answers of the broker: its end offset (ListOffsets), and
the high watermark that every fetch response carries. Apache Kafka gives the same figure in both.
The broker that `make broker`, `make run` and the tests use (tansu) reports a partition's end offset
as the start of its last record batch + 1, not its last record + 1, while its fetch responses carry
the true high watermark: 1,000 records produced in one batch end at offset 1. So the loop never
trusts the end offset alone (docs/kafka.md, "Where a partition ends"):
- started at the end (live, no --from-beginning), it skips the records of each partition below the
  high watermark of that partition's first fetch: records that were there before it started, which
  the early end offset would replay (counted in `Reader.skipped_at_start`);
- reading "to the end" (`Stop.at_end`, `reached`), a partition is done only once its position has
  passed both its end offset and the high watermark of a fetch made since the read began (or, from
  a broker whose fetches carry none, once a poll brought nothing more).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tcpscope.kafka_client import KafkaSecurity
from tcpscope.kafka_layout import (
    CONFLICT,
    RECORD_EVENT,
    RECORD_SUMMARY,
    REPEAT,
    Decoded,
    RecentKeys,
    decode_records,
    dedup_key,
    fingerprint,
)

BOOTSTRAP_TIMEOUT_MS = 5000  # an unreachable broker is a one-line error within seconds, not a traceback after 30 s
TOPIC_WAIT_S = 3.0  # metadata may lag a just-created topic; a missing one is reported after this

TIME_SLACK_MS = 60_000
"""How far a record's Kafka timestamp (when the collector published it) may trail or lead the times
of the events in it: an agent batches for up to its batch age and retries for a while after a
collector outage, and node clocks differ. Offsets are looked up with this margin; the events' own
times decide (query.Query)."""


class ReadError(RuntimeError):
    """Reading cannot start (no such topic): a CLI prints one line and exits 2."""


class TimeIndex(Protocol):
    """What seeking by time uses of a consumer (tests pass a stand-in that answers as Apache Kafka)."""

    def offsets_for_times(self, timestamps: dict[Any, int], /) -> Mapping[Any, Any]: ...
    def end_offsets(self, partitions: list[Any], /) -> Mapping[Any, int]: ...
    def seek(self, partition: Any, offset: int, /) -> None: ...
    def seek_to_beginning(self, partition: Any, /) -> None: ...
    def seek_to_end(self, partition: Any, /) -> None: ...


class Consumer(TimeIndex, Protocol):
    """What the loop uses of kafka-python's KafkaConsumer."""

    def partitions_for_topic(self, topic: str, /) -> set[int] | None: ...
    def subscribe(self, topics: list[str], /) -> None: ...
    def assign(self, partitions: list[Any], /) -> None: ...
    def assignment(self) -> set[Any]: ...
    def seek_to_beginning(self, *partitions: Any) -> None: ...
    def seek_to_end(self, *partitions: Any) -> None: ...
    def position(self, partition: Any, /) -> int: ...
    def highwater(self, partition: Any, /) -> int | None: ...
    def poll(self, timeout_ms: int) -> Mapping[Any, list[Any]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Source:
    """Which topic to read, and where to start."""

    bootstrap: tuple[str, ...]
    topic: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    from_beginning: bool = False
    since_ns: int | None = None  # --since: from the records published since then (less TIME_SLACK_MS)
    group: str | None = None  # join this consumer group instead of assigning every partition
    topic_wait_s: float | None = TOPIC_WAIT_S  # a missing topic is an error after this; None: wait until cancelled


@dataclass(frozen=True)
class Stop:
    """When `Reader.records` ends: whichever comes first; none set, never (or when cancelled)."""

    duration_s: float | None = None  # seconds after `records` was called (--duration)
    at_end: bool = False
    """The end of every partition as it was when `records` was called (checked after each poll); with a
    group, as it was after the first poll that brought the group's assignment."""
    until_ns: int | None = None
    """--until (not with a group): in the future, when the wall clock passes it plus TIME_SLACK_MS;
    in the past, once every partition is read past the records that can hold events up to it."""


def kafka_consumer(kwargs: dict[str, Any]) -> Consumer:
    from kafka import KafkaConsumer

    c: Consumer = KafkaConsumer(**kwargs)
    return c


def _topic_partition(topic: str, partition: int) -> Any:
    from kafka import TopicPartition

    return TopicPartition(topic, partition)


class Dedup:
    """The readers' dedup policy over decoded records: the first copy of a record passes; a repeat
    (same dedup key, same content: a batch published twice) is dropped and counted; a record under
    a seen key with other content (two producers under one agent id) is kept, never dropped as a
    "duplicate" of another, counted and handed to `on_conflict`. Remembers the last `window` keys
    (kafka_layout.RecentKeys). Records of other producers always pass."""

    def __init__(self, window: int) -> None:
        self._recent = RecentKeys(window)
        self.repeats = 0  # records dropped as repeats
        self.conflicts = 0  # records kept under a seen dedup key with other content

    def keep(self, d: Decoded, on_conflict: Callable[[Decoded], None] | None = None) -> bool:
        """False for a repeat, which the reader drops."""
        if d.kind not in (RECORD_EVENT, RECORD_SUMMARY):
            return True
        seen = self._recent.see(dedup_key(d), fingerprint(d))
        if seen == REPEAT:
            self.repeats += 1
            return False
        if seen == CONFLICT:
            self.conflicts += 1
            if on_conflict is not None:
                on_conflict(d)
        return True


class Reader:
    """An open, positioned consumer of one topic (Source) and its read loop (`records`). Not
    thread-safe, as kafka-python's consumer is not: one thread reads; others may set `cancel`."""

    def __init__(
        self,
        source: Source,
        dedup_window: int = 0,
        cancel: threading.Event | None = None,
        connect: Callable[[dict[str, Any]], Consumer] = kafka_consumer,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.source = source
        self.cancel = cancel or threading.Event()
        self._dedup = Dedup(dedup_window) if dedup_window > 0 else None
        self._clock = clock
        self._wall_ns = wall_ns
        self.skipped_at_start = 0
        """Started at the end: records already in the topic then, past an early end offset (module doc)."""
        self._skip_below: dict[Any, int] | None = None  # started at the end: per partition, once known
        self._start_found = False
        self._consumer = connect(
            {
                "bootstrap_servers": list(source.bootstrap),
                "enable_auto_commit": source.group is not None,
                "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
                **source.security.client_kwargs(),
                **(
                    {
                        "group_id": source.group,
                        "auto_offset_reset": "earliest" if source.from_beginning else "latest",
                        "max_poll_interval_ms": 30_000,
                        "session_timeout_ms": 10_000,
                        "heartbeat_interval_ms": 2_000,
                    }
                    if source.group
                    else {}
                ),
            }
        )
        try:
            self._position()
        except BaseException:
            self._consumer.close()
            raise

    def _partitions(self) -> set[int]:
        """The topic's partitions, waiting for metadata (Source.topic_wait_s); ReadError if none. Empty
        when cancelled first."""
        s = self.source
        deadline = None if s.topic_wait_s is None else self._clock() + s.topic_wait_s
        parts = self._consumer.partitions_for_topic(s.topic)
        while not parts and not self.cancel.is_set() and (deadline is None or self._clock() < deadline):
            time.sleep(0.2)
            parts = self._consumer.partitions_for_topic(s.topic)
        if not parts and not self.cancel.is_set():
            raise ReadError(f"topic {s.topic!r} not found on {','.join(s.bootstrap)} (--topic)")
        return set(parts or ())

    def _position(self) -> None:
        s = self.source
        parts = self._partitions()  # a missing topic is an error with a group too, not a silent wait
        if not parts:
            return  # cancelled before the topic appeared: `records` yields nothing
        c = self._consumer
        if s.group:
            c.subscribe([s.topic])
            return
        tps = [_topic_partition(s.topic, p) for p in sorted(parts)]
        c.assign(tps)
        if s.since_ns is not None:
            seek_to_time(c, tps, s.since_ns)
        elif s.from_beginning:
            c.seek_to_beginning(*tps)
        else:
            c.seek_to_end(*tps)
            self._skip_below = {}
        for tp in tps:  # resolve positions now, so records produced after start-up are never skipped
            c.position(tp)

    @property
    def repeats(self) -> int:
        """Records dropped as repeats so far (with a dedup window)."""
        return self._dedup.repeats if self._dedup is not None else 0

    @property
    def conflicts(self) -> int:
        """Records kept under a seen dedup key with other content so far (with a dedup window)."""
        return self._dedup.conflicts if self._dedup is not None else 0

    def end_offsets(self) -> Mapping[Any, int]:
        """The end of every assigned partition now (for `reached`): the broker's end offset, or the
        high watermark of the last fetch where that is further (module doc)."""
        c = self._consumer
        ends = c.end_offsets(list(c.assignment()))
        return {tp: max(int(off), c.highwater(tp) or 0) for tp, off in ends.items()}

    def reached(self, offsets: Mapping[Any, int]) -> bool:
        """Every partition read up to `offsets` (from `end_offsets`, or stop_offsets)."""
        return all(self._consumer.position(tp) >= off for tp, off in offsets.items())

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _range(self, stop: Stop) -> tuple[float | None, Mapping[Any, int] | None, Mapping[Any, int] | None]:
        """(monotonic deadline, --until's stop offsets, the end offsets now) for one `records` call."""
        deadline = None if stop.duration_s is None else self._clock() + stop.duration_s
        until_offsets = None
        until = stop.until_ns
        if until is not None and not self.source.group:  # a group's partitions are not known up front
            ahead_s = (until - self._wall_ns()) / 1e9
            if ahead_s > 0:
                end = self._clock() + ahead_s + TIME_SLACK_MS / 1000
                deadline = end if deadline is None else min(deadline, end)
            else:
                tps = sorted(self._consumer.assignment(), key=lambda tp: tp.partition)
                until_offsets = stop_offsets(self._consumer, tps, until)
        # a group's partitions come with its first poll: its end is taken then (in _read)
        return deadline, until_offsets, self.end_offsets() if stop.at_end and self._consumer.assignment() else None

    def records(
        self,
        stop: Stop | None = None,
        poll_ms: int = 200,
        on_idle: Callable[[], None] | None = None,
        on_undecodable: Callable[[int, int, Exception], None] | None = None,
        on_conflict: Callable[[Decoded], None] | None = None,
    ) -> Iterator[Decoded]:
        """The decoded records from here on until `stop` (its deadline and end offsets are fixed
        now), each poll's records in partition order (Kafka orders only within a partition); a
        packed record yields each of its events in order. `on_idle` runs after every poll, records
        or not (for work due on a timer, in the reading thread). A record that does not decode goes
        to `on_undecodable(partition, offset, error)`; without one, the error is raised."""
        stop = stop or Stop()
        deadline, until_offsets, end_offsets = self._range(stop)
        return self._read(
            deadline, until_offsets, end_offsets, stop.at_end, poll_ms, on_idle, on_undecodable, on_conflict
        )

    def _read(
        self,
        deadline: float | None,
        until_offsets: Mapping[Any, int] | None,
        end_offsets: Mapping[Any, int] | None,
        at_end: bool,
        poll_ms: int,
        on_idle: Callable[[], None] | None,
        on_undecodable: Callable[[int, int, Exception], None] | None,
        on_conflict: Callable[[Decoded], None] | None,
    ) -> Iterator[Decoded]:
        clock = self._clock
        ends = _Ends(self._consumer, end_offsets)
        while not self.cancel.is_set() and (deadline is None or clock() < deadline):
            if until_offsets is not None and self.reached(until_offsets):
                return  # the range is read (checked first: an empty range is not polled at all)
            wait = poll_ms if deadline is None else max(1, min(poll_ms, int((deadline - clock()) * 1000)))
            polled = self._consumer.poll(timeout_ms=wait)
            self._learn_start()
            for tp, recs in polled.items():
                for r in self._not_before_start(tp, recs):
                    try:
                        decoded = decode_records(r.headers, r.value)
                    except Exception as e:
                        if on_undecodable is None:
                            raise
                        on_undecodable(r.partition, r.offset, e)
                        continue
                    for d in decoded:
                        if self._dedup is None or self._dedup.keep(d, on_conflict):
                            yield d
            if on_idle is not None:
                on_idle()
            if at_end and ends.offsets is None and self._consumer.assignment():
                ends = _Ends(self._consumer, self.end_offsets())  # a group's partitions, assigned by that poll
            elif ends.passed(not polled):
                return  # after a poll, so there is always one

    def start_found(self) -> bool:
        """Started at the end: every partition's true end is known and read past (records older
        than that are skipped, `skipped_at_start`). False otherwise, and until then."""
        skip = self._skip_below
        if skip is None or self._start_found:
            return self._start_found
        c = self._consumer
        self._start_found = all(tp in skip and c.position(tp) >= skip[tp] for tp in c.assignment())
        return self._start_found

    def _learn_start(self) -> None:
        """Started at the end: fix each partition's first known high watermark as where it starts."""
        if self._skip_below is None:
            return
        for tp in self._consumer.assignment():
            if tp not in self._skip_below:
                hw = self._consumer.highwater(tp)
                if hw is not None:
                    self._skip_below[tp] = hw

    def _not_before_start(self, tp: Any, recs: list[Any]) -> list[Any]:
        """recs without the records that were in the partition before this reader started at its end."""
        if self._skip_below is None:
            return recs
        below = self._skip_below.setdefault(tp, 0)  # records, yet no high watermark: no way to tell, keep
        keep = [r for r in recs if r.offset >= below] if recs and recs[0].offset < below else recs
        self.skipped_at_start += len(recs) - len(keep)
        return keep


class _Ends:
    """Where one read "to the end" stops: per partition, the end offset when the read began, raised
    to the high watermark of the first fetch seen since (module doc: some brokers report the end
    early). Without a high watermark, a poll that brings nothing settles it."""

    def __init__(self, consumer: Consumer, offsets: Mapping[Any, int] | None) -> None:
        self._c = consumer
        self.offsets = dict(offsets) if offsets is not None else None
        self._unconfirmed = set(self.offsets or ())

    def passed(self, idle: bool) -> bool:
        """Every partition read to its end (after a poll; idle: that poll brought no record)."""
        if self.offsets is None:
            return False
        for tp in list(self._unconfirmed):
            hw = self._c.highwater(tp)
            if hw is not None:
                self.offsets[tp] = max(self.offsets[tp], hw)
                self._unconfirmed.discard(tp)
        return all(
            self._c.position(tp) >= off and (idle or tp not in self._unconfirmed) for tp, off in self.offsets.items()
        )


def _time_offsets(c: TimeIndex, tps: list[Any], ms: int) -> dict[Any, int | None]:
    """The first offset at or after `ms` per partition, None where no record is that recent. A
    broker that answers without a timestamp (-1) did not look the time up: None too."""
    found = c.offsets_for_times(dict.fromkeys(tps, max(0, ms)))
    out: dict[Any, int | None] = {}
    for tp in tps:
        ot = found.get(tp)
        out[tp] = ot.offset if ot is not None and ot.timestamp is not None and ot.timestamp >= 0 else None
    return out


def seek_to_time(c: TimeIndex, tps: list[Any], since_ns: int) -> None:
    """Position every partition at the records published since `since_ns` (minus the slack); from
    the beginning where the broker cannot say, at the end where nothing is that recent."""
    offsets = _time_offsets(c, tps, since_ns // 1_000_000 - TIME_SLACK_MS)
    answered = c.offsets_for_times(dict.fromkeys(tps, 0))  # does the broker look times up at all?
    for tp in tps:
        off = offsets[tp]
        if off is not None:
            c.seek(tp, off)
        elif answered.get(tp) is not None and answered[tp].timestamp is not None and answered[tp].timestamp >= 0:
            c.seek_to_end(tp)  # the broker looks times up, and has nothing that recent
        else:
            c.seek_to_beginning(tp)


def stop_offsets(c: TimeIndex, tps: list[Any], until_ns: int) -> dict[Any, int]:
    """Per partition, the offset past which no record can hold events up to `until_ns`: the first
    record published after until + slack, else the end of the partition now."""
    ends = c.end_offsets(tps)
    after = _time_offsets(c, tps, until_ns // 1_000_000 + TIME_SLACK_MS)
    out: dict[Any, int] = {}
    for tp in tps:
        off = after[tp]
        out[tp] = int(ends[tp]) if off is None else off
    return out
