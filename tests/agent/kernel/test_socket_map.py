"""Bounds that count right: a full per-socket map counts each socket it cannot track once (sockets,
not failed inserts nor events), and a socket tracked only mid-life (its start found the map full,
room was made later) is marked as such and never reported with wrong bytes sent."""

from __future__ import annotations

import socket
import threading

import pytest

from agent.config import AgentConfig
from tcpscope.v1.events_pb2 import ACTIVE, PASSIVE, ROLE_UNSPECIFIED
from tests.support import traffic
from tests.support.kernel import ALL_BUT_PROBE, kernel_harness, lifecycle_on

CONNECTIONS = 300
MAP = 100  # the listener and 99 connection sockets fit


@pytest.mark.root
def test_a_full_socket_map_counts_sockets_once_and_marks_mid_life_ones() -> None:
    port = traffic.free_port()
    cfg = AgentConfig(ports=(port,), max_sockets=MAP, events=ALL_BUT_PROBE, connections="each", max_connection_events=0)
    with kernel_harness(cfg) as h:
        listener = socket.create_server(("127.0.0.1", port), backlog=CONNECTIONS + 10)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
        children = [listener.accept()[0] for _ in range(CONNECTIONS)]
        # every socket has started (601: the listener, 300 clients, 300 children); only now does any close
        h.pump()
        assert h.source.losses()["kernel.socket_map_full"] == 1 + 2 * CONNECTIONS - MAP

        def serve(child: socket.socket) -> None:
            got = b""
            while len(got) < 10 and (chunk := child.recv(10 - len(got))):
                got += chunk
            child.recv(1)  # the client's FIN
            child.close()

        threads = [threading.Thread(target=serve, args=(c,)) for c in children]
        for t in threads:
            t.start()
        for c in clients:
            c.sendall(b"0123456789")
            c.close()
        for t in threads:
            t.join(10)
        listener.close()
        lcs = h.wait(lifecycle_on(port), count=MAP - 1, timeout=10, settle=1.5)
        losses = h.source.losses()
    # counted once per socket: the later changes of the untracked sockets, which tried again, are not
    assert losses["kernel.socket_map_full"] == 1 + 2 * CONNECTIONS - MAP
    started = [e for e in lcs if e.lifecycle.role in (ACTIVE, PASSIVE)]
    mid_life = [e for e in lcs if e.lifecycle.role == ROLE_UNSPECIFIED]
    assert len(started) == MAP - 1
    assert len(started) + len(mid_life) <= 2 * CONNECTIONS
    for e in started:  # exact bytes: the client sent 10 and received nothing
        lc = e.lifecycle
        assert not lc.tracked_mid_life
        assert (lc.tx_bytes, lc.rx_bytes) == ((10, 0) if lc.role == ACTIVE else (0, 10)), e
    assert mid_life, "room was made when the first tracked sockets went: later ones were tracked mid-life"
    for e in mid_life:  # tx not reported (whether it counts a SYN is unknown), rx exact
        lc = e.lifecycle
        assert lc.tracked_mid_life and lc.tx_bytes == 0, e
        assert lc.rx_bytes == (10 if e.local.port == port else 0), e
