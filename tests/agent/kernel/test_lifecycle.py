"""Lifecycle records from real connections: exact application bytes, roles, pids, comms and the
socket's own cgroup on both sides, over IPv4, IPv6 and v4-mapped IPv6, for both close orders."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from tcpscope.v1.events_pb2 import (
    ACTIVE,
    CLOSE,
    ESTABLISHED,
    LISTEN,
    NORMAL,
    PASSIVE,
    SYN_RECV,
    SYN_SENT,
    TcpState,
)
from tests.agent.kernel.conftest import Pods
from tests.support import traffic
from tests.support.kernel import Harness, kind, lifecycle_on, on_port, reports_recursion_misses

CASES = [
    pytest.param(dict(family=socket.AF_INET, server_addr="127.0.0.1"), "127.0.0.1", id="ipv4"),
    pytest.param(dict(family=socket.AF_INET6, server_addr="::1"), "::1", id="ipv6"),
    pytest.param(
        dict(family=socket.AF_INET6, server_addr="::", connect_addr="::ffff:127.0.0.1"), "127.0.0.1", id="v4-mapped"
    ),
]


@pytest.mark.root
@pytest.mark.parametrize("closer", ["client", "server"])
@pytest.mark.parametrize(("net", "ip"), CASES)
def test_exact_bytes_roles_and_attribution(
    subtree: Harness, pods: Pods, net: dict[str, Any], ip: str, closer: str
) -> None:
    ex = traffic.tcp_exchange(
        **net,
        client_bytes=300_000,
        server_bytes=777,
        closer=closer,
        server_cgroup=pods.server.container,
        client_cgroup=pods.client.container,
    )
    events = subtree.wait(lifecycle_on(ex.server_port), count=2)
    lcs = {e.lifecycle.role: e for e in events}
    assert len(events) == 2 and set(lcs) == {ACTIVE, PASSIVE}, events

    client, server = lcs[ACTIVE], lcs[PASSIVE]
    assert (client.lifecycle.tx_bytes, client.lifecycle.rx_bytes) == (300_000, 777)
    assert (server.lifecycle.tx_bytes, server.lifecycle.rx_bytes) == (777, 300_000)
    for ev in (client, server):
        assert ev.lifecycle.ending == NORMAL
        assert ev.lifecycle.errno == 0
        assert ev.local.ip == ip and ev.remote.ip == ip
        assert ev.lifecycle.duration_ns > 0
        # kernel monotonic time converted to wall clock: within a few seconds of now
        assert abs(ev.time.ToNanoseconds() - time.time_ns()) < 5_000_000_000
    assert (client.process.pid, client.process.comm) == (ex.client_pid, "tsc-client")
    assert client.process.cgroup_id == pods.client.id
    assert (client.local.port, client.remote.port) == (ex.client_port, ex.server_port)
    # the passive side: attributed to the listener's owner and the socket's cgroup, not to the task
    # the softirq interrupted
    assert (server.process.pid, server.process.comm) == (ex.server_pid, "tsc-server")
    assert server.process.cgroup_id == pods.server.id
    assert (server.local.port, server.remote.port) == (ex.server_port, ex.client_port)
    assert client.socket_id != server.socket_id
    # who closed first decides which side leaves for CLOSE from LAST_ACK
    last = {closer: "FIN_WAIT2", ("server" if closer == "client" else "client"): "LAST_ACK"}
    assert TcpState.Name(client.lifecycle.last_state) == last["client"]
    assert TcpState.Name(server.lifecycle.last_state) == last["server"]


@pytest.mark.root
def test_state_changes_carry_owner_and_time_in_old_state(subtree: Harness, pods: Pods) -> None:
    ex = traffic.tcp_exchange(
        client_bytes=1000, server_bytes=10, server_cgroup=pods.server.container, client_cgroup=pods.client.container
    )
    events = subtree.wait(lifecycle_on(ex.server_port), count=2)
    states = [e for e in subtree.seen if on_port(ex.server_port)(e) and kind(e) == "state_change"]
    by_sock: dict[int, list[tuple[int, int]]] = {}
    for e in states:
        by_sock.setdefault(e.socket_id, []).append((e.state_change.old_state, e.state_change.new_state))
        want_pid = ex.client_pid if e.process.comm == "tsc-client" else ex.server_pid
        assert e.process.pid == want_pid
        assert e.process.cgroup_id in (pods.client.id, pods.server.id)
    client_id = next(e.socket_id for e in events if e.lifecycle.role == ACTIVE)
    server_id = next(e.socket_id for e in events if e.lifecycle.role == PASSIVE)
    assert by_sock[client_id][:2] == [(CLOSE, SYN_SENT), (SYN_SENT, ESTABLISHED)]
    assert by_sock[server_id][:2] == [(LISTEN, SYN_RECV), (SYN_RECV, ESTABLISHED)]
    assert by_sock[client_id][-1][1] == CLOSE and by_sock[server_id][-1][1] == CLOSE
    listener = [s for s, seq in by_sock.items() if seq[0] == (CLOSE, LISTEN)]
    assert len(listener) == 1 and by_sock[listener[0]][-1] == (LISTEN, CLOSE)
    first = [e for e in states if e.socket_id == client_id]
    assert first[0].state_change.time_in_old_state_ns == 0
    assert all(e.state_change.time_in_old_state_ns > 0 for e in first[1:])
    # no lifecycle for the listening socket
    assert not [e for e in events if e.socket_id == listener[0]]


@pytest.mark.root
def test_destroy_sock_frees_per_socket_state(subtree: Harness, pods: Pods) -> None:
    subtree.wait(lambda e: False, count=1, timeout=0, settle=0.3)
    before = subtree.source.tracked_sockets()
    ex = traffic.tcp_exchange(
        client_bytes=10, server_bytes=10, server_cgroup=pods.server.container, client_cgroup=pods.client.container
    )
    subtree.wait(lifecycle_on(ex.server_port), count=2)
    assert subtree.source.tracked_sockets() == before
    expected = {"kernel.ringbuf_full": 0, "kernel.socket_map_full": 0, "kernel.listener_map_full": 0}
    if reports_recursion_misses():
        expected["kernel.recursion_misses"] = 0
    assert subtree.source.losses() == expected
