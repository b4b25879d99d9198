"""Remote-end enrichment in the collector (docs/enrichment.md: one cluster-wide watch per collector
replica instead of one per node; agents then run with `--no-resolve-remote`).

`RemoteEnrichment` fills `event.remote` for the events whose remote end the agent left unresolved
(`kind` unspecified), using the shared `RemoteResolver` / `RemoteEnricher` (tcpscope.kube): lookups are
in-memory and by the event's own time. It runs on the collector's prepare thread (service.py), never
on the asyncio loop. Every remote end is counted once by result in
`tcpscope_collector_remote_ends_total{result}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from tcpscope.v1.events_pb2 import ENDPOINT_KIND_UNSPECIFIED, EventBatch, TcpEvent

if TYPE_CHECKING:
    from tcpscope.kube.remote import RemoteEnricher

log = logging.getLogger(__name__)

# the result label for remote ends the agent had already resolved (left untouched)
AGENT_RESOLVED = "agent_resolved"


class BatchEnricher(Protocol):
    """What the service calls per batch, on its prepare thread (one thread: no concurrent calls)."""

    def enrich(self, batch: EventBatch) -> None: ...

    def close(self) -> None: ...


class RemoteEnrichment:
    """Applies a `RemoteEnricher` to the unresolved remote ends of each batch and counts results."""

    def __init__(
        self, enricher: RemoteEnricher, metrics: CollectorMetrics, clock: Callable[[], float] | None = None
    ) -> None:
        import time

        self._enricher = enricher
        self._metrics = metrics
        self._clock = clock or time.time
        self._seen = dict(enricher.counters)

    def wait_synced(self, timeout: float) -> bool:
        """Block up to `timeout` s for the first pod, service and node lists."""
        return self._enricher.resolver.wait_synced(timeout)

    def enrich(self, batch: EventBatch) -> None:
        todo: list[TcpEvent] = [ev for ev in batch.events if ev.remote.kind == ENDPOINT_KIND_UNSPECIFIED]
        skipped = len(batch.events) - len(todo)
        if skipped:
            self._metrics.remote_ends.labels(AGENT_RESOLVED).inc(skipped)
        if not todo:
            return
        self._enricher.process(todo, self._clock())
        now = self._enricher.counters
        for key, n in now.items():
            delta = n - self._seen.get(key, 0)
            if delta and key != "remote.events":
                self._metrics.remote_ends.labels(key.removeprefix("remote.")).inc(delta)
        self._seen = dict(now)

    def close(self) -> None:
        self._enricher.close()


def build_remote_enrichment(cfg: CollectorConfig, metrics: CollectorMetrics) -> RemoteEnrichment:
    """The cluster-wide resolver from --kubeconfig (or the in-cluster service account), started.

    Raises when no API client can be configured: --resolve-remote without API access is a
    deployment mistake to surface at start-up, not to hide behind counters.
    """
    from tcpscope.kube import ClientKubeApi, RemoteResolver, load_api_client
    from tcpscope.kube.remote import RemoteEnricher

    api = ClientKubeApi(load_api_client(cfg.kubeconfig))
    resolver = RemoteResolver(api, cfg.labels).start()
    log.info("resolving remote ends from the Kubernetes API (%s)", cfg.kubeconfig or "in-cluster")
    return RemoteEnrichment(RemoteEnricher(resolver, node_name=""), metrics)
