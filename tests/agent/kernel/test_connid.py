"""TcpEvent.connection_id from real sockets: both ends of one connection carry the keyed hash of the
ISNs their handshake put on the wire, on loopback, through kube-proxy's DNAT and under SNAT; nothing
else carries one."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.kernel.connid import ConnectionIds
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    LISTEN,
    PASSIVE,
    RECEIVED,
    RESET_RECEIVED,
    RESET_SENT,
    ROLE_UNSPECIFIED,
    SENT,
    TcpEvent,
)
from tests.agent.kernel.conftest import Pods
from tests.support import traffic
from tests.support.kernel import ALL_BUT_PROBE, Harness, kernel_harness, kind, lifecycle_on, on_port


def _ids_of(h: Harness) -> ConnectionIds:
    return h.source._decoder.connection_ids  # the harness' own key (random: no key file)


def _socket_events(h: Harness, socket_id: int) -> list[TcpEvent]:
    return [e for e in h.seen if e.socket_id == socket_id]


def _lifecycles(h: Harness, port: int, count: int = 2) -> tuple[TcpEvent, TcpEvent]:
    evs = h.wait(lifecycle_on(port), count=count)
    roles = {e.lifecycle.role: e for e in evs}
    assert len(evs) == 2 and set(roles) == {ACTIVE, PASSIVE}, evs
    return roles[ACTIVE], roles[PASSIVE]


@pytest.mark.root
@pytest.mark.parametrize(
    ("family", "addr"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], ids=["ipv4", "ipv6"]
)
def test_both_sockets_of_a_loopback_connection_carry_the_hash_of_its_handshake(
    subtree: Harness, pods: Pods, family: int, addr: str
) -> None:
    port = traffic.free_port(family, addr)
    with traffic.syn_capture((port,)) as syns:
        ex = traffic.tcp_exchange(
            family=family,
            server_addr=addr,
            port=port,
            server_cgroup=pods.server.container,
            client_cgroup=pods.client.container,
        )
    client, server = _lifecycles(subtree, port)
    isn_c, isn_s = traffic.handshake_isns(syns, ex.client_port)
    want = _ids_of(subtree).of(isn_c, isn_s)
    assert want != 0
    assert client.connection_id == server.connection_id == want
    # every event of both sockets: the held first change, the handshake, the close, the lifecycle
    for sock in (client, server):
        evs = _socket_events(subtree, sock.socket_id)
        assert len(evs) >= 4 and {e.connection_id for e in evs} == {want}, evs
    # the listener is not a connection
    listener = [
        e
        for e in subtree.seen
        if kind(e) == "state_change" and e.local.port == port and e.state_change.new_state == LISTEN
    ]
    assert len(listener) == 1
    assert {e.connection_id for e in _socket_events(subtree, listener[0].socket_id)} == {0}


@pytest.mark.root
def test_each_connection_has_its_own_id(subtree: Harness, pods: Pods) -> None:
    port = traffic.free_port()
    n = 6
    with traffic.syn_capture((port,)) as syns:
        clients = [
            traffic.tcp_exchange(
                port=port,
                client_bytes=10,
                server_bytes=5,
                server_cgroup=pods.server.container,
                client_cgroup=pods.client.container,
            ).client_port
            for _ in range(n)
        ]
    evs = subtree.wait(lifecycle_on(port), count=2 * n)
    assert len(evs) == 2 * n
    by_client: dict[int, set[int]] = {}
    for e in evs:
        by_client.setdefault(e.local.port if e.lifecycle.role == ACTIVE else e.remote.port, set()).add(e.connection_id)
    ids = _ids_of(subtree)
    # both sockets of each connection: the hash of its own handshake
    assert by_client == {c: {ids.of(*traffic.handshake_isns(syns, c))} for c in clients}
    distinct = {i for v in by_client.values() for i in v}
    assert len(distinct) == n and 0 not in distinct


@pytest.mark.root
def test_a_refused_connect_has_no_id(subtree: Harness, pods: Pods) -> None:
    port = traffic.free_port()
    _pid, _local, err = traffic.run_in_cgroup(pods.client.container, traffic.refused_connect, "127.0.0.1", port)
    assert err == 111
    evs = subtree.wait(lifecycle_on(port), count=1)
    assert len(evs) == 1 and evs[0].lifecycle.ending == RESET_RECEIVED
    mine = [e for e in subtree.seen if on_port(port)(e)]
    assert {kind(e) for e in mine} >= {"lifecycle", "reset", "state_change"}
    assert {e.connection_id for e in mine} == {0}


CLOSERS = ("client", "client-rst", "server-rst")


@pytest.mark.root
@pytest.mark.parametrize("snat", [False, True], ids=["dnat", "dnat+snat"])
def test_both_ends_through_kube_proxy_nat_carry_one_id(subtree: Harness, pods: Pods, snat: bool) -> None:
    """The client's socket says C:e -> VIP:80, the backend's S:9000 <- C:e (or <- the router's address
    under SNAT): different tuples, one id, on the lifecycles and on the resets either app sent."""
    since = len(subtree.seen)  # the other parametrization used the same addresses and ports
    with traffic.routed_pods(snat=snat) as net:
        with (
            traffic.syn_capture((net.vip_port,), netns=net.client) as client_wire,
            traffic.syn_capture((net.target_port,), netns=net.server) as server_wire,
        ):
            conns: dict[str, int] = {}
            for closer in CLOSERS:
                serving, _ = traffic.start_server(
                    server_addr="0.0.0.0",
                    port=net.target_port,
                    closer=closer,
                    client_bytes=1000,
                    server_bytes=100,
                    netns=net.server,
                    cgroup=pods.server.container,
                )
                _pid, conns[closer] = traffic.run_client(
                    net.vip,
                    net.vip_port,
                    closer=closer,
                    client_bytes=1000,
                    server_bytes=100,
                    netns=net.client,
                    cgroup=pods.client.container,
                )
                serving.result()
        client_lcs = subtree.wait(lambda e: kind(e) == "lifecycle" and e.remote.port == net.vip_port, 3, since=since)
        server_lcs = subtree.wait(lambda e: kind(e) == "lifecycle" and e.local.port == net.target_port, 3, since=since)
    brief = [
        (e.local.ip, e.local.port, e.remote.ip, e.remote.port, e.socket_id, e.connection_id, e.lifecycle.ending)
        for e in client_lcs + server_lcs
    ]
    assert len(client_lcs) >= len(CLOSERS) and len(server_lcs) >= len(CLOSERS), (conns, brief)
    ids = _ids_of(subtree)
    seen_as = net.router_server_addr if snat else net.client_addr
    for closer, cport in conns.items():
        isn_c, isn_s = traffic.handshake_isns(client_wire, cport)
        # the backend's side of the wire: the same sequence numbers, other addresses
        syn = next(s for s in server_wire if not s.ack and s.seq == isn_c)
        assert (syn.src, syn.dst, syn.dport) == (seen_as, net.server_addr, net.target_port)
        assert traffic.handshake_isns(server_wire, syn.sport) == (isn_c, isn_s)
        want = ids.of(isn_c, isn_s)
        # exactly one lifecycle per socket of each of these connections. Counted per connection, not
        # per port: a CI run on 6.1 once delivered a fourth lifecycle on the backend's port among
        # these three (not identified; the per-connection check below would name a duplicate)
        clients = [e for e in client_lcs if e.local.port == cport]
        servers = [e for e in server_lcs if e.remote.port == syn.sport]
        assert len(clients) == len(servers) == 1, (closer, cport, syn.sport, brief)
        client, server = clients[0], servers[0]
        assert (client.local.ip, client.remote.ip) == (net.client_addr, net.vip)
        assert (server.local.ip, server.remote.ip) == (net.server_addr, seen_as)
        assert client.connection_id == server.connection_id == want != 0, closer
        # socket ids are reused by later sockets (freed struct socks): the id tells the resets apart
        resets = [
            (e.socket_id, e.local.port, e.reset.direction, e.connection_id)
            for e in subtree.seen[since:]
            if kind(e) == "reset"
        ]
        mine = [r[:3] for r in resets if r[3] == want]
        if closer == "client":
            assert mine == []
            continue
        sender, receiver = (client, server) if closer == "client-rst" else (server, client)
        assert sender.lifecycle.ending == RESET_SENT and receiver.lifecycle.ending == RESET_RECEIVED
        assert sorted(mine) == sorted(
            [(sender.socket_id, sender.local.port, SENT), (receiver.socket_id, receiver.local.port, RECEIVED)]
        ), resets


def _tfo_server(ready: object, expect: int, reply: int) -> None:
    ls = socket.socket()
    ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    ready.send(ls.getsockname()[1])  # type: ignore[attr-defined]
    conn, _ = ls.accept()
    got = b""
    while len(got) < expect:
        got += conn.recv(expect - len(got))
    conn.sendall(b"s" * reply)
    while conn.recv(4096):
        pass
    conn.close()
    ls.close()


def _tfo_client(port: int, send: int, expect: int) -> int:
    s = socket.socket()
    s.sendto(b"c" * send, socket.MSG_FASTOPEN, ("127.0.0.1", port))  # connect() with the data in the SYN
    got = 0
    while got < expect:
        got += len(s.recv(expect - got))
    local: int = s.getsockname()[1]
    s.close()
    return local


@pytest.fixture
def lone_netns() -> Iterator[str]:
    """A network namespace of its own (its loopback), for sysctls that must not touch the host's."""
    with traffic.netns_pair() as pair:
        yield pair.a


