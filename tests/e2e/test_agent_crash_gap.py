"""Unobserved windows: a real agent killed with -9 and restarted (same --agent-id) while real traffic runs.
Every connection the agents missed lies inside the one window the new agent reports; everything
outside it is in Kafka, exactly; `tcpscope-tail --summary` shows the window; nothing real is
deduplicated away although both agents were given the same --agent-id."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, decode_records, dedup_key
from tcpscope.v1.events_pb2 import ACTIVE
from tests.support.collector import CollectorProcess
from tests.support.kafka import Broker, consume_all, free_port
from tests.support.kernel import require_root

TOPIC = "crash-gap"
NODE = "crash-node"
RATE = 150  # connections per second
BIN = os.path.dirname(sys.executable)


class Traffic:
    """Connect/close loop on loopback in a thread; remembers each connection's client port and the
    wall time its client socket was closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.done: list[tuple[int, int]] = []  # (client port, close time ns)
        self._stop = threading.Event()
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", port))
        self._srv.listen(512)
        self._threads = [
            threading.Thread(target=self._accept, daemon=True),
            threading.Thread(target=self._connect, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _accept(self) -> None:
        self._srv.settimeout(0.2)
        while not self._stop.is_set():
            try:
                c, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            c.recv(1)
            c.recv(1)  # the client's FIN
            c.close()

    def _connect(self) -> None:
        nxt = time.monotonic()
        cport = 20000 + (os.getpid() % 50) * 200  # each connection binds the next free port: none repeats
        while not self._stop.is_set():
            s = socket.socket()
            while True:
                cport += 1
                try:
                    s.bind(("127.0.0.1", cport))
                    break
                except OSError:
                    continue
            s.connect(("127.0.0.1", self.port))
            s.sendall(b"x")
            s.close()
            self.done.append((cport, time.time_ns()))
            nxt += 1 / RATE
            time.sleep(max(0.0, nxt - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._srv.close()


def _agent(target: str, port: int, state_dir: Path, log: Path, connections: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [
                os.path.join(BIN, "tcpscope-agent"),
                "--collector",
                target,
                "--no-kubernetes",
                "--node-name",
                NODE,
                "--agent-id",
                "reused-id",
                "--events",
                "lifecycle",
                "--port",
                str(port),
                "--state-dir",
                str(state_dir),
                "--batch-max-age",
                "0.2",
                "--connections",
                connections,
                "--flow-interval",
                "1",
                "--log-level",
                "WARNING",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )


def _wait_attached(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "attached" in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"agent exited: {log.read_text(errors='replace')}"
        time.sleep(0.05)
    raise AssertionError(f"agent did not attach: {log.read_text(errors='replace')}")


@pytest.mark.root
@pytest.mark.parametrize(
    ("connections", "collector_down"),
    [("each", False), ("each", True), ("aggregate", False)],
    ids=["each-agent-killed", "each-collector-down-then-agent-killed", "aggregate-agent-killed"],
)
def test_kill9_restart_reports_the_window_and_every_missing_connection_is_inside_it(
    kafka_broker: Broker, tmp_path: Path, connections: str, collector_down: bool
) -> None:
    """each: one event per connection, so every missing connection is named. aggregate: connections
    are counted in kernel flows (flushed every second here), which die with the agent: the window
    starts a flow interval earlier, and the counts still add up. collector_down: the collector is
    killed first, so the agent dies holding batches never acknowledged: the window counts them."""
    require_root()
    kafka_broker.create_topic(TOPIC)
    port = free_port()
    state = tmp_path / "state"
    col = CollectorProcess(kafka_broker.bootstrap, TOPIC)
    col.start()
    b: subprocess.Popen[bytes] | None = None
    try:
        a = _agent(col.target, port, state, tmp_path / "a.log", connections)
        _wait_attached(a, tmp_path / "a.log")
        traffic = Traffic(port)
        try:
            time.sleep(3)
            if collector_down:
                col.kill()
                time.sleep(1.5)  # the agent seals batches nobody acknowledges
            a.send_signal(signal.SIGKILL)
            a.wait(10)
            if collector_down:
                col.start()  # same port
            time.sleep(1.5)
            b = _agent(col.target, port, state, tmp_path / "b.log", connections)
            _wait_attached(b, tmp_path / "b.log")
            time.sleep(3)
        finally:
            traffic.stop()
        time.sleep(1.0)  # the last closes reach the agent
        b.send_signal(signal.SIGTERM)
        assert b.wait(30) == 0, (tmp_path / "b.log").read_text()
    finally:
        if b is not None and b.poll() is None:
            b.kill()
        col.kill()
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=10**9, timeout=5)
    decoded = [d for r in records for d in decode_records(r.headers, r.value)]

    # the window, from the new agent's first batch
    windows = [w for d in decoded if d.kind == RECORD_SUMMARY and d.summary for w in d.summary.unobserved]
    assert len({(w.previous_agent_id, w.agent_id) for w in windows}) == 1, windows
    w = windows[0]
    agents = {d.agent_id for d in decoded}
    assert len(agents) == 2 and w.previous_agent_id in agents and w.agent_id in agents  # --agent-id reused
    assert w.previous_agent_id.startswith(f"reused-id/{NODE}/") and w.agent_id.startswith(f"reused-id/{NODE}/")
    assert (w.node, w.cause, w.uncounted) == (NODE, "crash", True)
    f, t = w.from_time.ToNanoseconds(), w.to_time.ToNanoseconds()
    assert 1.5e9 <= t - f <= 60e9

    # exact accounting: every connection made is either in Kafka or inside the window
    seen: set[int] = set()  # client ports of connections reported one by one
    in_flows = 0  # connections counted in the client side's flows
    keys = set()
    for d in decoded:
        if d.kind == RECORD_EVENT and d.event is not None:
            keys.add(dedup_key(d))
            ev = d.event
            if ev.HasField("lifecycle") and ev.lifecycle.role == ACTIVE and ev.remote.port == port:
                seen.add(ev.local.port)
            elif ev.HasField("flow") and ev.flow.role == ACTIVE and ev.remote.port == port:
                in_flows += ev.flow.connections
    made = dict(traffic.done)
    assert len(made) == len(traffic.done)  # no client port reused within the run
    assert seen <= set(made)
    missing_count = len(made) - len(seen) - in_flows
    slack = 300_000_000  # polling and clocks
    alive = w.last_alive_time.ToNanoseconds()
    in_window = [ts for ts in made.values() if f - slack <= ts <= t + slack]
    # nobody can have reported what closed after the old agent's last seal and before the new one attached
    dark = [ts for ts in made.values() if alive + slack <= ts <= t - slack]
    assert len(in_window) >= missing_count >= len(dark) > 0, (len(in_window), missing_count, len(dark))
    if connections == "each":  # each missing connection by name: all inside the window
        missing = {p: ts for p, ts in made.items() if p not in seen}
        outside = {p: ts for p, ts in missing.items() if not f - slack <= ts <= t + slack}
        assert not outside, (
            f"{len(outside)} connections missing outside the window {f}..{t}: {sorted(outside.values())[:5]}"
        )
    else:
        assert in_flows > 0  # (a few connections may still come one by one, e.g. at a flow map's start)

    # tcpscope-tail --summary: the gap in the JSON document and in the table's footer; no conflict,
    # and every distinct event record counted (none deduplicated away under the reused --agent-id)
    tail = os.path.join(BIN, "tcpscope-tail")
    common = ["--kafka-bootstrap", kafka_broker.bootstrap, "--topic", TOPIC, "--summary", "--from-beginning"]
    doc = json.loads(
        subprocess.run(
            [tail, *common, "--format", "json"], check=True, capture_output=True, text=True, timeout=60
        ).stdout
    )
    (gap,) = doc["gaps"]
    assert (gap["node"], gap["previous_agent_id"], gap["agent_id"], gap["cause"]) == (
        NODE,
        w.previous_agent_id,
        w.agent_id,
        "crash",
    )
    assert doc["conflicts"] == 0 and doc["events"] == len(keys)
    # both agents numbered their batches from 1 under the same --agent-id; under one
    # id, these records of the new agent would have been dropped as "duplicates" of the old one's
    old_keys = {(q, i) for a_id, q, i in keys if a_id == w.previous_agent_id}
    reused = [k for k in keys if k[0] == w.agent_id and (k[1], k[2]) in old_keys]
    assert reused
    old_events = {
        dedup_key(d)
        for d in decoded
        if d.kind == RECORD_EVENT and d.agent_id == w.previous_agent_id and d.sequence in set(w.unacked_sequences)
    }
    assert gap["missing_events"] == w.unacked_events - len(old_events)
    if collector_down:  # batches sealed while no collector acked them: counted, and really missing
        assert w.unacked_batches == len(w.unacked_sequences) > 0 and gap["missing_events"] > 0
    table = subprocess.run([tail, *common], check=True, capture_output=True, text=True, timeout=60).stdout
    assert f"# UNOBSERVED node {NODE} from " in table and "no events lost" not in table
    print(
        f"{connections}: made {len(made)} connections, {len(seen) + in_flows} seen by an agent, "
        f"{missing_count} missing, all inside "
        f"the {(t - f) / 1e9:.2f}s window; unacked at the crash: {w.unacked_batches} batches, "
        f"{w.unacked_events} events, {gap['missing_events']} of them not in Kafka; {len(reused)} records of the "
        f"new agent at (sequence, index) the old one had used, all counted"
    )
