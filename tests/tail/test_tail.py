"""tcpscope-tail against a real broker: the same lines as the agent's renderers, filters, losses."""

from __future__ import annotations

import json
import subprocess
import sys

from tcpscope import render
from tcpscope.kafka_layout import batch_records
from tcpscope.v1.events_pb2 import RECEIVED, EventBatch
from tests.support.events import make_event
from tests.support.kafka import Broker, publish_batches, run_tail

TOPIC = "tail-events"


def _tail(b: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tail(b.bootstrap, TOPIC, "--from-beginning", "--duration", "2", "--rows", "socket", *args)


def test_tail_prints_like_the_agent_and_filters(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC, partitions=1)
    events = [make_event(i) for i in range(6)]
    events[1].local.namespace, events[1].local.name = "shop", "cart-1"
    events[4].remote.namespace, events[4].remote.name = "shop", "db-0"
    events[5].ClearField("lifecycle")
    events[5].reset.direction = RECEIVED
    b1 = EventBatch(schema_version=1, node="node-a", agent_id="a1", sequence=1, events=events[:3])
    b2 = EventBatch(schema_version=1, node="node-a", agent_id="a1", sequence=2, events=events[3:])
    b2.lost.kernel = 7
    b2.lost.by_reason["kernel.ringbuf_full"] = 7
    publish_batches(kafka_broker.bootstrap, TOPIC, [b1])
    publish_batches(kafka_broker.bootstrap, TOPIC, [b2], value_format="json")  # both value formats read the same

    out = _tail(kafka_broker, "--format", "json")
    assert out.returncode == 0, out.stderr
    # a received reset also says who sent it (tail/resetcause.py): here no agent watches the peer
    cause = ', "reset_cause": {"cause": "unknown", "detail": "unwatched_peer", "peer_node": ""}}'
    assert out.stdout.splitlines() == [render.json_line(e) for e in events[:5]] + [
        render.json_line(events[5])[:-1] + cause
    ]
    assert "# lost 7 events on node node-a (agent a1, batch 2): kernel.ringbuf_full=7" in out.stderr

    table = _tail(kafka_broker, "--namespace", "shop")
    assert table.stdout.splitlines() == [
        render.TABLE_HEADER,
        render.table_line(events[1]),
        render.table_line(events[4]),
    ]
    pod = _tail(kafka_broker, "--format", "json", "--pod", "db-0")
    assert pod.stdout.splitlines() == [render.json_line(events[4])]
    kind = _tail(kafka_broker, "--format", "json", "--kind", "reset")
    assert kind.stdout.splitlines() == [render.json_line(events[5])[:-1] + cause]


def test_tail_reads_packed_and_per_event_records_alike(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC, partitions=1)
    events = [make_event(i) for i in range(7)]
    b1 = EventBatch(schema_version=1, node="node-a", agent_id="a1", sequence=1, events=events[:4])
    b2 = EventBatch(schema_version=1, node="node-a", agent_id="a1", sequence=2, events=events[4:])
    publish_batches(kafka_broker.bootstrap, TOPIC, [b1], "protobuf", "packed", partitions=1)
    publish_batches(kafka_broker.bootstrap, TOPIC, [b2], "json", "packed", partitions=1)
    b3 = EventBatch(schema_version=1, node="node-a", agent_id="a1", sequence=3, events=[make_event(9)])
    publish_batches(kafka_broker.bootstrap, TOPIC, [b3])
    out = _tail(kafka_broker, "--format", "json")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [render.json_line(e) for e in [*events, make_event(9)]]


def test_tail_shows_a_resent_batch_once_and_says_what_it_skipped(kafka_broker: Broker) -> None:
    from kafka import KafkaProducer

    kafka_broker.create_topic(TOPIC, partitions=1)
    events = [make_event(i) for i in range(5)]
    b1 = EventBatch(schema_version=1, node="node-a", agent_id="a1", sequence=1, events=events[:3])
    b2 = EventBatch(schema_version=1, node="node-a", agent_id="a1", sequence=2, events=events[3:])
    publish_batches(kafka_broker.bootstrap, TOPIC, [b1, b1, b2])  # batch 1 published twice (its ack was lost)
    p = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    p.send(TOPIC, key=b"x", value=b"not ours")  # another producer's record
    damaged = batch_records(b2)[0]  # a tcpscope event record whose value does not parse
    p.send(TOPIC, key=damaged.key, value=b"\xff\xff\xff", headers=damaged.headers)
    p.flush()
    p.close()
    out = _tail(kafka_broker, "--format", "json")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [render.json_line(e) for e in events]
    assert "# skipped a record that is not a tcpscope record (partition 0, offset 12)" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "# 4 repeated records (batches published twice) shown once; 2 records that are not tcpscope records skipped"
    )
    summary = _tail(kafka_broker, "--summary", "--format", "json")
    doc = __import__("json").loads(summary.stdout.strip().splitlines()[-1])
    assert (doc["events"], doc["duplicates"], doc["undecodable_records"]) == (5, 4, 2)


