"""docs/resets.md is what the kernel does: each row of its "who sees what" table, and the two rows
that look wrong (FIN_WAIT1 -> FIN_WAIT1, role=ROLE_UNSPECIFIED), reproduced with the agent's real
programs on loopback. Root and BPF are required (fails, never skips, without them)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from agent.config import AgentConfig
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    CLOSE,
    ESTABLISHED,
    FIN_WAIT1,
    NORMAL,
    PASSIVE,
    RESET_RECEIVED,
    RESET_SENT,
    ROLE_UNSPECIFIED,
    SYN_SENT,
    TcpEvent,
)
from tests.support import traffic
from tests.support.kernel import ALL_BUT_PROBE, Harness, kernel_harness, kind, require_root


@pytest.fixture(scope="module")
def ports() -> list[int]:
    return [traffic.free_port() for _ in range(6)]


@pytest.fixture(scope="module")
def agent(ports: list[int]) -> Iterator[Harness]:
    require_root()
    with kernel_harness(AgentConfig(ports=tuple(ports), events=ALL_BUT_PROBE)) as h:
        yield h


def _listener(port: int) -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(8)
    return srv


def _pair(srv: socket.socket) -> tuple[socket.socket, socket.socket]:
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    return c, s


def _of(agent: Harness, port: int, want_lifecycles: int) -> tuple[list[TcpEvent], list[TcpEvent]]:
    """(the client socket's events, the server socket's events) of the one connection from `port`'s
    client, after its lifecycles arrived; the listener's own events are left out."""
    agent.wait(
        lambda e: kind(e) == "lifecycle" and port in (e.local.port, e.remote.port) and e.remote.port != 0,
        count=want_lifecycles,
    )
    evs = [e for e in agent.seen if e.remote.port != 0 and port in (e.local.port, e.remote.port)]
    return [e for e in evs if e.remote.port == port], [e for e in evs if e.local.port == port]


def _summary(evs: list[TcpEvent]) -> list[tuple[str, ...]]:
    """Each event as the table's EVENT column and its key details, in kernel order."""
    out: list[tuple[str, ...]] = []
    for e in evs:
        k = kind(e)
        if k == "reset":
            out.append(("RST_SENT" if e.reset.direction == 1 else "RST_RECV", e.reset.reason_name))
        elif k == "socket_error":
            out.append(("ERROR", e.socket_error.errno_name))
        elif k == "lifecycle":
            lc = e.lifecycle
            out.append(("LIFECYCLE", str(lc.role), str(lc.ending), lc.errno_name, lc.reset_reason_name))
    return out


@pytest.mark.root
def test_refused_connect(agent: Harness, ports: list[int]) -> None:
    port = ports[0]
    c = socket.socket()
    assert c.connect_ex(("127.0.0.1", port)) == 111
    c.close()
    client, server = _of(agent, port, 1)
    # no socket on the server side: its only event is the RST the kernel sent for the port, owned by
    # no process (pid 0, no state)
    assert [(kind(e), e.reset.direction, e.reset.reason_name, e.process.pid, e.reset.state) for e in server] == [
        ("reset", 1, "NO_SOCKET", 0, 0)
    ]
    assert sorted(_summary(client)) == sorted(
        [
            ("RST_RECV", ""),
            ("ERROR", "ECONNREFUSED"),
            ("LIFECYCLE", str(ACTIVE), str(RESET_RECEIVED), "ECONNREFUSED", ""),
        ]
    )
    lc = next(e for e in client if kind(e) == "lifecycle")
    assert lc.lifecycle.last_state == SYN_SENT


@pytest.mark.root
def test_linger_zero_abort_reports_econnreset_on_both_sides(agent: Harness, ports: list[int]) -> None:
    port = ports[1]
    with _listener(port) as srv:
        c, s = _pair(srv)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()  # SO_LINGER 0: tcp_disconnect() sends the RST and sets sk_err = ECONNRESET itself
        time.sleep(0.05)
        s.close()
    client, server = _of(agent, port, 2)
    assert sorted(_summary(client)) == sorted(
        [
            ("RST_SENT", "TCP_STATE"),
            ("ERROR", "ECONNRESET"),
            ("LIFECYCLE", str(ACTIVE), str(RESET_SENT), "ECONNRESET", "TCP_STATE"),
        ]
    )
    assert sorted(_summary(server)) == sorted(
        [("RST_RECV", ""), ("ERROR", "ECONNRESET"), ("LIFECYCLE", str(PASSIVE), str(RESET_RECEIVED), "ECONNRESET", "")]
    )


@pytest.mark.root
def test_close_with_unread_data_aborts_without_an_error_on_the_closing_side(agent: Harness, ports: list[int]) -> None:
    port = ports[2]
    with _listener(port) as srv:
        c, s = _pair(srv)
        s.sendall(b"x" * 10)
        time.sleep(0.05)
        c.close()  # 10 bytes unread: the kernel tosses them and resets (no sk_err on this side)
        time.sleep(0.05)
        s.close()
    client, server = _of(agent, port, 2)
    assert sorted(_summary(client)) == sorted(
        [("RST_SENT", "TCP_ABORT_ON_CLOSE"), ("LIFECYCLE", str(ACTIVE), str(RESET_SENT), "", "TCP_ABORT_ON_CLOSE")]
    )
    assert sorted(_summary(server)) == sorted(
        [("RST_RECV", ""), ("ERROR", "ECONNRESET"), ("LIFECYCLE", str(PASSIVE), str(RESET_RECEIVED), "ECONNRESET", "")]
    )


@pytest.mark.root
def test_fin_wait1_to_fin_wait1_is_close_after_shutdown_with_data_unacknowledged(
    agent: Harness, ports: list[int]
) -> None:
    port = ports[3]
    with _listener(port) as srv:
        c, s = _pair(srv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.setblocking(False)
        try:  # fill the peer's window: the FIN queues behind data the peer has not acknowledged
            while True:
                c.send(b"y" * 65536)
        except BlockingIOError:
            pass
        c.shutdown(socket.SHUT_WR)  # ESTABLISHED -> FIN_WAIT1
        time.sleep(0.05)
        c.close()  # tcp_close_state(): FIN_WAIT1 maps to FIN_WAIT1, and the tracepoint fires anyway
        time.sleep(0.05)
        s.setblocking(False)
        try:
            while s.recv(1 << 20):
                pass
        except BlockingIOError:
            pass
        s.close()
    client, _ = _of(agent, port, 2)
    changes = [(e.state_change.old_state, e.state_change.new_state) for e in client if kind(e) == "state_change"]
    assert changes[:3] == [(CLOSE, SYN_SENT), (SYN_SENT, ESTABLISHED), (ESTABLISHED, FIN_WAIT1)]
    assert (FIN_WAIT1, FIN_WAIT1) in changes


@pytest.mark.root
def test_a_socket_older_than_the_agent_has_no_role(ports: list[int]) -> None:
    port = ports[4]
    with _listener(port) as srv:
        c, s = _pair(srv)  # connected before the agent's programs are loaded
        with kernel_harness(AgentConfig(ports=(port,), events=ALL_BUT_PROBE)) as late:
            c.close()
            s.close()
            lcs = late.wait(lambda e: kind(e) == "lifecycle" and e.remote.port != 0, count=2)
    # the agent never saw CLOSE->SYN_SENT (connect) or LISTEN->SYN_RECV (accept): who connected to
    # whom is unknown, and --summary counts these under skipped.no_role
    assert sorted((e.lifecycle.role, e.lifecycle.ending) for e in lcs) == [(ROLE_UNSPECIFIED, NORMAL)] * 2
