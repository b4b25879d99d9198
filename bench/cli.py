"""Command line of the harness: parse options, build the load, run the phases, write the reports."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import report
from bench.collector_load import CollectorResult, run_collector_load
from bench.load import Topology, VethPair, build_loadgen, loopback
from bench.modes import DEFAULT_MODES, MODES, add_ref_mode, checkout_ref
from bench.procs import Unavailable, bpf_stats
from bench.runner import (
    CpuCompareRow,
    OverheadRow,
    Step,
    ZeroLossRow,
    run_all_kinds_cpu,
    run_cpu_compare,
    run_overhead,
    run_zero_loss,
)
from bench.storms import STORM_MODES, STORMS, StormRow, run_storms

log = logging.getLogger("bench")
DEFAULT_RATES = (5000.0, 10000.0, 15000.0, 20000.0, 30000.0, 0.0)
QUICK_RATES = (5000.0, 10000.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="2 rounds of 2 s, two zero-loss steps (~3 min)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per topology (default 5, quick 2)")
    p.add_argument("--veth-rounds", type=int, help="rounds on the veth pair (default: --rounds; quick 1)")
    p.add_argument("--duration", type=float, help="seconds of load per mode per round (default 5, quick 2)")
    p.add_argument("--warmup", type=float, help="seconds of untraced load before the rounds (default 10, quick 3)")
    p.add_argument(
        "--modes", default=",".join(DEFAULT_MODES), help=f"comma separated, 'none' always added: {','.join(MODES)}"
    )
    p.add_argument("--topologies", default="loopback,veth", help="loopback,veth")
    # one client and one server thread per CPU: the load keeps every CPU busy, so what a tool costs
    # comes out of the load's throughput (docs/benchmarks.md: with idle CPUs a busy tracer speeds the
    # ping-pong loop up by keeping vCPUs awake, and ratios above 100% measure scheduling, not cost)
    ncpu = os.cpu_count() or 1
    p.add_argument("--threads", type=int, default=ncpu, help=f"client threads of the load (default {ncpu})")
    p.add_argument("--server-threads", type=int, default=ncpu, help=f"server threads of the load (default {ncpu})")
    p.add_argument(
        "--rates",
        help="zero-loss steps in conn/s, comma separated, 0 = unpaced "
        "(default 5000,10000,15000,20000,30000,0; quick 5000,10000)",
    )
    p.add_argument("--sinks", default="stdout,kafka", help="zero-loss sinks: stdout,kafka ('' = skip)")
    p.add_argument("--no-zero-loss", action="store_true", help="skip the zero-loss and CPU phases")
    p.add_argument(
        "--storms",
        default=",".join(STORMS),
        help=f"storms on the veth pair, interleaved with the tools: {','.join(STORMS)} ('' = skip)",
    )
    p.add_argument(
        "--storm-modes",
        help=f"the tools under the storms ('none' always added; default: --modes among {','.join(STORM_MODES)})",
    )
    p.add_argument("--storm-rounds", type=int, help="interleaved rounds per storm (default: --rounds)")
    p.add_argument(
        "--storm-duration", type=float, help="seconds of each storm per mode per round (default: --duration)"
    )
    p.add_argument(
        "--only-storms", action="store_true", help="run the storms phase alone (no overhead, zero-loss or collector)"
    )
    p.add_argument("--no-collector", action="store_true", help="skip the collector throughput phase")
    p.add_argument(
        "--collector-seconds",
        type=float,
        default=None,
        help="seconds of the collector throughput phase (default 10, quick 3)",
    )
    p.add_argument("--cpu-rate", type=float, default=5000.0, help="rate of the all-kinds CPU run")
    p.add_argument(
        "--agent-ref",
        action="append",
        default=[],
        help="also run the lifecycle agent of this git ref (repeatable): before/after in one run",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="only profile the agent with py-spy under the lifecycle load at --cpu-rate",
    )
    p.add_argument("--out", default=str(Path(__file__).with_name("out")), help="report directory")
    return p.parse_args(argv)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _profile(topo: Topology, a: argparse.Namespace, duration: float, workdir: Path) -> int:
    from bench.profile import fold, profile_agent, render

    seconds = max(duration, 10.0)
    try:
        text = profile_agent(topo, a.cpu_rate, seconds, a.threads, workdir)
    except Unavailable as e:
        text = f"agent profile n/a: {e}\n"
    raw = workdir / "collector.raw"
    try:
        r = run_collector_load(workdir, seconds, verify=False, profile_raw=raw)
        text += (
            f"\ncollector under the gRPC driver: {r.events_per_s:,.0f} events/s, "
            f"{r.events_per_cpu_s:,.0f} events per CPU-second\n"
        )
        text += render(*fold(raw.read_text())) if raw.exists() else "py-spy wrote nothing\n"
    except Unavailable as e:
        text += f"\ncollector profile n/a: {e}\n"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.txt").write_text(text)
    print(text)
    return 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class _Settings:
    """The options with --quick's defaults filled in."""

    rounds: int
    veth_rounds: int
    warmup: float
    duration: float
    modes: list[str]  # "none" first; --agent-ref adds its modes during the run
    rates: list[float]
    sinks: list[str]
    collector_seconds: float

    @classmethod
    def of(cls, a: argparse.Namespace, modes: list[str]) -> _Settings:
        rounds = a.rounds or (2 if a.quick else 5)
        return cls(
            rounds=rounds,
            veth_rounds=a.veth_rounds or (1 if a.quick else rounds),
            warmup=a.warmup if a.warmup is not None else (3.0 if a.quick else 10.0),
            duration=a.duration or (2.0 if a.quick else 5.0),
            modes=modes,
            rates=[float(x) for x in a.rates.split(",")]
            if a.rates
            else list(QUICK_RATES if a.quick else DEFAULT_RATES),
            sinks=[s for s in a.sinks.split(",") if s],
            collector_seconds=a.collector_seconds or (3.0 if a.quick else 10.0),
        )