@pytest.mark.root
def test_tcp_fast_open_data_in_the_syn_keeps_the_ids_equal(subtree: Harness, pods: Pods, lone_netns: str) -> None:
    # client and server on, and no cookie needed (TFO_CLIENT_NO_COOKIE | TFO_SERVER_COOKIE_NOT_REQD)
    traffic.run("ip", "netns", "exec", lone_netns, "sysctl", "-qw", "net.ipv4.tcp_fastopen=0x207")
    ready_r, ready_w = traffic._ctx.Pipe(duplex=False)
    server = traffic.Child(_tfo_server, ready_w, 500, 70, cgroup=pods.server.container, netns=lone_netns)
    assert ready_r.poll(20)
    port = ready_r.recv()
    with traffic.syn_capture((port,), netns=lone_netns) as syns:
        client = traffic.Child(_tfo_client, port, 500, 70, cgroup=pods.client.container, netns=lone_netns)
        cport = client.result()
        server.result()
    syn = next(s for s in syns if s.sport == cport and not s.ack)
    assert syn.data_len == 500  # the data rode in the SYN: the server's child was made from it
    client_lc, server_lc = _lifecycles(subtree, port)
    want = _ids_of(subtree).of(*traffic.handshake_isns(syns, cport))
    assert client_lc.connection_id == server_lc.connection_id == want != 0
    assert (client_lc.lifecycle.tx_bytes, server_lc.lifecycle.rx_bytes) == (500, 500)


