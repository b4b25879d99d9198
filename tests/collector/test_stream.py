"""Agent exporter -> real gRPC on loopback -> collector -> a real tansu broker, with exact content."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector.service import SERVICE_NAME
from tcpscope.kafka_layout import (
    H_AGENT_ID,
    H_BATCH_INDEX,
    H_BATCH_SEQ,
    H_SCHEMA,
    H_SCHEMA_VERSION,
    connection_key,
    header_map,
)
from tcpscope.v1.collector_pb2 import BatchAck
from tcpscope.v1.events_pb2 import EventBatch
from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, consume_all
from tests.support.streaming import collector_cfg, decode_all, make_exporter, wait_until

TOPIC = "events"


def test_end_to_end_exact_content(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC)
    events = [make_event(i) for i in range(25)]
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC)) as col:
        exp = make_exporter(col.target, batch=10)
        exp.emit(events[:12], {"kernel.ringbuf_full": 3})
        exp.emit(events[12:], {"kernel.ringbuf_full": 3, "enrich.pending_overflow": 2})
        exp.close(10)
        assert exp.losses() == {}
        m = exp.metrics
        assert m.value("tcpscope_agent_events_acked_total") == 25
        assert m.value("tcpscope_agent_batches_acked_total") == 3
        assert col.metrics.value("tcpscope_collector_events_received_total") == 25
        assert col.metrics.value("tcpscope_collector_records_published_total") == 28
        assert col.metrics.value("tcpscope_collector_agent_lost_events_total", reason="kernel.ringbuf_full") == 3
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=28)
    assert len(records) == 28
    evs, sums = decode_all(records)
    # exact content: every event arrives once, byte-identical, keyed by its connection
    got = sorted(evs, key=lambda d: (d.sequence, d.index))
    assert [d.event for d in got] == events
    assert [(d.sequence, d.index) for d in got] == [(1 + i // 10, i % 10) for i in range(25)]
    for r in records:
        h = header_map(r.headers)
        assert h[H_AGENT_ID] == "agent-1" and h[H_SCHEMA_VERSION] == "1"
        if h[H_SCHEMA] == "tcpscope.v1.TcpEvent":
            d = decode_all([r])[0][0]
            assert d.event is not None and r.key == connection_key(d.event)
            assert int(h[H_BATCH_SEQ]) == d.sequence and int(h[H_BATCH_INDEX]) == d.index
    # losses travel as deltas: 3 kernel losses before batch 1; 2 enrichment losses by batch 2 or 3
    assert sorted(s.sequence for s in sums) == [1, 2, 3]
    lost = {s.sequence: s.summary.lost for s in sums if s.summary is not None}
    assert lost[1].kernel == 3 and dict(lost[1].by_reason) == {"kernel.ringbuf_full": 3}
    assert sum(x.enrichment for x in lost.values()) == 2
    assert sum(x.kernel for x in lost.values()) == 3
    assert all(x.agent_buffer == 0 for x in lost.values())


def _raw_stream(
    channel: grpc.Channel, messages: list[bytes], metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[grpc.StatusCode, list[BatchAck]]:
    """Send raw bytes on Collector.Stream (no serializer: garbage reaches the server as is)."""
    stub = channel.stream_stream(
        "/tcpscope.v1.Collector/Stream", request_serializer=None, response_deserializer=BatchAck.FromString
    )
    acks: list[BatchAck] = []
    try:
        for ack in stub(iter(messages), metadata=metadata, timeout=10):
            acks.append(ack)
    except grpc.RpcError as e:
        return e.code(), acks
    return grpc.StatusCode.OK, acks


def _batch(seq: int, n: int = 2, version: int = 1, node: str = "node-a") -> bytes:
    b = EventBatch(schema_version=version, node=node, agent_id="raw-agent", sequence=seq)
    b.events.extend(make_event(100 * seq + i, node=node) for i in range(n))
    return b.SerializeToString()


def test_bad_input_refused_nothing_published_server_stays_up(kafka_broker: Broker, tmp_path: object) -> None:
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    kafka_broker.create_topic(TOPIC)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    good_md = (("authorization", "Bearer s3cret"),)
    cfg = collector_cfg(kafka_broker.bootstrap, TOPIC, token_file=str(token), max_message_bytes=4000)
    with collector(cfg) as col, grpc.insecure_channel(col.target) as ch:
        garbage = b"\xff\xff\xff\xff\x0f not protobuf"
        assert _raw_stream(ch, [garbage], good_md) == (grpc.StatusCode.INVALID_ARGUMENT, [])
        assert _raw_stream(ch, [_batch(1, n=60)], good_md) == (grpc.StatusCode.RESOURCE_EXHAUSTED, [])
        assert _raw_stream(ch, [_batch(1, version=2)], good_md) == (grpc.StatusCode.FAILED_PRECONDITION, [])
        assert _raw_stream(ch, [_batch(1)]) == (grpc.StatusCode.UNAUTHENTICATED, [])
        assert _raw_stream(ch, [_batch(1)], (("authorization", "Bearer nope"),)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            [],
        )
        # still serving: health, then a good batch is published and acked
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        code, acks = _raw_stream(ch, [_batch(7, n=3)], good_md)
        assert code == grpc.StatusCode.OK
        assert [(a.agent_id, a.sequence) for a in acks] == [("raw-agent", 7)]
        m = col.metrics
        for reason in ("malformed", "oversized", "schema_version", "no_token", "bad_token"):
            assert m.value("tcpscope_collector_rejected_total", reason=reason) == 1, reason
        assert m.value("tcpscope_collector_batches_received_total") == 1
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=5, timeout=3)
    evs, sums = decode_all(records)
    assert len(records) == 4  # only the good batch: 3 events + its summary
    assert {d.sequence for d in evs + sums} == {7}
    assert [d.event.socket_id for d in sorted(evs, key=lambda d: d.index) if d.event] == [701, 702, 703]


def test_collector_killed_and_restarted_mid_stream(kafka_broker: Broker) -> None:
    from tests.support.collector import CollectorProcess

    kafka_broker.create_topic(TOPIC)
    proc = CollectorProcess(kafka_broker.bootstrap, TOPIC)
    proc.start()
    events = [make_event(i) for i in range(600)]
    exp = make_exporter(proc.target, batch=20)
    try:
        for i in range(0, 300, 10):
            exp.emit(events[i : i + 10], {})
        wait_until(lambda: exp.metrics.value("tcpscope_agent_events_acked_total") >= 100, 15, "first acks")
        proc.kill()  # mid-stream: some batches sent but not acked
        for i in range(300, 600, 10):
            exp.emit(events[i : i + 10], {})
        proc.start()  # same port
        exp.close(20)
    finally:
        proc.kill()
    assert exp.losses() == {}
    assert exp.metrics.value("tcpscope_agent_events_acked_total") == 600
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=600 + 30)
    evs, _ = decode_all(records)
    by_id: dict[tuple[str, int, int], bytes] = {}
    for d in evs:
        assert d.event is not None
        key = (d.agent_id, d.sequence, d.index)
        blob = d.event.SerializeToString()
        assert by_id.setdefault(key, blob) == blob  # a duplicate is the same event under the same id
    assert len(by_id) == 600
    assert (
        sorted(d.event.socket_id for d in evs if d.event) == sorted(set(d.event.socket_id for d in evs if d.event))
        or len(evs) > 600
    )
    assert {d.event.socket_id for d in evs if d.event} == {e.socket_id for e in events}


def test_agent_buffer_overflow_counted_exactly(kafka_broker: Broker) -> None:
    from tests.support.kafka import free_port

    kafka_broker.create_topic(TOPIC)
    port = free_port()  # no collector yet: everything stays in the agent's buffer
    exp = make_exporter(f"127.0.0.1:{port}", batch=10, buffer=50)
    events = [make_event(i) for i in range(100)]
    for i in range(0, 100, 10):
        exp.emit(events[i : i + 10], {"kernel.ringbuf_full": 4})
    assert exp.losses() == {"agent.buffer_full": 50}
    assert exp.metrics.value("tcpscope_agent_dropped_events_total", reason="buffer_full") == 50
    assert exp.metrics.value("tcpscope_agent_buffer_events") == 50
    cfg = collector_cfg(kafka_broker.bootstrap, TOPIC).__class__(
        listen=f"127.0.0.1:{port}", kafka_bootstrap=(kafka_broker.bootstrap,), topic=TOPIC, kafka_linger_ms=5
    )
    with collector(cfg) as col:
        exp.close(10)
        assert col.metrics.value("tcpscope_collector_agent_lost_events_total", reason="agent.buffer_full") == 50
    assert exp.losses() == {"agent.buffer_full": 50}
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=50 + 6)
    evs, sums = decode_all(records)
    # the newest 50 survive (oldest dropped), and the stream says exactly 50 were dropped
    assert sorted(d.event.socket_id for d in evs if d.event) == [e.socket_id for e in events[50:]]
    assert sum(s.summary.lost.agent_buffer for s in sums if s.summary) == 50
    assert sum(s.summary.lost.by_reason["agent.buffer_full"] for s in sums if s.summary) == 50
    assert sum(s.summary.lost.kernel for s in sums if s.summary) == 4


def test_too_big_batches_are_split_and_an_unacceptable_event_is_counted(kafka_broker: Broker) -> None:
    """Batches over the collector's limits are split by the agent until they fit; the one event
    too big on its own is dropped, counted, and reported in the stream: nothing else is held up."""
    kafka_broker.create_topic(TOPIC)
    events = [make_event(i) for i in range(40)]
    events[17].local.labels["blob"] = "x" * 5000  # alone above --max-message-bytes
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC, max_batch_events=4, max_message_bytes=3000)) as col:
        exp = make_exporter(col.target, batch=10)
        for i in range(0, 40, 8):
            exp.emit(events[i : i + 8], {})
        exp.close(20)
        assert exp.losses() == {"agent.collector_refused": 1}
        m = exp.metrics
        assert m.value("tcpscope_agent_events_acked_total") == 39
        assert m.value("tcpscope_agent_dropped_events_total", reason="collector_refused") == 1
        assert m.value("tcpscope_agent_batches_refused_total", reason="too_many_events") >= 1
        assert m.value("tcpscope_agent_batches_refused_total", reason="oversized") >= 1
        assert col.metrics.value("tcpscope_collector_rejected_total", reason="too_many_events") >= 1
        assert col.metrics.value("tcpscope_collector_rejected_total", reason="oversized") >= 1
        published = int(col.metrics.value("tcpscope_collector_records_published_total"))
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=published)
    evs, sums = decode_all(records)
    got = {(d.agent_id, d.sequence, d.index): d.event for d in evs}
    assert sorted(e.socket_id for e in got.values() if e) == [e.socket_id for e in events if e is not events[17]]
    assert all(index < 4 for _, _, index in got)
    # a batch acked by Kafka but not to the agent (the stream broke on a later refusal) is resent:
    # summaries count once per (agent id, sequence), as docs/kafka.md tells consumers to dedup
    lost = {(d.agent_id, d.sequence): d.summary.lost for d in sums if d.summary}
    assert sum(x.by_reason["agent.collector_refused"] for x in lost.values()) == 1
    assert sum(x.agent_buffer for x in lost.values()) == 1


def test_shutdown_drains_open_streams_and_the_agent_resends_the_rest(kafka_broker: Broker) -> None:
    """A collector stopping with an agent connected acks what it has read, ends the stream with
    UNAVAILABLE at once (not after the grace period, cancelled), and the agent resends the rest
    to the next collector on that address: nothing lost."""
    from tests.support.collector import InProcessCollector
    from tests.support.kafka import free_port

    kafka_broker.create_topic(TOPIC)
    port = free_port()
    cfg = collector_cfg(kafka_broker.bootstrap, TOPIC).__class__(
        listen=f"127.0.0.1:{port}", kafka_bootstrap=(kafka_broker.bootstrap,), topic=TOPIC, kafka_linger_ms=5
    )
    events = [make_event(i) for i in range(300)]
    first = InProcessCollector(cfg)
    exp = make_exporter(first.target, batch=10)
    try:
        for i in range(0, 150, 10):
            exp.emit(events[i : i + 10], {})
        wait_until(lambda: exp.metrics.value("tcpscope_agent_events_acked_total") >= 50, 15, "first acks")
        first.stop(grace=30)
        assert first.server.streams_cancelled == 0
        assert first.metrics.value("tcpscope_collector_rejected_total", reason="shutting_down") == 1
        for i in range(150, 300, 10):
            exp.emit(events[i : i + 10], {})
        with collector(cfg):
            exp.close(20)
    finally:
        first.stop()
    assert exp.losses() == {}
    assert exp.metrics.value("tcpscope_agent_stream_reconnects_total", code="UNAVAILABLE") >= 1
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=300 + 30)
    evs, _ = decode_all(records)
    assert {d.event.socket_id for d in evs if d.event} == {e.socket_id for e in events}


@pytest.mark.slow
def test_broker_down_30s_no_event_lost(kafka_broker: Broker) -> None:
    import time

    kafka_broker.create_topic(TOPIC)
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC)) as col:
        exp = make_exporter(col.target, batch=20, buffer=5000)
        events = [make_event(i) for i in range(400)]
        for i in range(0, 200, 20):
            exp.emit(events[i : i + 20], {})
        wait_until(lambda: exp.metrics.value("tcpscope_agent_events_acked_total") == 200, 15, "acks")
        before = consume_all(kafka_broker.bootstrap, TOPIC, want=200 + 10)
        kafka_broker.stop()
        t0 = time.monotonic()
        for i in range(200, 400, 20):
            exp.emit(events[i : i + 20], {})
            time.sleep(0.5)
        time.sleep(max(0.0, 30 - (time.monotonic() - t0)))
        assert exp.metrics.value("tcpscope_agent_events_acked_total") == 200  # nothing acked while down
        kafka_broker.start()  # tansu keeps nothing in memory across restarts: recreate the topic
        kafka_broker.create_topic(TOPIC)
        exp.close(40)
        assert exp.losses() == {}
        assert exp.metrics.value("tcpscope_agent_events_acked_total") == 400
    after = consume_all(kafka_broker.bootstrap, TOPIC, want=200 + 10)
    ids = {d.event.socket_id for d in decode_all(before)[0] + decode_all(after)[0] if d.event}
    assert ids == {e.socket_id for e in events}