@dataclass
class _Results:
    """What the phases measured, for report.build: a figure, or why it is n/a, or None if not run."""

    overhead: list[OverheadRow] = field(default_factory=list)
    zero_loss: list[ZeroLossRow] = field(default_factory=list)
    all_kinds: Step | str | None = None
    collector: CollectorResult | str | None = None
    collector_packed: CollectorResult | str | None = None
    cpu_compare: list[CpuCompareRow] = field(default_factory=list)
    storms: list[StormRow] = field(default_factory=list)


@dataclass
class _Lab:
    """What a run sets up and must take down on every path: its topologies, the veth pair, the work directory."""

    workdir: Path
    topos: list[Topology] = field(default_factory=list)
    veth: VethPair | None = None

    def close(self) -> None:
        for topo in self.topos:
            topo.close()
        if self.veth is not None:
            self.veth.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _meta(a: argparse.Namespace, cfg: _Settings, argv: Sequence[str] | None) -> dict[str, Any]:
    """The report's inputs: host, commit and settings (its "modes" is cfg.modes itself, so it lists --agent-ref's)."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "host": socket.gethostname(),
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "commit": _commit(),
        "rounds": cfg.rounds,
        "veth_rounds": cfg.veth_rounds,
        "duration": cfg.duration,
        "warmup": cfg.warmup,
        "threads": a.threads,
        "server_threads": a.server_threads,
        "modes": cfg.modes,
        "rates": cfg.rates,
        "sinks": cfg.sinks,
        "storms": [s for s in a.storms.split(",") if s],
        "storm_rounds": a.storm_rounds or cfg.rounds,
        "storm_duration": a.storm_duration or cfg.duration,
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
    }


def _agent_refs(refs: Sequence[str], cfg: _Settings, workdir: Path, res: _Results) -> dict[str, Path | None]:
    """The agent trees to compare (the working tree, then each --agent-ref), adding each ref's mode;
    a ref that cannot be checked out is an n/a overhead row."""
    trees: dict[str, Path | None] = {"agent (working tree)": None}
    for ref in refs:
        try:
            tree = checkout_ref(ref, workdir)
            cfg.modes.append(add_ref_mode(ref, tree))
            trees[f"agent@{ref}"] = tree
        except Unavailable as e:
            res.overhead.append(OverheadRow("loopback", f"agent-lifecycle@{ref}", f"agent @ {ref}", "n/a", str(e)))
    return trees


def _build_topologies(names: str, lg: Path, server_threads: int, lab: _Lab, res: _Results) -> None:
    """Each topology of --topologies into lab (which closes them); a veth pair that cannot be made is an n/a row."""
    for t in names.split(","):
        if t == "loopback":
            lab.topos.append(loopback(lg, server_threads))
        elif t == "veth":
            try:
                lab.veth = VethPair(lg, server_threads)
                lab.topos.append(lab.veth.topology)
            except Unavailable as e:
                res.overhead.append(OverheadRow("veth", "none", "no tracing", "n/a", str(e)))


def _collector_phase(workdir: Path, seconds: float, layout: str, what: str) -> CollectorResult | str:
    """The collector under the gRPC driver with this record layout: its figures, or why it is n/a."""
    try:
        r = run_collector_load(workdir, seconds, layout=layout)
    except Unavailable as e:
        return str(e)
    log.info("%s: %.0f events/s, %.0f events per CPU-second", what, r.events_per_s, r.events_per_cpu_s)
    return r


def _storm_phase(a: argparse.Namespace, cfg: _Settings, lab: _Lab, res: _Results) -> None:
    """The storms on the veth pair (each tool in interleaved rounds), with bpf_stats on."""
    storms = [s for s in a.storms.split(",") if s]
    if not storms:
        return
    unknown = [s for s in storms if s not in STORMS]
    if unknown:
        raise SystemExit(f"bench: unknown storms {unknown}; known: {','.join(STORMS)}")
    chosen = a.storm_modes.split(",") if a.storm_modes else [m for m in cfg.modes if m in STORM_MODES]
    modes = ["none", *[m for m in chosen if m and m != "none"]]
    if lab.veth is None:
        res.storms = [StormRow(s, "none", "no tracing", "n/a", "the storms run on the veth pair: none") for s in storms]
        return
    with bpf_stats():
        res.storms = run_storms(
            lab.veth.topology,
            storms,
            modes,
            a.storm_rounds or cfg.rounds,
            a.storm_duration or cfg.duration,
            a.threads,
            lab.workdir,
        )


def _run_phases(a: argparse.Namespace, cfg: _Settings, lab: _Lab, trees: dict[str, Path | None], res: _Results) -> None:
    """Overhead per topology, then on loopback the agent versions, zero loss and all kinds, then the
    storms on the veth pair, then the collector."""
    if a.only_storms:
        _storm_phase(a, cfg, lab, res)
        return
    # kernel time of each tool's own programs (run_time_ns): every mode, the baseline included,
    # runs with the statistics on, so their small cost is in every ratio alike
    with bpf_stats() as stats_on:
        if not stats_on:
            log.warning("kernel.bpf_stats_enabled cannot be set: no kernel ns per connection")
        res.overhead += run_overhead(
            lab.topos,
            cfg.modes,
            {"loopback": cfg.rounds, "veth": cfg.veth_rounds},
            cfg.duration,
            a.threads,
            lab.workdir,
            cfg.warmup,
        )
    lo = next((t for t in lab.topos if t.name == "loopback"), None)
    if len(trees) > 1 and lo is not None:
        res.cpu_compare = run_cpu_compare(lo, trees, a.cpu_rate, cfg.duration, cfg.rounds, a.threads, lab.workdir)
    if not a.no_zero_loss and lo is not None:
        res.zero_loss = run_zero_loss(lo, cfg.sinks, cfg.rates, cfg.duration, a.threads, lab.workdir)
        res.all_kinds = run_all_kinds_cpu(lo, a.cpu_rate, cfg.duration, a.threads, lab.workdir)
    _storm_phase(a, cfg, lab, res)
    if not a.no_collector:
        res.collector = _collector_phase(lab.workdir, cfg.collector_seconds, "event", "collector")
        res.collector_packed = _collector_phase(
            lab.workdir, cfg.collector_seconds, "packed", "collector, packed layout"
        )


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM and SIGINT (which a shell's background job inherits as ignored) unwind through the
    # finally blocks, so namespaces, tools and temp files are cleaned up
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (BPF, netns, tcpdump)", file=sys.stderr)
        return 2
    modes = ["none", *[m for m in a.modes.split(",") if m and m != "none"]]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"bench: unknown modes {unknown}", file=sys.stderr)
        return 2
    cfg = _Settings.of(a, modes)
    # tmpfs for the tools' files (pcap, JSON lines) so disk speed is not what we measure
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    lab = _Lab(Path(tempfile.mkdtemp(prefix=f"tcpscope-bench-{os.getpid()}-", dir=base)))
    started = time.monotonic()
    meta = _meta(a, cfg, argv)
    res = _Results()
    try:
        lg = build_loadgen(lab.workdir)
        trees = _agent_refs(a.agent_ref, cfg, lab.workdir, res)
        _build_topologies("veth" if a.only_storms else a.topologies, lg, a.server_threads, lab, res)
        for topo in lab.topos:
            topo.start_server()
        if a.profile:
            return _profile(lab.topos[0], a, cfg.duration, lab.workdir)
        _run_phases(a, cfg, lab, trees, res)
    finally:
        lab.close()
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    doc = report.build(
        meta,
        res.overhead,
        res.zero_loss,
        res.all_kinds,
        res.collector,
        res.cpu_compare,
        res.collector_packed,
        res.storms,
    )
    j, md = report.write(doc, Path(a.out))
    print(md.read_text())
    print(f"bench: wrote {md} and {j} in {meta['elapsed_s']} s", file=sys.stderr)
    return 0
