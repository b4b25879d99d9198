"""No record stops a reader: decodable records outside the bounds (docs/kafka.md, "Bounds"), as an old
collector or any producer on the topic could write them, are skipped, counted and named by every
reader: tcpscope-tail live (table and JSON), --since, --summary (table and JSON), --connection, and
the simulator's topic watch. Real broker, real tcpscope-tail processes, exact counts."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tcpscope.kafka_layout import H_RECORD, RECORD_EVENT, batch_records
from tcpscope.v1.events_pb2 import EventBatch, TcpEvent, UnobservedWindow
from tcpscope_sim.watch import TopicWatch
from tests.support.events import BASE_NS, make_event
from tests.support.kafka import Broker, run_tail

TOPIC = "poison"
GOOD = 10
OUT_OF_BOUNDS = 7
READ_S = "8"  # a live read lasts this long (the process starts, positions itself, reads 19 records)


def _batch(seq: int, events: list[TcpEvent]) -> EventBatch:
    b = EventBatch(schema_version=1, node="node-a", agent_id="node-a/1", sequence=seq)
    b.events.extend(events)
    b.sent_time.FromNanoseconds(time.time_ns())
    return b


def _records() -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """(key, value, headers): 10 good events and 2 good summaries, and 7 records outside the bounds."""
    far = make_event(100)
    far.time.seconds = 10**12  # year 33658
    flow = make_event(101)
    flow.ClearField("lifecycle")
    flow.flow.connections = 1
    flow.flow.duration_us_log2.extend([0] * 4999 + [1])  # 5,000 buckets
    enum = make_event(102)
    enum.lifecycle.ending = 99  # type: ignore[assignment]
    far_sent = _batch(3, [])
    far_sent.sent_time.seconds = 2**62
    far_window = _batch(4, [])
    w = UnobservedWindow(node="node-a", previous_agent_id="node-a/0", agent_id="node-a/1", cause="crash")
    w.to_time.seconds = 2**50
    far_window.unobserved.append(w)
    out = []
    for b in (_batch(1, [make_event(i) for i in range(GOOD)]), _batch(2, [far, flow, enum]), far_sent, far_window):
        out += [(r.key, r.value, r.headers) for r in batch_records(b)]
    empty_headers = [(k, v) for k, v in batch_records(_batch(5, [make_event(103)]))[0].headers]
    assert (H_RECORD, RECORD_EVENT.encode()) in empty_headers
    out.append((b"k", b"", empty_headers))  # an empty value under event headers: no event
    summary_headers = batch_records(_batch(6, []))[-1].headers
    out.append((b"k", b"", summary_headers))  # nor under summary headers: no batch
    return out


@pytest.fixture
def poisoned(kafka_broker: Broker) -> Broker:
    from kafka import KafkaProducer

    kafka_broker.create_topic(TOPIC, partitions=1)
    p = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        for key, value, headers in _records():  # one produce request each: the broker's end offsets are exact
            p.send(TOPIC, key=key, value=value, headers=headers).get(10)
    finally:
        p.close()
    return kafka_broker


def _clean(p: Any) -> None:
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_live_view_skips_counts_and_names_them(poisoned: Broker, fmt: str) -> None:
    p = run_tail(
        poisoned.bootstrap, TOPIC, "--from-beginning", "--duration", READ_S, "--format", fmt, "--rows", "socket"
    )
    _clean(p)
    rows = [line for line in p.stdout.splitlines() if "LIFECYCLE" in line or line.startswith("{")]
    assert len(rows) == GOOD, p.stdout
    if fmt == "json":
        assert all(json.loads(r)["lifecycle"]["ending"] == "NORMAL" for r in rows)
    assert p.stderr.count("# skipped a record outside the bounds") == OUT_OF_BOUNDS, p.stderr
    assert f"{OUT_OF_BOUNDS} records outside the bounds skipped" in p.stderr, p.stderr


def test_since_skips_them_too(poisoned: Broker) -> None:
    # --since bounds the events' own times too: the good events carry BASE_NS (the hour before this
    # module's import), so "2h" missed them whenever the suite crossed an hour before this test ran
    since = f"{(time.time_ns() - BASE_NS) // 1_000_000_000 + 600}s"
    p = run_tail(
        poisoned.bootstrap, TOPIC, "--since", since, "--duration", READ_S, "--format", "json", "--rows", "socket"
    )
    _clean(p)
    assert len([line for line in p.stdout.splitlines() if line.startswith("{")]) == GOOD, (p.stdout, p.stderr)
    assert f"{OUT_OF_BOUNDS} records outside the bounds skipped" in p.stderr, p.stderr


def test_summary_counts_them_and_never_says_nothing_was_lost(poisoned: Broker) -> None:
    p = run_tail(poisoned.bootstrap, TOPIC, "--summary", "--from-beginning", "--format", "json")
    _clean(p)
    doc = json.loads(p.stdout)
    assert (doc["events"], doc["batches"]) == (GOOD, 2)
    assert (doc["out_of_bounds_records"], doc["undecodable_records"]) == (OUT_OF_BOUNDS, 0)
    p = run_tail(poisoned.bootstrap, TOPIC, "--summary", "--from-beginning")
    _clean(p)
    assert f"{OUT_OF_BOUNDS} records outside the bounds skipped" in p.stdout, p.stdout
    assert "no events lost" not in p.stdout


def test_connection_timeline_skips_them(poisoned: Broker) -> None:
    p = run_tail(poisoned.bootstrap, TOPIC, "--connection", "127.0.0.1:40003-127.0.0.2:8080", "--from-beginning")
    _clean(p)
    assert "LIFECYCLE" in p.stdout
    assert f"{OUT_OF_BOUNDS} records outside the bounds skipped" in p.stderr, p.stderr


def test_the_simulators_watch_skips_and_counts_them(poisoned: Broker) -> None:
    watch = TopicWatch(poisoned.bootstrap, TOPIC, {""})  # agents without an --agent-id prefix
    watch.start()
    try:
        assert watch.catch_up(20)
        events, _, batches = watch.snapshot()
        assert (len(events), batches, watch.error) == (GOOD, 2, "")
        assert watch.skipped == {"bounds": OUT_OF_BOUNDS}
    finally:
        watch.stop()
