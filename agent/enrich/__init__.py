"""Kubernetes enrichment: who each end of a socket is.

    local end:  process.cgroup_id -> CgroupMap (cgroups.py) -> pod uid / container id
                -> PodIndex (pods.py, node-scoped pod watch) -> LocalEnricher (local.py)
    remote end: remote.ip -> RemoteResolver (tcpscope.kube, shared with the collector: cluster-wide
                pod/service/node watches) -> RemoteEnricher

The Kubernetes watch, pod parsing and the IP index live in `tcpscope.kube`; what only a node
knows (cgroups, this node's pods) lives here.

`build_enrichers` is the one entry point the agent's wiring calls. Enrichment degrades, it never
drops: when the API server is away events go on with cgroup-level identity and misses are counted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agent.enrich.cgroups import CgroupIdentity, CgroupMap, find_cgroup2_mount, parse_cgroup_path
from agent.enrich.local_stage import LocalEnricher
from agent.enrich.pods import PodIndex
from agent.enrich.remote_stage import RemoteEnricher
from tcpscope.kube import ClientKubeApi, KubeApi, Reflector, RemoteResolver, load_api_client

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.pipeline import Enricher

log = logging.getLogger(__name__)

__all__ = [
    "CgroupIdentity",
    "CgroupMap",
    "LocalEnricher",
    "PodIndex",
    "RemoteEnricher",
    "build_enrichers",
    "find_cgroup2_mount",
    "parse_cgroup_path",
]


def build_enrichers(
    config: AgentConfig,
    *,
    api: KubeApi | None = None,
    cgroup_root: str | None = None,
    initial_sync_timeout: float = 3.0,
) -> list[Enricher]:
    """The enrichment stages for this config, in pipeline order (local, then remote if enabled).

    `api` overrides the client built from `config.kubeconfig` / the in-cluster service account;
    `cgroup_root` overrides the detected cgroup2 mount. Waits up to `initial_sync_timeout` seconds
    for the first pod list so the first events resolve; an unreachable API server is not an error.
    """
    cgroups = CgroupMap(cgroup_root, gone_ttl=config.pod_cache_ttl)
    if config.kubernetes and api is None:
        try:
            api = ClientKubeApi(load_api_client(config.kubeconfig))
        except Exception as e:  # no kubeconfig and not in a cluster: cgroup-level identity only
            log.warning("kubernetes enrichment off: cannot configure an API client (%s)", e)
    if not config.kubernetes or api is None:
        return [LocalEnricher(cgroups, None, config.node_name)]

    pods = PodIndex(config.label_allowlist, ttl=config.pod_cache_ttl)
    reflector = Reflector(api, "pods", pods, field_selector=f"spec.nodeName={config.node_name}").start()
    resolver: RemoteResolver | None = None
    try:
        local = LocalEnricher(
            cgroups,
            pods,
            config.node_name,
            pods_synced=reflector.synced.is_set,
            pending_max_wait=config.pending_max_wait,
            extra_stats=lambda: reflector.stats("local.watch.pods"),
            on_close=reflector.close,
        )
        enrichers: list[Enricher] = [local]
        if config.resolve_remote:
            resolver = RemoteResolver(api, config.label_allowlist, ttl=max(config.pod_cache_ttl, 60.0)).start()
            enrichers.append(RemoteEnricher(resolver, config.node_name))
        _wait_synced(reflector, resolver, initial_sync_timeout)
    except BaseException:  # a failure or Ctrl-C half-way: no watch thread outlives the call
        if resolver is not None:
            resolver.close()
        reflector.close()
        raise
    return enrichers


def _wait_synced(reflector: Reflector, resolver: RemoteResolver | None, timeout: float) -> None:
    """Up to `timeout` s for the first lists, so the first events resolve; not reachable is no error."""
    if timeout <= 0:
        return
    ok = reflector.synced.wait(timeout)
    if resolver is not None:
        ok = resolver.wait_synced(timeout) and ok
    if not ok:
        log.warning("kubernetes API not reachable yet; events flow without pod fields until it is")
