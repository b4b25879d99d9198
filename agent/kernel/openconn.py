"""Open connections: the interim pass every flow interval, and the seeding of connections open before
the agent started (bpf/interim.h, bpf/seed.h).

The pass: one batch lookup copies the keys of the per-socket map (`socket_keys`), then the never
attached raw tracepoint program `open_pass` runs with BPF_PROG_TEST_RUN on PASS_KEYS keys at a time.
It adds each ordinary open connection's progress to its flow and emits the others as `open` events;
user space only counts. Its cost grows with the open sockets, never with packets.

Seeding: /proc/<pid>/net/tcp{,6} of each network namespace lists the connections
(agent/kernel/listeners.py, one walk with the listeners); for each one, in its namespace, the never
attached classifier `open_seed` runs with the connection's tuple in `seed_req` and makes its entry.

`SEED_REQ_FIELDS` mirrors `struct seed_req` of bpf/events.h (a test checks it against the C struct);
the result codes are SEED_* and the counters OPENC_*, both of bpf/events.h.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.kernel.listeners import Connection, ListenerScan

log = logging.getLogger(__name__)

PASS_KEYS = 12  # bpf/interim.h PASS_KEYS: a raw tracepoint's test run passes at most 12 arguments
# bpf/events.h OPENC_*: counters by index (reported as open.<name>)
OPEN_COUNTERS: tuple[str, ...] = ("aggregated", "events", "flow_full", "overshoot")
# bpf/events.h SEED_*: the seeding program's results by value
SEED_RESULTS: tuple[str, ...] = ("not_found", "added", "known", "filtered", "state", "map_full")

SEED_REQ_FIELDS: tuple[tuple[str, str], ...] = (
    ("laddr", "16s"),
    ("raddr", "16s"),
    ("lport", "H"),
    ("rport", "H"),
    ("family", "H"),
    ("role", "B"),
    ("v4_lookup", "B"),
    ("pid", "I"),
    ("pad", "I"),
    ("comm", "16s"),
)
SEED_REQ = struct.Struct("<" + "".join(c for _n, c in SEED_REQ_FIELDS))

ROLE_ACTIVE, ROLE_PASSIVE = 1, 2  # bpf/events.h ROLE_*
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
CLONE_NEWNET = 0x40000000


class OpenConnError(Exception):
    """A BPF syscall of the pass or the seeding failed; the message says which and why."""


class _TestRunOpts(ctypes.Structure):
    """libbpf's struct bpf_test_run_opts (libbpf 1.x; `sz` lets libbpf accept this prefix)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


