"""`python -m bench.kernel_profile`: what the agent's BPF programs cost, per program (= per tracepoint).

The agent's programs are loaded in this process as the agent loads them (the plan for a config:
`--connections`, `--events`), with `kernel.bpf_stats_enabled` on; the kernel then accounts each
program's `run_time_ns` and `run_cnt` (read from /proc/self/fdinfo of its fd). A paced, port-filtered
churn of N loadgen connections runs on loopback, and the table gives per program: runs, runs per
connection, ns per run and ns per connection. Kept short and paced on purpose: it measures the
kernel's own accounting, not throughput, so it need not saturate the machine.

    .venv/bin/python -m bench.kernel_profile --connections 20000 --rate 4000
    .venv/bin/python -m bench.kernel_profile --variant aggregate --variant each:lifecycle
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import Topology, build_loadgen, loopback
from bench.modes import DEFAULT_KINDS
from bench.procs import bpf_stats

# variant name -> (connections mode, event kinds)
VARIANTS: dict[str, tuple[str, str]] = {
    "aggregate": ("aggregate", DEFAULT_KINDS),
    "each": ("each", DEFAULT_KINDS),
    "each:lifecycle": ("each", "lifecycle"),
}


@dataclass(frozen=True)
class ProgStat:
    name: str
    run_ns: int
    runs: int


def prog_stats(fds: dict[str, int]) -> dict[str, ProgStat]:
    """run_time_ns and run_cnt of each program fd of this process (0 while bpf_stats is off)."""
    out = {}
    for name, fd in fds.items():
        ns = runs = 0
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "run_time_ns":
                ns = int(value)
            elif key == "run_cnt":
                runs = int(value)
        out[name] = ProgStat(name, ns, runs)
    return out


def _load(topo: Topology, load: str, seconds: float, rate: float) -> tuple[int, float]:
    """Run the load: (attempts made, their rate). churn: ordinary connections; refused, rst: storms."""
    if load == "churn":
        res = topo.churn(seconds, rate, 1)
        return res.connections, res.rate
    port = 1 if load == "refused" else topo.port
    argv = [str(topo.loadgen), "storm", load, topo.server_addr, str(port), "1", f"{seconds:.3f}", f"{rate:.1f}"]
    d = json.loads(subprocess.run(argv, capture_output=True, check=True, timeout=seconds + 30).stdout)
    return int(d["connections"]), float(d["rate"])


def profile_variant(
    variant: str,
    topo: Topology,
    connections: int,
    rate: float,
    extra: Sequence[str],
    bpf_dir: Path | None = None,
    load: str = "churn",
) -> dict[str, Any]:
    """Load the agent's programs for this variant (the C of bpf_dir, default this tree's bpf/), run the
    churn, return the per-program figures."""
    from agent.config import AgentConfig
    from agent.kernel import loader
    from agent.kernel.decode import Decoder
    from agent.kernel.probe import BPF_DIR, build_plan
    from agent.kernel.source import KernelSource, boot_to_wall_offset_ns

    mode, kinds = VARIANTS[variant]
    port = 1 if load == "refused" else topo.port
    args = ["--connections", mode, "--events", kinds, "--port", str(port), "--stdout", "json", *extra]
    if mode == "each":
        args += ["--max-connection-events", "0"]
    if bpf_dir is not None and not (bpf_dir / "anomaly.h").exists():
        args += ["--anomaly-budget", "0", "--max-anomaly-events", "0"]  # a tree from before the budgets
    cfg = AgentConfig.from_args(args, env={})
    plan = build_plan(cfg)
    loaded = loader.load(plan, bpf_dir or BPF_DIR)
    source = KernelSource(loaded, Decoder("profile", boot_to_wall_offset_ns(), plan.rst_reasons), flow_interval_s=1.0)
    stop = threading.Event()
    events = [0]

    def pump() -> None:
        while not stop.is_set():
            events[0] += len(source.poll(50))

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    fds = {name.decode(): int(fn.fd) for name, fn in loaded.bpf.funcs.items()}
    try:
        before = prog_stats(fds)
        made, made_rate = _load(topo, load, connections / rate, rate)
        after = prog_stats(fds)
    finally:
        stop.set()
        t.join()
        source.close()
    n = max(made, 1)
    progs = []
    for name in sorted(fds):
        runs = after[name].runs - before[name].runs
        ns = after[name].run_ns - before[name].run_ns
        progs.append(
            {
                "program": name,
                "runs": runs,
                "runs_per_conn": runs / n,
                "ns_per_run": ns / runs if runs else None,
                "ns_per_conn": ns / n,
            }
        )
    total_ns = sum(p["ns_per_conn"] for p in progs)
    return {
        "variant": variant + (f" @ {bpf_dir}" if bpf_dir else "") + (f", {load}" if load != "churn" else ""),
        "connections": made,
        "rate": made_rate,
        "events": events[0],
        "programs": progs,
        "ns_per_conn": total_ns,
        "runs_per_conn": sum(p["runs_per_conn"] for p in progs),
    }


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"## {doc['variant']}: {doc['connections']} connections at {doc['rate']:.0f}/s, {doc['events']} records",
        "",
        "| program | runs/conn | ns/run | ns/conn |",
        "|---|---|---|---|",
    ]
    for p in doc["programs"]:
        per_run = "-" if p["ns_per_run"] is None else f"{p['ns_per_run']:.0f}"
        lines.append(f"| {p['program']} | {p['runs_per_conn']:.2f} | {per_run} | {p['ns_per_conn']:.0f} |")
    lines.append(f"| **total** | {doc['runs_per_conn']:.2f} | | **{doc['ns_per_conn']:.0f}** |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernel_profile", description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", choices=tuple(VARIANTS), help="default: aggregate and each")
    p.add_argument("--connections", type=int, default=20000)
    p.add_argument("--rate", type=float, default=4000.0, help="paced connections/s (keep it below saturation)")
    p.add_argument("--rounds", type=int, default=1, help="each variant this many times, interleaved")
    p.add_argument(
        "--load",
        choices=("churn", "refused", "rst"),
        default="churn",
        help="ordinary connections (default), or a storm: refused connects, connects aborted with a RST",
    )
    p.add_argument("--json", help="also write the figures here")
    p.add_argument(
        "--compare",
        metavar="BPF_DIR",
        help="also load the C of another tree's bpf/ (e.g. a checkout of main), interleaved: before and after",
    )
    p.add_argument("agent_args", nargs="*", help="extra agent flags after --")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.kernel_profile: needs root (BPF)", file=sys.stderr)
        return 2
    variants = a.variant or ["aggregate", "each"]
    docs = []
    with tempfile.TemporaryDirectory(prefix="tcpscope-kprof-") as tmp:
        topo = loopback(build_loadgen(Path(tmp)), 1)
        topo.start_server()
        try:
            with bpf_stats() as on:
                if not on:
                    print("bench.kernel_profile: cannot set kernel.bpf_stats_enabled", file=sys.stderr)
                    return 2
                for _ in range(a.rounds):
                    for v in variants:
                        for bpf_dir in [Path(a.compare), None] if a.compare else [None]:
                            doc = profile_variant(v, topo, a.connections, a.rate, a.agent_args, bpf_dir, a.load)
                            docs.append(doc)
                            print(render(doc), flush=True)
        finally:
            topo.close()
    if a.json:
        Path(a.json).write_text(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
