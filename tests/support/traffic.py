"""Real traffic for tests and benchmarks: kubelet-style cgroups, processes inside them, TCP
exchanges with exact byte counts, network namespaces with veth pairs, nftables drop rules.

Everything created here has a unique name (pid + counter) and is removed by the context managers,
also on failure, because other engineers run tests on the same machine at the same time.
Test traffic stays on loopback or inside namespaces created here (198.18.0.0/15, 2001:db8::/32).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import secrets
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CGROUP2 = Path("/sys/fs/cgroup/unified")
_ctx = mp.get_context("fork")


def unique(prefix: str) -> str:
    """A name unique on this machine: prefix-<pid>-<random hex>."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"


# ---- cgroups ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodCgroup:
    """A kubelet-style cgroup v2 tree for one container of one pod."""

    root: Path  # the kubepods-like top directory created for this test (the subtree root)
    pod: Path
    container: Path
    pod_uid: str
    container_id: str

    @property
    def id(self) -> int:
        """The cgroup v2 id of the container cgroup (inode of its directory)."""
        return os.stat(self.container).st_ino


def _rmdir_tree(top: Path) -> None:
    """Remove a cgroup directory tree bottom-up, first moving any leftover processes out."""
    if not top.exists():
        return
    dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for d in [*dirs, top]:
        procs = d / "cgroup.procs"
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():
                with contextlib.suppress(OSError):
                    (CGROUP2 / "cgroup.procs").write_text(pid)
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


@contextlib.contextmanager
def kubepods_root(name: str | None = None) -> Iterator[Path]:
    """A fresh top-level cgroup (like kubepods.slice) under the cgroup2 mount; removed afterwards."""
    top = CGROUP2 / (name or f"{unique('tcpscope-test')}.slice")
    top.mkdir()
    try:
        yield top
    finally:
        _rmdir_tree(top)


def pod_cgroup(
    root: Path, qos: str = "besteffort", pod_uid: str | None = None, container_id: str | None = None
) -> PodCgroup:
    """Create `<root>/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/cri-containerd-<64hex>.scope`.

    Removed together with `root` by kubepods_root()."""
    uid = pod_uid or str(uuid.uuid4())
    cid = container_id or secrets.token_hex(32)
    qos_dir = root / f"kubepods-{qos}.slice"
    pod = qos_dir / f"kubepods-{qos}-pod{uid.replace('-', '_')}.slice"
    container = pod / f"cri-containerd-{cid}.scope"
    container.mkdir(parents=True, exist_ok=True)
    return PodCgroup(root=root, pod=pod, container=container, pod_uid=uid, container_id=cid)


def enter_cgroup(directory: Path) -> None:
    """Move the calling process into a cgroup v2 directory."""
    (directory / "cgroup.procs").write_text(str(os.getpid()))


def enter_netns(name: str) -> None:
    """Move the calling (single-threaded) process into the named network namespace (setns(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}") as fh:
        if libc.setns(fh.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")


def set_comm(name: str) -> None:
    """Set the calling thread's comm (prctl PR_SET_NAME), at most 15 bytes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode()[:15], 0, 0, 0)


