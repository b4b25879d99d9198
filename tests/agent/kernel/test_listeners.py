"""Listeners older than the agent: /proc gives their owners, so their passive sockets carry the
server's pid and comm (not pid 0), in another network namespace and a kubelet-style cgroup."""

from __future__ import annotations

import os
import socket
import time
from contextlib import AbstractContextManager, nullcontext, suppress
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.kernel.listeners import (
    Connection,
    Listener,
    ListenerScan,
    group_listeners,
    listen_sockets,
    lowest_owners,
    netns_listen_sockets,
    processes_by_netns,
    scan_listeners,
    socket_inode,
)
from tcpscope.v1.events_pb2 import PASSIVE
from tests.agent.kernel.conftest import Pods
from tests.support import traffic
from tests.support.kernel import ALL_BUT_PROBE, Harness, kernel_harness, kind, on_port, require_root


def test_listen_rows_of_proc_net_tcp() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n"
        "   1: 0100007F:A2C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0\n"
        "   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1 0\n"
    )
    # LISTEN rows only; inode 0 (a socket being torn down) has no owner to find; the address as the
    # kernel holds it (the column prints 32-bit words in host order)
    assert listen_sockets(text) == {4242: (socket.inet_aton("127.0.0.1") + bytes(12), 8080)}
    v6 = (
        "  sl  local_address                         remote_address                        st tx_queue rx_queue "
        "tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 77 1 0\n"
        "   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 78 1 0\n"
    )
    assert listen_sockets(v6) == {77: (socket.inet_pton(socket.AF_INET6, "::1"), 8080), 78: (bytes(16), 80)}


def test_processes_grouped_by_netns_in_scan_order() -> None:
    # pid 3's namespace could not be read (it exited): left out
    processes = [(9, 100), (3, None), (4, 200), (2, 100), (7, 200)]
    assert processes_by_netns(processes, None) == {100: [9, 2], 200: [4, 7]}
    assert list(processes_by_netns(processes, None)) == [100, 200]
    assert processes_by_netns(processes, 200) == {200: [4, 7]}
    assert processes_by_netns(processes, 300) == {}
    assert processes_by_netns([], None) == {}


def test_listen_sockets_of_a_namespace_carry_its_inode_and_each_table_family() -> None:
    header = "  sl  local_address rem_address   st ...\n"
    row = "   0: {} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {} 1 0\n"
    tcp = header + row.format("0100007F:1F90", 11) + row.format("00000000:0016", 12)
    tcp6 = header + row.format("00000000000000000000000000000000:1F90", 13)
    v4, v6 = int(socket.AF_INET), int(socket.AF_INET6)
    localhost = socket.inet_aton("127.0.0.1") + bytes(12)
    assert netns_listen_sockets(7, [(tcp, v4), (tcp6, v6)]) == {
        11: (7, v4, localhost, 8080),
        12: (7, v4, bytes(16), 22),
        13: (7, v6, bytes(16), 8080),
    }
    # an unreadable table (IPv6 disabled: no tcp6) has no rows
    assert netns_listen_sockets(7, [(tcp, v4), (None, v6)]) == {
        11: (7, v4, localhost, 8080),
        12: (7, v4, bytes(16), 22),
    }
    assert netns_listen_sockets(7, [(None, v4), (None, v6)]) == {}


def test_socket_inode_of_an_fd_link() -> None:
    assert socket_inode("socket:[4242]") == 4242
    assert socket_inode("pipe:[4242]") is None
    assert socket_inode("anon_inode:[eventpoll]") is None
    assert socket_inode("/dev/null") is None


def test_lowest_pid_owns_a_shared_socket_and_unwanted_sockets_are_ignored() -> None:
    # a pre-fork server: the children (higher pids) hold the parent's listener too, in any order
    holders = [(30, 7, 1), (10, 7, 1), (20, 7, 1), (20, 7, 2), (5, 7, 3)]
    assert lowest_owners(holders, {1: 7, 2: 7}) == {1: 10, 2: 20}
    assert lowest_owners(holders, {}) == {}
    assert lowest_owners([], {1: 7}) == {}