def test_tail_into_a_closed_pipe_exits_quietly(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC, partitions=1)
    events = [make_event(i) for i in range(3000)]
    many = EventBatch(schema_version=1, node="node-a", agent_id="a1", sequence=1, events=events)
    publish_batches(kafka_broker.bootstrap, TOPIC, [many])
    cmd = (
        f"{sys.executable} -m tail.cli --kafka-bootstrap {kafka_broker.bootstrap} --topic {TOPIC} "
        "--from-beginning --duration 3 --format json | head -n 2"
    )
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == 2
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr


def test_an_early_end_offset_neither_shortens_the_summary_nor_replays_old_records(kafka_broker: Broker) -> None:
    """The bundled broker reports a partition's end as its last record batch's start + 1
    (tail/consume.py): 1,000 records in one producer batch. The summary still reads all of them, and
    a live tail started afterwards prints none of them, only what comes after it started."""
    from kafka import KafkaConsumer, TopicPartition

    kafka_broker.create_topic(TOPIC, partitions=1)
    old = EventBatch(
        schema_version=1, node="node-a", agent_id="a1", sequence=1, events=[make_event(i) for i in range(999)]
    )
    one_batch = {"linger_ms": 5000, "batch_size": 16 * 1024 * 1024, "max_request_size": 16 * 1024 * 1024}
    publish_batches(kafka_broker.bootstrap, TOPIC, [old], producer=one_batch)  # 999 events + the batch's summary
    c = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
    reported = c.end_offsets([TopicPartition(TOPIC, 0)])[TopicPartition(TOPIC, 0)]
    c.close()

    summary = _tail(kafka_broker, "--summary", "--format", "json")
    assert summary.returncode == 0, summary.stderr
    doc = json.loads(summary.stdout)
    assert (doc["events"], doc["batches"]) == (999, 1), f"broker's end offset {reported}"

    argv = [sys.executable, "-m", "tail.cli", "--kafka-bootstrap", kafka_broker.bootstrap, "--topic", TOPIC]
    argv += ["--duration", "6", "--format", "json", "--rows", "socket"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as live:
        assert live.stderr is not None
        if reported < 1000:  # the broker's quirk, which this test is about
            said = live.stderr.readline()  # once its first fetches found where the partition really ends
            assert said == (
                f"# started at the end of the topic: {1000 - reported} records that were already there were "
                "skipped (the broker reported an end offset before its last record; docs/kafka.md)\n"
            )
        new = EventBatch(schema_version=1, node="node-a", agent_id="a1", sequence=2, events=[make_event(5000)])
        publish_batches(kafka_broker.bootstrap, TOPIC, [new])
        out, err = live.communicate(timeout=30)
    assert live.returncode == 0, err
    assert out.splitlines() == [render.json_line(make_event(5000))]
