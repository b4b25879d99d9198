"""Sockets the agent could not track are reported as sockets, not as lost events: an agent's export
path with kernel.socket_map_full through a real collector and broker to tcpscope-tail's summary
and live view."""

from __future__ import annotations

import json

import pytest

from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, run_tail
from tests.support.streaming import collector_cfg, make_exporter

TOPIC = "untracked"


@pytest.mark.parametrize("ring_lost", [0, 3])
def test_untracked_sockets_are_not_lost_events(kafka_broker: Broker, ring_lost: int) -> None:
    kafka_broker.create_topic(TOPIC, partitions=1)
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC)) as col:
        exp = make_exporter(col.target, batch=100)
        losses = {"kernel.socket_map_full": 501, **({"kernel.ringbuf_full": ring_lost} if ring_lost else {})}
        exp.emit([make_event(i) for i in range(10)], losses)
        exp.close(10)
        assert exp.metrics.value("tcpscope_agent_events_acked_total") == 10
    p = run_tail(kafka_broker.bootstrap, TOPIC, "--summary", "--from-beginning", "--duration", "3", "--format", "json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert (doc["losses"]["sockets_untracked"], doc["losses"]["kernel"]) == (501, ring_lost)
    p = run_tail(kafka_broker.bootstrap, TOPIC, "--summary", "--from-beginning", "--duration", "3")
    footer = p.stdout.splitlines()[-1]
    assert "501 sockets not tracked (the agent's socket map was full: their events are missing)" in footer
    assert "no events lost" not in footer
    if ring_lost:
        assert f"LOST {ring_lost} events" in footer and "501 events" not in footer
    else:
        assert "LOST" not in footer
    p = run_tail(kafka_broker.bootstrap, TOPIC, "--from-beginning", "--duration", "3")
    assert "# 501 sockets not tracked on node node-a" in p.stderr, p.stderr
    assert ("# lost 3 events" in p.stderr) == bool(ring_lost)