class Syscalls:
    """The two BPF commands this module needs beyond bcc's API, through the libbpf that bcc itself
    loads (Debian's libbpf1): BPF_PROG_TEST_RUN and BPF_MAP_LOOKUP_BATCH."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        self._test_run = lib.bpf_prog_test_run_opts
        self._test_run.argtypes = (ctypes.c_int, ctypes.POINTER(_TestRunOpts))
        self._test_run.restype = ctypes.c_int
        self._lookup_batch = lib.bpf_map_lookup_batch
        self._lookup_batch.argtypes = (
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint32),
            ctypes.c_void_p,
        )
        self._lookup_batch.restype = ctypes.c_int
        self._opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
        self._opts_ref = ctypes.byref(self._opts)

    def test_run(self, prog_fd: int, *, ctx: int = 0, ctx_size: int = 0, data: int = 0, data_size: int = 0) -> int:
        """Run a program once; its return value. `ctx`/`data` are addresses. The options struct is
        reused (the pass makes one call per PASS_KEYS sockets), with the outputs libbpf writes back
        zeroed first: the kernel refuses a raw tracepoint's run whose duration is not 0."""
        o = self._opts
        o.ctx_in, o.ctx_size_in, o.data_in, o.data_size_in = ctx or None, ctx_size, data or None, data_size
        o.duration = o.retval = 0
        if self._test_run(prog_fd, self._opts_ref) != 0:
            err = ctypes.get_errno()
            raise OpenConnError(f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
        return int(o.retval)

    def lookup_batch(
        self, map_fd: int, in_batch: Any, out_batch: Any, keys: int, values: int, count: ctypes.c_uint32
    ) -> int:
        """One BPF_MAP_LOOKUP_BATCH call: 0, or the errno (ENOENT: the map is done)."""
        res = self._lookup_batch(map_fd, in_batch, out_batch, keys, values, ctypes.byref(count), None)
        return 0 if res == 0 else ctypes.get_errno() or -res


def socket_keys(
    sys: Syscalls, map_fd: int, capacity: int, value_size: int, chunk: int = 4096
) -> tuple[ctypes.Array[ctypes.c_uint64], int]:
    """The keys of the per-socket map now (a u64 array and how many): one batch lookup per `chunk`
    entries, values into a scratch buffer that is thrown away. PASS_KEYS zero keys follow the last
    one: a raw tracepoint's test run must be handed all the arguments its program reads."""
    keys = (ctypes.c_uint64 * (capacity + PASS_KEYS))()
    scratch = ctypes.create_string_buffer(value_size * chunk)
    token_in, token_out = ctypes.c_uint32(0), ctypes.c_uint32(0)
    total = 0
    first = True
    while total < capacity:
        count = ctypes.c_uint32(min(chunk, capacity - total))
        err = sys.lookup_batch(
            map_fd,
            None if first else ctypes.byref(token_in),
            ctypes.byref(token_out),
            ctypes.addressof(keys) + 8 * total,
            ctypes.addressof(scratch),
            count,
        )
        total += count.value
        if err == errno.ENOENT:
            break
        if err:
            raise OpenConnError(f"BPF_MAP_LOOKUP_BATCH on the socket map failed: {os.strerror(err)}")
        token_in.value = token_out.value
        first = False
    return keys, total


@dataclass
class PassStats:
    """What the passes did, cumulative (open.* counters besides the kernel's)."""

    passes: int = 0
    sockets: int = 0  # keys visited over all passes
    seconds: float = 0.0
    skipped: int = 0  # flow intervals whose open connections could not be reported (fallback)

    def counters(self) -> dict[str, int]:
        return {
            "open.passes": self.passes,
            "open.sockets_visited": self.sockets,
            "open.pass_us": int(self.seconds * 1e6),
            "open.passes_skipped": self.skipped,
        }


class OpenPass:
    """Runs the interim pass of a loaded program (bcc.BPF) whose plan has it on."""

    def __init__(self, bpf: Any, sys: Syscalls | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        from bcc import BPF

        self._bpf = bpf
        self._sys = sys or Syscalls()
        self._clock = clock
        self._fn_fd = int(bpf.load_func(b"open_pass", BPF.RAW_TRACEPOINT).fd)
        table = bpf[b"sockets"]
        self._map_fd = int(table.map_fd)
        self._capacity = int(table.max_entries)
        self._value_size = ctypes.sizeof(table.Leaf)
        self._counts = bpf[b"open_counts"]
        self.stats = PassStats()

    def run(self) -> int:
        """One pass over every socket tracked now; returns how many keys it visited."""
        started = self._clock()
        keys, n = socket_keys(self._sys, self._map_fd, self._capacity, self._value_size)
        base = ctypes.addressof(keys)
        fd = self._fn_fd
        test_run = self._sys.test_run
        for i in range(0, n, PASS_KEYS):
            test_run(fd, ctx=base + 8 * i, ctx_size=8 * PASS_KEYS)  # zero keys are skipped
        self.stats.passes += 1
        self.stats.sockets += n
        self.stats.seconds += self._clock() - started
        return n

    def kernel_counters(self) -> dict[str, int]:
        """open.<OPENC_*> from the per-CPU array."""
        return {f"open.{name}": int(sum(self._counts[ctypes.c_int(idx)])) for idx, name in enumerate(OPEN_COUNTERS)}


# ---- seeding ------------------------------------------------------------------------------------


def seed_request(conn: Connection, role: int, pid: int, comm: str) -> bytes:
    """The `struct seed_req` bytes of one connection."""
    v4 = conn.family == socket.AF_INET or (conn.laddr[:12] == _V4_MAPPED and conn.raddr[:12] == _V4_MAPPED)
    return SEED_REQ.pack(
        conn.laddr,
        conn.raddr,
        conn.lport,
        conn.rport,
        conn.family,
        role,
        1 if v4 else 0,
        pid,
        0,
        comm.encode()[:15],
    )


def role_of(conn: Connection, listening: set[tuple[int, int, bytes, int]]) -> int:
    """PASSIVE when the connection's local port is listening in its namespace (bound to its local
    address or to the wildcard of its family), else ACTIVE."""
    for addr in (conn.laddr, bytes(16)):
        if (conn.netns, conn.family, addr, conn.lport) in listening:
            return ROLE_PASSIVE
    return ROLE_ACTIVE


@dataclass
class SeedResult:
    """What seeding found, by SEED_* result, and what it cost."""

    by_result: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEED_RESULTS, 0))
    namespaces: int = 0
    seconds: float = 0.0
    error: str = ""  # why seeding could not run at all, or stopped

    def counters(self) -> dict[str, int]:
        return {f"open.seed_{name}": n for name, n in self.by_result.items()}


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OpenConnError(f"setns into a network namespace failed: {os.strerror(ctypes.get_errno())}")


