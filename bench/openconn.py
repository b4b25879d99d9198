"""Open connections' reports (bpf/interim.h): what the pass over the socket map costs per open socket
per interval with many idle open connections, and the agent's CPU while it reports 10,000 of them
every 10 s.

The connections are opened first and held idle by child processes (both ends, on loopback, each
within the open-file limit, spread over enough listening ports for the ephemeral port range); then
the agent starts, finds them at start-up (seeding, bpf/seed.h: its cost is a figure too) and
reports them every interval, in aggregate mode as the chart deploys it, filtered to the benchmark's
ports in the kernel. Its figures come from its own counters, printed at exit (`open.pass_us`,
`open.sockets_visited`: the whole pass, key snapshot and test runs, per socket); its CPU is read
from /proc between two points after start-up.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import re
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from bench.modes import AGENT_READY, READY_TIMEOUT, agent_argv, agent_unavailable, ensure_kernel_headers
from bench.procs import Tool, Unavailable, cpu_seconds, start_tool, vm_hwm_kb

log = logging.getLogger("bench")

PER_PORT = 20_000  # connections per listening port: under the ephemeral port range (32768-60999)
SEED_LINE = re.compile(r"connections open before start: (\d+) in \d+ network namespaces \((\d+) ms\): (.*)")
PASS_LINE = re.compile(r"open connections: (\d+) passes over (\d+) tracked sockets \(([\d.]+) us each\)")


@dataclass
class OpenPassResult:
    """One agent run over `connections` idle open connections (2 sockets each)."""

    connections: int
    interval_s: float
    seconds: float  # how long the agent ran
    status: str = "ok"
    reason: str = ""
    passes: int = 0
    sockets_visited: int = 0
    us_per_socket: float | None = None  # pass time over sockets visited: the cost per open socket per interval
    seed_ms: float | None = None  # finding the connections at start-up
    seeded: int = 0
    cpu_window_s: float = 0.0
    cpu_pct: float | None = None  # the agent process's CPU over the window after start-up, % of one core
    hwm_mb: float | None = None

    @property
    def pass_ms(self) -> float | None:
        """The mean pass: per socket times sockets per pass."""
        if self.us_per_socket is None or not self.passes:
            return None
        return self.us_per_socket * self.sockets_visited / self.passes / 1000


def _hold(n: int, conn: Connection) -> None:
    """A holder process: n idle loopback connections (both ends) on listeners of its own; sends their
    ports (or the error), then holds them until told to stop (or its parent is gone)."""
    listeners: list[socket.socket] = []
    held: list[socket.socket] = []
    try:
        for _ in range(0, n, PER_PORT):
            ls = socket.socket()
            ls.bind(("127.0.0.1", 0))
            ls.listen(4096)
            listeners.append(ls)
        for i in range(n):
            ls = listeners[i // PER_PORT]
            c = socket.create_connection(ls.getsockname())
            s, _ = ls.accept()
            held += (c, s)
        conn.send([ls.getsockname()[1] for ls in listeners])
    except OSError as e:
        conn.send(f"{type(e).__name__}: {e}")
    with contextlib.suppress(EOFError, OSError):
        conn.recv()
    for s in (*held, *listeners):
        s.close()


@contextlib.contextmanager
def idle_connections(n: int) -> Iterator[list[int]]:
    """n established, idle loopback connections, held by child processes (each within this process's
    open-file limit: root here may not raise the hard limit, CAP_SYS_RESOURCE is not granted);
    yields the listening ports."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    room = (hard - 1024) // 2  # two descriptors a connection, some to spare
    if room < 1:
        raise Unavailable(f"an open-file limit of {hard} leaves no room for connections")
    per = min(room, n)
    ctx = multiprocessing.get_context("fork")
    holders: list[tuple[multiprocessing.context.ForkProcess, Connection]] = []
    ports: list[int] = []
    try:
        for i in range(0, n, per):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_hold, args=(min(per, n - i), theirs), daemon=True)
            proc.start()
            theirs.close()
            holders.append((proc, ours))
        for _proc, ours in holders:
            got = ours.recv() if ours.poll(600) else "no answer in 600 s"
            if isinstance(got, str):
                raise Unavailable(f"{n} connections in {len(holders)} holder processes: {got}")
            ports += got
        yield ports
    finally:
        for _proc, ours in holders:
            with contextlib.suppress(OSError):
                ours.send("stop")
        for proc, ours in holders:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
            ours.close()
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _start_agent(workdir: Path, ports: list[int], n: int, interval_s: float, seconds: float) -> Tool:
    why = agent_unavailable()
    if why:
        raise Unavailable(why)
    ensure_kernel_headers()
    argv = [
        *agent_argv(),
        "--stdout",
        "json",
        "--no-kubernetes",
        "--no-resolve-remote",
        "--connections",
        "aggregate",
        "--flow-interval",
        str(interval_s),
        "--max-sockets",
        str(max(65_536, 1 << (2 * n + 1024).bit_length())),
        "--duration",
        str(seconds),
        *(arg for p in ports for arg in ("--port", str(p))),
    ]
    tool = start_tool(f"agent-open-{n}", argv, workdir, workdir / f"agent-open-{n}.json")
    tool.wait_ready(READY_TIMEOUT + n / 2000, stderr_marker=AGENT_READY)
    return tool