def _child_main(
    conn: Any, cgroup: Path | None, comm: str | None, netns: str | None, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    try:
        if cgroup is not None:
            enter_cgroup(cgroup)
        if netns is not None:
            enter_netns(netns)
        if comm:
            set_comm(comm)
        conn.send(("ok", fn(*args)))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


class Child:
    """A forked process running fn(*args) inside an optional cgroup and netns, with a comm."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *args: Any,
        cgroup: Path | None = None,
        comm: str | None = None,
        netns: str | None = None,
    ) -> None:
        self._parent, child = _ctx.Pipe()
        self.proc = _ctx.Process(target=_child_main, args=(child, cgroup, comm, netns, fn, args), daemon=True)
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def result(self, timeout: float = 20.0) -> Any:
        """The function's return value (raises RuntimeError if it raised or timed out)."""
        if not self._parent.poll(timeout):
            self.proc.kill()
            raise RuntimeError(f"child {self.pid} did not finish within {timeout}s")
        status, value = self._parent.recv()
        self.proc.join(5)
        if status != "ok":
            raise RuntimeError(f"child {self.pid} failed: {value}")
        return value


def run_in_cgroup(
    cgroup: Path | None, fn: Callable[..., Any], *args: Any, comm: str | None = None, timeout: float = 20.0
) -> Any:
    """Run fn(*args) in a child process inside the cgroup; return its result."""
    return Child(fn, *args, cgroup=cgroup, comm=comm).result(timeout)


# ---- TCP with exact byte counts ---------------------------------------------------------------


def _recv_exact(s: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = s.recv(min(65536, n - got))
        if not chunk:
            raise ConnectionError(f"EOF after {got} of {n} bytes")
        got += len(chunk)


def _wait_eof(s: socket.socket) -> None:
    while s.recv(65536):
        raise ConnectionError("unexpected data before EOF")


def _linger0(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass(frozen=True)
class Exchange:
    """What tcp_exchange did: who, where, how much."""

    server_pid: int
    client_pid: int
    server_port: int
    client_port: int
    client_bytes: int  # written by the client, read by the server
    server_bytes: int  # written by the server, read by the client


def _serve(family: int, addr: str, port: int, expect: int, reply: int, closer: str, ready: Any) -> int:
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    ls.bind((addr, port))
    ls.listen(16)
    ready.send(ls.getsockname()[1])
    conn, _peer = ls.accept()
    _recv_exact(conn, expect)
    conn.sendall(b"s" * reply)
    if closer == "client":
        _wait_eof(conn)
    elif closer == "server-rst":
        _linger0(conn)
    conn.close()
    ls.close()
    return os.getpid()


def _connect(family: int, addr: str, port: int, send: int, expect: int, closer: str) -> tuple[int, int]:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.connect((addr, port))
    local_port = s.getsockname()[1]
    s.sendall(b"c" * send)
    _recv_exact(s, expect)
    if closer in ("server", "server-rst"):
        with contextlib.suppress(ConnectionError):
            _wait_eof(s)
    elif closer == "client-rst":
        # ack the server's bytes now: a delayed ACK still pending at the RST (a RST carries no ACK the
        # peer processes) leaves the server's "sent and acked" at 0, as on a slow 5.10 guest once.
        # Setting TCP_QUICKACK sends a pending ACK at once (__tcp_sock_set_quickack ->
        # tcp_cleanup_rbuf), ahead of the RST on the same path
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        _linger0(s)
    s.close()
    return os.getpid(), local_port


def _serve_until_rst(family: int, addr: str, port: int, expect: int, reply: int, ready: Any) -> int:
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(16)
    ready.send(ls.getsockname()[1])
    conn, _ = ls.accept()
    _recv_exact(conn, expect)
    conn.sendall(b"s" * reply)
    with contextlib.suppress(ConnectionError):
        _wait_eof(conn)
    conn.close()
    ls.close()
    return os.getpid()


def tcp_exchange(
    *,
    family: int = socket.AF_INET,
    server_addr: str = "127.0.0.1",
    connect_addr: str | None = None,
    client_family: int | None = None,
    client_bytes: int = 300_000,
    server_bytes: int = 777,
    closer: str = "client",
    port: int = 0,
    server_cgroup: Path | None = None,
    client_cgroup: Path | None = None,
    server_comm: str = "tsc-server",
    client_comm: str = "tsc-client",
    server_netns: str | None = None,
    client_netns: str | None = None,
    timeout: float = 20.0,
) -> Exchange:
    """One TCP connection between two child processes: the client writes client_bytes, the server
    reads them all and writes server_bytes, the client reads them all, then `closer` closes first:
    'client' / 'server' (orderly FIN), 'client-rst' / 'server-rst' (SO_LINGER 0: a RST).

    The server's socket is AF_INET6 dual-stack when family is AF_INET6 (so a client connecting to
    ::ffff:127.0.0.1 makes v4-mapped sockets on both sides)."""
    server, sport = start_server(
        family=family,
        server_addr=server_addr,
        client_bytes=client_bytes,
        server_bytes=server_bytes,
        closer=closer,
        port=port,
        cgroup=server_cgroup,
        comm=server_comm,
        netns=server_netns,
        timeout=timeout,
    )
    client = Child(
        _connect,
        client_family or family,
        connect_addr or server_addr,
        sport,
        client_bytes,
        server_bytes,
        closer,
        cgroup=client_cgroup,
        comm=client_comm,
        netns=client_netns,
    )
    client_pid, client_port = client.result(timeout)
    server_pid = server.result(timeout)
    return Exchange(
        server_pid=server_pid,
        client_pid=client_pid,
        server_port=sport,
        client_port=client_port,
        client_bytes=client_bytes,
        server_bytes=server_bytes,
    )


def start_server(
    *,
    family: int = socket.AF_INET,
    server_addr: str = "127.0.0.1",
    client_bytes: int = 300_000,
    server_bytes: int = 777,
    closer: str = "client",
    port: int = 0,
    cgroup: Path | None = None,
    comm: str = "tsc-server",
    netns: str | None = None,
    timeout: float = 20.0,
) -> tuple[Child, int]:
    """The server half of tcp_exchange: a child listening (returns once it listens) that serves one
    connection as tcp_exchange describes. Returns the child (its result() is its pid) and the port."""
    ready_r, ready_w = _ctx.Pipe(duplex=False)
    if closer == "client-rst":
        server = Child(
            _serve_until_rst,
            family,
            server_addr,
            port,
            client_bytes,
            server_bytes,
            ready_w,
            cgroup=cgroup,
            comm=comm,
            netns=netns,
        )
    else:
        server = Child(
            _serve,
            family,
            server_addr,
            port,
            client_bytes,
            server_bytes,
            closer,
            ready_w,
            cgroup=cgroup,
            comm=comm,
            netns=netns,
        )
    if not ready_r.poll(timeout):
        server.result(0.5)  # raises the server's own error if it failed
        server.proc.kill()
        raise RuntimeError("server did not start listening")
    sport: int = ready_r.recv()
    return server, sport


def run_client(
    server_addr: str,
    port: int,
    *,
    family: int = socket.AF_INET,
    client_bytes: int = 300_000,
    server_bytes: int = 777,
    closer: str = "client",
    cgroup: Path | None = None,
    comm: str = "tsc-client",
    netns: str | None = None,
    timeout: float = 20.0,
) -> tuple[int, int]:
    """The client half of tcp_exchange, against a start_server() child: returns (pid, local port)."""
    client = Child(
        _connect, family, server_addr, port, client_bytes, server_bytes, closer, cgroup=cgroup, comm=comm, netns=netns
    )
    pid, local_port = client.result(timeout)
    return int(pid), int(local_port)


_GIVEN: set[int] = set()
"""Ports free_port handed out in this process: the kernel may pick a released port again at once
(a 6.1 guest gave one test the same port for two of its four "different" servers)."""


def free_port(family: int = socket.AF_INET, addr: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bound then released), never one this process was given
    before, so the ports of one test are distinct."""
    for _ in range(1000):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))
            port: int = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError(f"no fresh free port after 1000 tries ({len(_GIVEN)} handed out)")


def refused_connect(
    addr: str = "127.0.0.1", port: int | None = None, family: int = socket.AF_INET
) -> tuple[int, int, int]:
    """connect() to a closed port: returns (pid, local port, errno) (errno 111 expected)."""
    port = port or free_port(family, addr)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((addr, 0))
    local = s.getsockname()[1]
    while local == port:
        # the closed port is free, so bind() may hand it out: connecting a socket to its own
        # address is a TCP self-connect, which succeeds (errno 0; seen once in 200 connects on 5.10)
        other = socket.socket(family, socket.SOCK_STREAM)
        other.bind((addr, 0))
        s.close()
        s, local = other, other.getsockname()[1]
    err = s.connect_ex((addr, port))
    s.close()
    return os.getpid(), local, err


# ---- network namespaces -----------------------------------------------------------------------


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class NetnsPair:
    """Two network namespaces joined by a veth pair, with 198.18.x.x addresses."""

    a: str
    b: str
    a_addr: str
    b_addr: str

    def path(self, which: str) -> str:
        return f"/run/netns/{getattr(self, which)}"


@contextlib.contextmanager
def netns_pair(subnet: int | None = None) -> Iterator[NetnsPair]:
    """Namespaces <a> and <b>, veth between them, 198.18.<n>.1/24 and .2/24; deleted afterwards."""
    n = subnet if subnet is not None else secrets.randbelow(250) + 1
    a, b = unique("tsa"), unique("tsb")
    tag = secrets.token_hex(4)
    va, vb = f"vt{tag}a", f"vt{tag}b"  # interface names: at most 15 bytes
    pair = NetnsPair(a=a, b=b, a_addr=f"198.18.{n}.1", b_addr=f"198.18.{n}.2")
    try:
        run("ip", "netns", "add", a)
        run("ip", "netns", "add", b)
        run("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        run("ip", "link", "set", va, "netns", a)
        run("ip", "link", "set", vb, "netns", b)
        for ns, dev, addr in ((a, va, pair.a_addr), (b, vb, pair.b_addr)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in (a, b):
            run("ip", "netns", "del", ns, check=False)


@dataclass(frozen=True)
class Routed:
    """A client and a server namespace joined through a router namespace that both directions cross,
    with kube-proxy's DNAT in the router: the client connects to vip:vip_port, the server listens on
    server_addr:target_port. With snat, the router also masquerades the client (the server sees the
    router's address, as a NodePort with externalTrafficPolicy Cluster does)."""

    client: str
    router: str
    server: str
    client_addr: str
    server_addr: str
    router_server_addr: str  # the address the server sees the client as, under SNAT
    vip: str
    vip_port: int
    target_port: int
    snat: bool


_ROUTED_NFT = """table ip {table} {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {vip} tcp dport {vip_port} dnat to {server}:{target_port}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    {snat}
  }}
  chain no_endpoints {{
    type filter hook prerouting priority dstnat - 10; policy accept;
    {reject}
  }}
}}
"""


@contextlib.contextmanager
def routed_pods(
    *, snat: bool = False, vip_port: int = 80, target_port: int = 9000, reject_port: int | None = None
) -> Iterator[Routed]:
    """Namespaces client, router, server (198.18.10.0/24 and 198.18.20.0/24, VIP 198.19.0.10) and the
    router's nftables NAT table; all deleted afterwards (the table goes with its namespace).
    reject_port: connections to vip:reject_port are answered with an ICMP port unreachable before
    routing, as kube-proxy rejects a Service without endpoints (the router's ICMP rate limit is off,
    so every SYN gets its answer)."""
    c, r, srv = unique("tsc"), unique("tsr"), unique("tss")
    tag = secrets.token_hex(3)
    net = Routed(
        client=c,
        router=r,
        server=srv,
        client_addr="198.18.10.2",
        server_addr="198.18.20.2",
        router_server_addr="198.18.20.1",
        vip="198.19.0.10",
        vip_port=vip_port,
        target_port=target_port,
        snat=snat,
    )
    try:
        for ns in (c, r, srv):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        for ns, inner, outer, addr, gw in (
            (c, f"vc{tag}", f"vrc{tag}", net.client_addr, "198.18.10.1"),
            (srv, f"vs{tag}", f"vrs{tag}", net.server_addr, net.router_server_addr),
        ):
            run("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
            run("ip", "link", "set", inner, "netns", ns)
            run("ip", "link", "set", outer, "netns", r)
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            run("ip", "-n", r, "addr", "add", f"{gw}/24", "dev", outer)
            run("ip", "-n", ns, "link", "set", inner, "up")
            run("ip", "-n", r, "link", "set", outer, "up")
            run("ip", "-n", ns, "route", "add", "default", "via", gw)
        run("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        script = _ROUTED_NFT.format(
            table=unique("tcpscope_nat").replace("-", "_"),
            vip=net.vip,
            vip_port=vip_port,
            server=net.server_addr,
            target_port=target_port,
            snat=f"oifname vrs{tag} masquerade" if snat else "",
            reject=f"ip daddr {net.vip} tcp dport {reject_port} reject with icmp type port-unreachable"
            if reject_port
            else "",
        )
        if reject_port:
            run("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
        subprocess.run(
            ["ip", "netns", "exec", r, "nft", "-f", "-"], input=script, check=True, text=True, capture_output=True
        )
        yield net
    finally:
        for ns in (c, r, srv):
            run("ip", "netns", "del", ns, check=False)


def netns_counter(netns: str, group: str, name: str) -> int:
    """One counter of a namespace's /proc/net/netstat or /proc/net/snmp (group "TcpExt", "Tcp", ...)."""
    out = run("ip", "netns", "exec", netns, "cat", "/proc/net/netstat", "/proc/net/snmp").stdout.splitlines()
    for head, values in zip(out[::2], out[1::2], strict=False):
        if head.startswith(group + ":"):
            fields = dict(zip(head.split()[1:], values.split()[1:], strict=True))
            if name in fields:
                return int(fields[name])
    raise KeyError(f"{group}:{name} not in /proc/net/netstat or /proc/net/snmp of {netns}")


# ---- the wire: handshakes as the packets carry them -------------------------------------------


@dataclass(frozen=True)
class Syn:
    """A SYN or SYN-ACK seen on the wire: its addresses, ports and sequence number (the sender's ISN)."""

    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: bool  # a SYN-ACK
    data_len: int  # payload bytes (TCP Fast Open puts data in the SYN)


def _parse_syn(pkt: bytes) -> Syn | None:
    """A SYN (or SYN-ACK) from a packet that starts at its IP header (AF_PACKET SOCK_DGRAM)."""
    if not pkt:
        return None
    version = pkt[0] >> 4
    if version == 4 and len(pkt) >= 20 and pkt[9] == socket.IPPROTO_TCP:
        off = (pkt[0] & 0xF) * 4
        end = struct.unpack_from("!H", pkt, 2)[0]
        src, dst = socket.inet_ntop(socket.AF_INET, pkt[12:16]), socket.inet_ntop(socket.AF_INET, pkt[16:20])
    elif version == 6 and len(pkt) >= 40 and pkt[6] == socket.IPPROTO_TCP:
        off = 40
        end = 40 + struct.unpack_from("!H", pkt, 4)[0]
        src, dst = socket.inet_ntop(socket.AF_INET6, pkt[8:24]), socket.inet_ntop(socket.AF_INET6, pkt[24:40])
    else:
        return None
    if len(pkt) < off + 14:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", pkt, off)
    flags = pkt[off + 13]
    if not flags & 0x02 or flags & 0x04:  # SYN, not RST
        return None
    return Syn(src, sport, dst, dport, seq, bool(flags & 0x10), end - off - (pkt[off + 12] >> 4) * 4)


def _capture_syns(ready: Any, stop: Any, ports: tuple[int, ...]) -> list[Syn]:
    import select

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))  # ETH_P_ALL
    seen: dict[Syn, None] = {}  # loopback shows each packet twice (out and in): keep one, in order
    try:
        ready.send(True)
        while True:
            readable, _, _ = select.select([sock, stop], [], [], 60)
            if not readable:
                break
            if sock in readable:
                syn = _parse_syn(sock.recv(65535))
                if syn is not None and (syn.sport in ports or syn.dport in ports):
                    seen[syn] = None
            elif stop in readable:
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        syn = _parse_syn(sock.recv(65535))
                        if syn is not None and (syn.sport in ports or syn.dport in ports):
                            seen[syn] = None
                break
    finally:
        sock.close()
    return list(seen)


@contextlib.contextmanager
def syn_capture(ports: tuple[int, ...], netns: str | None = None) -> Iterator[list[Syn]]:
    """Capture the SYNs and SYN-ACKs to or from these ports in a network namespace (default: this
    one) while the block runs; the list yielded is filled when the block ends. Needs root
    (AF_PACKET)."""
    ready_r, ready_w = _ctx.Pipe(duplex=False)
    stop_r, stop_w = _ctx.Pipe(duplex=False)
    child = Child(_capture_syns, ready_w, stop_r, tuple(ports), netns=netns)
    found: list[Syn] = []
    if not ready_r.poll(20):
        child.result(0.5)
        raise RuntimeError("the capture did not start")
    try:
        yield found
    finally:
        stop_w.send(True)
        found.extend(child.result())


def handshake_isns(syns: list[Syn], client_port: int) -> tuple[int, int]:
    """(client ISN, server ISN) of the connection from client_port: the sequence numbers of its SYN
    and of the SYN-ACK answering it, each seen exactly once."""
    client = {s.seq for s in syns if s.sport == client_port and not s.ack}
    server = {s.seq for s in syns if s.dport == client_port and s.ack}
    assert len(client) == 1 and len(server) == 1, f"handshake of port {client_port}: {syns}"
    return client.pop(), server.pop()


# ---- nftables ---------------------------------------------------------------------------------


@contextlib.contextmanager
def nft_drop(rule: str, netns: str | None = None, hook: str = "output") -> Iterator[str]:
    """An nftables table of our own with one rule in the output (or input) hook, e.g.
    'tcp dport 5000 drop' or 'tcp dport 5000 numgen random mod 10 < 3 drop'. Deleted afterwards.

    A drop in output makes the sender's transmit fail (the kernel may then not count it as sent:
    tcp_rtx_synack() only traces successful sends); a drop in input loses it on the wire."""
    table = unique("tcpscope_test").replace("-", "_")
    prefix = ["ip", "netns", "exec", netns] if netns else []
    script = (
        f"table inet {table} {{\n  chain out {{\n    type filter hook {hook} priority 0; policy accept;\n"
        f"    {rule}\n  }}\n}}\n"
    )
    subprocess.run([*prefix, "nft", "-f", "-"], input=script, check=True, text=True, capture_output=True, timeout=30)
    try:
        yield table
    finally:
        subprocess.run([*prefix, "nft", "delete", "table", "inet", table], check=False, capture_output=True, timeout=30)


# ---- connect/close load ------------------------------------------------------------------------

CONNLOOP_C = r"""
/* connloop PORT SECONDS [CLIENTS [RATE]]: a loopback server that accepts and closes, and CLIENTS client
 * processes that connect, wait for the server's FIN, close, as fast as they can. Prints the number
 * of completed connections. RATE > 0 paces the clients to RATE connections/s in total. The server
 * closes first, so TIME_WAIT lands on the server side and the
 * clients' ephemeral ports are not exhausted. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    int port = atoi(argv[1]); double secs = atof(argv[2]); int clients = argc > 3 ? atoi(argv[3]) : 1;
    double rate = argc > 4 ? atof(argv[4]) / clients : 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (void *)&a, sizeof(a)) || listen(ls, 4096)) { perror("listen"); return 1; }
    long *counts = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pid_t srv = fork();
    if (srv == 0) { for (;;) { int c = accept(ls, 0, 0); if (c >= 0) close(c); } }
    for (int i = 0; i < clients; i++) {
        if (fork() == 0) {
            double start = now(), end = start + secs; long n = 0, tries = 0; char b;
            while (now() < end) {
                if (rate > 0) {
                    double due = start + tries / rate, t = now();
                    if (due > t) {
                        double w = due - t;
                        struct timespec d = {(time_t)w, (long)((w - (time_t)w) * 1e9)};
                        nanosleep(&d, 0);
                    }
                }
                tries++;
                int s = socket(AF_INET, SOCK_STREAM, 0);
                if (connect(s, (void *)&a, sizeof(a)) == 0) { if (read(s, &b, 1) == 0) n++; }
                close(s);
            }
            counts[i] = n; _exit(0);
        }
    }
    for (int i = 0; i < clients; i++) wait(0);
    kill(srv, SIGKILL); waitpid(srv, 0, 0);
    long total = 0; for (int i = 0; i < clients; i++) total += counts[i];
    printf("%ld\n", total);
    return 0;
}
"""


def build_connloop(directory: Path) -> Path:
    """Compile the connect/close load generator with gcc into directory; returns the binary."""
    src = directory / "connloop.c"
    src.write_text(CONNLOOP_C)
    exe = directory / "connloop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=60)
    return exe


def connloop(exe: Path, port: int, seconds: float, clients: int = 1, rate: float = 0) -> int:
    """Run the load for `seconds` (paced to `rate` connections/s if > 0); returns completed connections."""
    out = subprocess.run(
        [str(exe), str(port), str(seconds), str(clients), str(rate)],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    return int(out.strip())


# ---- storms ---------------------------------------------------------------------------------------


def netstat(netns: str | None = None) -> dict[str, int]:
    """The TcpExt counters of /proc/net/netstat (in a network namespace when given): TCPSynRetrans, ..."""
    cmd = ["ip", "netns", "exec", netns, "cat", "/proc/net/netstat"] if netns else ["cat", "/proc/net/netstat"]
    lines = run(*cmd).stdout.splitlines()
    head, values = (line.split() for line in lines if line.startswith("TcpExt:"))
    return {k: int(v) for k, v in zip(head[1:], values[1:], strict=True)}


def _half_open_connects(addr: str, port: int, n: int, syncnt: int, wait_s: float) -> dict[str, int]:
    """n non-blocking connects at once, each retransmitting its SYN `syncnt` times at most, then waiting
    (up to wait_s) until every one has ended: outcomes by errno name ("ok" for a connect that completed)."""
    import errno as errno_mod
    import select

    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syncnt)
        s.setblocking(False)
        s.connect_ex((addr, port))
        socks.append(s)
    outcomes: dict[str, int] = {}
    pending = set(socks)
    deadline = time.monotonic() + wait_s
    while pending and time.monotonic() < deadline:
        _r, writable, _x = select.select([], list(pending), [], 0.5)
        for s in writable:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            name = "ok" if err == 0 else errno_mod.errorcode.get(err, str(err))
            outcomes[name] = outcomes.get(name, 0) + 1
            pending.discard(s)
    if pending:
        outcomes["pending"] = len(pending)
    for s in socks:
        s.close()
    return outcomes


def syn_flood(
    addr: str, port: int, n: int, *, netns: str | None = None, syncnt: int = 1, wait_s: float = 30.0
) -> dict[str, int]:
    """A SYN flood without raw sockets: n non-blocking connects from a child (in netns), whose handshakes
    never complete when the server's SYN-ACKs are dropped on the way (nft_drop). Returns the connects'
    outcomes by errno name (ETIMEDOUT for each, with TCP_SYNCNT=syncnt: about 3 s for 1)."""
    return Child(_half_open_connects, addr, port, n, syncnt, wait_s, netns=netns).result(wait_s + 20)
