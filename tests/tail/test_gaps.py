"""Readers and what they must never hide: windows nobody observed, and two records under one
dedup key with different content."""

from __future__ import annotations

import json

from tail.consume import Dedup
from tail.summary import Report, Summarizer, SummaryOptions
from tcpscope import render
from tcpscope.kafka_layout import H_UNOBSERVED, batch_records, decode_records, header_map
from tcpscope.v1.events_pb2 import EventBatch, UnobservedWindow
from tests.support.events import make_event
from tests.support.kafka import Broker, publish_batches, run_tail

TOPIC = "gaps"

OLD, NEW = "node-a/20261130T100000Z-old", "node-a/20261130T100500Z-new"
T0 = 1_700_000_000_000_000_000


def _batch(agent: str, seq: int, first: int, n: int) -> EventBatch:
    b = EventBatch(schema_version=1, node="node-a", agent_id=agent, sequence=seq)
    b.events.extend(make_event(first + i) for i in range(n))
    return b


def _window() -> UnobservedWindow:
    w = UnobservedWindow(
        node="node-a",
        previous_agent_id=OLD,
        agent_id=NEW,
        cause="crash",
        uncounted=True,
        first_unacked_sequence=2,
        last_sequence=3,
        unacked_batches=2,
        unacked_events=5,
        unacked_sequences=[2, 3],
    )
    w.from_time.FromNanoseconds(T0 + 1_000_000_000)
    w.to_time.FromNanoseconds(T0 + 6_500_000_000)
    w.last_alive_time.FromNanoseconds(T0 + 2_000_000_000)
    return w


def _read(report: Report, batches: list[EventBatch]) -> None:
    """As tcpscope-tail --summary reads: deduplicated by the reader's policy, conflicts to the report."""
    dedup = Dedup(1000)
    for b in batches:
        for r in batch_records(b):
            for d in decode_records(r.headers, r.value):
                if dedup.keep(d, report.conflicts.add):
                    report.take(d)
    report.duplicates = dedup.repeats


def test_summary_lists_the_gap_with_what_the_topic_holds_of_the_unacked_batches() -> None:
    old1, old3 = _batch(OLD, 1, 0, 4), _batch(OLD, 3, 7, 2)  # batch 2 (3 events) never arrives
    new1 = _batch(NEW, 1, 100, 1)
    new1.unobserved.append(_window())
    summary_rec = batch_records(new1)[-1]
    assert header_map(summary_rec.headers)[H_UNOBSERVED] == "1"
    report = Report(Summarizer())
    # batch 2 never reached Kafka; batch 3 did although its ack was lost; new1 is resent once
    _read(report, [old1, old3, new1, new1])
    doc = json.loads(report.render("json", SummaryOptions()))
    (gap,) = doc["gaps"]
    assert gap == {
        "node": "node-a",
        "previous_agent_id": OLD,
        "agent_id": NEW,
        "cause": "crash",
        "from": "2023-11-14T22:13:21Z",
        "to": "2023-11-14T22:13:26.500000Z",
        "seconds": 5.5,
        "last_alive": "2023-11-14T22:13:22Z",
        "unacked_batches": 2,
        "unacked_events": 5,
        "unacked_sequences": [2, 3],
        "unacked_batches_in_topic": 1,
        "missing_events": 3,
        "uncounted": True,
    }
    assert (doc["events"], doc["duplicates"], doc["conflicts"]) == (7, 2, 0)
    table = report.render("table", SummaryOptions())
    assert "no events lost" not in table
    assert (
        "# UNOBSERVED node node-a from 2023-11-14T22:13:21Z to 2023-11-14T22:13:26.500000Z (5.5s, crash; "
        f"agent {OLD} -> {NEW}): 3 events known missing and more that nobody could count"
    ) in table


def test_a_forged_record_under_a_real_dedup_key_is_kept_and_reported_never_deduped() -> None:
    real = _batch(OLD, 1, 0, 3)
    forged = _batch(OLD, 1, 50, 3)  # another producer, same agent id and sequence, other content
    report = Report(Summarizer())
    # both resent once: genuine repeats. The summaries carry the same header and no losses, so the
    # forged one is indistinguishable from the real one (and harmless).
    _read(report, [real, forged, real, forged])
    doc = json.loads(report.render("json", SummaryOptions()))
    assert (doc["events"], doc["batches"], doc["duplicates"], doc["conflicts"]) == (6, 1, 9, 3)
    assert [(c["agent_id"], c["sequence"], c["index"]) for c in doc["conflict_examples"]] == [
        (OLD, 1, 0),
        (OLD, 1, 1),
        (OLD, 1, 2),
    ]
    # the real events all count: none was dropped as a "duplicate" of a forged one
    assert len(doc["pairs"]) == 1 and doc["pairs"][0]["connections"] == 6
    assert "# CONFLICT: 3 records reuse the dedup key" in report.render("table", SummaryOptions())


def test_live_tail_shows_both_conflicting_events_and_the_window(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC, partitions=1)
    real, forged = _batch(OLD, 1, 0, 2), _batch(OLD, 1, 50, 2)
    new1 = _batch(NEW, 1, 100, 1)
    new1.unobserved.append(_window())
    publish_batches(kafka_broker.bootstrap, TOPIC, [real, real, forged, new1])
    out = run_tail(
        kafka_broker.bootstrap, TOPIC, "--from-beginning", "--duration", "2", "--format", "json", "--rows", "socket"
    )
    assert out.returncode == 0, out.stderr
    shown = [e for b in (real, forged, new1) for e in b.events]
    assert out.stdout.splitlines() == [render.json_line(e) for e in shown]  # the repeat once, both versions
    assert out.stderr.count("# CONFLICT: agent") == 2
    assert (
        "# UNOBSERVED node node-a from 2023-11-14T22:13:21Z to 2023-11-14T22:13:26.500000Z (5.500s, crash; "
        f"agent {OLD} -> {NEW}): up to 5 events in 2 unacked batches and more that nobody could count"
    ) in out.stderr
    assert "2 CONFLICTS" in out.stderr
