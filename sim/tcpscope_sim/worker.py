"""A simulated pod: one long-lived process in the pod's cgroup and network namespace.

Started as `python -m tcpscope_sim.worker --netns /run/netns/X --cgroup DIR --listen P,...`. It
moves itself into the cgroup (before creating any socket, so every socket it owns is charged to
the pod's cgroup), enters the netns, listens, prints one `{"ready": ...}` line, then takes commands
as JSON lines on stdin and answers on stdout (one line per command, matched by "id"):

    {"id": 1, "op": "connect", "ip": "198.18.2.2", "port": 9000, "kind": "ok", "count": 5}
        -> {"id": 1, "outcomes": {"ok": 5}}   (per connection: "ok" when it behaved as the kind
           says, else the errno name or what went wrong)
        kind port_scan: one connect to each of ports port .. port+count-1, each refused ("ok");
        kind syn_flood: count non-blocking connects at once (TCP_SYNCNT 1), each timing out ("ok")
    {"id": 2, "op": "stall", "port": 9000, "on": true}  -> {"id": 2}   stop/resume accepting
    {"id": 3, "op": "quit"}

The application protocol on the wire says what the server must do, so no server-side setup is
needed per connection: the client sends "REQ <kind> <response bytes>\\n"; the server answers
"RESP" plus that many bytes, then waits for the client's close (ok, client_reset) or aborts with
SO_LINGER 0 right after reading the request (server_reset). For network_reset both ends send
`KILL_MARK` after the exchange; the router (sim/tcpscope_sim/driver.py) rejects exactly those segments
with forged RSTs, so each end receives a RST that neither pod's application or kernel sent.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import struct
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
CONNECT_TIMEOUT_S = 10.0
IO_TIMEOUT_S = 10.0
TIMEOUT_SYNCNT = 1  # SYN + 1 retransmit: connect() fails with ETIMEDOUT after ~3 s
KILL_MARK = b"KILL"
"""network_reset: a segment whose payload starts with these 4 bytes is what the router rejects."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def enter(cgroup: str | None, netns: str | None) -> None:
    """Die with the parent, join the pod's cgroup, then its network namespace."""
    libc = _libc()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")
    if netns:
        fd = os.open(netns, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns({netns}): {os.strerror(e)}")
        finally:
            os.close(fd)


def _abort(s: socket.socket) -> None:
    """Close with SO_LINGER {on, 0}: the kernel sends a RST instead of a FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _read_line(s: socket.socket, limit: int = 4096) -> bytes:
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < limit:
        chunk = s.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def _read_exact(s: socket.socket, n: int) -> int:
    got = 0
    while got < n:
        chunk = s.recv(min(65536, n - got))
        if not chunk:
            break
        got += len(chunk)
    return got


def _drain_until_close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while s.recv(65536):
            pass


class Server:
    """Listens on the pod's ports and serves each connection as its request asks."""

    def __init__(self, ports: list[int], backlog: int = 128) -> None:
        self.listeners: dict[int, socket.socket] = {}
        self.accepting: dict[int, threading.Event] = {}
        for p in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", p))
            s.listen(backlog)
            self.listeners[p] = s
            ev = threading.Event()
            ev.set()
            self.accepting[p] = ev
        for p in ports:
            threading.Thread(target=self._accept_loop, args=(p,), daemon=True).start()

    def stall(self, port: int, on: bool) -> None:
        """Stop (on=True) or resume accepting on a port: the accept queue fills, SYNs go unanswered
        and handshakes that completed on the wire get SYN-ACK retransmits."""
        if on:
            self.accepting[port].clear()
        else:
            self.accepting[port].set()

    def _accept_loop(self, port: int) -> None:
        ls = self.listeners[port]
        while True:
            self.accepting[port].wait()
            try:
                conn, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT_S)
        try:
            words = _read_line(conn).decode(errors="replace").split()
            kind = words[1] if len(words) > 1 else "ok"
            size = int(words[2]) if len(words) > 2 else 0
            if kind == "server_reset":
                _abort(conn)
                return
            if kind == "network_reset":
                _await_network_reset(conn, b"RESP\n")
                conn.close()
                return
            conn.sendall(b"RESP\n" + b"x" * size)
            _drain_until_close(conn)  # the client closes first: FIN (ok) or RST (client_reset)
            conn.close()
        except OSError:
            conn.close()


def _await_network_reset(s: socket.socket, first: bytes = b"") -> str:
    """Send `first`, then KILL_MARK as a segment of its own (TCP_NODELAY: Nagle would hold it back
    until `first` is acked, and a retransmit could then merge both into one segment the router's
    rule does not match), then wait for the router's forged RST. "ok" when it came."""
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if first:
        s.sendall(first)
    s.sendall(KILL_MARK + b"\n")
    try:
        data = s.recv(65536)
    except ConnectionResetError:
        return "ok"
    return "no_reset" if data else "eof"


