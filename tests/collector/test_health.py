"""gRPC health (and /readyz on the metrics port) follows Kafka: NOT_SERVING while the broker is down, SERVING again
by itself once it is back, and the outage costs no event and logs no traceback."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector.metrics import CollectorMetrics
from collector.service import SERVICE_NAME
from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, consume_all, free_port
from tests.support.streaming import collector_cfg, decode_all, make_exporter, wait_until

TOPIC = "events"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def kafka_errors(metrics: CollectorMetrics) -> float:
    return sum(
        s.value
        for m in metrics.registry.collect()
        if m.name == "tcpscope_collector_kafka_errors"
        for s in m.samples
        if s.name.endswith("_total")
    )


def test_health_follows_kafka_and_recovers_by_itself(kafka_broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    kafka_broker.create_topic(TOPIC)
    port = free_port()
    cfg = collector_cfg(
        kafka_broker.bootstrap, TOPIC, kafka_delivery_timeout_ms=4000, metrics_port=port, metrics_address="127.0.0.1"
    )
    events = [make_event(i) for i in range(400)]
    with collector(cfg) as col, grpc.insecure_channel(col.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        def status(service: str = SERVICE_NAME) -> int:
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)

        def http(ready: int) -> None:
            """/readyz on the metrics port (the chart's probe with TLS on) says what gRPC health says,
            read where the state is settled (two reads at different instants could straddle a flip)."""
            assert readyz(port) == ready
            assert readyz(port, "/healthz") == 200  # Kafka down is no reason to restart

        assert status() == SERVING and status("") == SERVING
        http(200)
        exp = make_exporter(col.target, batch=20, buffer=5000)
        for i in range(0, 200, 20):
            exp.emit(events[i : i + 20], {})
        wait_until(lambda: exp.metrics.value("tcpscope_agent_events_acked_total") == 200, 15, "acks")
        before = consume_all(kafka_broker.bootstrap, TOPIC, want=200 + 10)

        kafka_broker.stop()
        wait_until(lambda: status() == NOT_SERVING, 15, "NOT_SERVING while the broker is down")
        assert status("") == NOT_SERVING
        for i in range(200, 400, 20):
            exp.emit(events[i : i + 20], {})
        # publishes fail meanwhile (delivery timeout 4 s): health stays NOT_SERVING
        wait_until(lambda: kafka_errors(col.metrics) >= 1, 30, "a failed publish")
        assert status() == NOT_SERVING
        http(503)  # the broker is down: nothing can turn it SERVING meanwhile
        assert exp.metrics.value("tcpscope_agent_events_acked_total") == 200

        kafka_broker.start()  # tansu keeps nothing across restarts: the topic comes back empty
        kafka_broker.create_topic(TOPIC)
        wait_until(lambda: status() == SERVING, 30, "SERVING again, with nobody's help")
        wait_until(lambda: readyz(port) == 200, 10, "/readyz ready again")
        http(200)
        exp.close(40)
        assert exp.losses() == {}
        assert exp.metrics.value("tcpscope_agent_events_acked_total") == 400
    after = consume_all(kafka_broker.bootstrap, TOPIC, want=200 + 10)
    ids = sorted({d.event.socket_id for d in decode_all(before)[0] + decode_all(after)[0] if d.event})
    assert ids == [e.socket_id for e in events]
    ours = [r for r in caplog.records if r.name.startswith("collector")]
    assert not [r for r in ours if r.exc_info], "a traceback was logged"
    publish_failures = [r for r in ours if "Kafka publish of batch" in r.getMessage()]
    assert 1 <= len(publish_failures) <= 2, [r.getMessage() for r in publish_failures]


def readyz(port: int, path: str = "/readyz") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        with e:
            return int(e.code)


def test_a_topic_the_broker_creates_on_first_use_is_serving(kafka_broker: Broker) -> None:
    """No topic yet, on a broker that creates topics on first use (as the test broker does): the
    collector must be SERVING, or readiness would route no agent to it and nothing would ever
    create the topic."""
    with collector(collector_cfg(kafka_broker.bootstrap, "created-on-first-use")) as col:
        assert col.server.kafka_probe_interval == 2.0
        wait_until(lambda: col.server.serving, 10, "SERVING")
        time.sleep(2 * col.server.kafka_probe_interval + 1)  # a few probes later, still
        assert col.server.serving
        exp = make_exporter(col.target)
        exp.emit([make_event(1)], {})
        exp.close(10)
        assert exp.metrics.value("tcpscope_agent_events_acked_total") == 1
