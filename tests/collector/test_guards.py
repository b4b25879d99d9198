"""An unauthenticated client cannot starve the collector: thousands of raw TCP
connections that never speak HTTP/2 are closed after the handshake timeout, connections beyond the
cap are closed on accept, and a real agent connects and delivers every event meanwhile."""

from __future__ import annotations

import contextlib
import logging
import resource
import selectors
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, consume_all
from tests.support.streaming import collector_cfg, decode_all, make_exporter

TOPIC = "events"


@contextlib.contextmanager
def idle_sockets(port: int, n: int) -> Iterator[list[socket.socket]]:
    """n loopback connections to port that send nothing (bounded, closed at the end)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def wait_closed_by_peer(socks: list[socket.socket], timeout: float) -> int:
    """How many of socks the server closed (EOF or reset) within timeout; whatever the server sent
    before closing (its HTTP/2 settings) is read and ignored."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + timeout
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:  # reset
                data = b""
            if not data:
                sel.unregister(sock)
                closed += 1
    sel.close()
    return closed


def _deliver(target: str, n: int) -> tuple[int, dict[str, int]]:
    exp = make_exporter(target, batch=50)
    events = [make_event(i) for i in range(n)]
    for i in range(0, n, 50):
        exp.emit(events[i : i + 50], {})
    exp.close(30)
    return int(exp.metrics.value("tcpscope_agent_events_acked_total")), exp.losses()


def test_thousands_of_idle_sockets_do_not_keep_an_agent_out(
    kafka_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="collector.server")
    kafka_broker.create_topic(TOPIC)
    cfg = collector_cfg(kafka_broker.bootstrap, TOPIC, handshake_timeout=3.0)
    with collector(cfg) as col, idle_sockets(col.port, 3000) as flood:
        time.sleep(0.5)  # the flood is accepted and waiting in the handshake
        started = time.monotonic()
        acked, losses = _deliver(col.target, 1000)  # while the 3,000 are open
        assert (acked, losses) == (1000, {})
        assert time.monotonic() - started < 20
        # the server closes every one of them after the handshake timeout, without the client letting go
        assert wait_closed_by_peer(flood, timeout=3.0 + 15) == 3000
        assert col.metrics.value("tcpscope_collector_events_received_total") == 1000
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # raised to the hard limit at start-up
    assert any(r.getMessage().startswith(f"open file limit {soft}") for r in caplog.records)
    evs, _ = decode_all(consume_all(kafka_broker.bootstrap, TOPIC, want=1000 + 20))
    assert sorted(d.event.socket_id for d in evs if d.event) == list(range(1, 1001))


def test_connections_beyond_the_cap_are_closed_and_the_agent_gets_in(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC)
    cfg = collector_cfg(kafka_broker.bootstrap, TOPIC, handshake_timeout=2.0, max_connections=300)
    with collector(cfg) as col, idle_sockets(col.port, 1000) as flood:
        # the 700 over the cap are closed on accept, at once; the 300 within it wait for the timeout
        early = wait_closed_by_peer(flood, timeout=1.0)
        assert 700 <= early < 1000
        acked, losses = _deliver(col.target, 500)  # gets in once the handshake timeout frees the cap
        assert (acked, losses) == (500, {})
        assert wait_closed_by_peer(flood, timeout=5.0) == 1000
    evs, _ = decode_all(consume_all(kafka_broker.bootstrap, TOPIC, want=500 + 10))
    assert sorted(d.event.socket_id for d in evs if d.event) == list(range(1, 501))


# an HTTP/2 client preface and an empty SETTINGS frame: the handshake done, then no call ever
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def test_connections_that_never_call_are_closed_after_the_idle_limit(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC)
    cfg = collector_cfg(kafka_broker.bootstrap, TOPIC, handshake_timeout=1.0, max_connection_idle=2.0)
    with collector(cfg) as col, idle_sockets(col.port, 300) as quiet:
        for s in quiet:
            s.setblocking(True)
            s.sendall(H2_PREFACE)
            s.setblocking(False)
        # past the handshake timeout they are still open: they did handshake
        assert wait_closed_by_peer(quiet, timeout=1.5) == 0
        assert wait_closed_by_peer(quiet, timeout=2.0 + 10) == 300
        acked, losses = _deliver(col.target, 100)  # an agent always has a call open: never idle
        assert (acked, losses) == (100, {})