def _errname(e: OSError) -> str:
    if isinstance(e, TimeoutError) and e.errno is None:
        return "socket_timeout"
    return errno.errorcode.get(e.errno or 0, str(e))


def half_open(ip: str, port: int, count: int, wait_s: float = 30.0) -> Counter[str]:
    """syn_flood: `count` non-blocking connects at once, each retransmitting its SYN once at most
    (TCP_SYNCNT 1); the router drops the server's SYN-ACKs, so each should time out: "ok" for
    ETIMEDOUT, else what happened (connected, another errno, still pending after wait_s)."""
    import select
    import time

    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, TIMEOUT_SYNCNT)
        s.setblocking(False)
        s.connect_ex((ip, port))
        socks.append(s)
    outcomes: Counter[str] = Counter()
    pending = set(socks)
    deadline = time.monotonic() + wait_s
    while pending and time.monotonic() < deadline:
        _r, writable, _x = select.select([], list(pending), [], 0.5)
        for s in writable:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            outcomes["ok" if err == errno.ETIMEDOUT else errno.errorcode.get(err, "connected")] += 1
            pending.discard(s)
    outcomes["pending"] += len(pending)
    for s in socks:
        s.close()
    return +outcomes


def one_connection(ip: str, port: int, kind: str, size: int = 0) -> str:
    """Make one client connection of the given kind; "ok" when it went as that kind says."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if kind == "timeout":
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, TIMEOUT_SYNCNT)
        s.settimeout(CONNECT_TIMEOUT_S)
        try:
            s.connect((ip, port))
        except OSError as e:
            name = _errname(e)
            if (kind, name) in (("refused", "ECONNREFUSED"), ("timeout", "ETIMEDOUT")):
                return "ok"
            return name
        if kind in ("refused", "timeout"):
            return "connected"
        s.settimeout(IO_TIMEOUT_S)
        s.sendall(f"REQ {kind} {size}\n".encode())
        if kind == "server_reset":
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                return "ok"
            return "no_reset" if data else "eof"
        line = _read_line(s)
        if not line.startswith(b"RESP"):
            return "bad_response"
        if kind == "network_reset":
            return _await_network_reset(s)
        if size and _read_exact(s, size) != size:
            return "short_response"
        if kind == "client_reset":
            _abort(s)
        return "ok"
    except OSError as e:
        return _errname(e)
    finally:
        s.close()


class Worker:
    """The command loop: runs connection batches on a bounded thread pool, answers in order of
    completion."""

    def __init__(self, server: Server, out: TextIO, max_parallel: int = 16) -> None:
        self.server = server
        self.out = out
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=max_parallel)

    def reply(self, msg: dict[str, Any]) -> None:
        with self.lock:
            self.out.write(json.dumps(msg) + "\n")
            self.out.flush()

    def handle(self, cmd: dict[str, Any]) -> bool:
        op = cmd.get("op")
        cid = cmd.get("id")
        if op == "quit":
            return False
        if op == "stall":
            self.server.stall(int(cmd["port"]), bool(cmd.get("on", True)))
            self.reply({"id": cid})
        elif op == "connect":
            threading.Thread(target=self._connect_batch, args=(cmd,), daemon=True).start()
        else:
            self.reply({"id": cid, "error": f"unknown op {op!r}"})
        return True

    def _connect_batch(self, cmd: dict[str, Any]) -> None:
        ip, port, kind, size = str(cmd["ip"]), int(cmd["port"]), str(cmd["kind"]), int(cmd.get("size", 0))
        count = int(cmd.get("count", 1))
        if kind == "syn_flood":
            self.reply({"id": cmd.get("id"), "outcomes": dict(half_open(ip, port, count))})
            return
        if kind == "port_scan":  # one refused connect per port
            futures = [self.pool.submit(one_connection, ip, port + i, "refused") for i in range(count)]
        else:
            futures = [self.pool.submit(one_connection, ip, port, kind, size) for _ in range(count)]
        outcomes = Counter(f.result() for f in futures)
        self.reply({"id": cmd.get("id"), "outcomes": dict(outcomes)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tcpscope_sim.worker", description=__doc__.splitlines()[0])
    ap.add_argument("--netns")
    ap.add_argument("--cgroup")
    ap.add_argument("--listen", default="")
    ap.add_argument("--backlog", type=int, default=128)
    a = ap.parse_args(argv)
    enter(a.cgroup, a.netns)
    ports = [int(p) for p in a.listen.split(",") if p]
    server = Server(ports, a.backlog)
    worker = Worker(server, sys.stdout)
    worker.reply({"ready": True, "pid": os.getpid(), "ports": ports})
    for line in sys.stdin:
        if not line.strip():
            continue
        if not worker.handle(json.loads(line)):
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
