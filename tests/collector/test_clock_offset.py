"""Clocks (docs/kafka.md, "Clocks"): node-1's clock runs 5 s ahead (its events and its exporter's
wall clock alike), node-2's is right. A real collector process measures the offset from batches and
acks and exports it; the batch summary records carry it; the event records of node-1 carry the
correction; and tcpscope-tail, correcting by it, prints the same summary and the same reset causes
as for the same traffic with both clocks right (10 ok connections, 5 server aborts)."""

from __future__ import annotations

import datetime
import functools
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from agent.export import Exporter, ExporterSettings, GrpcTransport, TransportSettings
from agent.metrics import AgentMetrics
from tcpscope.kafka_layout import H_CLOCK_OFFSET, decode_records
from tcpscope.v1 import events_pb2 as pb
from tests.support.collector import CollectorProcess
from tests.support.kafka import Broker, consume_all, free_port, run_tail
from tests.support.streaming import wait_until
from tests.tail.test_summary import API, WEB, both

SKEW_NS = 5_000_000_000


def _exporter(target: str, node: str, wall: Callable[[], float]) -> Exporter:
    metrics = AgentMetrics()
    t = GrpcTransport(TransportSettings(target=target, backoff_initial_s=0.05, backoff_max_s=0.5), metrics)
    settings = ExporterSettings(
        node=node,
        agent_id=f"{node}/1",
        batch_max_events=4,
        batch_max_age=0.05,
        buffer_max_events=10_000,
        heartbeat_s=0.05,
    )
    return Exporter(settings, t, metrics, wall=wall)


def _traffic(t0: int, skew_ns: int) -> tuple[list[pb.TcpEvent], list[pb.TcpEvent]]:
    """(node-1's events, node-2's events): web-1 on node-1 (clock + skew) -> api-1 on node-2."""
    n1: list[pb.TcpEvent] = []
    n2: list[pb.TcpEvent] = []
    sid = 1
    for i in range(15):
        t = t0 + i * 300_000_000
        abort = i >= 10
        c, s = both(
            WEB,
            API,
            40000 + i,
            9000,
            t,
            c_kw={"ending": pb.RESET_RECEIVED, "errno": 104, "last_state": pb.ESTABLISHED} if abort else None,
            s_kw={"ending": pb.RESET_SENT, "reason": "TCP_ABORT_ON_CLOSE"} if abort else None,
        )
        c.node, c.socket_id, s.node, s.socket_id = "node-1", sid, "node-2", sid + 1
        sid += 2
        mine = [c]
        theirs = [s]
        if abort:
            sent = pb.TcpEvent(node="node-2", socket_id=s.socket_id, local=s.local, remote=s.remote)
            sent.time.FromNanoseconds(s.time.ToNanoseconds() - 2_000_000)
            sent.reset.direction, sent.reset.state, sent.reset.reason_name = (
                pb.SENT,
                pb.ESTABLISHED,
                "TCP_ABORT_ON_CLOSE",
            )
            got = pb.TcpEvent(node="node-1", socket_id=c.socket_id, local=c.local, remote=c.remote)
            got.time.FromNanoseconds(s.time.ToNanoseconds() - 1_900_000)
            got.reset.direction, got.reset.state = pb.RECEIVED, pb.ESTABLISHED
            mine.append(got)
            theirs.insert(0, sent)
        n1 += mine
        n2 += theirs
    for ev in n1:  # node-1's clock: every time it stamps is ahead
        ev.time.FromNanoseconds(ev.time.ToNanoseconds() + skew_ns)
    return n1, n2


def _acked_heartbeats(exp: Exporter, n: int) -> bool:
    exp.emit([], {})  # seals a heartbeat when due
    return exp.metrics.value("tcpscope_agent_batches_acked_total") >= n


