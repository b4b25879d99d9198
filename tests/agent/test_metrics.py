"""agent/metrics.py: the stages' statistics are served as counters (counts) and gauges (levels)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from prometheus_client import generate_latest

from agent.metrics import AgentMetrics, Snapshot, stat_metric_name
from agent.pipeline import Pipeline
from tcpscope.v1.events_pb2 import TcpEvent


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


class _Source:
    """One event per poll, for ever, after a short wait (as on the kernel's buffer)."""

    def poll(self, timeout_ms: int) -> list[TcpEvent]:
        time.sleep(0.0002)
        return [TcpEvent(node="n", socket_id=1)]

    def losses(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


class _ChurningEnricher:
    """Counts on the pipeline thread, adding or removing a key at every step (the dict changes size),
    and walks its counters in Python, yielding mid-walk: from another thread, that is the race."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {"local.events": 0}
        self.steps = 0

    def process(self, events: list[TcpEvent], now: float) -> list[TcpEvent]:
        self.counters["local.events"] += len(events)
        self.steps += 1
        if self.steps % 2:
            self.counters[f"local.key_{self.steps}"] = 1
        else:
            self.counters.pop(f"local.key_{self.steps - 41}", None)  # 20 keys stay
        return events

    def flush(self) -> list[TcpEvent]:
        return []

    def losses(self) -> dict[str, int]:
        return {}

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, (key, value) in enumerate(self.counters.items()):
            out[key] = value
            if i % 5 == 0:
                time.sleep(0)  # let the other threads run, as a busy agent's would
        return out

    def close(self) -> None:
        pass


class _Sink:
    def emit(self, events: Sequence[TcpEvent], upstream_losses: dict[str, int]) -> None:
        pass

    def close(self, grace_s: float) -> None:
        pass

    def losses(self) -> dict[str, int]:
        return {}


def test_stats_counted_on_the_pipeline_thread_are_never_scraped_empty() -> None:
    """The metrics server scrapes while the pipeline counts and adds and removes keys: every scrape
    has the counters, never empty or zeroed, never going back (agent/wiring.py wires it this way)."""
    enricher = _ChurningEnricher()
    enrichment = Snapshot(enricher.stats)
    m = AgentMetrics()
    m.watch_enrichment(enrichment)
    pipeline = Pipeline(
        source=_Source(),
        enrichers=[enricher],
        sink=_Sink(),
        loss_refresh_s=0.0,  # a snapshot at every step: as many as possible
        linger_s=0.0,
        on_refresh=(enrichment.take,),
    )
    stop = threading.Event()
    loop = threading.Thread(target=pipeline.run, args=(stop,), name="pipeline")
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while m.value("tcpscope_agent_enrichment_local_events_total") == 0:
            assert time.monotonic() < deadline, "the pipeline never counted"
            time.sleep(0.001)
        last, scrapes = 0.0, 0
        while scrapes < 200 or enricher.steps < 200:
            assert time.monotonic() < deadline, (scrapes, enricher.steps)
            text = generate_latest(m.registry).decode()
            scrapes += 1
            events = m.value("tcpscope_agent_enrichment_local_events_total")
            assert events > 0 and events >= last, (events, last)
            assert "tcpscope_agent_enrichment_local_key_" in text
            last = events
            time.sleep(0.0002)  # scrapes come and go; a busy loop would starve the pipeline of the GIL
    finally:
        stop.set()
        loop.join(10)
    assert not loop.is_alive()
