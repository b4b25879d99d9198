"""The record layouts: the partition hash equals Kafka's, packed records round-trip exactly."""

from __future__ import annotations

import ipaddress
import random

import pytest

from tcpscope.kafka_layout import (
    H_BATCH_INDEXES,
    RECORD_EVENT,
    RECORD_PACKED,
    RECORD_SUMMARY,
    _endpoint_sort_key,
    batch_records,
    connection_key,
    decode_record,
    decode_records,
    header_map,
    murmur2,
    partition_for,
)
from tcpscope.v1.events_pb2 import Endpoint, EventBatch
from tests.support.events import make_event


def test_partition_for_is_kafkas_default_partitioner() -> None:
    from kafka.partitioner.default import DefaultPartitioner

    class Cluster:
        def __init__(self, n: int) -> None:
            self.n = n

        def topics(self) -> set[str]:
            return {"t"}

        def partitions_for_topic(self, _topic: str) -> set[int]:
            return set(range(self.n))

        def available_partitions_for_topic(self, _topic: str) -> set[int]:
            return set(range(self.n))

    rng = random.Random(7)
    part = DefaultPartitioner()
    for _ in range(500):
        key = connection_key(make_event(rng.randrange(100_000), port=rng.randrange(1, 65536)))
        n = rng.randrange(1, 64)
        assert partition_for(key, n) == part.partition("t", key, key, b"", b"", Cluster(n))


def test_murmur2_equals_kafka_python_on_every_tail_length() -> None:
    from kafka.partitioner.default import murmur2 as reference

    rng = random.Random(3)
    for n in list(range(0, 70)) * 20:
        data = rng.randbytes(n)
        assert murmur2(data) & 0x7FFFFFFF == reference(data) & 0x7FFFFFFF
        assert murmur2(data) == reference(data) & 0xFFFFFFFF


def test_endpoint_order_equals_ipaddress_order() -> None:
    ips = [
        "10.0.0.2",
        "10.0.0.10",
        "9.255.255.255",
        "::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
        "fe80::1%eth0",
        "not-an-ip",
        "198.18.0.1",
    ]
    eps = [Endpoint(ip=ip, port=p) for ip in ips for p in (80, 443)]

    def reference(ep: Endpoint) -> tuple[int, bytes, int]:
        try:
            a = ipaddress.ip_address(ep.ip)
            return (a.version, a.packed, ep.port)
        except ValueError:
            return (0, ep.ip.encode(), ep.port)

    assert [_endpoint_sort_key(e) for e in eps] == [reference(e) for e in eps]


@pytest.mark.parametrize("value_format", ["protobuf", "json"])
def test_packed_records_group_by_partition_and_decode_to_the_same_events(value_format: str) -> None:
    events = [make_event(i, port=8000 + i % 7) for i in range(200)]
    batch = EventBatch(schema_version=1, node="n1", agent_id="a1", sequence=42, events=events)
    batch.lost.kernel = 3
    batch.sent_time.FromNanoseconds(1_700_000_000_123_000_000)
    records = batch_records(batch, value_format, "packed", partitions=5)
    packed, summary = records[:-1], records[-1]
    assert decode_record(summary.headers, summary.value).kind == RECORD_SUMMARY
    assert sorted(r.partition for r in packed if r.partition is not None) == [0, 1, 2, 3, 4]
    seen: list[tuple[int, int]] = []
    for r in packed:
        assert decode_record(r.headers, r.value).kind == RECORD_PACKED
        ds = decode_records(r.headers, r.value)
        assert all(d.kind == RECORD_EVENT and d.agent_id == "a1" and d.sequence == 42 for d in ds)
        idx = [d.index for d in ds]
        assert idx == sorted(idx)  # a partition's events keep their batch order
        assert header_map(r.headers)[H_BATCH_INDEXES] == ",".join(map(str, idx))
        assert r.partition == partition_for(r.key, 5)
        for d in ds:
            assert d.event == events[d.index]
            assert partition_for(connection_key(events[d.index]), 5) == r.partition
            seen.append((d.index, r.partition))
    assert sorted(i for i, _ in seen) == list(range(200))
    # the per-event layout with partitions puts every event where the packed layout did
    per_event = batch_records(batch, value_format, "event", partitions=5)[:-1]
    assert [(i, r.partition) for i, r in enumerate(per_event)] == sorted(seen)
    assert all(decode_records(r.headers, r.value)[0].event == events[i] for i, r in enumerate(per_event))


def test_packed_needs_the_partition_count() -> None:
    with pytest.raises(ValueError, match="partition count"):
        batch_records(EventBatch(events=[make_event(0)]), "protobuf", "packed")


def test_both_ends_flows_of_one_pair_share_a_key() -> None:
    """A flow has no client port: the client's and the server's flows of a pair still share a key
    (and so a partition), distinct from another server port's."""
    from tcpscope.kafka_layout import connection_key
    from tcpscope.v1.events_pb2 import ACTIVE, PASSIVE, Role, TcpEvent

    def flow(role: Role, lip: str, lport: int, rip: str, rport: int) -> TcpEvent:
        ev = TcpEvent()
        ev.local.ip, ev.local.port, ev.remote.ip, ev.remote.port = lip, lport, rip, rport
        ev.flow.role, ev.flow.connections = role, 3
        return ev

    client = flow(ACTIVE, "198.18.1.2", 0, "198.18.2.2", 9000)
    server = flow(PASSIVE, "198.18.2.2", 9000, "198.18.1.2", 0)
    assert connection_key(client) == connection_key(server) == b"198.18.1.2:0-198.18.2.2:9000"
    assert connection_key(flow(ACTIVE, "198.18.1.2", 0, "198.18.2.2", 9001)) != connection_key(client)
