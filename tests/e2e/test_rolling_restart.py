"""Honest handovers: three rolling restarts of a real agent (SIGTERM, the next one started 1.5 s later,
`--state-dir` set) under real traffic, with the collector healthy, and with it stopped (SIGSTOP)
across one restart so the old agent drains into nothing and still holds the node's lock when the
new one attaches. Every connection made is in Kafka or inside a window an agent reported, and the
old agent's undelivered events reach the stream, counted in the window."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, decode_records, dedup_key
from tcpscope.v1.events_pb2 import ACTIVE, ROLE_UNSPECIFIED
from tests.e2e.test_agent_crash_gap import BIN, Traffic, _wait_attached
from tests.support.collector import CollectorProcess
from tests.support.kafka import Broker, consume_all, free_port
from tests.support.kernel import require_root

TOPIC = "rolling"
NODE = "rolling-node"
RESTARTS = 3
SLACK_NS = 300_000_000  # polling and the close's own time


def _agent(target: str, port: int, state: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        scope = ["--node-name", NODE, "--events", "lifecycle", "--port", str(port), "--state-dir", str(state)]
        pace = ["--batch-max-age", "0.2", "--connections", "each", "--drain-grace", "3", "--log-level", "WARNING"]
        return subprocess.Popen(
            [os.path.join(BIN, "tcpscope-agent"), "--collector", target, "--no-kubernetes", *scope, *pace],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("stalled", [False, True], ids=["collector-healthy", "collector-stalled-across-a-restart"])
def test_rolling_restarts_leave_no_connection_outside_the_counts_and_the_windows(
    kafka_broker: Broker, tmp_path: Path, stalled: bool
) -> None:
    require_root()
    kafka_broker.create_topic(TOPIC)
    port = free_port()
    state = tmp_path / "state"
    col = CollectorProcess(kafka_broker.bootstrap, TOPIC)
    col.start()
    agents: list[subprocess.Popen[bytes]] = []
    try:
        agents.append(_agent(col.target, port, state, tmp_path / "agent-0.log"))
        _wait_attached(agents[0], tmp_path / "agent-0.log")
        traffic = Traffic(port)
        try:
            time.sleep(2)
            for i in range(1, RESTARTS + 1):
                stop_collector = stalled and i == 2
                assert col.proc is not None
                if stop_collector:
                    col.proc.send_signal(signal.SIGSTOP)
                    time.sleep(1.0)  # batches sealed meanwhile are never acked by it
                agents[-1].send_signal(signal.SIGTERM)
                time.sleep(1.5)  # a new pod starts while the old one drains (3 s into nothing when stalled)
                log = tmp_path / f"agent-{i}.log"
                agents.append(_agent(col.target, port, state, log))
                _wait_attached(agents[-1], log)
                codes = agents[-2].wait(30)
                assert codes == 0, (tmp_path / f"agent-{i - 1}.log").read_text()
                if stop_collector:
                    time.sleep(2)
                    col.proc.send_signal(signal.SIGCONT)
                time.sleep(2)
        finally:
            traffic.stop()
        time.sleep(1.0)
        agents[-1].send_signal(signal.SIGTERM)
        assert agents[-1].wait(30) == 0, (tmp_path / f"agent-{RESTARTS}.log").read_text()
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
        if col.proc is not None and col.proc.poll() is None:
            col.proc.send_signal(signal.SIGCONT)
        col.kill()
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=10**9, timeout=5)
    decoded = [d for r in records for d in decode_records(r.headers, r.value)]
    windows = {
        (w.previous_agent_id, w.agent_id): w
        for d in decoded
        if d.kind == RECORD_SUMMARY and d.summary
        for w in d.summary.unobserved
    }
    ids = sorted({d.agent_id for d in decoded})
    assert len(ids) == RESTARTS + 1, ids
    assert len(windows) == RESTARTS, list(windows)  # one per handover, none missing
    causes = sorted(w.cause for w in windows.values())
    if stalled:  # the old agent's batches never acked: its undelivered events are in the window
        assert causes == ["restart", "restart", "undrained"], causes
        (undrained,) = [w for w in windows.values() if w.cause == "undrained"]
        assert undrained.unacked_events > 0 and undrained.unacked_batches == len(undrained.unacked_sequences)
    else:
        assert causes == ["restart"] * RESTARTS, causes

    seen: set[int] = set()  # client ports of the connections in Kafka
    keys = set()
    for d in decoded:
        if d.kind == RECORD_EVENT and d.event is not None and d.event.HasField("lifecycle"):
            keys.add(dedup_key(d))
            ev = d.event
            # a connection open across a handover is seen by the new agent mid-life (no role): counted
            if ev.lifecycle.role in (ACTIVE, ROLE_UNSPECIFIED) and ev.remote.port == port:
                seen.add(ev.local.port)
    made = dict(traffic.done)
    spans = [(w.from_time.ToNanoseconds(), w.to_time.ToNanoseconds()) for w in windows.values()]
    missing = {p: ts for p, ts in made.items() if p not in seen}
    outside = {p: ts for p, ts in missing.items() if not any(f - SLACK_NS <= ts <= t + SLACK_NS for f, t in spans)}
    assert not outside, f"{len(outside)} of {len(made)} connections outside every window {spans}: {outside}"
    assert missing, "a handover leaves some connections to the windows"  # the test tests something

    # tcpscope-tail --summary: every window, and never "no events lost"
    tail = os.path.join(BIN, "tcpscope-tail")
    common = ["--kafka-bootstrap", kafka_broker.bootstrap, "--topic", TOPIC, "--summary", "--from-beginning"]
    doc = json.loads(
        subprocess.run(
            [tail, *common, "--format", "json", "--duration", "5"], check=True, capture_output=True, text=True
        ).stdout
    )
    assert len(doc["gaps"]) == RESTARTS
    if stalled:
        (gap,) = [g for g in doc["gaps"] if g["cause"] == "undrained"]
        assert gap["unacked_events"] > 0
    table = subprocess.run([tail, *common, "--duration", "5"], check=True, capture_output=True, text=True).stdout
    assert table.count(f"# UNOBSERVED node {NODE} from ") == RESTARTS and "no events lost" not in table
    print(
        f"stalled={stalled}: made {len(made)} connections, {len(made) - len(missing)} in Kafka, {len(missing)} "
        f"inside the {RESTARTS} windows ({', '.join(f'{(t - f) / 1e9:.2f}s' for f, t in spans)})"
    )
