"""Backend ends in the collector (`--resolve-backends`, docs/services.md): each server lifecycle's and
server flow's local end gets the Service ports whose EndpointSlices list its address and port
(`Endpoint.services`), from one cluster-wide Service and EndpointSlice watch per replica. The agents
need no privilege for it: the collector's ServiceAccount reads Services and EndpointSlices.

It runs on the collector's prepare thread (service.py), after remote-end resolution when both are on.
Every server event is counted once by result in `tcpscope_collector_backend_ends_total{result}`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.remote_ends import BatchEnricher
from tcpscope.kube.backends import BackendResolver, fill_backend_ends
from tcpscope.v1.events_pb2 import EventBatch

log = logging.getLogger(__name__)


class BackendEnrichment:
    """Fills the local ends of each batch's server events from a `BackendResolver` and counts them."""

    def __init__(self, resolver: BackendResolver, metrics: CollectorMetrics) -> None:
        self._resolver = resolver
        self._metrics = metrics

    def wait_synced(self, timeout: float) -> bool:
        """Block up to `timeout` s for the first Service and EndpointSlice lists."""
        return self._resolver.wait_synced(timeout)

    def enrich(self, batch: EventBatch) -> None:
        for result, n in fill_backend_ends(batch.events, self._resolver).items():
            self._metrics.backend_ends.labels(result.value).inc(n)

    def close(self) -> None:
        self._resolver.close()


class Enrichers:
    """Several enrichers as one, in order (remote ends, then backend ends)."""

    def __init__(self, stages: Sequence[BatchEnricher]) -> None:
        self._stages = tuple(stages)

    def enrich(self, batch: EventBatch) -> None:
        for stage in self._stages:
            stage.enrich(batch)

    def close(self) -> None:
        for stage in self._stages:
            stage.close()


def build_backend_enrichment(cfg: CollectorConfig, metrics: CollectorMetrics) -> BackendEnrichment:
    """The cluster-wide Service and EndpointSlice watch from --kubeconfig (or the in-cluster service
    account), started. Raises when no API client can be configured (a deployment mistake)."""
    from tcpscope.kube import ClientKubeApi, load_api_client

    api = ClientKubeApi(load_api_client(cfg.kubeconfig))
    resolver = BackendResolver(api).start()
    log.info("naming Service backends from the Kubernetes API's EndpointSlices (%s)", cfg.kubeconfig or "in-cluster")
    return BackendEnrichment(resolver, metrics)
