"""tcpscope-tail reads a Kafka that only speaks TLS, with the collector's flags
(--kafka-security-protocol SSL --kafka-ssl-cafile): a real broker (tansu) behind a TLS endpoint
that it advertises as its own listener, so every client connection, metadata and fetches alike,
goes through a real TLS handshake verified against the test CA."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpscope import render
from tcpscope.v1.events_pb2 import EventBatch
from tcpscope_sim.broker import tansu_command
from tests.support.events import make_event
from tests.support.kafka import Broker, free_port, publish_batches, run_tail
from tests.support.tls import TestCA

TOPIC = "tls-events"


def _pump(a: socket.socket, b: socket.socket, locks: dict[int, threading.Lock], stop: threading.Event) -> None:
    """Relay a -> b. An SSL socket is one OpenSSL object, which two threads must not use at once (the
    other direction's pump writes to it): every call on a socket holds that socket's lock, and a read
    starts only when data is there, so no lock is held across a wait for the peer."""
    with contextlib.suppress(OSError, ValueError):
        while not stop.is_set():
            if not (isinstance(a, ssl.SSLSocket) and a.pending()):
                ready, _, _ = select.select([a], [], [], 0.1)
                if not ready:
                    continue
            with locks[id(a)]:
                data = a.recv(65536)
            if not data:
                break
            with locks[id(b)]:
                b.sendall(data)
    with contextlib.suppress(OSError), locks[id(b)]:
        b.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def tls_front(port: int, backend: int, cert: str, key: str) -> Iterator[None]:
    """Terminates TLS on 127.0.0.1:port and relays each connection to 127.0.0.1:backend."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()
    opened: list[socket.socket] = []  # closed at the end: every relayed connection's two sockets
    pumps: list[threading.Thread] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = srv.accept()
            except OSError:
                return
            try:
                conn = ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()  # a client that does not speak TLS, or does not trust us
                continue
            try:
                back = socket.create_connection(("127.0.0.1", backend))
            except OSError:
                conn.close()  # the client sees the connection closed and retries
                continue
            opened.extend((conn, back))
            locks = {id(conn): threading.Lock(), id(back): threading.Lock()}
            for a, b in ((conn, back), (back, conn)):
                t = threading.Thread(target=_pump, args=(a, b, locks, stop), daemon=True)
                t.start()
                pumps.append(t)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        srv.close()
        t.join(5)
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for pump in pumps:
            pump.join(5)
        for sock in opened:
            sock.close()


@pytest.fixture()
def tls_kafka(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(bootstrap, CA file) of a broker reachable only over TLS."""
    ca = TestCA(tmp_path)
    server = ca.server()
    front = free_port()
    b = Broker()
    # tansu advertises the TLS front as its address: clients never reach it in clear text
    b.proc = subprocess.Popen(
        tansu_command("127.0.0.1", b.port, advertised=f"127.0.0.1:{front}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # the relay connects to the broker per client connection: it must listen first (on a busy
        # machine tansu takes longer to start than the client to connect)
        deadline = time.monotonic() + 20
        while True:
            assert b.proc.poll() is None, f"tansu exited with {b.proc.returncode}"
            try:
                socket.create_connection(("127.0.0.1", b.port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"tansu did not listen on {b.port}"
                time.sleep(0.05)
        with tls_front(front, b.port, server.cert, server.key):
            yield f"127.0.0.1:{front}", ca.ca_file
    finally:
        b.stop()


@pytest.mark.slow
def test_tail_reads_a_tls_only_kafka_with_the_collector_flags(tls_kafka: tuple[str, str]) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    bootstrap, ca_file = tls_kafka
    tls = {"security_protocol": "SSL", "ssl_cafile": ca_file}
    deadline = time.monotonic() + 10
    while True:  # the broker behind the front may take a moment to listen
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, **tls)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
    admin.close()
    events = [make_event(i) for i in range(4)]
    batch = EventBatch(schema_version=1, node="n", agent_id="a", sequence=1, events=events)
    publish_batches(bootstrap, TOPIC, [batch], producer=tls)
    tail = ["--from-beginning", "--duration", "3", "--format", "json", "--rows", "socket"]
    tls_flags = ["--kafka-security-protocol", "SSL", "--kafka-ssl-cafile", ca_file]
    res = run_tail(bootstrap, TOPIC, *tail, *tls_flags, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [render.json_line(e) for e in events]
    # the control: the same tail in clear text gets nothing from this Kafka
    plain = run_tail(bootstrap, TOPIC, *tail, timeout=60)
    assert (plain.returncode, plain.stdout) == (2, "")
    assert plain.stderr.startswith("tcpscope-tail: ") and len(plain.stderr.splitlines()) == 1, plain.stderr
