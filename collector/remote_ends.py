"""Remote-end enrichment in the collector (docs/enrichment.md: one cluster-wide watch per collector
replica instead of one per node; agents then run with `--no-resolve-remote`).

`RemoteEnrichment` fills `event.remote` for the events whose remote end the agent left unresolved
(`kind` unspecified), with the shared `RemoteResolver` (tcpscope.kube): lookups are in-memory and by
the event's own time. It runs on the collector's prepare thread (service.py), never on the asyncio
loop. Every remote end is counted once by result in `tcpscope_collector_remote_ends_total{result}`:
a `RemoteResult`, or `agent_resolved`.
"""

from __future__ import annotations

import logging
from typing import Protocol

from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from tcpscope.kube.remote_ends import RemoteResolver, fill_remote_ends
from tcpscope.v1.events_pb2 import ENDPOINT_KIND_UNSPECIFIED, EventBatch, TcpEvent

log = logging.getLogger(__name__)

# the result label for remote ends the agent had already resolved (left untouched)
AGENT_RESOLVED = "agent_resolved"


class BatchEnricher(Protocol):
    """What the service calls per batch, on its prepare thread (one thread: no concurrent calls)."""

    def enrich(self, batch: EventBatch) -> None: ...

    def close(self) -> None: ...


class RemoteEnrichment:
    """Fills the unresolved remote ends of each batch from a `RemoteResolver` and counts the results."""

    def __init__(self, resolver: RemoteResolver, metrics: CollectorMetrics) -> None:
        self._resolver = resolver
        self._metrics = metrics

    def wait_synced(self, timeout: float) -> bool:
        """Block up to `timeout` s for the first pod, service and node lists."""
        return self._resolver.wait_synced(timeout)

    def enrich(self, batch: EventBatch) -> None:
        todo: list[TcpEvent] = [ev for ev in batch.events if ev.remote.kind == ENDPOINT_KIND_UNSPECIFIED]
        skipped = len(batch.events) - len(todo)
        if skipped:
            self._metrics.remote_ends.labels(AGENT_RESOLVED).inc(skipped)
        if not todo:
            return
        # no node of its own: a loopback peer of a host process is named by the event's local end only
        for result, n in fill_remote_ends(todo, self._resolver, node_name="").items():
            self._metrics.remote_ends.labels(result.value).inc(n)

    def close(self) -> None:
        self._resolver.close()


def build_remote_enrichment(cfg: CollectorConfig, metrics: CollectorMetrics) -> RemoteEnrichment:
    """The cluster-wide resolver from --kubeconfig (or the in-cluster service account), started.

    Raises when no API client can be configured: --resolve-remote without API access is a
    deployment mistake to surface at start-up, not to hide behind counters.
    """
    from tcpscope.kube import ClientKubeApi, load_api_client

    api = ClientKubeApi(load_api_client(cfg.kubeconfig))
    resolver = RemoteResolver(api, cfg.labels).start()
    log.info("resolving remote ends from the Kubernetes API (%s)", cfg.kubeconfig or "in-cluster")
    return RemoteEnrichment(resolver, metrics)
