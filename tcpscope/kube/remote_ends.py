"""Remote ends: remote IP -> pod, service, node or external, and what each event's remote end became.

`RemoteResolver` owns an `IpIndex` fed by cluster-wide pod, service and node watches. The agent
uses it when it runs standalone (`--stdout`, agent/enrich/remote_stage.py); the collector holds one per
replica and resolves remote ends for every agent (see docs/enrichment.md for why that is the
cluster default). `fill_remote_ends` applies it to events and returns how many ended as each
`RemoteResult`: resolution is by the event's own time, so a recycled pod IP names the pod that held
it when the packet was seen. Loopback peers are the local end itself.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from enum import StrEnum

from tcpscope.kube.ipindex import IpIndex, IpOwner, NodeIpSink, PodIpSink, ServiceIpSink
from tcpscope.kube.pods import fill_endpoint
from tcpscope.kube.watch import KubeApi, PodSink, Reflectors
from tcpscope.v1.events_pb2 import EXTERNAL, HOST, NODE, POD, TcpEvent


class RemoteResolver(Reflectors):
    """Cluster-wide IP index kept current by three reflectors; thread-safe `resolve`."""

    def __init__(
        self,
        api: KubeApi,
        label_allowlist: Iterable[str] = (),
        *,
        ttl: float = 300.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
    ) -> None:
        self.index = IpIndex(ttl=ttl)
        sinks: dict[str, PodSink] = {
            "pods": PodIpSink(self.index, label_allowlist),
            "services": ServiceIpSink(self.index),
            "nodes": NodeIpSink(self.index),
        }
        super().__init__(api, sinks, backoff_initial=backoff_initial, backoff_max=backoff_max)

    def resolve(self, ip: str, when: float | None = None) -> IpOwner | None:
        return self.index.resolve(ip, when)

    def pod_cidr_node(self, ip: str) -> str | None:
        """The node whose pod range holds `ip`, or None."""
        return self.index.pod_cidr_node(ip)

    def stats(self) -> dict[str, int]:
        return {**self.index.stats(), **self.watch_stats("remote.watch")}


def _is_unspecified(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_unspecified
    except ValueError:
        return False


def _is_loopback(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a.is_loopback


class RemoteResult(StrEnum):
    """What one event's remote end became. The value is the collector's label
    (`tcpscope_collector_remote_ends_total{result}`) and the agent's count `remote.<value>`."""

    POD = "pod"  # a pod the watch knows
    SERVICE = "service"
    NODE = "node"
    EXTERNAL = "external"  # all watches synced, no owner, in no node's pod range
    POD_UNKNOWN = "pod_unknown"  # in a node's pod range, no pod known for it (yet): kind POD, node set
    LOOPBACK = "loopback"  # the local end's own pod or node
    NO_IP = "no_ip"  # a listener's event: no remote end, left as it is
    MISS_API_UNAVAILABLE = "miss_api_unavailable"  # not synced yet: left unresolved, never "external"


_BY_KIND: dict[int, RemoteResult] = {POD: RemoteResult.POD, NODE: RemoteResult.NODE}


def fill_remote_end(ev: TcpEvent, resolver: RemoteResolver, node_name: str, *, synced: bool) -> RemoteResult:
    """Fill `ev.remote` from the resolver, in place; `synced` is `resolver.synced()` (asked once per
    batch); `node_name` names the peer of a loopback connection of a host process without a node."""
    r = ev.remote
    if not r.ip or _is_unspecified(r.ip):  # a listener's events: no remote end
        return RemoteResult.NO_IP
    if _is_loopback(r.ip):
        _loopback(ev, node_name)
        return RemoteResult.LOOPBACK
    when = ev.time.seconds + ev.time.nanos / 1e9 if ev.HasField("time") else None
    owner = resolver.resolve(r.ip, when)
    if owner is not None:
        fill_endpoint(r, owner.kind, owner)
        return _BY_KIND.get(owner.kind, RemoteResult.SERVICE)
    if synced and (node := resolver.pod_cidr_node(r.ip)):
        # in a node's pod range but no pod known for it (yet: the watch lags a new pod):
        # a pod we cannot name, never "external"
        r.kind = POD
        r.node = node
        return RemoteResult.POD_UNKNOWN
    if synced:
        r.kind = EXTERNAL
        return RemoteResult.EXTERNAL
    return RemoteResult.MISS_API_UNAVAILABLE


def fill_remote_ends(events: Iterable[TcpEvent], resolver: RemoteResolver, node_name: str) -> Counter[RemoteResult]:
    """Fill every event's remote end (`fill_remote_end`); how many ended as each result (zeros left out)."""
    synced = resolver.synced()
    return Counter(fill_remote_end(ev, resolver, node_name, synced=synced) for ev in events)


def _loopback(ev: TcpEvent, node_name: str) -> None:
    """127.0.0.0/8 and ::1 stay inside the local network namespace: the peer is the local end's pod or node."""
    loc, r = ev.local, ev.remote
    if loc.kind == POD:
        r.kind = POD
        r.namespace, r.name, r.uid, r.node = loc.namespace, loc.name, loc.uid, loc.node
        r.labels.update(dict(loc.labels))
        r.workload.CopyFrom(loc.workload)
    elif loc.kind == HOST or not loc.kind:
        r.kind = NODE
        r.name = r.node = loc.node or node_name
