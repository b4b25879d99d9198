"""tcpscope-sim's topic watch (sim/tcpscope_sim/watch.py) against a real broker: it waits for a topic
the collector has not created yet, keeps only its run's agents, each record once, catches up on
request, and stops when told, in its own thread."""

from __future__ import annotations

import time

from tcpscope.v1.events_pb2 import ACTIVE, Endpoint, EventBatch, Flow, Lifecycle, OpenConnection, TcpEvent
from tcpscope_sim.watch import TopicWatch, pool_count
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


def _pool_event(kind: str, t_ms: int, **fields: object) -> TcpEvent:
    ev = TcpEvent(
        node="node-1", local=Endpoint(ip="198.18.1.2", port=40001), remote=Endpoint(ip="198.18.2.2", port=5432)
    )
    ev.time.FromNanoseconds(1_700_000_000_000_000_000 + t_ms * 1_000_000)
    if kind == "flow":
        ev.local.port = 0
        ev.flow.CopyFrom(Flow(role=ACTIVE, **fields))  # type: ignore[arg-type]
    elif kind == "open":
        ev.open.CopyFrom(OpenConnection(role=ACTIVE, **fields))  # type: ignore[arg-type]
    else:
        ev.lifecycle.CopyFrom(Lifecycle(role=ACTIVE, **fields))  # type: ignore[arg-type]
    return ev


def test_pool_count_adds_reports_flows_and_the_lifecycles_rest_by_pass() -> None:
    """The sim's exactness check of a pooled entry: reports while open (a flow of ordinary ones and an
    open event of one that retransmitted, in one pass), then closes; passes are told apart by time."""
    events = [
        _pool_event("flow", 2000, open_connections=2, tx_bytes=4000, rx_bytes=6),
        _pool_event("open", 2003, tx_bytes=2000, rx_bytes=3, retransmits=1),
        _pool_event("flow", 4001, open_connections=2, tx_bytes=4000, rx_bytes=6),
        _pool_event("open", 4002, tx_bytes=2000, rx_bytes=3),
        _pool_event("flow", 5500, connections=2, tx_bytes=100, rx_bytes=0),  # two close: their rest
        _pool_event("lifecycle", 5600, tx_bytes=4050, rx_bytes=6, reported_tx_bytes=4000, reported_rx_bytes=6),
        TcpEvent(),  # an unrelated event: skipped
    ]
    other = _pool_event("flow", 4001, open_connections=5, tx_bytes=10**6)
    other.remote.port = 6379  # another port: not this pool
    got = pool_count([*reversed(events), other], "198.18.1.2", "198.18.2.2", 5432)
    assert (got.c2s, got.s2c) == (4000 + 2000 + 4000 + 2000 + 100 + 50, 18)
    assert got.passes == [
        (1_700_000_000_000_000_000 + 2000 * 1_000_000, 3, 6000),
        (1_700_000_000_000_000_000 + 4001 * 1_000_000, 3, 12000),
    ]
