"""The Kafka stream in ClickHouse through Kubernetes Services: the simulator's plan with its kube-proxy
(`tcpscope-sim --kube-proxy nftables`: real DNAT and SNAT in the router netns, real BPF agents that
set connection_id, a real collector and broker), the records read back byte for byte and loaded
through the documented formats and schema (docs/analytics/*.sql) into chDB, then the query pack's
answers compared with `tcpscope-tail --summary --format json` of the same topic: equal per row
(client, backend, via Service or node port), counter by counter, with a batch published twice; and
each received RST's verdict in SQL equal to tail/resetcause.py's.

Then a copy of the topic in which node-2's clock is 5 s ahead (its events', flows' and batches'
times moved, the collector's notes left as measured: readers see the skew), laid out as JSON: the
query pack equals that copy's summary too, and gives the same answers as the original (a connection
the network reset at both ends is `both_ends` whichever end's RST the skewed clocks put first).

The one part that is not the documented DDL as written: the Kafka engine tables (chDB has no Kafka
consumers without a server) are Null tables fed from the consumed record values through their own
kafka_format and kafka_schema (tests/support/analytics.py). Needs root (the simulator), about 40 s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tcpscope.kafka_layout import LAYOUT_EVENT
from tests.support.analytics import (
    Rec,
    as_summary_losses,
    as_summary_pairs,
    assert_backend_split,
    assert_same_pairs,
    batches_of,
    by_pair,
    clickhouse_docs,
    records_of,
    republish_one_batch,
    shifted,
    sql_verdicts,
    summary_doc,
    summary_verdicts,
    without_backend_names,
    without_times,
)
from tests.support.kafka import Broker, consume_all, kafka_broker, publish_batches
from tests.support.sim import run_plan, summary_json

__all__ = ["kafka_broker"]  # the fixture, imported for pytest

SVC = {"namespace": "shop", "name": "api-svc", "kind": "SERVICE", "port": 80}
# one client, a Service with a backend on each of two nodes (and a NodePort), a Service whose backend
# does not listen on its target port; every kind through the ClusterIP, ordinary connections and
# server resets through two nodes' NodePorts (SNATed to the node addressed), and a few straight to
# a backend pod
PLAN: dict[str, Any] = {
    "pods": [
        {"namespace": "shop", "name": "web-1", "node": "node-1"},
        {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
        {"namespace": "shop", "name": "api-2", "node": "node-3", "listen": [9000]},
    ],
    "services": [
        {
            "namespace": "shop",
            "name": "api-svc",
            "port": 80,
            "targetPort": 9000,
            "backends": ["shop/api-1", "shop/api-2"],
            "nodePort": 30080,
        },
        {"namespace": "shop", "name": "closed-svc", "port": 80, "targetPort": 9009, "backends": ["shop/api-1"]},
    ],
    "traffic": [
        {"from": "shop/web-1", "service": "shop/api-svc", "kind": "ok", "count": 6},
        {"from": "shop/web-1", "service": "shop/api-svc", "kind": "client_reset", "count": 2},
        {"from": "shop/web-1", "service": "shop/api-svc", "kind": "server_reset", "count": 4},
        {"from": "shop/web-1", "service": "shop/api-svc", "kind": "network_reset", "count": 2},
        {"from": "shop/web-1", "service": "shop/api-svc", "kind": "timeout", "count": 1},
        {"from": "shop/web-1", "service": "shop/closed-svc", "kind": "refused", "count": 2},
        {"from": "shop/web-1", "service": "shop/api-svc", "node": "node-2", "kind": "ok", "count": 3},
        {"from": "shop/web-1", "service": "shop/api-svc", "node": "node-1", "kind": "server_reset", "count": 2},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "ok", "count": 2},
    ],
}


def _compare(ch: Any, doc: dict[str, Any], recs: list[Rec]) -> dict[str, dict[str, Any]]:
    """The query pack's pairs and losses against the summary's, exactly, but for the one documented
    difference: SQL does not split a client's flows to a Service by backend (docs/analytics.md,
    "Where SQL and the summary differ"). So SQL's pairs equal the summary of the same records without
    Endpoint.services (a collector without --resolve-backends) exactly, and the summary of the
    records as published differs from that only by the split (assert_backend_split). Returns the
    pairs; the connections the split moved in `doc["split_moved"]`."""
    got = by_pair(as_summary_pairs(ch.query("pairs")))
    unsplit = by_pair(summary_doc(without_backend_names(recs))["pairs"])
    assert_same_pairs(got, unsplit)
    doc["split_moved"] = assert_backend_split(by_pair(doc["pairs"]), unsplit)
    (losses,) = ch.query("losses")
    assert as_summary_losses(losses) == doc["losses"]
    assert int(losses["batches"]) == doc["batches"]
    return got


def _totals(pairs: dict[str, dict[str, Any]]) -> dict[str, int]:
    keys = ("connections", "client_resets", "server_resets", "network_resets", "refused", "timeouts", "failed")
    return {k: sum(p[k] for p in pairs.values() if p["client"]["name"] == "web-1") for k in keys}


@pytest.mark.slow
def test_through_services_the_topic_in_clickhouse_answers_as_the_summary(kafka_broker: Broker, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the simulator needs root (BPF, netns, cgroups, nftables)"
    topic = f"analytics-svc-{os.getpid()}"
    kafka_broker.create_topic(topic)
    run_plan(PLAN, tmp_path, kafka_broker.bootstrap, topic, "--kube-proxy", "nftables")  # its own check passed
    first = consume_all(kafka_broker.bootstrap, topic, want=10**9, timeout=5)
    again = republish_one_batch(kafka_broker.bootstrap, topic, first)
    consumed = consume_all(kafka_broker.bootstrap, topic, want=len(first) + again, timeout=15)
    assert len(consumed) == len(first) + again
    recs = records_of(consumed)

    doc = summary_json(kafka_broker.bootstrap, topic)
    assert doc["duplicates"] >= again and doc["conflicts"] == 0 and doc["undecodable_records"] == 0
    with clickhouse_docs(tmp_path / "clickhouse", "protobuf") as ch:
        ch.feed(recs)
        pairs = _compare(ch, doc, recs)
        assert sql_verdicts(ch) == summary_verdicts(recs)
        refused = {(r["server_name"], r["via_name"]): r for r in ch.query("refused_and_timeouts")}
        causes = {
            (r["server_name"], r["via_name"], r["reset_cause"], r["reset_cause_detail"]): int(r["connections"])
            for r in ch.query("reset_causes")
        }

    assert doc["split_moved"] == 6  # the Service's 6 ordinary connections, in flows: each backend its share
    # what the rows are (SQL's): the plan's connections, each once
    assert _totals(pairs) == {
        "connections": 6 + 2 + 4 + 2 + 3 + 2 + 2,
        "client_resets": 2,
        "server_resets": 4 + 2,
        "network_resets": 2,
        "refused": 2,
        "timeouts": 1,
        "failed": 0,
    }
    via_svc = [p for p in pairs.values() if p.get("via") == SVC]
    assert {p["server"]["name"] for p in via_svc} == {"api-1", "api-2", "api-svc"}  # both backends, and the Service
    # the ordinary ones were aggregated into flows, which name the Service: counted once, under it
    (svc_row,) = (p for p in via_svc if p["server"]["name"] == "api-svc")
    assert (svc_row["flow_connections"], svc_row["timeouts"]) == (6, 1)
    joined = [p for p in via_svc if p["server"]["kind"] == "POD"]
    assert sum(p["client_resets"] + p["server_resets"] + p["network_resets"] for p in joined) == 2 + 4 + 2
    nodeport = [p for p in pairs.values() if p.get("via", {}).get("kind") == "NODE"]
    assert {(p["via"]["name"], p["via"]["port"]) for p in nodeport} == {("node-1", 30080)}
    assert sum(p["server_resets"] for p in nodeport) == 2
    assert {p["client"]["name"] for p in pairs.values()} == {"web-1"}  # no SNATed flow left to a node
    assert int(refused[("closed-svc", "closed-svc")]["refused"]) == 2
    network: dict[str, int] = {}  # by detail, over the two backends' rows
    for (_, via, cause, d), n in causes.items():
        if via == "api-svc" and cause == "network":
            network[d] = network.get(d, 0) + n
    assert network == {"both_ends": 2}, network  # the router forged a RST to each end, as in the summary

    # node-2's clock 5 s ahead: a copy of the topic as a reader would meet it, in the JSON value format
    skewed_topic = f"{topic}-skew"
    kafka_broker.create_topic(skewed_topic)
    publish_batches(
        kafka_broker.bootstrap,
        skewed_topic,
        shifted(batches_of(recs), "node-2", 5 * 10**9),
        value_format="json",
        layout=LAYOUT_EVENT,
        partitions=3,
    )
    skewed = records_of(consume_all(kafka_broker.bootstrap, skewed_topic, want=len(set(map(_key, recs))), timeout=15))
    skewed_doc = summary_json(kafka_broker.bootstrap, skewed_topic)
    with clickhouse_docs(tmp_path / "clickhouse-skewed", "json") as ch:
        ch.feed(skewed, skewed_topic)
        skewed_pairs = _compare(ch, skewed_doc, skewed)
        assert sql_verdicts(ch) == summary_verdicts(skewed)
    assert skewed_doc["split_moved"] == 6
    assert without_times(list(skewed_pairs.values())) == without_times(list(pairs.values()))


def _key(r: Any) -> tuple[object, ...]:
    """A record's identity (repeats share it): its headers, which name its batch and position."""
    return tuple(
        sorted((k, v) for k, v in r.headers if k in ("agent-id", "batch-seq", "batch-index", "tcpscope-record"))
    )