@pytest.mark.root
def test_a_server_answering_with_syn_cookies_gets_the_same_id(subtree: Harness, pods: Pods, lone_netns: str) -> None:
    traffic.run("ip", "netns", "exec", lone_netns, "sysctl", "-qw", "net.ipv4.tcp_syncookies=2")  # always
    port = 8080
    with traffic.syn_capture((port,), netns=lone_netns) as syns:
        ex = traffic.tcp_exchange(
            port=port,
            client_bytes=300,
            server_bytes=30,
            server_netns=lone_netns,
            client_netns=lone_netns,
            server_cgroup=pods.server.container,
            client_cgroup=pods.client.container,
        )
    # a cookie it was: one validated; more than one sent if a slow guest retransmitted the SYN
    sent, recv = _tcp_ext(lone_netns, "SyncookiesSent"), _tcp_ext(lone_netns, "SyncookiesRecv")
    assert sent >= 1 and recv == 1, (sent, recv)
    client, server = _lifecycles(subtree, port)
    want = _ids_of(subtree).of(*traffic.handshake_isns(syns, ex.client_port))
    assert client.connection_id == server.connection_id == want != 0


def _tcp_ext(netns: str, name: str) -> int:
    """A TcpExt counter of /proc/net/netstat in a network namespace."""
    lines = [
        ln.split() for ln in traffic.run("ip", "netns", "exec", netns, "cat", "/proc/net/netstat").stdout.splitlines()
    ]
    names, values = (ln for ln in lines if ln[0] == "TcpExt:")
    return int(values[names.index(name)])


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[Path, Path]:
    one, other = tmp_path / "key", tmp_path / "other-key"
    one.write_text("k" * 20 + "one-cluster\n")
    other.write_text("k" * 20 + "another-cluster\n")
    return one, other


