"""agent/wiring.py build_agent: the kernel is probed before anything is started, and when a later
step fails what was started is stopped again: no metrics port stays bound, no watch thread runs on."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from io import StringIO
from pathlib import Path
from typing import Any, cast

import pytest

from agent import wiring
from agent.config import AgentConfig
from agent.kernel.probe import KernelSupportError, Plan, build_plan
from agent.metrics import AgentMetrics
from tcpscope_sim.fakeapi import FakeApiServer
from tests.support.kernel import require_root
from tests.support.traffic import free_port

# the threads build_agent may start before the programs are loaded (agent/metrics.py, tcpscope/kube/watch.py)
STARTED = ("metrics-http", "reflector-")


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[Path]:
    api = FakeApiServer(bookmark_interval=0.2).start()
    try:
        yield api.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        api.stop()


def _config(kubeconfig: Path, port: int, **kw: Any) -> AgentConfig:
    return AgentConfig(
        stdout="json", metrics_port=port, kubeconfig=str(kubeconfig), node_name="node-x", resolve_remote=True, **kw
    )


def _started_threads(before: set[threading.Thread]) -> list[str]:
    """The threads of those kinds started since `before` (other tests may leave their own behind)."""
    return sorted(t.name for t in threading.enumerate() if t not in before and t.name.startswith(STARTED))


def _bindable(port: int) -> bool:
    """Nobody listens on the port: a new server could take it (as the metrics server would, with
    SO_REUSEADDR past the TIME_WAIT its closed connections leave)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def test_a_failed_load_stops_the_metrics_server_and_the_watches(
    kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the programs load, /healthz answers and the watches run; the load fails (as attaching a
    tracepoint the kernel lacks does): build_agent raises and leaves neither behind."""
    before = set(threading.enumerate())
    port = free_port()
    seen: dict[str, object] = {}

    def failing_load(plan: Plan) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            seen["healthz"] = r.read()
        seen["threads"] = _started_threads(before)
        raise KernelSupportError("attaching tcp:tcp_nonexistent failed: no such tracepoint")

    monkeypatch.setattr(wiring, "load", failing_load)
    with pytest.raises(KernelSupportError, match="tcp_nonexistent"):
        wiring.build_agent(_config(kubeconfig, port), StringIO(), plan=cast(Plan, object()))
    assert seen["healthz"] == b"ok: starting\n"
    assert seen["threads"] == [
        "metrics-http",
        "reflector-nodes",
        "reflector-pods",
        "reflector-pods",
        "reflector-services",
    ]
    assert _started_threads(before) == []
    assert _bindable(port)


def test_a_plan_with_a_missing_tracepoint_leaves_nothing_running(kubeconfig: Path) -> None:
    """The real thing: a plan that attaches a tracepoint this kernel does not have."""
    require_root()
    before = set(threading.enumerate())
    port = free_port()
    config = _config(kubeconfig, port)
    plan = build_plan(config)
    bad = replace(plan, attach=(*plan.attach, ("tracepoint", "tcp:tcp_nonexistent", plan.attach[0][2])))
    with pytest.raises(KernelSupportError, match="attaching tcp:tcp_nonexistent failed"):
        wiring.build_agent(config, StringIO(), plan=bad)
    assert _started_threads(before) == []
    assert _bindable(port)


def test_a_bad_btf_path_fails_before_anything_starts(kubeconfig: Path, tmp_path: Path) -> None:
    """The kernel probe comes first: a missing BTF file (tests/agent/test_main.py) binds no port and
    starts no watch at all."""
    require_root()
    before = set(threading.enumerate())
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AgentMetrics, "serve", lambda *a, **kw: pytest.fail("metrics port bound before the probe"))
        mp.setattr(wiring, "build_enrichers", lambda config: pytest.fail("watches started before the probe"))
        with pytest.raises(KernelSupportError, match="kernel BTF unavailable"):
            wiring.build_agent(_config(kubeconfig, port, btf=str(tmp_path / "vmlinux")), StringIO())
    assert _started_threads(before) == []
    assert _bindable(port)
