"""Storms in the benchmark: saturating loads of anomalies (refused connects, RST churn, a SYN flood)
run in interleaved rounds under each tool, on the veth pair (client and server each in their own
network namespace, so the server's own TCP counters are exact).

For each storm, tool and round: attempts per second (and the ratio to `none` in the same round), the
tool's CPU per attempt, what it accounted for against what happened, and the losses it reported.
For the agent also the CPU per anomaly it handled (sent as events or aggregated in the kernel, from
its exit line) and, for the SYN flood, its SYN-ACK retransmits against the server namespace's
TcpExt TCPSynRetrans.

- refused: connects to a port nobody listens on. Expected: one client socket per attempt.
- rst: connect to the loadgen server, write 64 bytes, abort with a RST (SO_LINGER 0). Expected: one
  client socket per attempt (the server's sockets are counted too where a tool reports them).
- synflood: non-blocking connects whose SYN-ACKs an nft rule drops in the client's namespace (on
  the way: the server sent them); the client closes each after a second in SYN_SENT. Expected: one
  client socket per attempt, and the server's SYN-ACK retransmits (its netns counter). The server's
  namespace retries a SYN-ACK once (tcp_synack_retries 1), and each round waits until its half-open
  requests are gone, so no round inherits the last one's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import Topology
from bench.modes import MODES, Running
from bench.procs import Unavailable, bpf_prog_stats, cpu_seconds
from bench.runner import _count_lines

log = logging.getLogger("bench")

STORMS: tuple[str, ...] = ("refused", "rst", "synflood")
STORM_MODES: tuple[str, ...] = ("none", "agent-aggregate", "tcplife", "tcpstates", "tcpdump")
REFUSED_PORT = 1  # nothing listens on it in the server's fresh namespace
_ANOMALIES = re.compile(r"(\d+) anomalies sent as events, (\d+) counted in the kernel past the budget")
_AGENT_LOSS = re.compile(r"events out, lost (\d+)")
_AGENT_SKIPPED = re.compile(r"possibly lost (\d+) more")


@dataclass
class StormRound:
    round: int
    attempts: int
    errors: int
    seconds: float
    ratio: float | None = None
    cpu_s: float | None = None
    kernel_ns: int | None = None
    expected: int | None = None  # client sockets the storm made
    accounted: int | None = None  # of those, what the tool reported
    delivered_ratio: float | None = None  # accounted/expected, or the tool's own loss report
    anomalies: int | None = None  # the agent: anomalies it handled (events + aggregated)
    lost: int | None = None  # the agent: events it reported lost
    skipped: int | None = None  # the agent: program runs the kernel skipped (possible losses, an upper bound)
    synack_expected: int | None = None
    synack_accounted: int | None = None

    @property
    def rate(self) -> float:
        return self.attempts / self.seconds if self.seconds else 0.0


@dataclass
class StormRow:
    storm: str
    mode: str
    label: str
    status: str = "ok"
    reason: str = ""
    rounds: list[StormRound] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def med(xs: list[float]) -> float | None:
            return statistics.median(xs) if xs else None

        rs = self.rounds
        return {
            "rate_median": med([r.rate for r in rs]),
            "ratio_median": med([r.ratio for r in rs if r.ratio is not None]),
            "ratio_min": min((r.ratio for r in rs if r.ratio is not None), default=None),
            "cpu_us_per_attempt_median": med(
                [r.cpu_s * 1e6 / r.attempts for r in rs if r.cpu_s is not None and r.attempts]
            ),
            "cpu_us_per_anomaly_median": med(
                [r.cpu_s * 1e6 / r.anomalies for r in rs if r.cpu_s is not None and r.anomalies]
            ),
            "kernel_ns_per_attempt_median": med([r.kernel_ns / r.attempts for r in rs if r.kernel_ns and r.attempts]),
            "delivered_ratio_min": min((r.delivered_ratio for r in rs if r.delivered_ratio is not None), default=None),
            "lost_max": max((r.lost for r in rs if r.lost is not None), default=None),
            # exact: the kernel's own count, but for the program runs it skipped (a softirq's tracepoint
            # on a CPU where another BPF program runs: kernel.recursion_misses, reported as possible losses)
            "synack_exact": all(_synack_exact(r) for r in rs if r.synack_expected is not None)
            if any(r.synack_expected is not None for r in rs)
            else None,
            "skipped_max": max((r.skipped for r in rs if r.skipped is not None), default=None),
        }


def _synack_exact(r: StormRound) -> bool:
    if r.synack_expected is None or r.synack_accounted is None:
        return False
    return r.synack_expected - (r.skipped or 0) <= r.synack_accounted <= r.synack_expected


def _ns(topo: Topology, which: str) -> list[str]:
    return topo.prefix(topo.server_ns if which == "server" else topo.client_ns)


def _netstat(topo: Topology) -> dict[str, int]:
    out = subprocess.run([*_ns(topo, "server"), "cat", "/proc/net/netstat"], capture_output=True, text=True, check=True)
    head, values = (line.split() for line in out.stdout.splitlines() if line.startswith("TcpExt:"))
    return {k: int(v) for k, v in zip(head[1:], values[1:], strict=True)}


def _half_open(topo: Topology) -> int:
    out = subprocess.run(
        [*_ns(topo, "server"), "ss", "-Htn", "state", "syn-recv", f"( sport = :{topo.port} )"],
        capture_output=True,
        text=True,
        check=False,
    )
    return len([line for line in out.stdout.splitlines() if line.strip()])


@contextlib.contextmanager
def synack_drop(topo: Topology) -> Iterator[None]:
    """The server's SYN-ACKs dropped in the client's namespace (input hook: they left the server)."""
    table = f"tcpscope_bench_{time.monotonic_ns()}"
    rule = f"ip saddr {topo.server_addr} tcp sport {topo.port} tcp flags & (syn | ack) == syn | ack drop"
    script = (
        f"table inet {table} {{\n chain c {{ type filter hook input priority 0; policy accept;\n  {rule}\n }}\n}}\n"
    )
    subprocess.run([*_ns(topo, "client"), "nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*_ns(topo, "client"), "nft", "delete", "table", "inet", table], capture_output=True)


def storm_load(topo: Topology, storm: str, seconds: float, threads: int) -> tuple[int, int, float]:
    """Run the storm's load; returns (attempts as the storm meant them, other attempts, seconds)."""
    port = REFUSED_PORT if storm == "refused" else topo.port
    p = subprocess.run(
        [
            *_ns(topo, "client"),
            str(topo.loadgen),
            "storm",
            storm,
            topo.server_addr,
            str(port),
            str(threads),
            f"{seconds:.3f}",
            "0",
        ],
        capture_output=True,
        check=True,
        timeout=seconds + 30,
    )
    d = json.loads(p.stdout)
    return int(d["connections"]), int(d["errors"]), float(d["seconds"])