@pytest.mark.root
def test_agents_sharing_the_key_agree_and_another_key_gives_another_id(
    pods: Pods, key_files: tuple[Path, Path]
) -> None:
    """Three agents as on three nodes, each seeing one pod: the client's and the server's with the
    cluster's key, and one more of the server's with another key."""
    key, other = key_files

    def agent(pod: traffic.PodCgroup, key_file: Path) -> AgentConfig:
        return AgentConfig(cgroup_root=str(pod.pod), events=ALL_BUT_PROBE, connection_key_file=str(key_file))

    port = traffic.free_port()
    with (
        kernel_harness(agent(pods.client, key)) as client_agent,
        kernel_harness(agent(pods.server, key)) as server_agent,
        kernel_harness(agent(pods.server, other)) as foreign_agent,
        traffic.syn_capture((port,)) as syns,
    ):
        ex = traffic.tcp_exchange(
            port=port, server_cgroup=pods.server.container, client_cgroup=pods.client.container, closer="server-rst"
        )
        (client,) = client_agent.wait(lifecycle_on(port))
        (server,) = server_agent.wait(lifecycle_on(port))
        (foreign,) = foreign_agent.wait(lifecycle_on(port))
    assert (client.lifecycle.role, server.lifecycle.role, foreign.lifecycle.role) == (ACTIVE, PASSIVE, PASSIVE)
    isns = traffic.handshake_isns(syns, ex.client_port)
    want = ConnectionIds(key.read_bytes().strip()).of(*isns)
    assert client.connection_id == server.connection_id == want != 0
    assert foreign.connection_id == ConnectionIds(other.read_bytes().strip()).of(*isns) not in (0, want)
    # the reset the server sent and the one the client received: one id across the two agents
    resets = {
        side: [
            (e.reset.direction, e.socket_id, e.local.port, e.connection_id)
            for e in h.seen
            if on_port(port)(e) and kind(e) == "reset"
        ]
        for side, h in (("server", server_agent), ("client", client_agent))
    }
    assert [r[0] for r in resets["server"]].count(SENT) == 1, resets
    assert [r[0] for r in resets["client"]].count(RECEIVED) == 1, resets
    assert {r[3] for rs in resets.values() for r in rs} == {want}, resets


@pytest.mark.root
def test_a_socket_established_before_the_agent_started_has_no_id() -> None:
    """Its role is unknown (the agent saw neither connect() nor accept()), and the two roles' byte
    counters differ by one: the pair cannot be told, so 0, never a wrong id."""
    port = traffic.free_port()
    with socket.create_server(("127.0.0.1", port)) as srv:
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = srv.accept()
        with kernel_harness(AgentConfig(ports=(port,), events=ALL_BUT_PROBE)) as late:
            client.sendall(b"x" * 1000)
            server.recv(4096)
            client.close()
            server.close()
            lcs = late.wait(lambda e: kind(e) == "lifecycle" and e.remote.port != 0, count=2)
            late_events = [e for e in late.seen if on_port(port)(e)]
    assert sorted(e.lifecycle.role for e in lcs) == [ROLE_UNSPECIFIED, ROLE_UNSPECIFIED]
    assert len(late_events) > 2 and {e.connection_id for e in late_events} == {0}
