"""The collector is the trust boundary (docs/kafka.md, "Bounds"): a plain gRPC client, as any holder
of the shared token could write one, sends events and batches outside the bounds to a real collector
publishing to the real broker. Each bad event is left out and counted by reason (metrics, the batch's
summary record, the ack), bad batch times are cleared and counted, a batch outside the bounds is
refused with its sequence, and the stream goes on: exact counts throughout."""

from __future__ import annotations

import time

from tcpscope.kafka_layout import decode_records
from tcpscope.refusal import MD_REASON, MD_SEQUENCE
from tcpscope.v1.collector_pb2 import BatchAck
from tcpscope.v1.events_pb2 import EventBatch, TcpEvent, UnobservedWindow
from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, consume_all
from tests.support.streaming import RawClient, Refused, collector_cfg, decode_all

TOPIC = "events"


def _batch(seq: int, events: list[TcpEvent], agent: str = "agent-x") -> EventBatch:
    b = EventBatch(schema_version=1, node="node-a", agent_id=agent, sequence=seq)
    b.events.extend(events)
    b.sent_time.FromNanoseconds(time.time_ns())
    return b


def _bad_events() -> dict[str, list[TcpEvent]]:
    """Events each outside one bound, by the loss reason the collector gives them."""
    far = make_event(100)
    far.time.seconds = 10**12  # year 33658: crashed every reader before
    old = make_event(101)
    old.time.seconds = int(time.time()) - 30 * 86400  # older than --max-event-age (7 days)
    ahead = make_event(102)
    ahead.time.seconds = int(time.time()) + 7200  # beyond --max-event-ahead (1 h)
    flow = make_event(103)
    flow.flow.connections = 1
    flow.flow.duration_us_log2.extend([0] * 4999 + [1])  # 5,000 buckets: OverflowError in the table
    late_close = make_event(104)
    late_close.flow.connections = 1
    late_close.flow.last_close.seconds = 2**40
    port = make_event(105)
    port.remote.port = 70000
    enum = make_event(106)
    enum.lifecycle.ending = 99  # type: ignore[assignment]
    family = make_event(107)
    family.remote.ip = "2001:db8::1"  # local is 127.0.0.1
    garbage_ip = make_event(108)
    garbage_ip.local.ip = "not-an-address"
    comm = make_event(109)
    comm.process.comm = "c" * 300
    labels = make_event(110)
    for k in range(65):
        labels.local.labels[f"k{k}"] = "v"
    services = make_event(111)  # Endpoint.services: the Service ports an endpoint serves
    for k in range(65):
        services.local.services.add(namespace="shop", name=f"svc-{k}", port=80)
    service_port = make_event(112)
    service_port.local.services.add(namespace="shop", name="api", port=70000)
    service_name = make_event(113)
    service_name.local.services.add(namespace="shop", name="s" * 254, port=80)
    empty = TcpEvent()  # an empty value: not an event
    return {
        "collector.invalid_time": [far, old, ahead, late_close],
        "collector.invalid_repeated": [flow, labels, services],
        "collector.invalid_port": [port, service_port],
        "collector.invalid_enum": [enum],
        "collector.invalid_address": [family, garbage_ip],
        "collector.invalid_string": [comm, service_name],
        "collector.invalid_empty": [empty],
    }


def test_events_outside_the_bounds_are_left_out_counted_and_told(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC)
    good = [make_event(i) for i in range(10)]
    bad = _bad_events()
    mixed = [*good[:5], *(e for evs in bad.values() for e in evs), *good[5:]]
    want = {reason: len(evs) for reason, evs in bad.items()}
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC)) as col, RawClient(col.target) as client:
        ack = client.send(_batch(1, mixed))
        assert isinstance(ack, BatchAck), ack
        assert dict(ack.dropped) == want
        assert dict(ack.clamped) == {}
        for reason, n in want.items():
            assert col.metrics.value("tcpscope_collector_dropped_events_total", reason=reason) == n
        assert col.metrics.value("tcpscope_collector_events_received_total") == len(mixed)
        published = int(col.metrics.value("tcpscope_collector_records_published_total"))
    assert published == 10 + 1
    evs, sums = decode_all(consume_all(kafka_broker.bootstrap, TOPIC, want=published))
    assert sorted(d.event.socket_id for d in evs if d.event) == sorted(e.socket_id for e in good)
    (summary,) = [d.summary for d in sums if d.summary]
    assert dict(summary.lost.by_reason) == want
    assert summary.lost.kernel == sum(want.values())  # every reader's loss total


def test_batch_times_outside_the_window_are_cleared_and_the_stream_goes_on(kafka_broker: Broker) -> None:
    """A batch with sent_time 2^62 ended the collector's stream silently: now the time is cleared,
    counted, and the batch (and the next one) published."""
    kafka_broker.create_topic(TOPIC)
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC)) as col, RawClient(col.target) as client:
        b = _batch(1, [make_event(1)])
        b.sent_time.seconds = 2**62
        w = UnobservedWindow(node="node-a", previous_agent_id="agent-w", agent_id="agent-x", cause="crash")
        w.from_time.seconds = -(2**40)
        w.to_time.FromNanoseconds(time.time_ns())
        b.unobserved.append(w)
        ack = client.send(b)
        assert isinstance(ack, BatchAck), ack
        assert dict(ack.clamped) == {"sent_time": 1, "unobserved_time": 1}
        assert isinstance(client.send(_batch(2, [make_event(2)])), BatchAck)
        assert col.metrics.value("tcpscope_collector_clamped_total", field="sent_time") == 1
        assert col.metrics.value("tcpscope_collector_clamped_total", field="unobserved_time") == 1
        assert col.metrics.value("tcpscope_collector_batches_acked_total") == 2
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=4)
    sums = {d.sequence: d.summary for r in records for d in decode_records(r.headers, r.value) if d.summary}
    first = sums[1]
    assert not first.HasField("sent_time")
    assert dict(first.collector.clamped) == {"sent_time": 1, "unobserved_time": 1}
    assert first.unobserved[0].uncounted and not first.unobserved[0].HasField("from_time")
    assert sums[2].HasField("sent_time") and not sums[2].collector.clamped


def test_a_batch_outside_the_bounds_is_refused_with_its_sequence(kafka_broker: Broker) -> None:
    """Its own fields cannot be left out: refused with the sequence and reason invalid_batch, which the
    agent drops and counts (tcpscope/refusal.py) instead of resending it forever."""
    kafka_broker.create_topic(TOPIC)
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC)) as col, RawClient(col.target) as client:
        b = _batch(7, [make_event(1)])
        for i in range(65):
            b.unobserved.append(UnobservedWindow(node="node-a", previous_agent_id=f"p{i}", agent_id="agent-x"))
        got = client.send(b)
        assert isinstance(got, Refused), got
        assert got.code == "INVALID_ARGUMENT"
        assert got.trailing == {MD_SEQUENCE: "7", MD_REASON: "invalid_batch"}
        assert "bounds (repeated" in got.details
        assert col.metrics.value("tcpscope_collector_rejected_total", reason="invalid_batch") == 1
        assert isinstance(client.send(_batch(8, [make_event(2)])), BatchAck)
        assert col.metrics.value("tcpscope_collector_records_published_total") == 2
