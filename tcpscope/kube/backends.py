"""Which Service ports a server's address and port is an endpoint of, by time: from the Services and
EndpointSlices (discovery.k8s.io/v1) that kube-proxy programs its NAT from.

Through a Service the client's socket names the Service (`C -> VIP:80`) and the backend's names
the backend (`S:9000 <- C`). Joined one by one (`connection_id`), the two tell which backend took
each connection; aggregated into flows they carry no id, and a reader needs to know that S:9000 is
an endpoint of that Service port to split the client's flows to it by the backends' flows
(docs/services.md). `fill_backend_ends` writes that fact into the server's local end
(`Endpoint.services`).

An EndpointSlice names its Service (label `kubernetes.io/service-name`) and lists endpoint addresses
with named target ports; the Service's `spec.ports` gives, per port name, the Service port a client
connects to. `BackendIndex` keeps, per (address, target port), which slices listed it and since when
(`[start, end)` in wall-clock seconds, end None while listed), and resolves an event's time with a
grace after removal, so a flow reported seconds after its backend left still resolves. The collector
runs it (`--resolve-backends`, collector/backends.py): one watch of Services and EndpointSlices per
replica, no privilege for the agents.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tcpscope.kube.ipindex import normalize_ip
from tcpscope.kube.watch import KubeApi, PodSink, Reflectors
from tcpscope.v1.events_pb2 import PASSIVE, ServicePort, TcpEvent

JsonObj = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""The label an EndpointSlice names its Service by (set by the EndpointSlice controller, and by
whoever manages a selectorless Service's slices)."""


@dataclass(frozen=True, order=True)
class ServicePortRef:
    """A Service port: the Service's namespace and name and its `spec.ports[].port`."""

    namespace: str
    name: str
    port: int


# one endpoint entry of a slice: (address, target port, Service namespace, Service name, port name)
_Entry = tuple[str, int, str, str, str]


@dataclass
class _Held:
    slice_key: str
    service: tuple[str, str, str]  # (namespace, name, port name)
    start: float
    end: float | None


