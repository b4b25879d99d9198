"""Owners of TCP listening sockets, and the connections, that existed before the agent started, read
from /proc.

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

The same walk lists the connections (ESTABLISHED and the closing states, not handshakes) of each
namespace with their owners, and a pid to enter each namespace by. The per-socket map is keyed by the
struct sock pointer, which /proc does not show: agent/kernel/openconn.py finds each one in the kernel
by its tuple (bpf/seed.h).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

TCP_LISTEN = "0A"  # include/net/tcp_states.h TCP_LISTEN = 10, as /proc/net/tcp prints it
# ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING: a connection's full socket
TCP_CONNECTED = frozenset({"01", "04", "05", "08", "09", "0B"})
_TABLES = (("tcp", int(socket.AF_INET)), ("tcp6", int(socket.AF_INET6)))

ListenKey = tuple[int, int, bytes, int]  # (netns, family, bound address, port): the listener map's key


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
class Connection:
    """One connection of one network namespace, as /proc/net/tcp{,6} lists it, and its owner."""

    netns: int
    family: int
    laddr: bytes  # as the kernel side's struct tuple: IPv4 in the first 4 bytes
    lport: int
    raddr: bytes
    rport: int
    inode: int
    pid: int = 0  # lowest pid holding it; 0 when none was found
    comm: str = ""


@dataclass(frozen=True)
class ListenerScan:
    """What a scan found, and what it cost."""

    listeners: tuple[Listener, ...]
    processes: int  # /proc/<pid> entries looked at
    namespaces: int  # distinct network namespaces seen
    unowned: int  # listening sockets held by no visible process (e.g. closed meanwhile)
    connections: tuple[Connection, ...] = ()
    netns_pid: Mapping[int, int] = field(default_factory=dict)  # a process of each namespace read


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


def connection_rows(table: str) -> list[tuple[bytes, int, bytes, int, int]]:
    """(local address, port, remote address, port, inode) of the connection rows (TCP_CONNECTED) of a
    /proc/net/tcp or tcp6 text; rows of no socket (inode 0) are left out."""
    out = []
    for line in table.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or cols[3] not in TCP_CONNECTED or not int(cols[9]):
            continue
        laddr, lport = cols[1].rsplit(":", 1)
        raddr, rport = cols[2].rsplit(":", 1)
        out.append((proc_address(laddr), int(lport, 16), proc_address(raddr), int(rport, 16), int(cols[9])))
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the process exited, or we may not look at it
        return None


def _comm(proc: Path, pid: int) -> str:
    return (_read(proc / str(pid) / "comm") or "").rstrip("\n")


def scan_listeners(proc: Path = Path("/proc"), netns_only: int | None = None) -> ListenerScan:
    """Every listening TCP socket in every network namespace visible through `proc`, with its owner.

    `netns_only` restricts the scan to one namespace (the agent's --netns filter)."""
    processes = list(_process_namespaces(proc))
    by_ns = processes_by_netns(processes, netns_only)
    tables = _tables_by_netns(proc, by_ns)
    wanted = {inode: key for ns, (_pid, tbl) in tables.items() for inode, key in netns_listen_sockets(ns, tbl).items()}
    conns = [c for ns, (_pid, tbl) in tables.items() for c in netns_connections(ns, tbl)]
    sockets = {inode: key[0] for inode, key in wanted.items()} | {c.inode: c.netns for c in conns}
    busy = set(sockets.values())
    owners = lowest_owners(_socket_holders(proc, by_ns, busy), sockets)
    return ListenerScan(
        listeners=group_listeners(wanted, owners, lambda pid: _comm(proc, pid)),
        processes=len(processes),
        namespaces=len(by_ns),
        unowned=sum(1 for inode in wanted if inode not in owners),
        connections=owned_connections(conns, owners, lambda pid: _comm(proc, pid)),
        netns_pid={ns: pid for ns, (pid, _tbl) in tables.items()},
    )


# Step 1: distinct network namespaces.


def _process_namespaces(proc: Path) -> Iterator[tuple[int, int | None]]:
    """(pid, network namespace inode) of every /proc/<pid>; None when it cannot be read (the process exited)."""
    for pid in _pids(proc):
        try:
            yield pid, os.stat(proc / str(pid) / "ns" / "net").st_ino
        except OSError:
            yield pid, None


def processes_by_netns(processes: Iterable[tuple[int, int | None]], netns_only: int | None) -> dict[int, list[int]]:
    """netns inode -> its pids, in scan order; processes of unknown namespace are left out, and with
    `netns_only` every namespace but that one."""
    by_ns: dict[int, list[int]] = {}
    for pid, ns in processes:
        if ns is not None and (netns_only is None or ns == netns_only):
            by_ns.setdefault(ns, []).append(pid)
    return by_ns


# Step 2: the LISTEN sockets of each namespace.


def _net_tables(proc: Path, pid: int) -> list[tuple[str | None, int]] | None:
    """/proc/<pid>/net/tcp and tcp6 (None where unreadable) with their families; None if neither is readable."""
    tables = [(_read(proc / str(pid) / "net" / name), family) for name, family in _TABLES]
    if all(text is None for text, _ in tables):
        return None
    return tables


def netns_listen_sockets(ns: int, tables: Iterable[tuple[str | None, int]]) -> dict[int, ListenKey]:
    """socket inode -> listener map key of the LISTEN rows in one namespace's tcp and tcp6 tables
    (text, family); a table that could not be read (None) has none."""
    wanted: dict[int, ListenKey] = {}
    for text, family in tables:
        for inode, (addr, port) in listen_sockets(text or "").items():
            wanted[inode] = (ns, family, addr, port)
    return wanted


def netns_connections(ns: int, tables: Iterable[tuple[str | None, int]]) -> list[Connection]:
    """The connections of one namespace's tcp and tcp6 tables (text, family), owners not yet known."""
    return [
        Connection(netns=ns, family=family, laddr=la, lport=lp, raddr=ra, rport=rp, inode=inode)
        for text, family in tables
        for la, lp, ra, rp, inode in connection_rows(text or "")
    ]


def _tables_by_netns(proc: Path, by_ns: dict[int, list[int]]) -> dict[int, tuple[int, list[tuple[str | None, int]]]]:
    """netns -> (reader pid, its tcp and tcp6 tables): the first process of a namespace whose tables
    can be read speaks for it."""
    out: dict[int, tuple[int, list[tuple[str | None, int]]]] = {}
    for ns, pids in by_ns.items():
        found = _first_readable_tables(proc, pids)
        if found is not None:
            out[ns] = found
    return out


def _first_readable_tables(proc: Path, pids: list[int]) -> tuple[int, list[tuple[str | None, int]]] | None:
    for pid in pids:
        tables = _net_tables(proc, pid)
        if tables is not None:
            return pid, tables
    return None


# Step 3: owners, from the fds of the processes of namespaces with listeners.


def socket_inode(link: str) -> int | None:
    """The inode of a /proc/<pid>/fd link to a socket (`socket:[inode]`), None for anything else."""
    if link.startswith("socket:["):
        return int(link[8:-1])
    return None


def _socket_inodes(proc: Path, pid: int) -> Iterator[int]:
    """Inodes of the sockets among /proc/<pid>/fd; fds that close meanwhile, or a process that exited
    or may not be looked at, give none."""
    fd_dir = proc / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return
    for fd in fds:
        try:
            inode = socket_inode(os.readlink(fd_dir / fd))
        except OSError:
            continue
        if inode is not None:
            yield inode


def _socket_holders(proc: Path, by_ns: dict[int, list[int]], busy: Container[int]) -> Iterator[tuple[int, int, int]]:
    """(pid, its network namespace, socket inode) for each socket fd of the processes in namespaces
    with listeners or connections."""
    for ns, pids in by_ns.items():
        if ns in busy:
            for pid in pids:
                for inode in _socket_inodes(proc, pid):
                    yield pid, ns, inode


def lowest_owners(holders: Iterable[tuple[int, int, int]], wanted: Mapping[int, int]) -> dict[int, int]:
    """socket inode -> lowest pid holding it, among (pid, namespace, inode) triples, for the wanted
    inodes (inode -> its namespace): a pre-fork server's listener goes to the parent that called
    listen(). A holder in the socket's own namespace comes first: a process elsewhere that was
    passed the fd (or inherited it) owns it only when none there does."""
    best: dict[int, tuple[bool, int]] = {}
    for pid, ns, inode in holders:
        if inode not in wanted:
            continue
        rank = (ns != wanted[inode], pid)
        if inode not in best or rank < best[inode]:
            best[inode] = rank
    return {inode: pid for inode, (_elsewhere, pid) in best.items()}


# Then one entry per listener map key.


def group_listeners(
    wanted: dict[int, ListenKey], owners: dict[int, int], comm_of: Callable[[int], str]
) -> tuple[Listener, ...]:
    """One Listener per key of the owned sockets, sorted; sockets without an owner are left out.

    An SO_REUSEPORT group shares a key: one entry, the lowest pid, one ref per socket."""
    found: dict[ListenKey, Listener] = {}
    for inode, key in wanted.items():
        owner = owners.get(inode)
        if owner is None:
            continue
        ns, family, addr, port = key
        comm = comm_of(owner)
        prev = found.get(key)
        refs = prev.refs + 1 if prev else 1
        if prev is not None and prev.pid < owner:
            owner, comm = prev.pid, prev.comm
        found[key] = Listener(netns=ns, port=port, pid=owner, comm=comm, family=family, addr=addr, refs=refs)
    return tuple(sorted(found.values(), key=lambda x: (x.netns, x.port, x.family, x.addr)))


def owned_connections(
    conns: Iterable[Connection], owners: dict[int, int], comm_of: Callable[[int], str]
) -> tuple[Connection, ...]:
    """The connections with their owners (pid 0 where none holds the socket: an orphan, closing),
    sorted."""
    out = []
    for c in conns:
        pid = owners.get(c.inode, 0)
        out.append(replace(c, pid=pid, comm=comm_of(pid) if pid else ""))
    return tuple(sorted(out, key=lambda c: (c.netns, c.family, c.laddr, c.lport, c.raddr, c.rport)))
