"""Smoke test of the benchmark harness: one short round of two modes on loopback and on a veth pair,
through the real command line, and the report it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.root
@pytest.mark.slow
def test_quick_round_writes_report_with_rows_and_sane_numbers(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the harness needs root (BPF, netns, tcpdump)"
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "--rounds",
            "1",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--modes",
            "none,tcpdump",
            "--topologies",
            "loopback,veth",
            "--no-zero-loss",
            "--no-collector",
            "--out",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    doc = json.loads((out / "report.json").read_text())
    # the storms on the veth pair, under the same modes
    storms = {(r["storm"], r["mode"]): r for r in doc["storms"]}
    assert set(storms) == {(s, m) for s in ("refused", "rst", "synflood") for m in ("none", "tcpdump")}
    for key, r in storms.items():
        assert r["status"] == "ok" and r["rounds"][0]["attempts"] > 200, (key, r)
    rows = {(r["topology"], r["mode"]): r for r in doc["overhead"]}
    assert set(rows) == {("loopback", "none"), ("loopback", "tcpdump"), ("veth", "none"), ("veth", "tcpdump")}
    for (topo, mode), r in rows.items():
        assert r["status"] == "ok", (topo, mode, r["reason"])
        [rnd] = r["rounds"]
        assert rnd["round"] == 0
        # a native loop on this VM does thousands of connections per second; 200/s means it broke
        assert rnd["connections"] > 200 and rnd["errors"] == 0, rnd
        assert rnd["rate"] == pytest.approx(rnd["connections"] / 1.0, rel=0.1)
        if mode == "none":
            assert rnd["ratio"] == 1.0 and rnd["cpu_s"] is None
        else:
            # tcpdump costs something but cannot make the loop 10x slower or faster
            assert 0.1 < rnd["ratio"] < 3.0, rnd
            assert rnd["cpu_s"] is not None and rnd["cpu_s"] >= 0 and rnd["hwm_kb"] > 0
    md = (out / "report.md").read_text()
    assert "## Overhead on connection churn: loopback" in md and "## Overhead on connection churn: veth" in md
    assert "tcpdump -w file, SYN/FIN/RST only" in md
    # the namespaces the run created are gone
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"tsbench{proc.pid}" not in netns, netns
