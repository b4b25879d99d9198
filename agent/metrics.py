"""Prometheus metrics of the agent, in their own registry (no global state).

Served on `--metrics-port` when non-zero. The exporter and the pipeline update them; tests read
them back with `value()`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tcpscope.httpserve import Health, HttpServer

GAUGE_STATS = frozenset(
    {
        "pods.cached",
        "pods.deleted_cached",
        "pods.containers_indexed",
        "cgroup.entries",
        "cgroup.gone_entries",
        "ipindex.ips",
        "ipindex.owners",
        "local.pending",
    }
)
"""Stage statistics that are levels (cache sizes, pending events), not counts; so are the watches'
`*.synced` and `*.connected` flags. Every other statistic only ever grows: a counter."""


def stat_is_gauge(key: str) -> bool:
    return key in GAUGE_STATS or key.endswith((".synced", ".connected"))


def stat_metric_name(prefix: str, key: str) -> str:
    """`local.pod_hits` -> `<prefix>_local_pod_hits_total`; gauges keep no `_total`."""
    base = f"{prefix}_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}"
    return base if stat_is_gauge(key) else f"{base}_total"


class Snapshot:
    """A stage's statistics copied on the thread that owns the stage, for any other thread to read.

    The stages count in plain dicts from the pipeline thread, without locks; walking those dicts
    from the metrics server's thread races with it ("dictionary changed size during iteration").
    The owner calls `take()` (the pipeline does, through `Pipeline.on_refresh`); readers call the
    snapshot and get the last copy, an immutable mapping that nobody changes."""

    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self._read = read
        self._last: Mapping[str, int] = MappingProxyType({})
        self.take()

    def take(self) -> None:
        """Copy the stage's statistics now: on the owning thread only."""
        self._last = MappingProxyType(dict(self._read()))  # one reference swap: readers see old or new

    def __call__(self) -> Mapping[str, int]:
        """The last copy taken (any thread)."""
        return self._last


class _StageStats(Collector):
    """A stage's own statistics (e.g. the enrichers' stats()), read at scrape time: one counter per
    count (`tcpscope_agent_enrichment_local_pod_hits_total`) and one gauge per level
    (`tcpscope_agent_enrichment_pods_cached`), so rate() and alerts work on them. `stats` runs on the
    scrape thread: a stage owned by another thread is read through a Snapshot."""

    def __init__(self, prefix: str, doc: str, stats: Callable[[], Mapping[str, int]]) -> None:
        self._prefix, self._doc, self._stats = prefix, doc, stats

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the names depend on the stage's keys: known at collect time

    def collect(self) -> Iterator[Metric]:
        for key, value in sorted(self._stats().items()):
            name = stat_metric_name(self._prefix, key)
            if stat_is_gauge(key):
                yield GaugeMetricFamily(name, f"{self._doc}: {key}", value=value)
            else:
                yield CounterMetricFamily(name.removesuffix("_total"), f"{self._doc}: {key}", value=value)


class AgentMetrics:
    """Events in/out, batches, drops by reason, buffer fill, upstream (kernel/enrichment) losses."""

    def __init__(self) -> None:
        self._servers: list[HttpServer] = []
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_in = Counter("tcpscope_agent_events_in_total", "events handed to the exporter", registry=r)
        self.events_acked = Counter(
            "tcpscope_agent_events_acked_total", "events in batches the collector acknowledged", registry=r
        )
        self.batches_sent = Counter("tcpscope_agent_batches_sent_total", "batch sends, resends included", registry=r)
        self.batches_resent = Counter(
            "tcpscope_agent_batches_resent_total", "batches sent again after a reconnect", registry=r
        )
        self.batches_acked = Counter("tcpscope_agent_batches_acked_total", "batches acknowledged", registry=r)
        self.dropped = Counter(
            "tcpscope_agent_dropped_events_total", "events the agent itself dropped, by reason", ["reason"], registry=r
        )
        self.upstream_lost = Counter(
            "tcpscope_agent_upstream_lost_events_total",
            "events lost before the exporter (kernel buffer, enrichment), by reason",
            ["reason"],
            registry=r,
        )
        self.buffer_events = Gauge(
            "tcpscope_agent_buffer_events", "events held for the collector (open + unsent + unacked)", registry=r
        )
        self.buffer_capacity = Gauge("tcpscope_agent_buffer_capacity_events", "--buffer-max-events", registry=r)
        self.stream_connected = Gauge(
            "tcpscope_agent_stream_connected", "1 while the collector stream is up", registry=r
        )
        self.batches_refused = Counter(
            "tcpscope_agent_batches_refused_total",
            "batches the collector refused for what they are (split, or dropped when one event), by reason",
            ["reason"],
            registry=r,
        )
        self.collector_dropped = Counter(
            "tcpscope_agent_collector_dropped_events_total",
            "events the collector left out of acknowledged batches (outside the bounds, or too big for Kafka), "
            "by reason; counted in those batches' summary records, not again in the agent's losses",
            ["reason"],
            registry=r,
        )
        self.reconnects = Counter(
            "tcpscope_agent_stream_reconnects_total",
            "collector stream (re)connect attempts that failed",
            ["code"],
            registry=r,
        )

    def watch_enrichment(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Expose the enrichers' statistics (docs/enrichment.md) as tcpscope_agent_enrichment_<name>[_total].
        `stats` is called from the scrape thread (a Snapshot when the pipeline thread owns them)."""
        self.registry.register(
            _StageStats("tcpscope_agent_enrichment", "enrichment statistic (docs/enrichment.md)", stats)
        )

    def watch_flows(self, counters: Callable[[], Mapping[str, int]]) -> None:
        """Expose the kernel's accounting counters (agent/kernel/flows.py, agent/kernel/anomalies.py) as
        tcpscope_agent_flows_aggregated_total (ordinary connections counted in flows),
        tcpscope_agent_flows_map_full_total (reported as their own lifecycle because the flow map was
        full) and tcpscope_agent_anomalies_<name>_total (anomalies sent as events, aggregated, and
        why: docs/kafka.md). Not losses."""
        self.registry.register(_StageStats("tcpscope_agent", "in-kernel flow and anomaly accounting", counters))

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (0 when absent)."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def serve(self, port: int, addr: str = "127.0.0.1", health: Health | None = None) -> None:
        """Serve /metrics, and /healthz (live) and /readyz (ready) when health is given, on addr:port
        from a daemon thread until close(). Raises OSError when the port cannot be bound."""
        self._servers.append(HttpServer(self.registry, port, addr, health))

    def close(self) -> None:
        """Stop serving and free the port (an agent that fails to start must not leave it bound)."""
        while self._servers:
            self._servers.pop().close()
