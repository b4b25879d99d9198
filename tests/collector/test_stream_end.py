"""The collector notices an unclean stream end: an agent that drains half-closes its stream
(agent_closed); one that vanishes mid-stream is counted as broken and named in the log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc
import pytest

from tcpscope.v1.collector_pb2 import BatchAck
from tcpscope.v1.events_pb2 import EventBatch
from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker
from tests.support.streaming import collector_cfg, make_exporter, wait_until

TOPIC = "stream-end"


def test_drained_agent_ends_cleanly_a_vanished_one_is_named(
    kafka_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    kafka_broker.create_topic(TOPIC)
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC)) as col:
        exp = make_exporter(col.target, node="node-a", agent_id="node-a/i1")
        exp.emit([make_event(i) for i in range(5)], {})
        exp.close(10)
        assert exp.metrics.value("tcpscope_agent_events_acked_total") == 5
        wait_until(
            lambda: col.metrics.value("tcpscope_collector_streams_ended_total", how="agent_closed") == 1,
            5,
            "a clean end",
        )
        # an agent killed mid-stream: its batch acked, then the connection is gone without a half-close
        b = EventBatch(schema_version=1, node="node-b", agent_id="node-b/i1", sequence=7)
        b.events.append(make_event(9, node="node-b"))
        acked = threading.Event()

        def forever() -> Iterator[bytes]:
            yield b.SerializeToString()
            acked.wait(10)
            threading.Event().wait(10)  # never half-closes

        caplog.set_level(logging.WARNING, logger="collector.service")
        with grpc.insecure_channel(col.target) as ch:
            call = ch.stream_stream(
                "/tcpscope.v1.Collector/Stream", request_serializer=None, response_deserializer=BatchAck.FromString
            )(forever())
            assert next(iter(call)).sequence == 7
            acked.set()
            call.cancel()
        wait_until(
            lambda: col.metrics.value("tcpscope_collector_streams_ended_total", how="broken") == 1, 5, "a broken end"
        )
        assert col.metrics.value("tcpscope_collector_streams_ended_total", how="agent_closed") == 1
    assert any(
        "agent node-b/i1 (node node-b) ended without closing after batch 7" in r.getMessage() for r in caplog.records
    )