def test_a_holder_in_the_sockets_namespace_owns_it_before_one_elsewhere() -> None:
    """A socket made in a namespace by a thread of a process living in another (or passed over a
    unix socket) is owned by a holder of its own namespace when there is one."""
    holders = [(3, 1, 100), (50, 9, 100), (4, 1, 200)]
    assert lowest_owners(holders, {100: 9, 200: 9}) == {100: 50, 200: 4}


def test_listeners_grouped_by_map_key() -> None:
    v4, v6 = int(socket.AF_INET), int(socket.AF_INET6)
    a, b = socket.inet_aton("10.0.0.1") + bytes(12), bytes(16)
    wanted = {
        1: (7, v4, a, 80),
        2: (7, v4, a, 80),  # an SO_REUSEPORT group with 1 and 3: one entry, the lowest pid, 3 refs
        3: (7, v4, a, 80),
        4: (7, v6, b, 80),  # same port, other family: its own entry
        5: (6, v4, b, 443),
        6: (6, v4, b, 444),  # no owner: left out
    }
    comms = {10: "srv-a", 11: "srv-b", 12: "srv-c", 20: "other"}
    asked: list[int] = []

    def comm_of(pid: int) -> str:
        asked.append(pid)
        return comms[pid]

    got = group_listeners(wanted, {1: 12, 2: 10, 3: 11, 4: 12, 5: 20}, comm_of)
    assert got == (
        Listener(netns=6, port=443, pid=20, comm="other", family=v4, addr=b),
        Listener(netns=7, port=80, pid=10, comm="srv-a", family=v4, addr=a, refs=3),
        Listener(netns=7, port=80, pid=12, comm="srv-c", family=v6, addr=b),
    )
    assert asked == [12, 10, 11, 12, 20]  # one comm read per owned socket, in table order
    assert group_listeners(wanted, {}, comm_of) == ()


_TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _tcp_row(local: str, state: str, inode: int, remote: str = "00000000:0000") -> str:
    return f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0\n"


def _fake_process(
    proc: Path,
    pid: int,
    netns: Path | None,
    *,
    tcp: str | None = None,
    tcp6: str | None = None,
    fds: tuple[str, ...] | None = (),
    comm: str | None = None,
) -> None:
    """/proc/<pid> as the scan reads it; None leaves the entry out, as when the process exited meanwhile
    (or may not be looked at): ns/net is a symlink whose target's inode stands for the namespace."""
    base = proc / str(pid)
    base.mkdir(parents=True)
    if netns is not None:
        (base / "ns").mkdir()
        (base / "ns" / "net").symlink_to(netns)
    for name, text in (("tcp", tcp), ("tcp6", tcp6)):
        if text is not None:
            (base / "net").mkdir(exist_ok=True)
            (base / "net" / name).write_text(text)
    if fds is not None:
        (base / "fd").mkdir()
        for fd, target in enumerate(fds):
            (base / "fd" / str(fd)).symlink_to(target)  # dangling, as readlink() sees socket:[inode]
    if comm is not None:
        (base / "comm").write_text(comm + "\n")


