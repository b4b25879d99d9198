"""Measure the agent on a loopback connect/close loop: connections/s with and without the agent,
events/s it printed (--stdout json to /dev/null), its losses, CPU and RSS.

    .venv/bin/python -m tests.support.agent_bench [--seconds 5] [--events lifecycle] [--clients 1]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import traffic

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _rss_kb(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


def run(seconds: float, events: str, clients: int, rate: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        exe = traffic.build_connloop(Path(tmp))
        base = traffic.connloop(exe, traffic.free_port(), seconds, clients, rate) / seconds
        port = traffic.free_port()
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "--stdout",
                "json",
                "--events",
                events,
                "--port",
                str(port),
                "--no-kubernetes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert agent.stderr is not None
        while "attached:" not in agent.stderr.readline():
            assert agent.poll() is None, "agent exited"
        time.sleep(0.5)
        cpu0, t0 = _cpu_s(agent.pid), time.monotonic()
        conns = traffic.connloop(exe, port, seconds, clients, rate)
        time.sleep(1.0)  # let it drain
        cpu1, t1 = _cpu_s(agent.pid), time.monotonic()
        rss = _rss_kb(agent.pid)
        agent.terminate()
        err = agent.communicate(timeout=30)[1]
        summary = err.strip().splitlines()[-1]
        print(summary, file=sys.stderr)
        m = re.search(r"(\d+) events out, lost (\d+)", summary)
        assert m, summary
        out_events, lost = int(m.group(1)), int(m.group(2))
        return {
            "connections_per_s_without_agent": base,
            "connections_per_s_with_agent": conns / seconds,
            "events": out_events,
            "events_per_s": out_events / seconds,
            "lost": lost,
            "agent_cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
            "agent_rss_mb": rss / 1024,
        }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--events", default="lifecycle")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--rate", type=float, default=0, help="connections/s to offer (0 = as fast as possible)")
    a = p.parse_args()
    for k, v in run(a.seconds, a.events, a.clients, a.rate).items():
        print(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
