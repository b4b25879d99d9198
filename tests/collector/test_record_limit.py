"""A record above the topic's limit is never sent (Kafka would refuse it for good and the agent
would resend its batch forever): left out and counted, with exact counts."""

from __future__ import annotations

from tcpscope.kafka_layout import LAYOUT_PACKED
from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, consume_all
from tests.support.streaming import collector_cfg, decode_all, make_exporter

TOPIC = "events"
BIG = {3, 17, 31}  # events with 50 labels of 120 bytes: above the 3,000-byte record limit (within the bounds)


def _events() -> list:  # type: ignore[type-arg]
    events = [make_event(i) for i in range(40)]
    for i in BIG:
        for k in range(50):
            events[i].local.labels[f"k{k:02d}-" + "x" * 56] = "v" * 60
    return events


def test_event_records_above_the_limit_are_left_out_and_counted(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC)
    events = _events()
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC, kafka_max_record_bytes=3000)) as col:
        exp = make_exporter(col.target, batch=10)
        for i in range(0, 40, 10):
            exp.emit(events[i : i + 10], {})
        exp.close(20)
        # the agent's batches were all acked: the loss is the collector's, and reported in the stream
        assert exp.losses() == {}
        assert exp.metrics.value("tcpscope_agent_events_acked_total") == 40
        assert col.metrics.value("tcpscope_collector_dropped_events_total", reason="collector.record_too_large") == 3
        published = int(col.metrics.value("tcpscope_collector_records_published_total"))
    assert published == 37 + 4
    evs, sums = decode_all(consume_all(kafka_broker.bootstrap, TOPIC, want=published))
    assert sorted(d.event.socket_id for d in evs if d.event) == [
        e.socket_id for i, e in enumerate(events) if i not in BIG
    ]
    lost = {d.sequence: d.summary.lost for d in sums if d.summary}
    assert {s: dict(x.by_reason) for s, x in lost.items() if x.by_reason} == {
        1: {"collector.record_too_large": 1},
        2: {"collector.record_too_large": 1},
        4: {"collector.record_too_large": 1},
    }
    assert sum(x.kernel for x in lost.values()) == 3  # counted in every reader's total


def test_packed_records_above_the_limit_split_the_batch_until_they_fit(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC, partitions=1)
    events = _events()
    cfg = collector_cfg(kafka_broker.bootstrap, TOPIC, kafka_max_record_bytes=3000, record_layout=LAYOUT_PACKED)
    with collector(cfg) as col:
        exp = make_exporter(col.target, batch=10)
        for i in range(0, 40, 10):
            exp.emit(events[i : i + 10], {})
        exp.close(30)
        assert exp.losses() == {}
        assert exp.metrics.value("tcpscope_agent_batches_refused_total", reason="oversized") >= 1
        # a batch published but not acked before a refusal ended the stream is resent and prepared
        # again (at least once): the collector's counter may count it twice, readers dedup it
        assert col.metrics.value("tcpscope_collector_dropped_events_total", reason="collector.record_too_large") >= 3
        published = int(col.metrics.value("tcpscope_collector_records_published_total"))
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=published)
    assert all(len(r.value) <= 3000 for r in records)
    evs, sums = decode_all(records)
    got = {(d.agent_id, d.sequence, d.index): d.event.socket_id for d in evs if d.event}
    assert sorted(got.values()) == [e.socket_id for i, e in enumerate(events) if i not in BIG]
    lost = {(d.agent_id, d.sequence): d.summary.lost for d in sums if d.summary}
    assert sum(x.by_reason["collector.record_too_large"] for x in lost.values()) == 3


def test_without_a_flag_the_limit_is_the_topics_or_kafkas_default(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC)
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC)) as col:
        service = col.server._service
        assert service is not None
        # the test broker does not report max.message.bytes: Kafka's shipped default applies
        assert service.max_record_bytes == 1048588


def test_the_limit_is_read_from_the_topics_config(kafka_broker: Broker) -> None:
    """What a real Kafka answers to DescribeConfigs (kafka-python's shape), through the publisher."""
    from collector.publisher import KafkaPublisher

    kafka_broker.create_topic(TOPIC)
    pub = KafkaPublisher(collector_cfg(kafka_broker.bootstrap, TOPIC))
    try:

        class Admin:
            def describe_configs(self, resources: list[object], config_filter: str) -> dict[str, object]:
                assert config_filter == "all"
                return {
                    "topic": {
                        TOPIC: {
                            "max.message.bytes": {"value": "2097152", "read_only": False},
                            "cleanup.policy": {"value": "delete"},
                        }
                    }
                }

            def close(self) -> None:
                pass

        pub._admin = Admin()
        assert pub.topic_max_record_bytes() == 2097152
        pub._admin = None
        assert pub.topic_max_record_bytes() is None  # the test broker does not say
    finally:
        pub.close(1)
