"""Prometheus metrics of the agent, in their own registry (no global state).

Served on `--metrics-port` when non-zero. The exporter and the pipeline update them; tests read
them back with `value()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _StageStats(Collector):
    """A stage's own counters and gauges (e.g. the enrichers' stats()), read at scrape time."""

    def __init__(self, name: str, doc: str, stats: Callable[[], dict[str, int]]) -> None:
        self._name, self._doc, self._stats = name, doc, stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._doc, labels=["counter"])
        stats: dict[str, int] = {}
        for _ in range(3):  # the pipeline thread may add a key while this one copies: try again
            try:
                stats = self._stats()
                break
            except RuntimeError:
                continue
        for key, value in sorted(stats.items()):
            family.add_metric([key], value)
        yield family


class AgentMetrics:
    """Events in/out, batches, drops by reason, buffer fill, upstream (kernel/enrichment) losses."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_in = Counter("tcpscope_agent_events_in_total", "events handed to the exporter", registry=r)
        self.events_acked = Counter(
            "tcpscope_agent_events_acked_total", "events in batches the collector acknowledged", registry=r)
        self.batches_sent = Counter(
            "tcpscope_agent_batches_sent_total", "batch sends, resends included", registry=r)
        self.batches_resent = Counter(
            "tcpscope_agent_batches_resent_total", "batches sent again after a reconnect", registry=r)
        self.batches_acked = Counter("tcpscope_agent_batches_acked_total", "batches acknowledged", registry=r)
        self.dropped = Counter(
            "tcpscope_agent_dropped_events_total", "events the agent itself dropped, by reason", ["reason"],
            registry=r)
        self.upstream_lost = Counter(
            "tcpscope_agent_upstream_lost_events_total",
            "events lost before the exporter (kernel buffer, enrichment), by reason", ["reason"], registry=r)
        self.buffer_events = Gauge(
            "tcpscope_agent_buffer_events", "events held for the collector (open + unsent + unacked)",
            registry=r)
        self.buffer_capacity = Gauge(
            "tcpscope_agent_buffer_capacity_events", "--buffer-max-events", registry=r)
        self.stream_connected = Gauge(
            "tcpscope_agent_stream_connected", "1 while the collector stream is up", registry=r)
        self.batches_refused = Counter(
            "tcpscope_agent_batches_refused_total",
            "batches the collector refused for what they are (split, or dropped when one event), by reason",
            ["reason"], registry=r)
        self.reconnects = Counter(
            "tcpscope_agent_stream_reconnects_total", "collector stream (re)connect attempts that failed",
            ["code"], registry=r)

    def watch_enrichment(self, stats: Callable[[], dict[str, int]]) -> None:
        """Expose the enrichers' counters (docs/enrichment.md) as tcpscope_agent_enrichment{counter}."""
        self.registry.register(_StageStats(
            "tcpscope_agent_enrichment", "enrichment counters and cache sizes by name (docs/enrichment.md)",
            stats))

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (0 when absent)."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics on port (a daemon thread of prometheus_client)."""
        start_http_server(port, addr=addr, registry=self.registry)
