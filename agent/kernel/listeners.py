"""Owners of TCP listening sockets that existed before the agent started, read from /proc.

The kernel side learns a listener's owner at CLOSE->LISTEN (listen(), process context) and gives
it to every passive child at LISTEN->SYN_RECV (softirq, where the current task is unrelated). A
listener opened before the programs were attached never passed CLOSE->LISTEN, so without this scan
every connection it accepts would carry pid 0 and no comm: the common case when a DaemonSet agent
restarts while servers keep running. At start-up user space fills the same map from /proc:

  1. distinct network namespaces: the inode of /proc/<pid>/ns/net, one reader pid for each;
  2. LISTEN sockets (st 0A) of each namespace from /proc/<reader>/net/tcp and tcp6: bound address,
     port, inode;
  3. owners: /proc/<pid>/fd/* -> `socket:[inode]`, only in processes of namespaces with listeners;
     comm from /proc/<pid>/comm. A listener shared by several processes (pre-fork servers) goes
     to the lowest pid, usually the parent that called listen().

The map's key is {netns, family, bound address, port}, as the kernel side builds it: IPv4 and IPv6
listeners on one port, or on different addresses, are different keys. Listeners with the same key
(an SO_REUSEPORT group) become one entry owned by the lowest pid, with their number as its refs.

Already ESTABLISHED sockets are not seeded: the per-socket map is keyed by the struct sock pointer,
which /proc does not show (the socket inode cannot be turned into that key), so those sockets stay
role UNSPECIFIED with pid 0 until they close.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TCP_LISTEN = "0A"  # include/net/tcp_states.h TCP_LISTEN = 10, as /proc/net/tcp prints it


@dataclass(frozen=True)
class Listener:
    """One listening address of one network namespace and the process owning it."""

    netns: int  # inode of the network namespace (net->ns.inum)
    port: int
    pid: int  # tgid
    comm: str
    family: int = int(socket.AF_INET)
    addr: bytes = bytes(16)  # as the kernel side's struct tuple: IPv4 in the first 4 bytes
    refs: int = 1  # listening sockets with this key


def proc_address(hexaddr: str) -> bytes:
    """A /proc/net/tcp{,6} address column (32-bit words printed %08X in host order) as the bytes
    the kernel holds, padded to 16: '0100007F' -> 127.0.0.1 on a little-endian host."""
    words = [int(hexaddr[i : i + 8], 16) for i in range(0, len(hexaddr), 8)]
    return b"".join(struct.pack("=I", w) for w in words).ljust(16, b"\0")


@dataclass(frozen=True)
class ListenerScan:
    """What a scan found, and what it cost."""

    listeners: tuple[Listener, ...]
    processes: int  # /proc/<pid> entries looked at
    namespaces: int  # distinct network namespaces seen
    unowned: int  # listening sockets held by no visible process (e.g. closed meanwhile)


def _pids(proc: Path) -> Iterator[int]:
    try:
        names = os.listdir(proc)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def listen_sockets(table: str) -> dict[int, tuple[bytes, int]]:
    """socket inode -> (bound address, port) of the LISTEN rows of a /proc/net/tcp or tcp6 text."""
    out: dict[int, tuple[bytes, int]] = {}
    for line in table.splitlines()[1:]:
        cols = line.split()
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        if len(cols) < 10 or cols[3] != TCP_LISTEN:
            continue
        inode = int(cols[9])
        if inode:
            addr, port = cols[1].rsplit(":", 1)
            out[inode] = (proc_address(addr), int(port, 16))
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the process exited, or we may not look at it
        return None


def scan_listeners(proc: Path = Path("/proc"), netns_only: int | None = None) -> ListenerScan:
    """Every listening TCP socket in every network namespace visible through `proc`, with its owner.

    `netns_only` restricts the scan to one namespace (the agent's --netns filter)."""
    by_ns: dict[int, list[int]] = {}
    processes = 0
    for pid in _pids(proc):
        processes += 1
        try:
            ns = os.stat(proc / str(pid) / "ns" / "net").st_ino
        except OSError:
            continue
        if netns_only is None or ns == netns_only:
            by_ns.setdefault(ns, []).append(pid)

    # socket inode -> (netns, family, address, port)
    wanted: dict[int, tuple[int, int, bytes, int]] = {}
    for ns, pids in by_ns.items():
        for reader in pids:  # the first process whose tables can be read speaks for the namespace
            tables = [
                (_read(proc / str(reader) / "net" / name), fam)
                for name, fam in (("tcp", int(socket.AF_INET)), ("tcp6", int(socket.AF_INET6)))
            ]
            if all(t is None for t, _ in tables):
                continue
            for text, fam in tables:
                for inode, (addr, port) in listen_sockets(text or "").items():
                    wanted[inode] = (ns, fam, addr, port)
            break

    owners: dict[int, int] = {}  # socket inode -> lowest owning pid
    if wanted:
        for ns, pids in by_ns.items():
            if not any(v[0] == ns for v in wanted.values()):
                continue
            for pid in pids:
                fd_dir = proc / str(pid) / "fd"
                try:
                    fds = os.listdir(fd_dir)
                except OSError:
                    continue
                for fd in fds:
                    try:
                        target = os.readlink(fd_dir / fd)
                    except OSError:
                        continue
                    if target.startswith("socket:["):
                        inode = int(target[8:-1])
                        if inode in wanted and (inode not in owners or pid < owners[inode]):
                            owners[inode] = pid

    found: dict[tuple[int, int, bytes, int], Listener] = {}
    for inode, key in wanted.items():
        owner = owners.get(inode)
        if owner is None:
            continue
        ns, fam, addr, port = key
        comm = (_read(proc / str(owner) / "comm") or "").rstrip("\n")
        prev = found.get(key)
        refs = prev.refs + 1 if prev else 1
        # an SO_REUSEPORT group shares a key: one entry, the lowest pid, one ref per socket
        if prev is not None and prev.pid < owner:
            owner, comm = prev.pid, prev.comm
        found[key] = Listener(netns=ns, port=port, pid=owner, comm=comm, family=fam, addr=addr, refs=refs)
    return ListenerScan(
        listeners=tuple(sorted(found.values(), key=lambda x: (x.netns, x.port, x.family, x.addr))),
        processes=processes,
        namespaces=len(by_ns),
        unowned=sum(1 for inode in wanted if inode not in owners),
    )