def _metric(port: int, name: str, **labels: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    assert want is not None
    return None


def _run(broker: Broker, topic: str, skew_ns: int, t0: int) -> dict[str, Any]:
    """Both agents' traffic through a collector process; what it measured, and what Kafka holds."""
    broker.create_topic(topic, partitions=1)
    mport = free_port()
    col = CollectorProcess(broker.bootstrap, topic, extra=("--metrics-port", str(mport), "--kafka-linger-ms", "5"))
    col.start()
    try:
        ahead = _exporter(col.target, "node-1", lambda: time.time() + skew_ns / 1e9)
        right = _exporter(col.target, "node-2", time.time)
        for exp in (ahead, right):  # heartbeats until acks come back: the offset is bounded from then on
            wait_until(functools.partial(_acked_heartbeats, exp, 3), 10)
        n1, n2 = _traffic(t0, skew_ns)
        ahead.emit(n1, {})
        right.emit(n2, {})
        offsets = {}
        for node in ("node-1", "node-2"):
            got = _metric(mport, "tcpscope_agent_clock_offset_seconds", node=node, agent=f"{node}/1")
            assert got is not None, node
            offsets[node] = got
        ahead.close(10)
        right.close(10)
    finally:
        col.kill()
    records = consume_all(broker.bootstrap, topic, want=len(n1) + len(n2) + 12)
    return {"offsets": offsets, "records": records, "events": len(n1) + len(n2)}


@pytest.fixture
def runs(kafka_broker: Broker) -> dict[str, dict[str, Any]]:
    t0 = time.time_ns() - 60 * 10**9  # the same traffic at the same true times in both runs
    return {
        "skewed": _run(kafka_broker, "skewed", SKEW_NS, t0),
        "behind": _run(kafka_broker, "behind", -SKEW_NS, t0),
        "right": _run(kafka_broker, "right", 0, t0),
    }


def _ns(rfc3339: str) -> int:
    return int(datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1e9)


def _summary(broker: Broker, topic: str) -> dict[str, Any]:
    p = run_tail(broker.bootstrap, topic, "--summary", "--from-beginning", "--duration", "4", "--format", "json")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


def test_the_collector_measures_the_offset_and_readers_correct_by_it(
    kafka_broker: Broker, runs: dict[str, Any]
) -> None:
    assert runs["behind"]["offsets"]["node-1"] == pytest.approx(-5.0, abs=0.05)
    skewed = runs["skewed"]
    assert skewed["offsets"]["node-1"] == pytest.approx(5.0, abs=0.05)
    assert skewed["offsets"]["node-2"] == pytest.approx(0.0, abs=0.05)
    notes = [
        (d.summary.node, d.summary.collector)
        for r in skewed["records"]
        for d in decode_records(r.headers, r.value)
        if d.summary is not None
    ]
    bounded = [n for node, n in notes if node == "node-1" and n.clock_offset_bounded]
    assert bounded, notes
    for n in bounded:
        assert abs(n.clock_offset_ns - SKEW_NS) <= n.clock_offset_error_ns + 1_000_000
        assert n.clock_offset_error_ns < 50_000_000
    assert all(abs(n.clock_offset_ns) < 50_000_000 for node, n in notes if node == "node-2" and n.clock_offset_bounded)
    # node-1's event records carry the correction; node-2's (a right clock) none
    headers = {(dict(r.headers)["node"].decode(), H_CLOCK_OFFSET in dict(r.headers)) for r in skewed["records"]}
    assert ("node-1", True) in headers and ("node-2", True) not in headers
    assert ("node-1", False) in headers  # the summary records: the note is in their value

    _readers_correct_the_times(kafka_broker, "skewed", runs["skewed"]["events"])
    _readers_correct_the_times(kafka_broker, "behind", runs["skewed"]["events"])


def _readers_correct_the_times(kafka_broker: Broker, topic: str, events: int) -> None:
    """tcpscope-tail's summary and reset causes equal those of the right clocks."""
    skewed, right = _summary(kafka_broker, topic), _summary(kafka_broker, "right")
    assert skewed["events"] == right["events"] == events
    times = ("first_seen", "last_seen")  # corrected within the measurement's error (under a millisecond here)
    assert [{k: v for k, v in r.items() if k not in times} for r in skewed["pairs"]] == [
        {k: v for k, v in r.items() if k not in times} for r in right["pairs"]
    ]
    for a, b in zip(skewed["pairs"], right["pairs"], strict=True):
        for k in times:
            assert abs(_ns(a[k]) - _ns(b[k])) < 50_000_000, (a[k], b[k])
    (row,) = skewed["pairs"]
    assert row["connections"] == 15
    assert row["reset_causes"] == {"app": {"TCP_ABORT_ON_CLOSE": 5}}
    # the live view shows node-1's events on the collector's clock, next to node-2's
    p = run_tail(
        kafka_broker.bootstrap, topic, "--from-beginning", "--duration", "4", "--format", "json", "--rows", "socket"
    )
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    causes = [r["reset_cause"] for r in rows if "reset_cause" in r]
    # each abort's received RST and the client's lifecycle: the server's application, as with right clocks
    assert [(c["cause"], c["detail"], c["peer_node"]) for c in causes] == [("app", "TCP_ABORT_ON_CLOSE", "node-2")] * 10
