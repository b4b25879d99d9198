"""Long-lived TCP connections for tests: both ends in this process (sockets made in any network
namespace), exchanges of exact sizes, and the kernel's own view of each end through TCP_INFO."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.traffic import Child, enter_netns

# struct tcp_info up to tcpi_total_retrans (8 u8 then 24 u32: the layout since Linux 2.6); tcpi_rtt is
# the u32 at index 15, tcpi_unacked at index 4
TCP_INFO = struct.Struct("8B24I")
_U32 = 8  # where the u32 fields start among the unpacked values


def tcp_info(s: socket.socket) -> tuple[int, ...]:
    return TCP_INFO.unpack(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO.size))


def rtt_us(s: socket.socket) -> int:
    """tcpi_rtt: the smoothed RTT in microseconds (tcp_sock.srtt_us >> 3)."""
    return tcp_info(s)[_U32 + 15]


def unacked(s: socket.socket) -> int:
    """tcpi_unacked: segments sent and not yet acknowledged."""
    return tcp_info(s)[_U32 + 4]


def socket_in(netns: str | None, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket of a network namespace (None: this one). A socket belongs to the namespace it
    was made in, whichever thread uses it later, so a short-lived thread enters the namespace."""
    if netns is None:
        return socket.socket(family, socket.SOCK_STREAM)
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            enter_netns(netns)
            made.append(socket.socket(family, socket.SOCK_STREAM))
        except BaseException as e:  # handed to the caller
            made.append(e)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    got = made[0]
    if isinstance(got, BaseException):
        raise got
    return got


def _recv_exact(s: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = s.recv(min(1 << 20, n - got))
        if not chunk:
            raise ConnectionError(f"EOF after {got} of {n} bytes")
        got += len(chunk)


@dataclass
class LongConnection:
    """One connection, both ends here: `client` (connect()) and `server` (accept())."""

    client: socket.socket
    server: socket.socket
    connected_at: float  # time.monotonic() after connect() returned
    client_port: int = 0
    c2s: int = 0  # application bytes written each way so far
    s2c: int = 0

    def exchange(self, c2s: int, s2c: int) -> None:
        """The client writes c2s bytes, the server reads them all and writes s2c, the client reads
        them all."""
        for n, sender, receiver, byte in ((c2s, self.client, self.server, b"c"), (s2c, self.server, self.client, b"s")):
            if n:
                t = threading.Thread(target=sender.sendall, args=(byte * n,))
                t.start()
                _recv_exact(receiver, n)
                t.join()
        self.c2s += c2s
        self.s2c += s2c

    def settle(self, timeout: float = 10.0) -> None:
        """Until both ends have every segment acknowledged, so the kernel's acked counters hold all
        the bytes written."""
        deadline = time.monotonic() + timeout
        while unacked(self.client) or unacked(self.server):
            if time.monotonic() > deadline:
                raise TimeoutError("segments still unacknowledged")
            time.sleep(0.005)

    def close(self, linger0: bool = False) -> None:
        """Client first, then the server once it read the EOF (both FINs acked, the client's socket
        in TIME_WAIT); or, with linger0, a RST from the client."""
        if linger0:
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.client.close()
            with contextlib.suppress(OSError):
                self.server.recv(1)
            self.server.close()
            return
        self.client.shutdown(socket.SHUT_WR)
        if self.server.recv(1):
            raise ConnectionError("data before EOF")
        self.server.close()
        if self.client.recv(1):
            raise ConnectionError("data before EOF")
        self.client.close()


@contextlib.contextmanager
def long_connection(
    port: int,
    server_addr: str = "127.0.0.1",
    *,
    server_netns: str | None = None,
    client_netns: str | None = None,
    family: int = socket.AF_INET,
    keep_listener: bool = False,
) -> Iterator[LongConnection]:
    """A listener on server_addr:port (in server_netns), one connection to it; the listener is closed
    then, or with keep_listener at the end (a server that goes on listening)."""
    lsock = socket_in(server_netns, family)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((server_addr, port))
    lsock.listen(1)
    client = socket_in(client_netns, family)
    try:
        client.connect((server_addr, port))
        connected = time.monotonic()
        server, _ = lsock.accept()
    finally:
        if not keep_listener:
            lsock.close()
    conn = LongConnection(client=client, server=server, connected_at=connected, client_port=client.getsockname()[1])
    try:
        yield conn
    finally:
        for s in (client, server, lsock):
            s.close()


def _hold(drop: tuple[int, ...], seconds: float) -> None:
    for fd in drop:
        os.close(fd)
    time.sleep(seconds)


@contextlib.contextmanager
def held_in(netns: str, comm: str, drop: tuple[socket.socket, ...] = (), seconds: float = 120.0) -> Iterator[int]:
    """A process in a network namespace that holds this process' sockets (a fork inherits them) but
    `drop`, as a pod's process holds its own; yields its pid. /proc then shows the namespace, its
    connections and their owner, as for a real workload."""
    child = Child(_hold, tuple(s.fileno() for s in drop), seconds, netns=netns, comm=comm)
    try:
        want = os.stat(f"/run/netns/{netns}").st_ino
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{child.pid}/ns/net").st_ino != want:  # in it before anyone looks
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {child.pid} did not enter {netns}")
            time.sleep(0.01)
        yield child.pid
    finally:
        child.proc.kill()
        child.proc.join(5)