class BackendIndex:
    """(address, target port) -> the Service ports whose EndpointSlices list it, over time; thread-safe.
    `history` intervals are kept per (address, port), closed ones for `ttl` seconds."""

    def __init__(
        self, *, ttl: float = 300.0, history: int = 8, early_grace: float = 30.0, wall: Callable[[], float] = time.time
    ) -> None:
        self.ttl = ttl
        self.history = history
        self.early_grace = early_grace
        self._wall = wall
        self._lock = threading.Lock()
        self._held: dict[tuple[str, int], list[_Held]] = {}
        self._slices: dict[str, set[_Entry]] = {}  # slice key -> its current entries
        self._ports: dict[tuple[str, str], dict[str, int]] = {}  # Service -> {port name: port}
        self.counters: dict[str, int] = {"backends.hits": 0, "backends.misses": 0, "backends.unknown_service": 0}

    # --- feeding ---------------------------------------------------------------------------------

    def set_slice(self, key: str, entries: Iterable[_Entry], listed_since_ever: bool = False) -> None:
        """Slice `key` now lists exactly these entries; new ones since now (or since ever: a slice
        found by the first list, whose endpoints predate the watch)."""
        now = self._wall()
        new = {(normalize_ip(ip), port, ns, svc, pname) for ip, port, ns, svc, pname in entries}
        with self._lock:
            old = self._slices.get(key, set())
            for ip, port, ns, svc, pname in old - new:
                self._close(key, (ip, port), (ns, svc, pname), now)
            for ip, port, ns, svc, pname in new - old:
                held = self._held.setdefault((ip, port), [])
                held.append(_Held(key, (ns, svc, pname), 0.0 if listed_since_ever else now, None))
                del held[: max(0, len(held) - self.history)]
            if new:
                self._slices[key] = new
            else:
                self._slices.pop(key, None)

    def remove_slice(self, key: str) -> None:
        self.set_slice(key, ())

    def slice_keys(self) -> list[str]:
        with self._lock:
            return list(self._slices)

    def set_service(self, namespace: str, name: str, ports: Mapping[str, int]) -> None:
        """The Service's TCP ports by name (a Service's only port may have the name "")."""
        with self._lock:
            self._ports[(namespace, name)] = dict(ports)

    def remove_service(self, namespace: str, name: str) -> None:
        """A deleted Service's ports are forgotten: late events of its endpoints then name none
        (counted `backends.unknown_service`)."""
        with self._lock:
            self._ports.pop((namespace, name), None)

    def replace_services(self, services: Mapping[tuple[str, str], Mapping[str, int]]) -> None:
        """Exactly these Services exist now (a relist)."""
        with self._lock:
            self._ports = {k: dict(v) for k, v in services.items()}

    def _close(self, key: str, where: tuple[str, int], service: tuple[str, str, str], now: float) -> None:
        for h in self._held.get(where, []):
            if h.slice_key == key and h.service == service and h.end is None:
                h.end = now

    # --- lookup ----------------------------------------------------------------------------------

    def services_of(self, ip: str, port: int, when: float | None = None) -> list[ServicePortRef]:
        """The Service ports listing (ip, port) at wall-clock time `when` (default now), sorted."""
        t = self._wall() if when is None or when <= 0 else when
        out: set[ServicePortRef] = set()
        with self._lock:
            for h in self._held.get((normalize_ip(ip), port), []):
                if t < h.start - self.early_grace or (h.end is not None and t >= h.end + self.ttl):
                    continue
                ns, svc, pname = h.service
                sport = self._ports.get((ns, svc), {}).get(pname)
                if sport is None:
                    self.counters["backends.unknown_service"] += 1
                    continue
                out.add(ServicePortRef(ns, svc, sport))
            self.counters["backends.hits" if out else "backends.misses"] += 1
        return sorted(out)

    def prune(self) -> None:
        """Forget intervals that ended more than ttl ago."""
        cutoff = self._wall() - self.ttl
        with self._lock:
            for where in list(self._held):
                kept = [h for h in self._held[where] if h.end is None or h.end >= cutoff]
                if kept:
                    self._held[where] = kept
                else:
                    del self._held[where]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                **self.counters,
                "backends.endpoints": len(self._held),
                "backends.slices": len(self._slices),
                "backends.services": len(self._ports),
            }


def service_ports(obj: JsonObj) -> tuple[str, str, dict[str, int]]:
    """(namespace, name, {port name: port}) of a Service's TCP ports."""
    meta = obj.get("metadata") or {}
    ports: dict[str, int] = {}
    for p in (obj.get("spec") or {}).get("ports") or []:
        if (p.get("protocol") or "TCP") == "TCP" and isinstance(p.get("port"), int):
            ports[str(p.get("name") or "")] = p["port"]
    return str(meta.get("namespace") or ""), str(meta.get("name") or ""), ports


def slice_entries(obj: JsonObj) -> tuple[str, list[_Entry]]:
    """(slice key, its entries) of an EndpointSlice: every TCP target port of every address of every
    endpoint, whatever its conditions (a terminating endpoint still serves the connections it has).
    FQDN slices and slices naming no Service have none."""
    meta = obj.get("metadata") or {}
    ns = str(meta.get("namespace") or "")
    key = f"{ns}/{meta.get('name') or ''}"
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service or obj.get("addressType") not in ("IPv4", "IPv6"):
        return key, []
    ports = [
        (str(p.get("name") or ""), p["port"])
        for p in obj.get("ports") or []
        if (p.get("protocol") or "TCP") == "TCP" and isinstance(p.get("port"), int)
    ]
    entries = [
        (str(addr), port, ns, str(service), pname)
        for ep in obj.get("endpoints") or []
        for addr in ep.get("addresses") or []
        for pname, port in ports
    ]
    return key, entries


