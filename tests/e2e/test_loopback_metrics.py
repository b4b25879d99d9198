"""End to end without Kubernetes: loopback connections on one host, the real agent (--no-kubernetes)
streaming to the real collector (a subprocess, with its traffic metrics), a Kafka-protocol broker.
Both sockets of every connection are the same agent's: each connection and each RST is counted once
in tcpscope_connections_total and tcpscope_resets_total (both sockets counted it before). Needs root
and BPF. About 15 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import traffic
from tests.support.collector import CollectorProcess
from tests.support.kafka import Broker, free_port, kafka_broker

__all__ = ["kafka_broker"]

REPO = Path(__file__).resolve().parents[2]
OK, SERVER_RESETS = 6, 5


def _traffic_totals(port: int) -> dict[tuple[str, ...], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, ...], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "tcpscope_connections_total":
                key: tuple[str, ...] = ("outcome", s.labels["outcome"])
            elif s.name == "tcpscope_resets_total":
                key = ("reset", s.labels["sender"], s.labels["reason"])
            else:
                continue
            out[key] = out.get(key, 0) + s.value
    return out


def test_loopback_without_kubernetes_counts_each_connection_once(kafka_broker: Broker, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the end-to-end test needs root (BPF)"
    topic = f"e2e-loopback-{os.getpid()}"
    kafka_broker.create_topic(topic)
    metrics = free_port()
    col = CollectorProcess(kafka_broker.bootstrap, topic, extra=("--metrics-port", str(metrics)))
    col.start()
    server_port = free_port()
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "--no-kubernetes",
                "--node-name",
                "vm",
                "--collector",
                col.target,
                "--port",
                str(server_port),
                "--batch-max-age",
                "0.2",
                "--flow-interval",
                "1",
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while b"attached:" not in log.read_bytes():
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        for i in range(OK + SERVER_RESETS):
            traffic.tcp_exchange(port=server_port, closer="client" if i < OK else "server-rst", client_bytes=100)
        agent.send_signal(signal.SIGTERM)  # it drains: its flows and last batch reach the collector
        assert agent.wait(30) == 0, log.read_text()
        want = {
            ("outcome", "ok"): OK,
            ("outcome", "server_reset"): SERVER_RESETS,
        }
        deadline = time.monotonic() + 20
        while True:
            got = _traffic_totals(metrics)
            outcomes = {k: v for k, v in got.items() if k[0] == "outcome" and v}
            if outcomes == want or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert outcomes == want, got
        resets = {k: v for k, v in got.items() if k[0] == "reset" and v}
        assert sum(resets.values()) == SERVER_RESETS and all(k[1] == "server" for k in resets), resets
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        col.kill()
