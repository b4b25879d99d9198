"""`python -m bench --profile`: where the agent's CPU goes under the lifecycle load.

py-spy samples the agent (non-idle samples only) while the load runs at a fixed rate; the collapsed
stacks are folded into own-time and inclusive-time shares per function.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.load import Topology
from bench.modes import start_agent
from bench.procs import Unavailable, cpu_seconds

_LINE_NO = re.compile(r":\d+\)$")


def _frame(f: str) -> str:
    """`handle (agent/x.py:12)` -> `handle (agent/x.py)`: aggregate a function over its lines."""
    return _LINE_NO.sub(")", f.strip())


def fold(raw: str) -> tuple[int, Counter[str], Counter[str]]:
    """Parse py-spy's collapsed stacks: (samples, own samples by function, inclusive samples)."""
    total, own, incl = 0, Counter[str](), Counter[str]()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    return total, own, incl


def render(total: int, own: Counter[str], incl: Counter[str], top: int = 20) -> str:
    out = [f"{total} samples", "", "own %  function"]
    out += [f"{100 * n / total:5.1f}  {f}" for f, n in own.most_common(top)]
    out += ["", "incl % function"]
    out += [f"{100 * n / total:5.1f}  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out) + "\n"


def profile_agent(
    topo: Topology, rate: float, duration: float, threads: int, workdir: Path, events: str = "lifecycle"
) -> str:
    """Run the agent (JSON to /dev/null) under the load while py-spy samples it; returns the text."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise Unavailable("py-spy is not installed (pip install py-spy; it is in the dev extra)")
    agent = start_agent(workdir, ["--events", events, "--port", str(topo.port)], None)
    raw = workdir / "profile.raw"
    try:
        c0 = cpu_seconds(agent.pid)
        spy_proc = subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(agent.pid),
                "-d",
                f"{int(duration) + 1}",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(raw),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        res = topo.churn(duration, rate, threads)
        spy_err = spy_proc.communicate(timeout=duration + 30)[1].decode(errors="replace")
        cpu = cpu_seconds(agent.pid) - c0
    finally:
        agent.stop()
    if not raw.exists():
        raise Unavailable(f"py-spy wrote nothing: {spy_err[-300:]}")
    total, own, incl = fold(raw.read_text())
    head = (
        f"agent --events {events} at {res.rate:,.0f} conn/s for {res.seconds:.1f} s: "
        f"{cpu:.2f} CPU s = {cpu * 1e6 / max(res.connections, 1):.1f} µs/conn\n"
    )
    return head + render(total, own, incl)
