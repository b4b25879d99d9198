"""--resolve-backends: a real collector watches Services and EndpointSlices on a real-HTTP API stand-in
and names, on each server lifecycle's and server flow's local end in Kafka, the Service ports whose
EndpointSlices list it; every server event counted once by result. With --resolve-remote too, both
stages run on the same batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.config import CollectorConfig
from collector.server import CollectorServer, StartupError
from tcpscope.kafka_layout import RECORD_EVENT, decode_records
from tcpscope.v1.events_pb2 import ACTIVE, PASSIVE, SERVICE, TcpEvent
from tcpscope_sim.fakeapi import FakeApiServer, make_endpoint_slice, make_service_ports
from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, consume_all
from tests.support.streaming import collector_cfg, make_exporter

TOPIC = "backends"


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Path]]:
    api = FakeApiServer().start()
    try:
        api.add(make_service_ports("api", "shop", "198.19.1.1", [("http", 80, 9000)]))
        api.add(make_endpoint_slice("api", "shop", [("198.18.2.2", "node-2", "api-1")], [("http", 9000)]))
        yield api, api.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        api.stop()


def _server(i: int, ip: str, port: int, flow: bool = False) -> TcpEvent:
    """A server's lifecycle (or flow) at ip:port, from the client 198.18.1.2, seen now."""
    ev = make_event(i)
    ev.local.ip, ev.local.port = ip, port
    ev.remote.ip, ev.remote.port = "198.18.1.2", 0 if flow else 40000 + i
    if flow:
        ev.flow.role = PASSIVE
        ev.flow.connections = 4
    else:
        ev.lifecycle.role = PASSIVE
    ev.time.FromNanoseconds(time.time_ns())
    return ev


def test_flags_and_environment(tmp_path: Path) -> None:
    kube = tmp_path / "k"
    kube.write_text("apiVersion: v1\n")
    cfg = CollectorConfig.from_args(
        ["--kafka-bootstrap", "k:9092", "--resolve-backends"], env={"KUBECONFIG": str(kube)}
    )
    assert (cfg.resolve_backends, cfg.resolve_remote, cfg.kubeconfig) == (True, False, str(kube))
    env = {"TCPSCOPE_KAFKA_BOOTSTRAP": "k:9092", "TCPSCOPE_RESOLVE_BACKENDS": "true", "KUBECONFIG": str(kube)}
    assert CollectorConfig.from_args([], env=env).resolve_backends is True
    assert CollectorConfig.from_args(["--no-resolve-backends"], env=env).resolve_backends is False
    assert CollectorConfig.from_args([], env={"TCPSCOPE_KAFKA_BOOTSTRAP": "k:9092"}).resolve_backends is False


def test_collector_names_the_service_ports_of_backends_in_kafka(
    kafka_broker: Broker, fake_api: tuple[FakeApiServer, Path]
) -> None:
    _, kubeconfig = fake_api
    kafka_broker.create_topic(TOPIC)
    client = _server(3, "198.18.1.2", 40003)
    client.lifecycle.role = ACTIVE  # a client's socket is never looked at
    client.remote.ip, client.remote.port = "198.19.1.1", 80
    events = [
        _server(0, "198.18.2.2", 9000),  # api-1's socket on its target port
        _server(1, "198.18.2.2", 9000, flow=True),
        _server(2, "198.18.2.2", 22),  # api-1, but a port no Service names
        client,
    ]
    cfg = collector_cfg(
        kafka_broker.bootstrap, TOPIC, resolve_backends=True, resolve_remote=True, kubeconfig=str(kubeconfig)
    )
    with collector(cfg) as col:
        exp = make_exporter(col.target, batch=10)
        exp.emit(events, {})
        exp.close(10)
        assert exp.losses() == {}
        m = col.metrics
        counts = {
            r: m.value("tcpscope_collector_backend_ends_total", result=r)
            for r in ("backend", "not_backend", "already_set", "miss_api_unavailable")
        }
        remote_service = m.value("tcpscope_collector_remote_ends_total", result="service")
    assert counts == {"backend": 2, "not_backend": 1, "already_set": 0, "miss_api_unavailable": 0}
    assert remote_service == 1  # the client's remote end: the ClusterIP, by the other stage
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=5, timeout=5)
    evs = [d.event for r in records for d in decode_records(r.headers, r.value) if d.kind == RECORD_EVENT and d.event]
    got = {e.socket_id: [(s.namespace, s.name, s.port) for s in e.local.services] for e in evs}
    assert got == {1: [("shop", "api", 80)], 2: [("shop", "api", 80)], 3: [], 4: []}
    by_id = {e.socket_id: e for e in evs}
    assert (by_id[4].remote.kind, by_id[4].remote.name) == (SERVICE, "api")


def test_an_unusable_kubeconfig_is_a_startup_error(kafka_broker: Broker, tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\n")  # no cluster, no context
    cfg = collector_cfg(kafka_broker.bootstrap, TOPIC, resolve_backends=True, kubeconfig=str(bad))

    async def start() -> str:
        server = CollectorServer(cfg)
        try:
            await server.start()
        except StartupError as e:
            return str(e)
        finally:
            await server.stop(0)
        return ""

    assert asyncio.run(start()).startswith("--resolve-backends: cannot use the Kubernetes API")
