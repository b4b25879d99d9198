"""The remote-end enricher against the API stand-in: a listener's events have no remote end, an
address in a node's pod range with no pod known is a pod (on that node) and never "external", and
its counters reach the agent's metrics."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.enrich import build_enrichers
from agent.enrich.remote_stage import RemoteEnricher
from agent.metrics import AgentMetrics
from tcpscope.v1.events_pb2 import ENDPOINT_KIND_UNSPECIFIED, EXTERNAL, POD, TcpEvent
from tcpscope_sim.fakeapi import FakeApiServer, make_node, make_pod


def _event(remote_ip: str) -> TcpEvent:
    ev = TcpEvent(node="node-x")
    ev.local.ip, ev.local.port = "10.61.1.9", 8443
    ev.remote.ip = remote_ip
    ev.time.FromNanoseconds(time.time_ns())
    return ev


def test_listener_pod_range_and_external_remote_ends(fakeapi: FakeApiServer, kubeconfig: Path) -> None:
    fakeapi.add(make_node("node-x", ["10.60.0.1"], pod_cidrs=["10.61.1.0/24"]))
    fakeapi.add(make_node("node-y", ["10.60.0.2"], pod_cidrs=["10.61.2.0/24", "fd00:61:2::/64"]))
    fakeapi.add(make_pod("known-1", "apps", "node-y", ips=["10.61.2.17"]))
    local, remote = build_enrichers(AgentConfig(kubeconfig=str(kubeconfig), node_name="node-x", resolve_remote=True))
    try:
        assert isinstance(remote, RemoteEnricher) and remote.resolver.wait_synced(10)
        evs = [
            _event(ip)
            for ip in ("0.0.0.0", "::", "10.61.2.17", "10.61.2.99", "fd00:61:2::5", "203.0.113.9", "10.60.0.2")
        ]
        out = remote.process(evs, time.monotonic())
        got = [(e.remote.kind, e.remote.namespace, e.remote.name, e.remote.node) for e in out]
        assert got[:2] == [(ENDPOINT_KIND_UNSPECIFIED, "", "", "")] * 2  # a listener: no remote end
        assert got[2] == (POD, "apps", "known-1", "node-y")
        assert got[3] == got[4] == (POD, "", "", "node-y")  # a pod the watch has not shown yet
        assert got[5] == (EXTERNAL, "", "", "")
        assert got[6][0] != EXTERNAL and got[6][2] == "node-y"  # the node itself
        stats = remote.stats()
        assert (stats["remote.no_ip"], stats["remote.pod_unknown"], stats["remote.external"]) == (2, 2, 1)
        # a node leaving takes its pod range with it
        fakeapi.delete("nodes", "node-y", namespace="")
        deadline = time.monotonic() + 10
        while remote.resolver.index.pod_cidr_node("10.61.2.99") and time.monotonic() < deadline:
            time.sleep(0.05)
        (late,) = remote.process([_event("10.61.2.99")], time.monotonic())
        assert late.remote.kind == EXTERNAL

        metrics = AgentMetrics()

        def stats_of_all() -> dict[str, int]:
            return {**local.stats(), **remote.stats()}

        metrics.watch_enrichment(stats_of_all)
        assert metrics.value("tcpscope_agent_enrichment_remote_pod_unknown_total") == 2
        assert metrics.value("tcpscope_agent_enrichment_remote_external_total") == 2
    finally:
        local.close()
        remote.close()


def test_a_failure_half_way_leaves_no_watch_running(
    fakeapi: FakeApiServer, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod watch and the remote resolver's three watches have started when the remote stage's
    construction fails: build_enrichers stops them all before it raises."""
    import agent.enrich

    def broken(*a: object, **kw: object) -> RemoteEnricher:
        raise RuntimeError("remote stage broken")

    before = {t for t in threading.enumerate() if t.name.startswith("reflector-")}
    monkeypatch.setattr(agent.enrich, "RemoteEnricher", broken)
    with pytest.raises(RuntimeError, match="remote stage broken"):
        build_enrichers(AgentConfig(kubeconfig=str(kubeconfig), node_name="node-x", resolve_remote=True))
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("reflector-") and t not in before]
    assert leaked == []