def seed_connections(bpf: Any, scan: ListenerScan, sys: Syscalls | None = None) -> SeedResult:
    """Find the scan's connections in the kernel and make their entries (bpf/seed.h). Runs in a
    thread of its own: entering a namespace (setns) changes only the calling thread."""
    result = SeedResult()
    started = time.monotonic()
    try:
        from bcc import BPF

        fn_fd = int(bpf.load_func(b"open_seed", BPF.SCHED_CLS).fd)
    except Exception as e:  # an older kernel may refuse helpers to classifiers: say so, go on
        result.error = f"the seeding program did not load: {e}"
        return result
    listening = {(ln.netns, ln.family, ln.addr, ln.port) for ln in scan.listeners}
    table = bpf[b"seed_req"]
    by_ns: dict[int, list[Connection]] = {}
    for c in scan.connections:
        by_ns.setdefault(c.netns, []).append(c)
    worker = threading.Thread(
        target=_seed_all,
        args=(sys or Syscalls(), fn_fd, table, by_ns, scan.netns_pid, listening, result),
        name="tcpscope-seed",
    )
    worker.start()
    worker.join()
    result.namespaces = len(by_ns)
    result.seconds = time.monotonic() - started
    return result


def _seed_all(
    sys: Syscalls,
    fn_fd: int,
    table: Any,
    by_ns: dict[int, list[Connection]],
    netns_pid: dict[int, int],
    listening: set[tuple[int, int, bytes, int]],
    result: SeedResult,
) -> None:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    packet = ctypes.create_string_buffer(64)  # a classifier's test run wants a packet; never read
    try:
        for ns, conns in by_ns.items():
            pid = netns_pid.get(ns)
            if pid is None:
                continue
            try:
                fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            except OSError:
                continue  # the namespace's process exited
            try:
                _setns(fd)
            finally:
                os.close(fd)
            _seed_namespace(sys, fn_fd, table, conns, listening, packet, result)
    except OpenConnError as e:
        result.error = str(e)
    finally:
        try:
            _setns(own)
        finally:
            os.close(own)


def _seed_namespace(
    sys: Syscalls,
    fn_fd: int,
    table: Any,
    conns: Iterable[Connection],
    listening: set[tuple[int, int, bytes, int]],
    packet: ctypes.Array[ctypes.c_char],
    result: SeedResult,
) -> None:
    zero = ctypes.c_int(0)
    for c in conns:
        leaf = table.Leaf.from_buffer_copy(seed_request(c, role_of(c, listening), c.pid, c.comm))
        table[zero] = leaf
        code = sys.test_run(fn_fd, data=ctypes.addressof(packet), data_size=len(packet))
        name = SEED_RESULTS[code] if 0 <= code < len(SEED_RESULTS) else "not_found"
        result.by_result[name] += 1


def describe_seeding(result: SeedResult) -> str:
    """The start-up log line."""
    found = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.by_result.items() if v)
    return (
        f"connections open before start: {sum(result.by_result.values())} in {result.namespaces} network namespaces "
        f"({result.seconds * 1000:.0f} ms): {found or 'none'}"
    )
