"""The simulator's services as it starts them: every agent of a run gets the run's one connection id
key, as the chart gives every agent of a cluster one Secret."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from agent.kernel.connid import read_key_file
from tcpscope_sim.cluster import RunState
from tcpscope_sim.plan import builtin_plan
from tcpscope_sim.services import Services


def test_every_agent_of_a_run_gets_the_same_key_file(tmp_path: Path) -> None:
    plan = builtin_plan()
    services = Services(plan, "abc123", RunState("abc123"), str(tmp_path))
    started: dict[str, list[str]] = {}

    def spawn(name: str, argv: list[str]) -> Any:  # records instead of starting the agents
        started[name] = argv
        return None

    services._spawn = spawn  # type: ignore[method-assign]
    services.start_agents({n: f"/cg/{n}" for n in plan.nodes}, "/kubeconfig")
    assert sorted(started) == sorted(f"agent-{n}" for n in plan.nodes)
    keys = {argv[argv.index("--connection-key-file") + 1] for argv in started.values()}
    assert keys == {str(tmp_path / "connection-key")}
    key = tmp_path / "connection-key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    material = read_key_file(str(key))  # what the agents will read: long enough to be a key
    # one key per run: asking again (a restarted agent) keeps it
    assert services.connection_key_file() == str(key) and read_key_file(str(key)) == material
    # another run, another key
    other = tmp_path / "other-run"
    other.mkdir()
    assert read_key_file(Services(plan, "def456", RunState("def456"), str(other)).connection_key_file()) != material
