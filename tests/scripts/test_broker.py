"""`make broker` (scripts/broker.py): a real Kafka-protocol broker with the events topic, stopped by
SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

from kafka import KafkaConsumer

from tests.support.kafka import free_port

REPO = Path(__file__).resolve().parents[2]


def test_broker_serves_the_topic_with_three_partitions_and_stops_on_sigterm() -> None:
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "scripts.broker", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == (
                f"broker: Kafka protocol at 127.0.0.1:{port}, topic tcpscope-events (3 partitions), "
                "in memory; Ctrl-C stops it\n"
            ), proc.stderr.read() if proc.stderr else ""
            c = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}")
            try:
                assert c.partitions_for_topic("tcpscope-events") == {0, 1, 2}
            finally:
                c.close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with socket.socket() as s:  # the broker went with it
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_a_taken_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = subprocess.run(
            [sys.executable, "-m", "scripts.broker", "--port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert res.returncode == 2
    assert res.stderr == f"broker: 127.0.0.1:{port} is already taken (another broker?); pick --port\n"
