"""tcpscope-sim's topic watch (sim/tcpscope_sim/watch.py) against a real broker: it waits for a topic
the collector has not created yet, keeps only its run's agents, each record once, catches up on
request, and stops when told, in its own thread."""

from __future__ import annotations

import time

from tcpscope.v1.events_pb2 import EventBatch
from tcpscope_sim.watch import TopicWatch
from tests.support.events import make_event
from tests.support.kafka import Broker, publish_batches

TOPIC = "sim-watch"


def _batch(agent_id: str, seq: int, first: int, n: int, kernel_lost: int = 0) -> EventBatch:
    b = EventBatch(schema_version=1, node="node-1", agent_id=agent_id, sequence=seq)
    b.events.extend(make_event(first + i) for i in range(n))
    b.lost.kernel = kernel_lost
    return b


def test_watch_follows_its_agents_once_each_and_stops(kafka_broker: Broker) -> None:
    ours, other = "node-1-simA/node-1/20261130T100000Z-1", "node-1-simB/node-1/20261130T100000Z-2"
    seen: list[int] = []
    watch = TopicWatch(kafka_broker.bootstrap, TOPIC, {"node-1-simA"}, on_event=lambda ev: seen.append(ev.socket_id))
    watch.start()
    try:
        time.sleep(0.5)  # the watch is waiting for the topic
        kafka_broker.create_topic(TOPIC, partitions=2)
        first = _batch(ours, 1, 0, 3, kernel_lost=2)
        publish_batches(kafka_broker.bootstrap, TOPIC, [first, _batch(other, 1, 10, 4), first])  # `first` resent
        assert watch.wait_for(3, 15) == 3
        publish_batches(kafka_broker.bootstrap, TOPIC, [_batch(ours, 2, 20, 1)])
        assert watch.catch_up(15)  # everything in the topic now has been read
        events, losses, batches = watch.snapshot()
        assert sorted(e.socket_id for e in events) == sorted(seen) == [1, 2, 3, 21]
        assert (losses["kernel"], batches, watch.connection_ends(), watch.error) == (2, 2, 4, "")
    finally:
        watch.stop()
    assert watch._thread is not None and not watch._thread.is_alive()


def test_a_watch_stopped_before_its_topic_appears_ends_quietly(kafka_broker: Broker) -> None:
    watch = TopicWatch(kafka_broker.bootstrap, "never-created", {"x"})
    watch.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    watch.stop()
    assert time.monotonic() - t0 < 5
    assert watch._thread is not None and not watch._thread.is_alive()
    assert watch.error == "" and watch.snapshot() == ([], {}, 0)
