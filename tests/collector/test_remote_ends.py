"""--resolve-remote: a real collector watches a real-HTTP API stand-in and fills remote ends in Kafka;
each remote end counted once by the result the shared resolver reports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.remote_ends import AGENT_RESOLVED, RemoteEnrichment
from tcpscope.kafka_layout import RECORD_EVENT, decode_records
from tcpscope.kube import ClientKubeApi, RemoteResolver, RemoteResult, load_api_client
from tcpscope.v1.events_pb2 import EXTERNAL, NODE, POD, SERVICE, EventBatch, TcpEvent
from tcpscope_sim.fakeapi import FakeApiServer, make_node, make_pod, make_service
from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, consume_all
from tests.support.streaming import collector_cfg, decode_all, make_exporter

TOPIC = "remote"


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Path]]:
    api = FakeApiServer().start()
    try:
        api.add(
            make_pod(
                "web-1",
                "shop",
                "node-b",
                ips=["198.18.1.10"],
                owner=("ReplicaSet", "web-5d8f7"),
                labels={"app": "web", "tier": "x", "pod-template-hash": "5d8f7"},
            )
        )
        api.add(make_pod("db-0", "data", "node-c", ips=["198.18.1.20"], owner=("StatefulSet", "db")))
        api.add(make_service("web", "shop", cluster_ips=["198.19.0.10"]))
        api.add(make_node("node-c", internal_ips=["198.18.0.3"]))
        yield api, api.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        api.stop()


def _event(i: int, remote_ip: str) -> TcpEvent:
    """An event seen now (resolution is by event time: the fake pods exist from now on)."""
    ev = make_event(i)
    ev.remote.ip = remote_ip
    ev.time.FromNanoseconds(time.time_ns() + 5_000_000_000)
    return ev


def test_flags_and_environment(tmp_path: Path) -> None:
    kube = tmp_path / "k"
    kube.write_text("apiVersion: v1\n")  # with --resolve-remote the kubeconfig must be a readable file
    cfg = CollectorConfig.from_args(
        ["--kafka-bootstrap", "k:9092", "--resolve-remote", "--labels", "app,tier"], env={"KUBECONFIG": str(kube)}
    )
    assert (cfg.resolve_remote, cfg.kubeconfig, cfg.labels) == (True, str(kube), ("app", "tier"))
    env = {"TCPSCOPE_KAFKA_BOOTSTRAP": "k:9092", "TCPSCOPE_RESOLVE_REMOTE": "true"}
    assert CollectorConfig.from_args([], env=env).resolve_remote is True
    assert CollectorConfig.from_args(["--no-resolve-remote"], env=env).resolve_remote is False
    assert CollectorConfig.from_args([], env={"TCPSCOPE_KAFKA_BOOTSTRAP": "k:9092"}).resolve_remote is False


def test_each_remote_end_is_counted_once_by_result(fake_api: tuple[FakeApiServer, Path]) -> None:
    """The collector counts what the resolver says each end became, plus the ends it left alone."""
    metrics = CollectorMetrics()
    resolver = RemoteResolver(ClientKubeApi(load_api_client(str(fake_api[1]))), ("app",)).start()
    enrichment = RemoteEnrichment(resolver, metrics)
    try:
        assert enrichment.wait_synced(10)
        pre = _event(7, "198.18.1.10")
        pre.remote.kind = POD
        ips = ["198.18.1.10", "198.18.1.20", "198.19.0.10", "198.18.0.3", "203.0.113.9", "127.0.0.1", "0.0.0.0"]
        batch = EventBatch(events=[*(_event(i, ip) for i, ip in enumerate(ips)), pre])
        enrichment.enrich(batch)
        enrichment.enrich(EventBatch(events=[_event(8, "203.0.113.10")]))
    finally:
        enrichment.close()
    labels = [r.value for r in RemoteResult] + [AGENT_RESOLVED]
    got = {r: metrics.value("tcpscope_collector_remote_ends_total", result=r) for r in labels}
    assert got == {
        "pod": 2,
        "service": 1,
        "node": 1,
        "external": 2,
        "pod_unknown": 0,
        "loopback": 1,
        "no_ip": 1,
        "miss_api_unavailable": 0,
        "agent_resolved": 1,
    }
    assert [ev.remote.kind for ev in batch.events] == [POD, POD, SERVICE, NODE, EXTERNAL, NODE, 0, POD]


@pytest.mark.parametrize("layout", ["event", "packed"])
def test_collector_resolves_remote_ends_into_kafka(
    kafka_broker: Broker, fake_api: tuple[FakeApiServer, Path], layout: str
) -> None:
    _, kubeconfig = fake_api
    kafka_broker.create_topic(TOPIC)
    events = [
        _event(0, "198.18.1.10"),
        _event(1, "198.18.1.20"),
        _event(2, "198.19.0.10"),
        _event(3, "198.18.0.3"),
        _event(4, "203.0.113.9"),
    ]
    # the agent already resolved this one: the collector must leave it exactly as it is
    pre = _event(5, "198.18.1.10")
    pre.remote.kind, pre.remote.namespace, pre.remote.name = POD, "agent-ns", "agent-said"
    events.append(pre)
    cfg = collector_cfg(
        kafka_broker.bootstrap,
        TOPIC,
        resolve_remote=True,
        kubeconfig=str(kubeconfig),
        labels=("app",),
        record_layout=layout,
    )
    with collector(cfg) as col:
        exp = make_exporter(col.target, batch=10)
        exp.emit(events, {})
        exp.close(10)
        assert exp.losses() == {}
        m = col.metrics
        got_counts = {
            r: m.value("tcpscope_collector_remote_ends_total", result=r)
            for r in ("pod", "service", "node", "external", "agent_resolved", "miss_api_unavailable")
        }
    assert got_counts == {
        "pod": 2,
        "service": 1,
        "node": 1,
        "external": 1,
        "agent_resolved": 1,
        "miss_api_unavailable": 0,
    }
    # packed: the 6 events hash to 1..3 partitions, so wait for up to 4 records and count events
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=7 if layout == "event" else 4, timeout=5)
    evs = [d for r in records for d in decode_records(r.headers, r.value) if d.kind == RECORD_EVENT]
    by_id = {d.event.socket_id: d.event.remote for d in evs if d.event is not None}
    assert sorted(by_id) == [1, 2, 3, 4, 5, 6]
    r = by_id[1]
    assert (r.kind, r.namespace, r.name, r.node, dict(r.labels)) == (POD, "shop", "web-1", "node-b", {"app": "web"})
    assert (r.workload.kind, r.workload.name) == ("Deployment", "web")
    r = by_id[2]
    assert (r.kind, r.namespace, r.name, r.node) == (POD, "data", "db-0", "node-c")
    assert (r.workload.kind, r.workload.name) == ("StatefulSet", "db")
    assert (by_id[3].kind, by_id[3].namespace, by_id[3].name) == (SERVICE, "shop", "web")
    assert (by_id[4].kind, by_id[4].name) == (NODE, "node-c")
    assert (by_id[5].kind, by_id[5].name) == (EXTERNAL, "")
    assert (by_id[6].kind, by_id[6].namespace, by_id[6].name) == (POD, "agent-ns", "agent-said")


def test_without_resolve_remote_ends_stay_bare(kafka_broker: Broker, fake_api: tuple[FakeApiServer, Path]) -> None:
    kafka_broker.create_topic(TOPIC)
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC, kubeconfig=str(fake_api[1]))) as col:
        exp = make_exporter(col.target)
        exp.emit([_event(0, "198.18.1.10")], {})
        exp.close(10)
        assert col.metrics.value("tcpscope_collector_remote_ends_total", result="pod") == 0
    evs, _ = decode_all(consume_all(kafka_broker.bootstrap, TOPIC, want=2, timeout=5))
    assert [(d.event.remote.kind, d.event.remote.name) for d in evs if d.event] == [(0, "")]
