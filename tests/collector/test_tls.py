"""TLS and mutual TLS between agent and collector; with mTLS the batch's node must match the cert."""

from __future__ import annotations

from pathlib import Path

import grpc

from tcpscope.v1.events_pb2 import EventBatch
from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, consume_all
from tests.support.streaming import collector_cfg, decode_all, make_exporter
from tests.support.tls import TestCA

TOPIC = "tls-events"


def test_tls_server_auth(kafka_broker: Broker, tmp_path: Path) -> None:
    kafka_broker.create_topic(TOPIC)
    ca = TestCA(tmp_path)
    srv = ca.server()
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC, tls_cert=srv.cert, tls_key=srv.key)) as col:
        exp = make_exporter(f"localhost:{col.port}", tls_ca=ca.ca_file)
        exp.emit([make_event(i) for i in range(5)], {})
        exp.close(10)
        assert exp.metrics.value("tcpscope_agent_events_acked_total") == 5
        # a plaintext agent cannot talk to a TLS collector: nothing acked, counted lost at shutdown
        plain = make_exporter(col.target, agent_id="plain")
        plain.emit([make_event(99)], {})
        plain.close(1)
        assert plain.losses() == {"agent.shutdown_unsent": 1}
    assert len(decode_all(consume_all(kafka_broker.bootstrap, TOPIC, want=6))[0]) == 5


def test_mtls_node_must_match_certificate(kafka_broker: Broker, tmp_path: Path) -> None:
    kafka_broker.create_topic(TOPIC)
    ca = TestCA(tmp_path)
    srv, node_a = ca.server(), ca.client("node-a")
    cfg = collector_cfg(kafka_broker.bootstrap, TOPIC, tls_cert=srv.cert, tls_key=srv.key, tls_client_ca=ca.ca_file)
    with collector(cfg) as col:
        target = f"localhost:{col.port}"
        good = make_exporter(
            target, node="node-a", agent_id="node-a/1", tls_ca=ca.ca_file, tls_cert=node_a.cert, tls_key=node_a.key
        )
        good.emit([make_event(i, node="node-a") for i in range(3)], {})
        good.close(10)
        assert good.metrics.value("tcpscope_agent_events_acked_total") == 3
        # node-a's certificate claiming to be node-b: PERMISSION_DENIED, nothing published
        creds = grpc.ssl_channel_credentials(
            Path(ca.ca_file).read_bytes(), Path(node_a.key).read_bytes(), Path(node_a.cert).read_bytes()
        )
        from tests.collector.test_stream import _batch, _raw_stream

        with grpc.secure_channel(target, creds) as ch:
            assert _raw_stream(ch, [_batch(1, node="node-b")]) == (grpc.StatusCode.PERMISSION_DENIED, [])
        assert col.metrics.value("tcpscope_collector_rejected_total", reason="node_mismatch") == 1
        # node-a's certificate, its own node, but node-b's agent id: refused too
        forged = EventBatch(schema_version=1, node="node-a", agent_id="node-b/20261130T100000Z-b", sequence=1)
        forged.events.append(make_event(7, node="node-a"))
        with grpc.secure_channel(target, creds) as ch:
            assert _raw_stream(ch, [forged.SerializeToString()]) == (grpc.StatusCode.PERMISSION_DENIED, [])
        assert col.metrics.value("tcpscope_collector_rejected_total", reason="agent_id_mismatch") == 1
        # no client certificate at all: the handshake fails
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(Path(ca.ca_file).read_bytes())) as ch:
            code, acks = _raw_stream(ch, [_batch(1, node="node-a")])
            assert code == grpc.StatusCode.UNAVAILABLE and acks == []
    evs, _ = decode_all(consume_all(kafka_broker.bootstrap, TOPIC, want=4, timeout=3))
    assert sorted(d.event.node for d in evs if d.event) == ["node-a"] * 3
