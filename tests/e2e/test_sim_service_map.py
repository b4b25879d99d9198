"""`make run` (tcpscope-sim without a plan) writes its run's service map as SVG beside the summary and
says where. Real sim (root, BPF), its own broker, Debian's Graphviz. About 20 s."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

BIN = Path(sys.executable).parent
SVG = "{http://www.w3.org/2000/svg}"


def test_the_builtin_mix_writes_its_service_map(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the simulator needs root (BPF, netns, cgroups)"
    sim = subprocess.run(
        [str(BIN / "tcpscope-sim"), "--duration", "4", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert sim.returncode == 0, sim.stdout + sim.stderr
    m = re.search(r"tcpscope-sim: run ([0-9a-f]+)", sim.stdout)
    assert m, sim.stdout
    said = re.search(r"service map \(SVG\) written to (\S+)", sim.stdout)
    assert said, sim.stdout
    path = Path(said.group(1))
    assert path == tmp_path / f"tcpscope-sim-{m.group(1)}-map.svg"
    # after the summary table, as its last word
    assert sim.stdout.index("CLIENT") < said.start()
    root = ET.fromstring(path.read_bytes())
    edges = {t.text for g in root.iter(f"{SVG}g") if g.get("class") == "edge" for t in g.iter(f"{SVG}title")}
    # the mix's steady pairs (sim/tcpscope_sim/plan.py:builtin_plan), named by pod
    assert {"shop/frontend-1->shop/cart-1", "shop/cart-1->data/redis-1"} <= edges, edges
    # refusals stand out: frontend-2 -> checkout-1:5051 is drawn red
    red = [
        g
        for g in root.iter(f"{SVG}g")
        if g.get("class") == "edge" and any(t.text == "shop/frontend-2->shop/checkout-1" for t in g.iter(f"{SVG}title"))
    ]
    assert red and any(p.get("stroke") == "#d62728" for g in red for p in g.iter(f"{SVG}path")), edges
