"""Running tcpscope-sim on a traffic plan and reading its topic back with tcpscope-tail --summary,
as the end-to-end tests do (tests/e2e)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def plan_argv(plan: Mapping[str, Any], tmp_path: Path, bootstrap: str, topic: str, *extra: str) -> list[str]:
    """tcpscope-sim --plan (written to tmp_path/plan.json) against this broker and topic, JSON summary,
    no live view; extra flags appended. With TCPSCOPE_SIM_KEEP_LOGS set in the environment the sim
    keeps its log directory (agents, collectors), for a loop hunting a rare failure."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    return [
        str(BIN / "tcpscope-sim"),
        "--plan",
        str(plan_file),
        "--kafka-bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--summary-format",
        "json",
        "--quiet",
        *(["--keep-logs"] if os.environ.get("TCPSCOPE_SIM_KEEP_LOGS") else []),
        *extra,
    ]


def run_plan(
    plan: Mapping[str, Any], tmp_path: Path, bootstrap: str, topic: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Run the plan to its end; the sim must exit 0 (its own exactness check passed)."""
    sim = subprocess.run(
        plan_argv(plan, tmp_path, bootstrap, topic, *extra),
        capture_output=True,
        text=True,
        timeout=150,
        stdin=subprocess.DEVNULL,
    )
    assert sim.returncode == 0, f"tcpscope-sim failed:\n{sim.stdout}\n{sim.stderr}"
    return sim


def summary_json(bootstrap: str, topic: str) -> dict[str, Any]:
    """`tcpscope-tail --summary --format json --from-beginning` of the topic, parsed."""
    tail = subprocess.run(
        [
            str(BIN / "tcpscope-tail"),
            "--kafka-bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--summary",
            "--format",
            "json",
            "--from-beginning",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert tail.returncode == 0, tail.stderr
    doc: dict[str, Any] = json.loads(tail.stdout)
    return doc


def stop_sim(sim: subprocess.Popen[str]) -> None:
    """Ctrl-C a running simulator (it takes down what it built), killing it if it does not exit."""
    if sim.poll() is None:
        sim.send_signal(signal.SIGINT)
    try:
        sim.wait(60)
    except subprocess.TimeoutExpired:
        sim.kill()
        sim.wait(10)
