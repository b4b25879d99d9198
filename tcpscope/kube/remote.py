"""The remote-end enricher and the reusable resolver behind it: remote IP -> pod, service, node, external.

`RemoteResolver` owns an `IpIndex` fed by cluster-wide pod, service and node watches. The agent
uses it when it runs standalone (`--stdout`); the collector can hold one per replica and resolve
remote ends for every agent (see docs/enrichment.md for why that is the cluster default).
`RemoteEnricher` applies it to events: resolution is by the event's own time, so a recycled pod IP
names the pod that held it when the packet was seen. Loopback peers are the local end itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from tcpscope.kube.ipindex import IpIndex, IpOwner, NodeIpSink, PodIpSink, ServiceIpSink
from tcpscope.kube.watch import KubeApi, Reflector
from tcpscope.v1.events_pb2 import EXTERNAL, HOST, NODE, POD, Endpoint, TcpEvent


class RemoteResolver:
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
        sinks = {
            "pods": PodIpSink(self.index, label_allowlist),
            "services": ServiceIpSink(self.index),
            "nodes": NodeIpSink(self.index),
        }
        self.reflectors = {
            name: Reflector(api, name, sink, backoff_initial=backoff_initial, backoff_max=backoff_max)
            for name, sink in sinks.items()
        }

    def start(self) -> RemoteResolver:
        for r in self.reflectors.values():
            r.start()
        return self

    def close(self) -> None:
        for r in self.reflectors.values():
            r.close()

    def synced(self) -> bool:
        """True once pods, services and nodes have each been listed at least once."""
        return all(r.synced.is_set() for r in self.reflectors.values())

    def wait_synced(self, timeout: float) -> bool:
        return all(r.synced.wait(timeout) for r in self.reflectors.values())

    def resolve(self, ip: str, when: float | None = None) -> IpOwner | None:
        return self.index.resolve(ip, when)

    def stats(self) -> dict[str, int]:
        out = self.index.stats()
        for name, r in self.reflectors.items():
            out.update(r.stats(f"remote.watch.{name}"))
        return out


def fill_owner(ep: Endpoint, o: IpOwner) -> None:
    ep.kind = o.kind  # type: ignore[assignment]
    ep.namespace = o.namespace
    ep.name = o.name
    ep.uid = o.uid
    ep.labels.clear()
    ep.labels.update(dict(o.labels))
    if o.workload_kind:
        ep.workload.kind = o.workload_kind
        ep.workload.name = o.workload_name
    if o.node:
        ep.node = o.node


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


class RemoteEnricher:
    """Fills `event.remote` identity (an `agent.pipeline.Enricher`; never holds, never drops)."""

    def __init__(self, resolver: RemoteResolver, node_name: str, *, own_resolver: bool = True) -> None:
        self.resolver = resolver
        self.node_name = node_name
        self._own = own_resolver
        self.counters: dict[str, int] = {
            "remote.events": 0,
            "remote.pod": 0,
            "remote.service": 0,
            "remote.node": 0,
            "remote.external": 0,
            "remote.pod_unknown": 0,
            "remote.loopback": 0,
            "remote.no_ip": 0,
            "remote.miss_api_unavailable": 0,
        }

    def process(self, events: list[TcpEvent], now: float) -> list[TcpEvent]:
        synced = self.resolver.synced()
        for ev in events:
            self.counters["remote.events"] += 1
            r = ev.remote
            if not r.ip or _is_unspecified(r.ip):  # a listener's events: no remote end
                self.counters["remote.no_ip"] += 1
                continue
            if _is_loopback(r.ip):
                self._loopback(ev)
                continue
            when = ev.time.seconds + ev.time.nanos / 1e9 if ev.HasField("time") else None
            owner = self.resolver.resolve(r.ip, when)
            if owner is not None:
                fill_owner(r, owner)
                kinds: dict[int, str] = {POD: "remote.pod", NODE: "remote.node"}
                self.counters[kinds.get(owner.kind, "remote.service")] += 1
            elif synced and (node := self.resolver.index.pod_cidr_node(r.ip)):
                # in a node's pod range but no pod known for it (yet: the watch lags a new pod):
                # a pod we cannot name, never "external"
                r.kind = POD
                r.node = node
                self.counters["remote.pod_unknown"] += 1
            elif synced:
                r.kind = EXTERNAL
                self.counters["remote.external"] += 1
            else:
                self.counters["remote.miss_api_unavailable"] += 1
        return events

    def _loopback(self, ev: TcpEvent) -> None:
        """127.0.0.0/8 and ::1 stay inside the local network namespace: the peer is the local end's pod or node."""
        self.counters["remote.loopback"] += 1
        loc, r = ev.local, ev.remote
        if loc.kind == POD:
            r.kind = POD
            r.namespace, r.name, r.uid, r.node = loc.namespace, loc.name, loc.uid, loc.node
            r.labels.update(dict(loc.labels))
            r.workload.CopyFrom(loc.workload)
        elif loc.kind == HOST or not loc.kind:
            r.kind = NODE
            r.name = r.node = loc.node or self.node_name

    def flush(self) -> list[TcpEvent]:
        return []

    def losses(self) -> dict[str, int]:
        return {}

    def stats(self) -> dict[str, int]:
        return {**self.counters, **self.resolver.stats()}

    def close(self) -> None:
        if self._own:
            self.resolver.close()
