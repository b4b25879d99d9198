"""Fuzz the trust boundary: hundreds of random, well-formed protobuf batches (any value a field can
hold: times of any year, huge ports and enum values, long strings, long histograms, empty events)
go through a real collector to the real broker, then through the readers (tcpscope-tail's summary
and live JSON as processes, the simulator's topic watch). Nothing crashes or hangs, every batch is
acknowledged, and the counts are unchanged: the events in Kafka are exactly those sent less those
the acks say were left out, and every reader counts exactly those, skipping nothing."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpscope.bounds import TimeWindow, event_problem
from tcpscope.v1.events_pb2 import EventBatch, TcpEvent, UnobservedWindow
from tcpscope_sim.watch import TopicWatch
from tests.support.collector import collector
from tests.support.kafka import Broker, run_tail
from tests.support.streaming import RawStream, collector_cfg

TOPIC = "fuzz"
EXAMPLES = 300
NOW = int(time.time())

# each field: (values within the bounds, any value of its type); an event is drawn tame or wild
valid_seconds = st.integers(NOW - 3 * 86400, NOW + 1800)  # inside the collector's window
seconds = st.one_of(
    valid_seconds,
    st.integers(-(2**40), 2**40),  # any year
    st.sampled_from([0, -1, 2**62, 4_102_444_800, 253_402_300_800]),
)
SECONDS = (valid_seconds, seconds)
NANOS = (st.integers(0, 999_999_999), st.one_of(st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1)))
U32 = (st.integers(0, 65535), st.one_of(st.integers(0, 70_000), st.integers(0, 2**32 - 1)))
u64 = st.integers(0, 2**64 - 1)
ENUM = (st.integers(0, 2), st.one_of(st.integers(0, 16), st.integers(0, 2**31 - 1)))
TEXT = (st.text(max_size=20), st.one_of(st.text(max_size=20), st.text(min_size=60, max_size=400)))
IP = (
    st.sampled_from(["127.0.0.1", "198.18.0.7"]),
    st.sampled_from(["127.0.0.1", "198.18.0.7", "::1", "2001:db8::9", "fe80::1%eth0", "", "999.1.1.1", "zz"]),
)
LABELS = (
    st.dictionaries(st.text(max_size=30), st.text(max_size=30), max_size=5),
    st.dictionaries(st.text(max_size=30), st.text(max_size=80), max_size=70),
)
HISTOGRAM = (st.lists(u64, max_size=32), st.lists(u64, max_size=40))
KINDS = ["lifecycle", "state_change", "retransmit", "synack_retransmit", "reset", "socket_error", "probe", "flow"]
errno = st.integers(-(2**31), 2**31 - 1)


@st.composite
def events(draw: st.DrawFn) -> TcpEvent:
    wild = draw(st.booleans())

    def pick(s: tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]) -> Any:
        return draw(s[1] if wild else s[0])

    ev = TcpEvent(node=pick(TEXT), socket_id=draw(u64), connection_id=draw(u64))
    ev.time.seconds, ev.time.nanos = pick(SECONDS), pick(NANOS)
    for ep in (ev.local, ev.remote):
        ep.ip, ep.port, ep.kind = pick(IP), pick(U32), pick(ENUM)
        ep.namespace, ep.name, ep.node = pick(TEXT), pick(TEXT), pick(TEXT)
        for k, v in pick(LABELS).items():
            ep.labels[k] = v
    ev.process.pid, ev.process.comm, ev.process.cgroup_id = draw(u64) % 2**32, pick(TEXT), draw(u64)
    kind = draw(st.sampled_from([*KINDS, None] if wild else KINDS))
    if kind == "lifecycle":
        lc = ev.lifecycle
        lc.role, lc.ending, lc.last_state = pick(ENUM), pick(ENUM), pick(ENUM)
        lc.duration_ns, lc.tx_bytes, lc.rx_bytes = draw(u64), draw(u64), draw(u64)
        lc.errno, lc.errno_name = draw(errno), pick(TEXT)
    elif kind == "state_change":
        ev.state_change.old_state, ev.state_change.new_state = pick(ENUM), pick(ENUM)
        ev.state_change.time_in_old_state_ns = draw(u64)
    elif kind == "reset":
        ev.reset.direction, ev.reset.state, ev.reset.reason = pick(ENUM), pick(ENUM), pick(U32)
        ev.reset.reason_name = pick(TEXT)
    elif kind == "flow":
        fl = ev.flow
        fl.role, fl.source, fl.connections = pick(ENUM), pick(ENUM), draw(u64)
        fl.tx_bytes, fl.rx_bytes, fl.duration_sum_ns, fl.interval_ns = draw(u64), draw(u64), draw(u64), draw(u64)
        fl.duration_us_log2.extend(pick(HISTOGRAM))
        fl.first_close.seconds, fl.last_close.seconds = pick(SECONDS), pick(SECONDS)
    elif kind is not None:
        getattr(ev, kind).SetInParent()
        if kind == "socket_error":
            ev.socket_error.errno, ev.socket_error.state = draw(errno), pick(ENUM)
        elif kind == "probe":
            ev.probe.snd_cwnd, ev.probe.srtt_us = pick(U32), pick(U32)
        elif kind == "retransmit":
            ev.retransmit.state = pick(ENUM)
    return ev


@dataclass
class Sent:
    batches: int = 0
    events: int = 0  # accepted: sent less left out
    dropped: int = 0
    agent_lost: int = 0  # the losses the batches themselves reported (Losses.kernel)
    sequences: set[int] = field(default_factory=set)


def test_random_batches_through_the_collector_and_the_readers(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC, partitions=2)
    sent = Sent()
    with collector(collector_cfg(kafka_broker.bootstrap, TOPIC)) as col, RawStream(col.target) as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(
            evs=st.lists(events(), max_size=12),
            sent_s=seconds,
            lost=st.integers(0, 1000),
            window_s=st.lists(st.tuples(seconds, seconds), max_size=2),
        )
        def one(evs: list[TcpEvent], sent_s: int, lost: int, window_s: list[tuple[int, int]]) -> None:
            sent.batches += 1
            b = EventBatch(schema_version=1, node="node-f", agent_id=f"fuzz/node-f/{sent.batches}", sequence=1)
            b.events.extend(evs)
            b.sent_time.seconds = sent_s
            b.lost.kernel, b.lost.by_reason["kernel.ringbuf_full"] = lost, lost
            for f, t in window_s:
                w = UnobservedWindow(node="node-f", previous_agent_id="fuzz/node-f/0", agent_id=b.agent_id)
                w.from_time.seconds, w.to_time.seconds = f, t
                b.unobserved.append(w)
            ack = client.send(b)
            assert ack.sequence == 1, ack  # never refused, never a broken stream
            left_out = sum(ack.dropped.values())
            # the generated times are well inside the collector's window or far outside it
            accepted = TimeWindow.around(time.time(), 7 * 86400, 3600)
            assert left_out == sum(1 for e in evs if event_problem(e, accepted) is not None)
            sent.events += len(evs) - left_out
            sent.dropped += left_out
            sent.agent_lost += lost

        one()
        assert col.metrics.value("tcpscope_collector_batches_acked_total") == sent.batches == EXAMPLES
        dropped = sum(
            s.value
            for m in col.metrics.registry.collect()
            for s in m.samples
            if s.name == "tcpscope_collector_dropped_events_total"
        )
        assert dropped == sent.dropped
    assert sent.events > EXAMPLES // 4 and sent.dropped > EXAMPLES // 4  # both paths were exercised

    # the live runs below read for their whole duration; so, on this topic, does the summary: it does
    # not see the end of this topic (left open: docs say it exits when read), so 12 s bound it
    p = run_tail(kafka_broker.bootstrap, TOPIC, "--summary", "--from-beginning", "--duration", "12", "--format", "json")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    doc = json.loads(p.stdout)
    assert (doc["events"], doc["batches"]) == (sent.events, sent.batches)
    assert (doc["out_of_bounds_records"], doc["undecodable_records"], doc["conflicts"]) == (0, 0, 0)
    assert doc["losses"]["kernel"] == sent.agent_lost + sent.dropped

    p = run_tail(
        kafka_broker.bootstrap,
        TOPIC,
        "--from-beginning",
        "--duration",
        "20",
        "--format",
        "json",
        "--kind",
        "all",
        "--rows",
        "socket",
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert len([line for line in p.stdout.splitlines() if line.startswith("{")]) == sent.events

    # the default live view joins both ends into one row per connection: it survives them too
    p = run_tail(kafka_broker.bootstrap, TOPIC, "--from-beginning", "--duration", "6", "--format", "json")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr

    watch = TopicWatch(kafka_broker.bootstrap, TOPIC, {"fuzz"})
    watch.start()
    try:
        assert watch.catch_up(30)
        evs, _, batches = watch.snapshot()
        assert (len(evs), batches, watch.skipped, watch.error) == (sent.events, sent.batches, {}, "")
    finally:
        watch.stop()
