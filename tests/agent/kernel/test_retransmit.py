"""Retransmits from real drops (nftables rules in our own table, on loopback): SYN, SYN-ACK and
data retransmits, each attributed to the socket's owner; exact bytes survive the losses."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest

from tcpscope.v1.events_pb2 import ACTIVE, ESTABLISHED, NORMAL, SYN_SENT
from tests.support import traffic
from tests.support.kernel import Harness, kind, lifecycle_on, on_port


def _connect_with_timeout(port: int, timeout: float) -> tuple[int, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    local = s.getsockname()[1]
    s.settimeout(timeout)
    with contextlib.suppress(OSError):
        s.connect(("127.0.0.1", port))
    s.close()
    return os.getpid(), local


@pytest.mark.root
def test_syn_retransmit(agent: Harness, ports: list[int]) -> None:
    port = ports[0]
    # dropped on input, i.e. lost on the wire: a drop in output fails the transmit, and a
    # failed retransmit is traced only where the tcp_retransmit_skb record has an `err` field (6.18
    # has one; 6.1 has not)
    with traffic.nft_drop(f"tcp dport {port} tcp flags syn drop", hook="input"):
        # the first SYN retransmit is due 1 s after connect() (TCP_TIMEOUT_INIT)
        pid, local = traffic.Child(_connect_with_timeout, port, 1.5, comm="tsc-synrtx").result()
    lcs = agent.wait(lifecycle_on(port), count=1)
    rtx = [e for e in agent.seen if on_port(port)(e) and kind(e) == "retransmit"]
    assert len(rtx) == 1
    assert (rtx[0].process.pid, rtx[0].process.comm, rtx[0].retransmit.state) == (pid, "tsc-synrtx", SYN_SENT)
    assert (rtx[0].local.port, rtx[0].remote.port) == (local, port)
    assert len(lcs) == 1
    lc = lcs[0].lifecycle
    assert (lc.role, lc.ending, lc.retransmits, lc.tx_bytes, lc.rx_bytes, lc.last_state) == (
        ACTIVE,
        NORMAL,
        1,
        0,
        0,
        SYN_SENT,
    )


@pytest.mark.root
def test_synack_retransmit(agent: Harness, ports: list[int]) -> None:
    port = ports[1]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4)
    try:
        # dropped on input: a SYN-ACK whose transmit fails is not traced (tcp_rtx_synack())
        with traffic.nft_drop(f"tcp sport {port} tcp flags & (syn | ack) == (syn | ack) drop", hook="input"):
            _pid, local = traffic.Child(_connect_with_timeout, port, 1.5).result()
    finally:
        listener.close()
    evs = agent.wait(lambda e: on_port(port)(e) and kind(e) == "synack_retransmit", count=1)
    assert evs, [e for e in agent.seen if on_port(port)(e)]
    for e in evs:
        # reported on the listener: its owner (this process), local = the listening side
        assert (e.process.pid, e.local.port, e.remote.port) == (os.getpid(), port, local)


@pytest.mark.root
def test_data_retransmits_keep_bytes_exact(agent: Harness, ports: list[int]) -> None:
    port = ports[2]
    # lost on input (a failed local transmit is retried without being a retransmit)
    with traffic.nft_drop(f"tcp dport {port} numgen inc mod 7 == 3 drop", hook="input"):
        ex = traffic.tcp_exchange(port=port, client_bytes=2_000_000, server_bytes=777, closer="server")
    lcs = agent.wait(lifecycle_on(port), count=2)
    client = next(e for e in lcs if e.lifecycle.role == ACTIVE)
    rtx = [e for e in agent.seen if on_port(port)(e) and kind(e) == "retransmit" and e.socket_id == client.socket_id]
    assert (client.lifecycle.tx_bytes, client.lifecycle.rx_bytes) == (2_000_000, 777)
    assert client.lifecycle.ending == NORMAL
    assert len(rtx) >= 1 and client.lifecycle.retransmits == len(rtx)
    assert all(e.process.pid == ex.client_pid for e in rtx)
    assert any(e.retransmit.state == ESTABLISHED for e in rtx)
