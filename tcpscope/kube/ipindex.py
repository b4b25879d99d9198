"""Remote IP -> pod, service or node, by time.

Pod IPs are recycled: after pod A goes away its IP may be handed to pod B within seconds. The
index therefore keeps, per IP, a short history of owners with the interval each held it
(`[start, end)`, wall-clock seconds, end None while current) and resolves an (ip, event time)
pair to the owner whose interval contains the time, else the nearest one within a grace window.
It is fed by pod, service and node watches (`PodIpSink`, `ServiceIpSink`, `NodeIpSink`) and is
independent of where it runs: the agent (standalone) or the collector (one per cluster).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tcpscope.kube.pods import parse_time, pod_info
from tcpscope.v1.events_pb2 import NODE, POD, SERVICE

JsonObj = dict[str, Any]


@dataclass(frozen=True)
class IpOwner:
    """Who held an IP: kind is an EndpointKind value (POD, SERVICE, NODE)."""

    kind: int
    namespace: str = ""
    name: str = ""
    uid: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    workload_kind: str = ""
    workload_name: str = ""
    node: str = ""


@dataclass
class _Held:
    key: str
    owner: IpOwner
    start: float
    end: float | None


def normalize_ip(ip: str) -> str:
    """Canonical text; v4-mapped IPv6 becomes IPv4 (the event schema's rule)."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return str(a)


class IpIndex:
    """ip -> [(owner, start, end)]; thread-safe; `history` closed intervals kept per IP for `ttl` s."""

    def __init__(
        self, *, ttl: float = 300.0, history: int = 4, early_grace: float = 30.0, wall: Callable[[], float] = time.time
    ) -> None:
        self.ttl = ttl
        self.history = history
        self.early_grace = early_grace
        self._wall = wall
        self._lock = threading.Lock()
        self._by_ip: dict[str, list[_Held]] = {}
        self._ips_of: dict[str, set[str]] = {}  # key -> ips it currently holds
        # node name -> its spec.podCIDRs: an address in one is a pod's, even before the pod is known;
        # looked up by (ip version, prefix length) -> network address -> node, so a lookup costs one
        # dict probe per distinct prefix length (usually one or two), not one test per node
        self._pod_cidrs: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
        self._cidr_lookup: dict[tuple[int, int], dict[int, str]] = {}
        self.counters: dict[str, int] = {"ipindex.reused_ips": 0, "ipindex.hits": 0, "ipindex.misses": 0}

    def set(self, key: str, ips: Iterable[str], owner: IpOwner, start: float | None = None) -> None:
        """`key` (e.g. 'pod/<uid>') now holds exactly these IPs, since `start` (default: now)."""
        now = self._wall()
        ips_n = {normalize_ip(i) for i in ips if i and i != "None"}
        with self._lock:
            old = self._ips_of.get(key, set())
            for ip in old - ips_n:
                self._close(key, ip, now)
            for ip in ips_n:
                hs = self._by_ip.setdefault(ip, [])
                cur = next((h for h in hs if h.key == key and h.end is None), None)
                if cur is not None:
                    cur.owner = owner
                    continue
                if any(h.key != key for h in hs):
                    self.counters["ipindex.reused_ips"] += 1
                for h in hs:
                    if h.end is None:  # another owner still listed: its removal was not seen yet
                        h.end = now
                hs.append(_Held(key, owner, now if start is None else min(start, now), None))
                del hs[: max(0, len(hs) - self.history)]
            if ips_n:
                self._ips_of[key] = ips_n
            else:
                self._ips_of.pop(key, None)

    def remove(self, key: str) -> None:
        now = self._wall()
        with self._lock:
            for ip in self._ips_of.pop(key, set()):
                self._close(key, ip, now)

    def set_pod_cidrs(self, node: str, cidrs: Iterable[str]) -> None:
        """Node `node` now allocates pod IPs from exactly these ranges (none: forget the node)."""
        nets = []
        for c in cidrs:
            try:
                nets.append(ipaddress.ip_network(c, strict=False))
            except ValueError:
                continue
        with self._lock:
            for n in self._pod_cidrs.pop(node, []):
                slot = self._cidr_lookup.get((n.version, n.prefixlen), {})
                if slot.get(int(n.network_address)) == node:
                    del slot[int(n.network_address)]
                    if not slot:
                        del self._cidr_lookup[(n.version, n.prefixlen)]
            if nets:
                self._pod_cidrs[node] = nets
                for n in nets:
                    self._cidr_lookup.setdefault((n.version, n.prefixlen), {})[int(n.network_address)] = node

    def pod_cidr_nodes(self) -> list[str]:
        with self._lock:
            return list(self._pod_cidrs)

    def pod_cidr_node(self, ip: str) -> str | None:
        """The node whose pod range holds `ip`, or None."""
        try:
            a = ipaddress.ip_address(normalize_ip(ip))
        except ValueError:
            return None
        bits = 32 if a.version == 4 else 128
        with self._lock:
            for (version, plen), nets in self._cidr_lookup.items():
                if version == a.version:
                    node = nets.get(int(a) >> (bits - plen) << (bits - plen))
                    if node is not None:
                        return node
        return None

    def keys(self, prefix: str) -> list[str]:
        with self._lock:
            return [k for k in self._ips_of if k.startswith(prefix)]

    def _close(self, key: str, ip: str, now: float) -> None:
        for h in self._by_ip.get(ip, []):
            if h.key == key and h.end is None:
                h.end = now

    def resolve(self, ip: str, when: float | None = None) -> IpOwner | None:
        """The owner of ip at wall-clock time `when` (default now), or None."""
        t = self._wall() if when is None or when <= 0 else when
        ip = normalize_ip(ip)
        with self._lock:
            best: tuple[float, float, IpOwner] | None = None
            for h in self._by_ip.get(ip, []):
                if t < h.start:
                    dist, limit = h.start - t, self.early_grace
                elif h.end is not None and t >= h.end:
                    dist, limit = t - h.end, self.ttl
                else:
                    dist, limit = 0.0, 1.0
                if dist > limit:
                    continue
                cand = (dist, -h.start, h.owner)
                if best is None or cand[:2] < best[:2]:
                    best = cand
            self.counters["ipindex.hits" if best else "ipindex.misses"] += 1
            return best[2] if best else None

    def prune(self) -> None:
        """Forget intervals that ended more than ttl ago."""
        cutoff = self._wall() - self.ttl
        with self._lock:
            for ip in list(self._by_ip):
                hs = [h for h in self._by_ip[ip] if h.end is None or h.end >= cutoff]
                if hs:
                    self._by_ip[ip] = hs
                else:
                    del self._by_ip[ip]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counters, "ipindex.ips": len(self._by_ip), "ipindex.owners": len(self._ips_of)}