def test_scan_of_a_handmade_proc(tmp_path: Path) -> None:
    """The whole walk without root on a /proc built in a directory: namespaces, the tables of one
    reader per namespace, fd owners (the lowest pid), SO_REUSEPORT groups, and what it tolerates."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").mkdir()  # not a pid: neither looked at nor counted
    ns_files = {name: tmp_path / f"netns-{name}" for name in ("a", "b", "c")}
    for f in ns_files.values():
        f.touch()
    ns = {name: f.stat().st_ino for name, f in ns_files.items()}
    # namespace a: pid 10 reads for it; 127.0.0.1:8080 (v4), [::1]:8080 (v6) and 127.0.0.1:9090
    _fake_process(
        proc,
        10,
        ns_files["a"],
        tcp=_TCP_HEADER + _tcp_row("0100007F:1F90", "0A", 100) + _tcp_row("0100007F:2382", "0A", 102),
        tcp6=_TCP_HEADER + _tcp_row("00000000000000000000000001000000:1F90", "0A", 101),
        fds=("socket:[100]", "pipe:[7]", "/dev/null"),
        comm="parent",
    )
    _fake_process(proc, 12, ns_files["a"], fds=("socket:[100]", "socket:[101]"), comm="child")  # no tables
    _fake_process(proc, 13, ns_files["a"], fds=("socket:[102]",), comm=None)  # comm unreadable: ""
    _fake_process(proc, 11, None)  # exited before its namespace was read: counted, nothing else
    # namespace b: pid 20's tables are unreadable and it has no fd dir; pid 21 reads (no tcp6: IPv6 off).
    # 0.0.0.0:80 twice (an SO_REUSEPORT group: one entry, the lowest pid, 2 refs), inode 202 owned by
    # nobody, inode 0 and a non-LISTEN row ignored
    _fake_process(proc, 20, ns_files["b"], fds=None, comm="gone")
    _fake_process(
        proc,
        21,
        ns_files["b"],
        tcp=_TCP_HEADER
        + _tcp_row("00000000:0050", "0A", 200)
        + _tcp_row("00000000:0050", "0A", 201)
        + _tcp_row("00000000:0051", "0A", 202)
        + _tcp_row("00000000:0052", "0A", 0)
        + _tcp_row("0100007F:0053", "01", 203),
        fds=("socket:[201]",),
        comm="rp-low",
    )
    _fake_process(proc, 23, ns_files["b"], fds=("socket:[200]", "socket:[203]"), comm="rp-high")
    # namespace c has no listeners, only a connection (198.18.0.1:40000 -> 198.18.0.2:6379) and a
    # TIME_WAIT row (no socket of its own: left out); its processes are looked at for the connection's
    # owner, but a listener of another namespace they hold (a passed fd, lower pid) keeps its owner
    _fake_process(
        proc,
        5,
        ns_files["c"],
        tcp=_TCP_HEADER
        + _tcp_row("010012C6:9C40", "01", 300, remote="020012C6:18EB")
        + _tcp_row("010012C6:9C41", "06", 0, remote="020012C6:18EB"),
        tcp6=_TCP_HEADER,
        fds=("socket:[300]",),
        comm="other",
    )

    scan = scan_listeners(proc)
    localhost = socket.inet_aton("127.0.0.1") + bytes(12)
    v4, v6 = int(socket.AF_INET), int(socket.AF_INET6)
    expected = [
        Listener(ns["a"], 8080, 10, "parent", v4, localhost),
        Listener(ns["a"], 8080, 12, "child", v6, socket.inet_pton(socket.AF_INET6, "::1")),
        Listener(ns["a"], 9090, 13, "", v4, localhost),
        Listener(ns["b"], 80, 21, "rp-low", v4, bytes(16), refs=2),
    ]
    # connections: the LISTEN-less row of namespace b (its owner the only holder), namespace c's one
    in_b = Connection(ns["b"], v4, localhost, 83, bytes(16), 0, 203, pid=23, comm="rp-high")
    in_c = Connection(
        ns["c"],
        v4,
        socket.inet_aton("198.18.0.1") + bytes(12),
        40000,
        socket.inet_aton("198.18.0.2") + bytes(12),
        6379,
        300,
        5,
        "other",
    )
    assert scan == ListenerScan(
        listeners=tuple(sorted(expected, key=lambda x: (x.netns, x.port, x.family, x.addr))),
        processes=8,
        namespaces=3,
        unowned=1,
        connections=tuple(sorted((in_b, in_c), key=lambda c: c.netns)),
        netns_pid={ns["a"]: 10, ns["b"]: 21, ns["c"]: 5},
    )

    only_b = scan_listeners(proc, netns_only=ns["b"])
    assert only_b == ListenerScan(
        listeners=(expected[3],), processes=8, namespaces=1, unowned=1, connections=(in_b,), netns_pid={ns["b"]: 21}
    )
    assert scan_listeners(proc, netns_only=ns["c"]) == ListenerScan(
        (), processes=8, namespaces=1, unowned=0, connections=(in_c,), netns_pid={ns["c"]: 5}
    )
    assert scan_listeners(tmp_path / "no-proc") == ListenerScan((), processes=0, namespaces=0, unowned=0)


@pytest.mark.root
def test_scan_finds_listener_in_another_netns_with_its_owner() -> None:
    require_root()
    with traffic.netns_pair() as pair:
        server, port = traffic.start_server(
            server_addr=pair.b_addr, client_bytes=10, server_bytes=10, netns=pair.b, comm="tsc-prelisten"
        )
        try:
            ns = os.stat(pair.path("b")).st_ino
            started = time.monotonic()
            scan = scan_listeners()
            elapsed = time.monotonic() - started
            want = Listener(
                netns=ns,
                port=port,
                pid=server.pid,
                comm="tsc-prelisten",
                family=socket.AF_INET,
                addr=socket.inet_aton(pair.b_addr) + bytes(12),
            )
            assert want in scan.listeners
            assert [ln for ln in scan.listeners if ln.netns == ns] == [want]
            # restricted to one namespace: only that namespace is read
            only = scan_listeners(netns_only=ns)
            assert only.namespaces == 1 and only.listeners == (want,)
            # a few hundred processes on this machine: well under a second
            assert scan.processes > 10 and elapsed < 1.0, (scan.processes, elapsed)
        finally:
            traffic.run_client(pair.b_addr, port, client_bytes=10, server_bytes=10, netns=pair.a)
            server.result()


@pytest.mark.root
def test_passive_sockets_of_a_listener_older_than_the_agent_carry_its_owner(pods: Pods) -> None:
    require_root()
    with traffic.netns_pair() as pair:
        server, port = traffic.start_server(
            server_addr="0.0.0.0",
            client_bytes=5000,
            server_bytes=77,
            cgroup=pods.server.container,
            netns=pair.b,
            comm="tsc-oldserver",
        )
        # the agent loads only now: it never saw this listen()
        with kernel_harness(AgentConfig(cgroup_root=str(pods.root), events=ALL_BUT_PROBE)) as h:
            assert h.source.seeded_listeners() >= 1
            client_pid, client_port = traffic.run_client(
                pair.b_addr,
                port,
                client_bytes=5000,
                server_bytes=77,
                cgroup=pods.client.container,
                netns=pair.a,
                comm="tsc-newclient",
            )
            server_pid = server.result()
            lcs = h.wait(lambda e: on_port(port)(e) and kind(e) == "lifecycle", count=2)
            passive = [e for e in lcs if e.lifecycle.role == PASSIVE]
            assert len(passive) == 1, lcs
            srv = passive[0]
            assert (srv.process.pid, srv.process.comm, srv.process.cgroup_id) == (
                server_pid,
                "tsc-oldserver",
                pods.server.id,
            )
            assert (srv.local.ip, srv.local.port, srv.remote.ip, srv.remote.port) == (
                pair.b_addr,
                port,
                pair.a_addr,
                client_port,
            )
            assert (srv.lifecycle.tx_bytes, srv.lifecycle.rx_bytes) == (77, 5000)
            states = [e for e in h.seen if e.socket_id == srv.socket_id and kind(e) == "state_change"]
            assert len(states) >= 4  # LISTEN->SYN_RECV->ESTABLISHED->...->CLOSE
            assert {(e.process.pid, e.process.comm) for e in states} == {(server_pid, "tsc-oldserver")}
            active = [e for e in lcs if e.socket_id != srv.socket_id]
            assert [(e.process.pid, e.process.comm) for e in active] == [(client_pid, "tsc-newclient")]


@pytest.mark.root
@pytest.mark.parametrize("when", ["agent_first", "listeners_first"])
def test_ipv4_and_ipv6_listeners_of_one_port_keep_their_own_owners(when: str) -> None:
    """Two processes listen on one port, on 127.0.0.1 and on ::1: each accepted socket carries its
    own listener's owner, also after the other listener has closed, whether the agent saw the
    listen() calls or found the listeners in /proc at start-up."""
    require_root()
    port = traffic.free_port()
    config = AgentConfig(ports=(port,), events=ALL_BUT_PROBE)
    early: AbstractContextManager[Harness | None] = kernel_harness(config) if when == "agent_first" else nullcontext()
    with early as maybe_h:
        v4, _ = traffic.start_server(
            server_addr="127.0.0.1", port=port, client_bytes=11, server_bytes=3, comm="tsc-v4server"
        )
        v6, _ = traffic.start_server(
            family=socket.AF_INET6, server_addr="::1", port=port, client_bytes=13, server_bytes=5, comm="tsc-v6server"
        )
        late: AbstractContextManager[Harness | None] = (
            kernel_harness(config) if when == "listeners_first" else nullcontext(maybe_h)
        )
        with late as h:
            assert h is not None
            traffic.run_client("127.0.0.1", port, client_bytes=11, server_bytes=3)
            v4_pid = v4.result()  # served its one connection and closed its listener
            traffic.run_client("::1", port, family=socket.AF_INET6, client_bytes=13, server_bytes=5)
            v6_pid = v6.result()
            lcs = h.wait(lambda e: on_port(port)(e) and kind(e) == "lifecycle" and e.lifecycle.role == PASSIVE, count=2)
    by_ip = {e.local.ip: (e.process.pid, e.process.comm, e.lifecycle.rx_bytes) for e in lcs}
    assert by_ip == {"127.0.0.1": (v4_pid, "tsc-v4server", 11), "::1": (v6_pid, "tsc-v6server", 13)}


_REUSEPORT_SERVER = r"""
import socket, sys
with open("/proc/self/comm", "w") as f:
    f.write(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
if sys.stdin.readline().strip() == "serve":
    c, _ = s.accept()
    c.recv(100)
    c.sendall(b"ok")
    c.close()
s.close()
"""


@pytest.mark.root
def test_an_so_reuseport_group_keeps_an_owner_until_its_last_listener_closes() -> None:
    """Two processes listen on one address and port with SO_REUSEPORT; the first one closes its
    listener: connections to the one left still carry an owner, the newest listener's."""
    import subprocess
    import sys

    require_root()
    port = traffic.free_port()
    procs: list[subprocess.Popen[str]] = []
    with kernel_harness(AgentConfig(ports=(port,), events=ALL_BUT_PROBE)) as h:
        try:
            for comm in ("tsc-rp-first", "tsc-rp-second"):
                p = subprocess.Popen(
                    [sys.executable, "-c", _REUSEPORT_SERVER, str(port), comm],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                procs.append(p)
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            first, second = procs
            assert first.stdin is not None and second.stdin is not None
            first.stdin.write("close\n")
            first.stdin.flush()
            assert first.wait(10) == 0
            second.stdin.write("serve\n")
            second.stdin.flush()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(b"hello")
                assert c.recv(10) == b"ok"
            assert second.wait(10) == 0
            lcs = h.wait(lambda e: on_port(port)(e) and kind(e) == "lifecycle" and e.lifecycle.role == PASSIVE, count=1)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                for pipe in (p.stdin, p.stdout):
                    if pipe is not None:
                        with suppress(BrokenPipeError):
                            pipe.close()
    assert [(e.process.pid, e.process.comm, e.lifecycle.rx_bytes) for e in lcs] == [(second.pid, "tsc-rp-second", 5)]
