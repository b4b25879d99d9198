"""agent/metrics.py: the stages' statistics are served as counters (counts) and gauges (levels)."""

from __future__ import annotations

from prometheus_client import generate_latest

from agent.metrics import AgentMetrics, stat_metric_name


def test_stage_statistics_are_counters_and_gauges() -> None:
    stats = {
        "local.pod_hits": 7,
        "remote.watch.pods.lists": 2,
        "pods.cached": 3,
        "local.pending": 1,
        "local.watch.pods.synced": 1,
    }
    m = AgentMetrics()
    m.watch_enrichment(lambda: dict(stats))
    text = generate_latest(m.registry).decode()
    assert "# TYPE tcpscope_agent_enrichment_local_pod_hits_total counter" in text
    assert "tcpscope_agent_enrichment_local_pod_hits_total 7.0" in text
    assert "# TYPE tcpscope_agent_enrichment_remote_watch_pods_lists_total counter" in text
    assert "# TYPE tcpscope_agent_enrichment_pods_cached gauge" in text
    assert "# TYPE tcpscope_agent_enrichment_local_pending gauge" in text
    assert "# TYPE tcpscope_agent_enrichment_local_watch_pods_synced gauge" in text
    assert "counter=" not in text
    stats["local.pod_hits"] = 9
    assert m.value("tcpscope_agent_enrichment_local_pod_hits_total") == 9
    assert m.value("tcpscope_agent_enrichment_pods_cached") == 3
    assert stat_metric_name("p", "cgroup.entries") == "p_cgroup_entries"