class ServicePortSink:
    """The Services reflector's sink: each Service's port names and ports."""

    def __init__(self, index: BackendIndex) -> None:
        self.index = index

    def replace(self, items: list[JsonObj]) -> None:
        self.index.replace_services({(ns, name): ports for ns, name, ports in map(service_ports, items)})

    def apply(self, event_type: str, obj: JsonObj) -> None:
        ns, name, ports = service_ports(obj)
        if event_type == "DELETED":
            self.index.remove_service(ns, name)
        else:
            self.index.set_service(ns, name, ports)


class EndpointSliceSink:
    """The EndpointSlices reflector's sink."""

    def __init__(self, index: BackendIndex) -> None:
        self.index = index

    def replace(self, items: list[JsonObj]) -> None:
        seen = set()
        for obj in items:
            key, entries = slice_entries(obj)
            seen.add(key)
            self.index.set_slice(key, entries, listed_since_ever=key not in self.index.slice_keys())
        for key in self.index.slice_keys():
            if key not in seen:
                self.index.remove_slice(key)
        self.index.prune()

    def apply(self, event_type: str, obj: JsonObj) -> None:
        key, entries = slice_entries(obj)
        if event_type == "DELETED":
            self.index.remove_slice(key)
        else:
            self.index.set_slice(key, entries)


class BackendResolver(Reflectors):
    """A `BackendIndex` kept current by a Services and an EndpointSlices reflector."""

    def __init__(
        self, api: KubeApi, *, ttl: float = 300.0, backoff_initial: float = 0.2, backoff_max: float = 30.0
    ) -> None:
        self.index = BackendIndex(ttl=ttl)
        sinks: dict[str, PodSink] = {
            "services": ServicePortSink(self.index),
            "endpointslices": EndpointSliceSink(self.index),
        }
        super().__init__(api, sinks, backoff_initial=backoff_initial, backoff_max=backoff_max)

    def services_of(self, ip: str, port: int, when: float | None = None) -> list[ServicePortRef]:
        return self.index.services_of(ip, port, when)

    def stats(self) -> dict[str, int]:
        return {**self.index.stats(), **self.watch_stats("backends.watch")}


class BackendResult(StrEnum):
    """What one server event's local end became (the collector's label
    `tcpscope_collector_backend_ends_total{result}`)."""

    BACKEND = "backend"  # listed by one or more Service ports: Endpoint.services set
    NOT_BACKEND = "not_backend"  # synced, and no Service lists this address and port
    ALREADY_SET = "already_set"  # the event came with Endpoint.services: left as it is
    MISS_API_UNAVAILABLE = "miss_api_unavailable"  # not synced yet: left empty, never "not a backend"


def is_server_event(ev: TcpEvent) -> bool:
    """A server socket's lifecycle or a server's flow: what `fill_backend_ends` annotates."""
    kind = ev.WhichOneof("kind")
    if kind == "lifecycle":
        return ev.lifecycle.role == PASSIVE
    return kind == "flow" and ev.flow.role == PASSIVE


def fill_backend_end(ev: TcpEvent, resolver: BackendResolver | BackendIndex, *, synced: bool) -> BackendResult:
    """Write into a server event's local end the Service ports it is an endpoint of (in place)."""
    loc = ev.local
    if len(loc.services):
        return BackendResult.ALREADY_SET
    if not synced:
        return BackendResult.MISS_API_UNAVAILABLE
    when = ev.time.seconds + ev.time.nanos / 1e9 if ev.HasField("time") else None
    found = resolver.services_of(loc.ip, loc.port, when)
    if not found:
        return BackendResult.NOT_BACKEND
    loc.services.extend(ServicePort(namespace=s.namespace, name=s.name, port=s.port) for s in found)
    return BackendResult.BACKEND


def fill_backend_ends(events: Iterable[TcpEvent], resolver: BackendResolver) -> Counter[BackendResult]:
    """`fill_backend_end` on every server lifecycle and flow; how many ended as each result."""
    synced = resolver.synced()
    return Counter(fill_backend_end(ev, resolver, synced=synced) for ev in events if is_server_event(ev))