def run_open_pass(
    workdir: Path, n: int, interval_s: float, seconds: float, cpu_after_s: float | None = None
) -> OpenPassResult:
    """The agent over n idle connections for `seconds`; its CPU from cpu_after_s after it attached
    (default: one interval) to the end of the run."""
    out = OpenPassResult(connections=n, interval_s=interval_s, seconds=seconds)
    try:
        with idle_connections(n) as ports:
            tool = _start_agent(workdir, ports, n, interval_s, seconds)
            ready = time.monotonic()
            time.sleep(cpu_after_s if cpu_after_s is not None else interval_s)
            c0, t0 = cpu_seconds(tool.pid), time.monotonic()
            deadline = ready + seconds - 0.5
            while tool.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            c1, t1 = cpu_seconds(tool.pid), time.monotonic()
            out.hwm_mb = vm_hwm_kb(tool.pid) / 1024
            tool.proc.wait(seconds + 60)
            text = tool.stderr()
    except Unavailable as e:
        out.status, out.reason = "n/a", str(e)
        return out
    out.cpu_window_s = t1 - t0
    out.cpu_pct = 100 * (c1 - c0) / (t1 - t0) if t1 > t0 else None
    parse_agent_lines(text, out)
    if out.us_per_socket is None:
        out.status, out.reason = "n/a", "the agent printed no open-connection figures: " + text[-300:]
    return out


def parse_agent_lines(text: str, out: OpenPassResult) -> None:
    """The seeding line (log) and the end-of-run open-connections line of the agent's stderr."""
    for line in text.splitlines():
        m = SEED_LINE.search(line)
        if m:
            out.seed_ms = float(m.group(2))
            added = re.search(r"added (\d+)", m.group(3))
            out.seeded = int(added.group(1)) if added else 0
        m = PASS_LINE.search(line)
        if m:
            out.passes, out.sockets_visited, out.us_per_socket = int(m.group(1)), int(m.group(2)), float(m.group(3))


def run_open_phase(
    workdir: Path, sizes: list[int], interval_s: float, seconds: float, cpu_n: int, cpu_interval_s: float, cpu_s: float
) -> list[OpenPassResult]:
    """The pass cost at each size, then the agent's CPU at cpu_n connections and cpu_interval_s."""
    results = []
    for n in sizes:
        log.info("open connections: %d idle, %.0f s intervals, %.0f s", n, interval_s, seconds)
        results.append(run_open_pass(workdir, n, interval_s, seconds))
    if cpu_n:
        log.info("open connections: agent CPU at %d idle, %.0f s intervals, %.0f s", cpu_n, cpu_interval_s, cpu_s)
        results.append(run_open_pass(workdir, cpu_n, cpu_interval_s, cpu_s, cpu_after_s=cpu_interval_s / 2))
    return results
