"""Run a real collector (gRPC server + Kafka publisher) in-process, or as a `tcpscope-collector`
subprocess that tests can kill and restart on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from collector.config import CollectorConfig
from collector.server import CollectorServer
from tests.support.kafka import free_port


class InProcessCollector:
    """A CollectorServer on its own event loop thread; `metrics` is readable from the test."""

    def __init__(self, cfg: CollectorConfig) -> None:
        self.cfg = cfg
        self.server = CollectorServer(cfg)
        self.metrics = self.server.metrics
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="collector-loop", daemon=True)
        self._thread.start()
        self.port = self._call(self.server.start())

    def _call(self, coro: object) -> int:
        fut: Future[int] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return fut.result(30)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 0.5) -> None:
        """Stop the server and its loop (again: nothing)."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._call(self.server.stop(grace))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextlib.contextmanager
def collector(cfg: CollectorConfig) -> Iterator[InProcessCollector]:
    c = InProcessCollector(cfg)
    try:
        yield c
    finally:
        c.stop()


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class CollectorProcess:
    """`python -m collector` as a child process (SIGKILL-able), restartable on the same port."""

    bootstrap: str
    topic: str
    port: int = 0
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not self.port:
            self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--kafka-bootstrap",
                self.bootstrap,
                "--topic",
                self.topic,
                "--log-level",
                "WARNING",
                *self.extra,
            ],
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
            stdin=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"