def count_agent(path: Path, port: int) -> tuple[int, int]:
    """(client sockets to `port`, SYN-ACK retransmits from `port`) in the agent's JSON lines: its
    lifecycles one by one and the `count` of its aggregates."""
    clients = synacks = 0
    with open(path, "rb") as f:
        for line in f:
            if b'"lifecycle"' not in line and b'"anomalies"' not in line and b'"synack_retransmit"' not in line:
                continue
            ev = json.loads(line)
            remote, local = ev.get("remote", {}), ev.get("local", {})
            if "lifecycle" in ev and ev["lifecycle"].get("role") == "ACTIVE" and remote.get("port") == port:
                clients += 1
            elif "synack_retransmit" in ev and local.get("port") == port:
                synacks += 1
            elif "anomalies" in ev:
                a = ev["anomalies"]
                n = int(a.get("count", 0))
                if a.get("kind") == "ANOMALY_LIFECYCLE" and a.get("role") == "ACTIVE" and remote.get("port") == port:
                    clients += n
                elif a.get("kind") == "ANOMALY_SYNACK_RETRANSMIT" and local.get("port") == port:
                    synacks += n
    return clients, synacks


def count_tcplife_clients(path: Path, port: int) -> int:
    """tcplife's lines of client sockets to `port` (RPORT, its 6th column)."""
    n = 0
    with open(path, "rb") as f:
        for raw in f:
            cols = raw.decode(errors="replace").split()
            if len(cols) >= 6 and cols[5] == str(port):
                n += 1
    return n


def _account(out: StormRound, storm: str, mode: str, running: Running, port: int) -> None:
    """What the tool reported of the round, against what the storm made."""
    assert running.main is not None
    path = running.main.stdout_path
    err = running.main.stderr()
    try:
        if mode.startswith("agent") and path is not None:
            out.accounted, synacks = count_agent(path, port)
            if storm == "synflood":
                out.synack_accounted = synacks
            m = _ANOMALIES.search(err)
            if m:
                out.anomalies = int(m.group(1)) + int(m.group(2))
            loss_line = _AGENT_LOSS.search(err)
            out.lost = int(loss_line.group(1)) if loss_line else None
            maybe = _AGENT_SKIPPED.search(err)
            out.skipped = int(maybe.group(1)) if maybe else 0
        elif mode == "tcplife" and path is not None:
            out.accounted = count_tcplife_clients(path, port)
        elif mode == "tcpstates":
            lines = _count_lines(path) if path is not None else 0
            missed = sum(int(x) for x in re.findall(r"[Pp]ossibly lost (\d+) samples", err))
            out.delivered_ratio = lines / (lines + missed) if lines + missed else None
        elif mode == "tcpdump":
            got = re.search(r"(\d+) packets captured", err)
            seen = re.search(r"(\d+) packets received by filter", err)
            if got and seen and int(seen.group(1)):
                out.delivered_ratio = int(got.group(1)) / int(seen.group(1))
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    if out.accounted is not None and out.expected:
        out.delivered_ratio = out.accounted / out.expected