class _KindSink:
    """Common replace/apply logic: each object maps to (key, ips, owner, start)."""

    prefix = ""

    def __init__(self, index: IpIndex) -> None:
        self.index = index

    def describe(self, obj: JsonObj) -> tuple[str, list[str], IpOwner, float | None]:
        raise NotImplementedError

    def replace(self, items: list[JsonObj]) -> None:
        seen = set()
        for o in items:
            key, ips, owner, start = self.describe(o)
            seen.add(key)
            self.index.set(key, ips, owner, start)
        for key in self.index.keys(self.prefix):
            if key not in seen:
                self.index.remove(key)
        self.index.prune()

    def apply(self, event_type: str, obj: JsonObj) -> None:
        key, ips, owner, _ = self.describe(obj)
        if event_type == "DELETED":
            self.index.remove(key)
        else:
            # a change seen live: the IP is held from now (not from creation, which precedes IP
            # assignment and may precede the previous holder's removal)
            self.index.set(key, ips, owner, None)


class PodIpSink(_KindSink):
    """Pods' status.podIPs (host-network pods are skipped: their IP is the node's)."""

    prefix = "pod/"

    def __init__(self, index: IpIndex, label_allowlist: Iterable[str] = ()) -> None:
        super().__init__(index)
        self.label_allowlist = tuple(label_allowlist)

    def describe(self, obj: JsonObj) -> tuple[str, list[str], IpOwner, float | None]:
        p = pod_info(obj, self.label_allowlist)
        owner = IpOwner(POD, p.namespace, p.name, p.uid, p.labels, p.workload_kind, p.workload_name, p.node)
        phase = (obj.get("status") or {}).get("phase")
        ips = [] if p.host_network or phase in ("Succeeded", "Failed") else list(p.ips)
        return "pod/" + (p.uid or f"{p.namespace}/{p.name}"), ips, owner, p.created or None


class ServiceIpSink(_KindSink):
    """ClusterIP services' spec.clusterIPs (headless 'None' skipped)."""

    prefix = "svc/"

    def describe(self, obj: JsonObj) -> tuple[str, list[str], IpOwner, float | None]:
        meta: Mapping[str, Any] = obj.get("metadata") or {}
        spec: Mapping[str, Any] = obj.get("spec") or {}
        ips = list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        owner = IpOwner(SERVICE, ns, name, str(meta.get("uid", "")))
        return f"svc/{ns}/{name}", ips, owner, parse_time(meta.get("creationTimestamp")) or None


class NodeIpSink(_KindSink):
    """Nodes' InternalIP and ExternalIP addresses."""

    prefix = "node/"

    def describe(self, obj: JsonObj) -> tuple[str, list[str], IpOwner, float | None]:
        meta: Mapping[str, Any] = obj.get("metadata") or {}
        addrs = (obj.get("status") or {}).get("addresses") or []
        ips = [str(a["address"]) for a in addrs if a.get("type") in ("InternalIP", "ExternalIP")]
        name = str(meta.get("name", ""))
        owner = IpOwner(NODE, "", name, str(meta.get("uid", "")), node=name)
        return f"node/{name}", ips, owner, parse_time(meta.get("creationTimestamp")) or None

    @staticmethod
    def pod_cidrs(obj: JsonObj) -> tuple[str, list[str]]:
        """(node name, spec.podCIDRs, or the older single spec.podCIDR)."""
        spec: Mapping[str, Any] = obj.get("spec") or {}
        cidrs = [str(c) for c in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])]
        return str((obj.get("metadata") or {}).get("name", "")), cidrs

    def replace(self, items: list[JsonObj]) -> None:
        super().replace(items)
        current = dict(self.pod_cidrs(o) for o in items)
        for node in set(self.index.pod_cidr_nodes()) - set(current):
            self.index.set_pod_cidrs(node, [])
        for node, cidrs in current.items():
            self.index.set_pod_cidrs(node, cidrs)

    def apply(self, event_type: str, obj: JsonObj) -> None:
        super().apply(event_type, obj)
        node, cidrs = self.pod_cidrs(obj)
        self.index.set_pod_cidrs(node, [] if event_type == "DELETED" else cidrs)
