"""The Kafka stream in ClickHouse: the simulator's plan on real agents, collector and broker, the
records read back byte for byte, loaded through the documented formats and schema
(docs/analytics/*.sql) into chDB, and the query pack's answers compared with
`tcpscope-tail --summary --format json` of the same topic: equal per pair, counter by counter, and
the loss query equal to the summary's losses.

The one part that is not the documented DDL as written: chDB cannot run the Kafka engine's
consumers without a server, so each `ENGINE = Kafka` table is swapped for a Null table with the same
columns and the Kafka engine's virtual columns, fed from the consumed record values through the
table's own kafka_format and kafka_schema (tests/support/analytics.py). Every view and table after
it is the documented one.

Duplicates and losses are real too: after the plan, a second agent (the agent's own exporter) streams
batches that report kernel losses to a collector process that is killed mid-stream and restarted,
so at-least-once delivery may repeat its records; and one batch of the simulator's records is
published again verbatim, as a collector that died between Kafka's ack and its own repeats it, so
repeats are certainly present. Needs root (the simulator), about 20 s per value format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tcpscope.kafka_layout import decode_records, dedup_key, header_map
from tests.support.analytics import (
    as_summary_losses,
    as_summary_pairs,
    assert_same_pairs,
    by_pair,
    clickhouse_docs,
    records_of,
    republish_one_batch,
)
from tests.support.collector import CollectorProcess
from tests.support.events import make_event
from tests.support.kafka import Broker, consume_all, kafka_broker
from tests.support.sim import run_plan, summary_json
from tests.support.streaming import make_exporter, wait_until

__all__ = ["kafka_broker"]  # the fixture, imported for pytest

# every kind the simulator makes: ordinary (in flows), client and server resets, a RST the router
# forges to both ends (network), refused, timeout; one pair on one node
PLAN: dict[str, Any] = {
    "pods": [
        {"namespace": "shop", "name": "web-1", "node": "node-1", "listen": [8080]},
        {"namespace": "shop", "name": "web-2", "node": "node-1", "listen": []},
        {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
        {"namespace": "data", "name": "db-1", "node": "node-3", "listen": [5432]},
    ],
    "traffic": [
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "ok", "count": 6},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9009, "kind": "refused", "count": 2},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "client_reset", "count": 3},
        {"from": "shop/api-1", "to": "data/db-1", "port": 5432, "kind": "ok", "count": 4},
        {"from": "shop/api-1", "to": "data/db-1", "port": 5432, "kind": "server_reset", "count": 2},
        {"from": "shop/web-1", "to": "data/db-1", "port": 5432, "kind": "timeout", "count": 1},
        {"from": "shop/web-2", "to": "shop/web-1", "port": 8080, "kind": "ok", "count": 5},
        {"from": "shop/web-2", "to": "shop/web-1", "port": 8080, "kind": "server_reset", "count": 1},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "network_reset", "count": 3},
    ],
}


def stream_with_losses_and_a_collector_kill(bootstrap: str, topic: str, value_format: str) -> None:
    """A second agent's batches (3 more kernel losses before each) through a collector process killed
    after the first acks and restarted on the same port: its unacked batches are sent again."""
    proc = CollectorProcess(bootstrap, topic, extra=("--value-format", value_format))
    proc.start()
    events = [make_event(i, node="node-x") for i in range(60)]
    exp = make_exporter(proc.target, node="node-x", agent_id="node-x/analytics", batch=10)
    try:
        for i in range(0, 30, 10):  # the loss counters are the agent's running totals
            exp.emit(events[i : i + 10], {"kernel.ringbuf_full": 3 * (i // 10 + 1)})
        wait_until(lambda: exp.metrics.value("tcpscope_agent_events_acked_total") >= 10, 15, "first acks")
        proc.kill()
        for i in range(30, 60, 10):
            exp.emit(events[i : i + 10], {"kernel.ringbuf_full": 3 * (i // 10 + 1)})
        proc.start()
        exp.close(20)
    finally:
        proc.kill()
    assert exp.losses() == {}, "the second agent's own stream lost nothing"


@pytest.mark.slow
@pytest.mark.parametrize("value_format", ["protobuf", "json"])
def test_the_topic_in_clickhouse_answers_as_the_summary(
    value_format: str, kafka_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert os.geteuid() == 0, "the simulator needs root (BPF, netns, cgroups)"
    topic = f"analytics-{value_format}-{os.getpid()}"
    kafka_broker.create_topic(topic)
    monkeypatch.setenv("TCPSCOPE_VALUE_FORMAT", value_format)  # the simulator's collector reads it
    run_plan(PLAN, tmp_path, kafka_broker.bootstrap, topic)
    stream_with_losses_and_a_collector_kill(kafka_broker.bootstrap, topic, value_format)
    first = consume_all(kafka_broker.bootstrap, topic, want=10**9, timeout=5)
    again = republish_one_batch(kafka_broker.bootstrap, topic, first)
    consumed = consume_all(kafka_broker.bootstrap, topic, want=len(first) + again, timeout=15)
    assert len(consumed) == len(first) + again
    ctype = "application/json" if value_format == "json" else "application/x-protobuf"
    assert {header_map(r.headers)["content-type"] for r in consumed} == {ctype}

    doc = summary_json(kafka_broker.bootstrap, topic)
    assert doc["duplicates"] >= again and doc["conflicts"] == 0 and doc["undecodable_records"] == 0
    assert doc["losses"]["kernel"] == 18 and doc["losses"]["kernel.ringbuf_full"] == 18  # 3 before each of 6 emits
    with clickhouse_docs(tmp_path / "clickhouse", value_format) as ch:
        ch.feed(records_of(consumed), topic)
        # the topic repeats lifecycles; the table holds each one once
        lifecycles = [
            dedup_key(d)
            for r in consumed
            for d in decode_records(r.headers, r.value)
            if d.event is not None and d.event.WhichOneof("kind") == "lifecycle"
        ]
        assert len(lifecycles) > len(set(lifecycles))
        assert int(ch.execute("SELECT count() FROM tcpscope_lifecycles FINAL")) == len(set(lifecycles))

        got = by_pair(as_summary_pairs(ch.query("pairs")))
        want = by_pair(doc["pairs"])
        assert_same_pairs(got, want)
        sim_pairs = [p for p in doc["pairs"] if p["client"]["kind"] == "POD"]
        assert {(p["client"]["name"], p["server"]["name"]) for p in sim_pairs} == {
            ("web-1", "api-1"),
            ("api-1", "db-1"),
            ("web-1", "db-1"),
            ("web-2", "web-1"),
        }
        assert sum(p["network_resets"] for p in sim_pairs) == 3 and sum(p["flow_connections"] for p in sim_pairs) > 0

        (losses,) = ch.query("losses")
        assert as_summary_losses(losses) == doc["losses"]
        assert losses["batches"] == doc["batches"]
        per_node = {r["node"]: r for r in ch.query("losses_per_node")}
        assert per_node["node-x"]["kernel"] == 18
        assert sum(int(r["kernel"]) for r in per_node.values()) == 18

        # every established connection once in the durations and bytes (flows and lifecycles together)
        conns = {(p["client"]["name"], p["server"]["name"]): p["connections"] for p in sim_pairs if p["connections"]}
        durations = {(r["client_name"], r["server_name"]): r for r in ch.query("durations")}
        assert {k: int(durations[k]["connections"]) for k in conns} == conns
        assert all(r["p50_bucket"] <= r["p99_bucket"] for r in durations.values())
        per_minute: dict[tuple[str, str], int] = {}
        for r in ch.query("bytes_per_minute"):
            key = (r["client_name"], r["server_name"])
            per_minute[key] = per_minute.get(key, 0) + int(r["connections"])
            assert int(r["client_sent_bytes"]) > 0
        assert {k: per_minute[k] for k in conns} == conns
        causes = {
            (r["client_name"], r["reset_cause"], r["reset_cause_detail"]): int(r["connections"])
            for r in ch.query("reset_causes")
        }
        # the router forged a RST to each end: both_ends, whichever came first (as the summary)
        network = {d: n for (c, cause, d), n in causes.items() if c == "web-1" and cause == "network"}
        assert network == {"both_ends": 3}, network
        assert causes[("web-1", "peer_kernel", "refused")] == 2
        refused = {(r["client_name"], r["server_name"], r["server_port"]): r for r in ch.query("refused_and_timeouts")}
        assert int(refused[("web-1", "api-1", 9009)]["refused"]) == 2
        assert int(refused[("web-1", "db-1", 5432)]["timeouts"]) == 1