def measure_storm(
    storm: str, mode: str, topo: Topology, seconds: float, threads: int, workdir: Path, rnd: int
) -> StormRound | str:
    """One round of one storm under one tool; the reason string when the tool cannot run."""
    out_file = None if mode in ("none", "tcpdump") else workdir / f"storm-{storm}-{mode}-{rnd}.out"
    try:
        running = MODES[mode].start(workdir, topo, out_file)
    except Unavailable as e:
        return str(e)
    try:
        pid = running.main.pid if running.main is not None else None
        c0, k0 = (cpu_seconds(pid), bpf_prog_stats(pid)) if pid else (None, None)
        before = _netstat(topo)["TCPSynRetrans"] if storm == "synflood" else 0
        with synack_drop(topo) if storm == "synflood" else contextlib.nullcontext():
            attempts, errors, secs = storm_load(topo, storm, seconds, threads)
            if storm == "synflood":  # the SYN-ACKs of the last requests, until they expire
                deadline = time.monotonic() + 20
                while _half_open(topo) and time.monotonic() < deadline:
                    time.sleep(0.2)
        synacks = _netstat(topo)["TCPSynRetrans"] - before if storm == "synflood" else None
        k1, c1 = (bpf_prog_stats(pid), cpu_seconds(pid)) if pid else (None, None)
        if running.main is not None and not running.main.alive():
            return f"{mode} died during the storm: {running.main.stderr()[-300:]}"
    finally:
        running.stop()
    r = StormRound(rnd, attempts, errors, secs, expected=attempts + errors, synack_expected=synacks)
    if c0 is not None and c1 is not None:
        r.cpu_s = c1 - c0
    if k0 is not None and k1 is not None and k1[1] > k0[1]:
        r.kernel_ns = k1[0] - k0[0]
    if running.main is not None:
        _account(r, storm, mode, running, REFUSED_PORT if storm == "refused" else topo.port)
    if not mode.startswith("agent"):
        r.synack_expected = None  # only the agent reports SYN-ACK retransmits
    return r


@contextlib.contextmanager
def storm_sysctls(topo: Topology) -> Iterator[None]:
    """The server namespace retries a SYN-ACK once, so a flood's half-open requests expire in seconds."""
    name = "net.ipv4.tcp_synack_retries"
    old = subprocess.run([*_ns(topo, "server"), "sysctl", "-n", name], capture_output=True, text=True).stdout.strip()
    subprocess.run([*_ns(topo, "server"), "sysctl", "-q", "-w", f"{name}=1"], capture_output=True, check=True)
    try:
        yield
    finally:
        if old:
            subprocess.run([*_ns(topo, "server"), "sysctl", "-q", "-w", f"{name}={old}"], capture_output=True)


def run_storms(
    topo: Topology,
    storms: Sequence[str],
    modes: Sequence[str],
    rounds: int,
    seconds: float,
    threads: int,
    workdir: Path,
) -> list[StormRow]:
    """Each storm: `rounds` rounds, each running every mode once (rotating the order), under the storm."""
    rows: list[StormRow] = []
    with storm_sysctls(topo):
        for storm in storms:
            table = {m: StormRow(storm, m, MODES[m].label) for m in modes}
            for m, row in table.items():
                why = MODES[m].unavailable()
                if why:
                    row.status, row.reason = "n/a", why
            for r in range(rounds):
                order = list(modes[r % len(modes) :]) + list(modes[: r % len(modes)])
                for m in order:
                    row = table[m]
                    if row.status != "ok":
                        continue
                    res = measure_storm(storm, m, topo, seconds, threads, workdir, r)
                    if isinstance(res, str):
                        row.status, row.reason = "n/a", res
                        row.rounds.clear()
                        continue
                    row.rounds.append(res)
                    log.info("storm %s round %d %-16s %8.0f attempts/s", storm, r + 1, m, res.rate)
            base = {x.round: x.rate for x in table["none"].rounds} if "none" in table else {}
            for row in table.values():
                for x in row.rounds:
                    if base.get(x.round):
                        x.ratio = x.rate / base[x.round]
            rows.extend(table.values())
    return rows
