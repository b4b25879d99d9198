"""The simulator's traffic plan: which pods run on which nodes, and which connections they make.

A plan is JSON (see docs/sim.md)::

    {"pods": [{"namespace": "shop", "name": "web-1", "node": "node-1", "listen": [8080]}, ...],
     "services": [{"namespace": "shop", "name": "api-svc", "port": 80, "targetPort": 9000,
                   "backends": ["shop/api-1", "shop/api-2"]}],
     "traffic": [{"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "ok", "count": 20},
                 {"from": "shop/web-1", "service": "shop/api-svc", "kind": "ok", "count": 20}]}

Parsing is pure and strict: every error names the offending entry, so a typo in a plan fails
before any namespace or cgroup is created. Addresses are assigned here, deterministically:
node i (1-based, in order of first appearance) holds 198.18.i.0/24 and its pods get .2, .3, ...;
the plan's Services get ClusterIPs 198.19.1.1, .2, ... in order. Traffic to a Service goes to its
ClusterIP and port; the simulated kube-proxy (tcpscope_sim/kubeproxy.py) takes each connection to a
backend in turn (`numgen inc`), so which backend gets which connection is known in advance
(`Plan.backend_of`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tcpscope_sim.worker import POOLED_ACK  # pooled: the server's answer to each second's chunk

KINDS: tuple[str, ...] = (
    "ok",
    "refused",
    "client_reset",
    "server_reset",
    "timeout",
    "network_reset",
    "syn_flood",
    "port_scan",
    "pooled",
)
"""Traffic kinds a plan may ask for (the built-in mix adds retransmits and a stalled server).
syn_flood: `count` half-open connects to a listening port whose SYN-ACKs the router drops; port_scan:
one connect to each of `count` ports from `port` up, none of them listened on; pooled: long-lived
connections streaming `pooled_bytes` a second (docs/sim.md)."""

ESTABLISHED_KINDS = frozenset({"ok", "client_reset", "server_reset", "network_reset", "pooled"})
"""Kinds whose connections complete the handshake (so both ends have a socket)."""

MAX_POOL = 64  # pooled connections of one entry: each is a thread of the client worker

MAX_NODES = 200
MAX_PODS_PER_NODE = 250
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class PlanError(ValueError):
    """The plan cannot be run as written."""


@dataclass(frozen=True)
class PodSpec:
    namespace: str
    name: str
    node: str
    listen: tuple[int, ...]
    workload: str  # Deployment name; defaults to the pod name without a trailing "-<digits>"
    labels: tuple[tuple[str, str], ...]
    ip: str = ""  # assigned by parse_plan

    @property
    def ref(self) -> str:
        """The "namespace/name" a traffic entry uses to name this pod."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServiceSpec:
    namespace: str
    name: str
    port: int  # the Service's port (on its ClusterIP)
    target_port: int  # the backends' port
    backends: tuple[str, ...]  # "namespace/name" of the backend pods (its EndpointSlice); may be empty
    ip: str = ""  # the ClusterIP, assigned by parse_plan
    node_port: int = 0  # type NodePort (externalTrafficPolicy: Cluster) when set: every node's address

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class TrafficSpec:
    src: str  # "namespace/name" of the client pod
    dst: str  # "namespace/name" of the server pod ("" through a Service without backends)
    port: int  # the port connected to (the Service's port through a Service)
    kind: str
    count: int
    service: str = ""  # "namespace/name" of the Service connected to, if any
    node: str = ""  # through the Service's NodePort on this node's address (SNAT), instead of its ClusterIP
    rate: int = 0  # pooled: bytes each connection sends each second
    seconds: int = 0  # pooled: how long each connection stays open (one chunk per second)

    def pooled_bytes(self) -> tuple[int, int]:
        """pooled: the application bytes of the entry's connections, (client to server, back): each
        connection sends its request line, then `rate` bytes a second, and gets POOLED_ACK for each."""
        request = len(f"REQ pooled {self.rate}\n")
        return self.count * (request + self.rate * self.seconds), self.count * len(POOLED_ACK) * self.seconds


@dataclass(frozen=True)
class Plan:
    pods: tuple[PodSpec, ...]
    traffic: tuple[TrafficSpec, ...]
    services: tuple[ServiceSpec, ...] = ()

    def node_ip(self, node: str) -> str:
        """A node's own address (its InternalIP): 198.19.255.i for node i, routed only by the sim's
        kube-proxy (NodePorts)."""
        return f"198.19.255.{self.nodes.index(node) + 1}"

    def service(self, ref: str) -> ServiceSpec:
        for s in self.services:
            if s.ref == ref:
                return s
        raise KeyError(ref)

    def backend_of(self) -> list[list[str]]:
        """Per traffic entry, the backend (pod ref) of each of its connections, in the order
        kube-proxy's `numgen inc mod N` hands them out (one counter per Service, from 0, counting
        every new connection to it); [] for an entry not through a Service or with no backends."""
        counters: dict[str, int] = {}
        out: list[list[str]] = []
        for t in self.traffic:
            backends = self.service(t.service).backends if t.service else ()
            if not backends:
                out.append([])
                continue
            k = counters.get(t.service, 0)
            out.append([backends[(k + i) % len(backends)] for i in range(t.count)])
            counters[t.service] = k + t.count
        return out

    def synack_listeners(self) -> tuple[tuple[str, int], ...]:
        """(server pod, port) of every syn_flood entry: where SYN-ACK retransmits must be counted."""
        return tuple(dict.fromkeys((t.dst, t.port) for t in self.traffic if t.kind == "syn_flood"))

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names in order of first appearance (node i gets 198.18.i.0/24, 1-based)."""
        seen: dict[str, None] = {}
        for p in self.pods:
            seen.setdefault(p.node, None)
        return tuple(seen)

    def pod(self, ref: str) -> PodSpec:
        for p in self.pods:
            if p.ref == ref:
                return p
        raise KeyError(ref)

    def pods_on(self, node: str) -> tuple[PodSpec, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def expected_lifecycles(self, watched: Collection[str] | None = None) -> int:
        """Lifecycle events the agents must report for this plan: one per client socket, plus one
        per server socket of every connection that was established (refused and timed-out
        connects never create a server socket); only sockets of pods on `watched` nodes (all
        nodes with None), since only those have an agent."""
        n = 0
        for t, backends in zip(self.traffic, self.backend_of(), strict=True):
            src = self.pod(t.src).node
            n += t.count * (watched is None or src in watched)
            if t.kind not in ESTABLISHED_KINDS:
                continue
            servers = [self.pod(b).node for b in backends] if t.service else [self.pod(t.dst).node] * t.count
            n += sum(watched is None or node in watched for node in servers)
        return n


SUMMARY_COUNTERS: tuple[str, ...] = (
    "connections",
    "client_resets",
    "server_resets",
    "network_resets",
    "refused",
    "timeouts",
)


def expected_summary(plan: Plan, watched: Collection[str] | None = None) -> dict[str, dict[str, int]]:
    """What `tcpscope-tail --summary` must say of each client pod on a watched node (its counters
    summed over its rows, pod to pod and through Services alike: each connection once). A RST the
    router forged is `network_resets` when the agents of every server it may have reached watch;
    else its cause is unknown and it counts as the server reset the client saw."""
    out: dict[str, dict[str, int]] = {}
    for t, backends in zip(plan.traffic, plan.backend_of(), strict=True):
        if watched is not None and plan.pod(t.src).node not in watched:
            continue
        c = out.setdefault(t.src, dict.fromkeys(SUMMARY_COUNTERS, 0))
        servers = {plan.pod(b).node for b in backends} if t.service else {plan.pod(t.dst).node}
        if t.kind in ESTABLISHED_KINDS:
            c["connections"] += t.count
        if t.kind == "network_reset" and watched is not None and not servers <= set(watched):
            c["server_resets"] += t.count
            continue
        counter = {
            "client_reset": "client_resets",
            "server_reset": "server_resets",
            "network_reset": "network_resets",
            "refused": "refused",
            "timeout": "timeouts",
            "port_scan": "refused",
            "syn_flood": "timeouts",
        }.get(t.kind)
        if counter:
            c[counter] += t.count
    return out


def expected_backend_shares(plan: Plan) -> dict[tuple[str, str, str], int]:
    """(client pod, backend pod, Service) -> the established connections the summary must show in
    that row, through ClusterIPs (kube-proxy hands them out in turn: `Plan.backend_of`). With every
    node watched the summary holds each backend's exact share, aggregated connections included
    (the collector names the backends' Services: --resolve-backends, docs/services.md)."""
    out: dict[tuple[str, str, str], int] = {}
    for t, backends in zip(plan.traffic, plan.backend_of(), strict=True):
        if not t.service or t.node or t.kind not in ESTABLISHED_KINDS:
            continue
        for b in backends:
            key = (t.src, b, t.service)
            out[key] = out.get(key, 0) + 1
    return out


def _str(entry: Mapping[str, Any], key: str, where: str) -> str:
    v = entry.get(key)
    if not isinstance(v, str) or not v:
        raise PlanError(f"{where}: '{key}' must be a non-empty string, got {v!r}")
    return v


def _port(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
        raise PlanError(f"{where}: port must be an integer in 1..65535, got {v!r}")
    return v


def _default_workload(name: str) -> str:
    m = re.match(r"^(.*?)-\d+$", name)
    return m.group(1) if m and m.group(1) else name


def _object(raw: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    """`raw` as an object with no keys beyond `allowed`."""
    if not isinstance(raw, Mapping):
        raise PlanError(f"{where}: must be an object")
    extra = set(raw) - allowed
    if extra:
        raise PlanError(f"{where}: unknown keys {sorted(extra)}")
    return raw


def _labels(raw: Any, where: str) -> Mapping[str, str]:
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise PlanError(f"{where}: 'labels' must map strings to strings")
    return raw


def _pod_fields(raw: Any, where: str) -> tuple[str, str, str, tuple[int, ...], str, Mapping[str, str]]:
    """One entry of 'pods', validated on its own: namespace, name, node, listen, workload, labels."""
    rp = _object(raw, where, {"namespace", "name", "node", "listen", "workload", "labels"})
    ns, name, node = _str(rp, "namespace", where), _str(rp, "name", where), _str(rp, "node", where)
    for what, v in (("namespace", ns), ("name", name), ("node", node)):
        if not _DNS_LABEL.match(v):
            raise PlanError(f"{where}: {what} {v!r} is not a DNS label (lower case, digits, '-')")
    listen_raw = rp.get("listen", [])
    if not isinstance(listen_raw, list):
        raise PlanError(f"{where}: 'listen' must be a list of ports")
    listen = tuple(_port(p, where) for p in listen_raw)
    if len(set(listen)) != len(listen):
        raise PlanError(f"{where}: duplicate port in 'listen'")
    workload = rp.get("workload", _default_workload(name))
    if not isinstance(workload, str) or not _DNS_LABEL.match(workload):
        raise PlanError(f"{where}: workload {workload!r} is not a DNS label")
    return ns, name, node, listen, workload, _labels(rp.get("labels", {}), where)


class _Addresses:
    """Pod addresses by node: node n (in order of first mention) is 198.18.n.0/24, pods from .2."""

    def __init__(self) -> None:
        self.node_index: dict[str, int] = {}
        self.per_node: dict[str, int] = {}

    def next(self, node: str) -> str:
        if node not in self.node_index:
            if len(self.node_index) >= MAX_NODES:
                raise PlanError(f"at most {MAX_NODES} nodes")
            self.node_index[node] = len(self.node_index) + 1
        self.per_node[node] = self.per_node.get(node, 0) + 1
        if self.per_node[node] > MAX_PODS_PER_NODE:
            raise PlanError(f"at most {MAX_PODS_PER_NODE} pods per node ({node})")
        return f"198.18.{self.node_index[node]}.{self.per_node[node] + 1}"


def _pods(raw_pods: Any) -> list[PodSpec]:
    if not isinstance(raw_pods, list) or not raw_pods:
        raise PlanError("'pods' must be a non-empty list")
    pods: list[PodSpec] = []
    addresses = _Addresses()
    refs: set[str] = set()
    for i, rp in enumerate(raw_pods):
        where = f"pods[{i}]"
        ns, name, node, listen, workload, labels_raw = _pod_fields(rp, where)
        ref = f"{ns}/{name}"
        if ref in refs:
            raise PlanError(f"{where}: pod {ref} is declared twice")
        refs.add(ref)
        ip = addresses.next(node)
        labels = tuple(sorted({"app": workload, **dict(labels_raw)}.items()))
        pods.append(PodSpec(ns, name, node, listen, workload, labels, ip))
    return pods


def _int_in(rt: Mapping[str, Any], key: str, default: int, low: int, high: int, where: str) -> int:
    v = rt.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise PlanError(f"{where}: {key} must be an integer in {low}..{high}, got {v!r}")
    return v


def _pool(rt: Mapping[str, Any], kind: str, count: int, where: str) -> tuple[int, int]:
    """(rate, seconds) of a pooled entry; other kinds have neither."""
    if kind != "pooled":
        extra = sorted({"rate", "seconds"} & set(rt))
        if extra:
            raise PlanError(f"{where}: {', '.join(extra)} only for kind 'pooled'")
        return 0, 0
    if count > MAX_POOL:
        raise PlanError(f"{where}: a pool has at most {MAX_POOL} connections, got {count}")
    return _int_in(rt, "rate", 1000, 1, 10_000_000, where), _int_in(rt, "seconds", 10, 1, 3600, where)


def _count(rt: Mapping[str, Any], where: str) -> int:
    count = rt.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
        raise PlanError(f"{where}: count must be an integer in 1..100000, got {count!r}")
    return count


def _services(raw: Any, by_ref: Mapping[str, PodSpec]) -> list[ServiceSpec]:
    if not isinstance(raw, list):
        raise PlanError("'services' must be a list")
    out: list[ServiceSpec] = []
    for i, rs in enumerate(raw):
        where = f"services[{i}]"
        o = _object(rs, where, {"namespace", "name", "port", "targetPort", "backends", "nodePort"})
        ns, name = _str(o, "namespace", where), _str(o, "name", where)
        for what, v in (("namespace", ns), ("name", name)):
            if not _DNS_LABEL.match(v):
                raise PlanError(f"{where}: {what} {v!r} is not a DNS label (lower case, digits, '-')")
        port = _port(o.get("port"), where)
        target = _port(o.get("targetPort", port), where)
        backends = o.get("backends", [])
        if not isinstance(backends, list) or not all(isinstance(b, str) for b in backends):
            raise PlanError(f"{where}: 'backends' must be a list of 'namespace/name'")
        for b in backends:
            if b not in by_ref:
                raise PlanError(f"{where}: no pod {b!r} (write 'namespace/name')")
        if len(set(backends)) != len(backends):
            raise PlanError(f"{where}: a backend is listed twice")
        if any(s.ref == f"{ns}/{name}" for s in out):
            raise PlanError(f"{where}: service {ns}/{name} is declared twice")
        if len(out) >= 250:
            raise PlanError("at most 250 services")
        node_port = _port(o["nodePort"], where) if "nodePort" in o else 0
        if node_port and not 30000 <= node_port <= 32767:
            raise PlanError(f"{where}: nodePort must be in 30000..32767 (Kubernetes' default range)")
        ip = f"198.19.1.{len(out) + 1}"
        out.append(ServiceSpec(ns, name, port, target, tuple(backends), ip, node_port))
    return out


def _service_entry(
    rt: Mapping[str, Any], where: str, svc: ServiceSpec, by_ref: Mapping[str, PodSpec], nodes: Collection[str] = ()
) -> TrafficSpec:
    """A traffic entry to a Service's ClusterIP: every backend must listen on the target port,
    except for 'refused' (no backends: kube-proxy rejects; or none listening: a backend refuses)."""
    src = _str(rt, "from", where)
    if src not in by_ref:
        raise PlanError(f"{where}: no pod {src!r} (write 'namespace/name')")
    if src in svc.backends:
        raise PlanError(f"{where}: a backend of {svc.ref} cannot be its client in the simulator")
    node = rt.get("node", "")
    if node and node not in nodes:
        raise PlanError(f"{where}: no node {node!r}")
    if node and not svc.node_port:
        raise PlanError(f"{where}: {svc.ref} has no nodePort")
    served = svc.node_port if node else svc.port
    port = _port(rt.get("port", served), where)
    if port != served:
        raise PlanError(f"{where}: {svc.ref} serves port {served}{' on nodes' if node else ''}, not {port}")
    kind = rt.get("kind", "ok")
    if kind not in KINDS:
        raise PlanError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind in ("syn_flood", "port_scan"):
        raise PlanError(f"{where}: {kind!r} targets a pod ('to'), not a Service")
    listening = [svc.target_port in by_ref[b].listen for b in svc.backends]
    if kind == "refused" and any(listening):
        raise PlanError(f"{where}: 'refused' needs a Service without backends or whose backends do not listen")
    if kind != "refused" and (not listening or not all(listening)):
        raise PlanError(f"{where}: every backend of {svc.ref} must listen on {svc.target_port} for {kind!r}")
    dst = svc.backends[0] if svc.backends else ""
    count = _count(rt, where)
    rate, seconds = _pool(rt, kind, count, where)
    return TrafficSpec(src, dst, port, kind, count, svc.ref, node, rate, seconds)


def _traffic_entry(
    raw: Any, where: str, by_ref: Mapping[str, PodSpec], services: Mapping[str, ServiceSpec] | None = None
) -> TrafficSpec:
    rt = _object(raw, where, {"from", "to", "service", "node", "port", "kind", "count", "rate", "seconds"})
    if "node" in rt and "service" not in rt:
        raise PlanError(f"{where}: 'node' (a NodePort) needs 'service'")
    if "service" in rt:
        if "to" in rt:
            raise PlanError(f"{where}: give 'to' (a pod) or 'service', not both")
        ref = _str(rt, "service", where)
        if ref not in (services or {}):
            raise PlanError(f"{where}: no service {ref!r} in 'services'")
        nodes = {p.node for p in by_ref.values()}
        return _service_entry(rt, where, (services or {})[ref], by_ref, nodes)
    src, dst = _str(rt, "from", where), _str(rt, "to", where)
    for v in (src, dst):
        if v not in by_ref:
            raise PlanError(f"{where}: no pod {v!r} (write 'namespace/name')")
    if src == dst:
        raise PlanError(f"{where}: a pod cannot connect to itself in the simulator")
    port = _port(rt.get("port"), where)
    kind = rt.get("kind", "ok")
    if kind not in KINDS:
        raise PlanError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    count = _count(rt, where)
    listening = port in by_ref[dst].listen
    if kind == "port_scan":
        if port + count - 1 > 65535:
            raise PlanError(f"{where}: 'port_scan' of {count} ports from {port} runs past 65535")
        taken = sorted(p for p in by_ref[dst].listen if port <= p < port + count)
        if taken:
            raise PlanError(f"{where}: 'port_scan' needs ports {dst} does not listen on ({taken} are in the range)")
    elif kind == "refused" and listening:
        raise PlanError(f"{where}: 'refused' needs a port {dst} does not listen on ({port} is)")
    elif kind != "refused" and not listening:
        raise PlanError(f"{where}: {dst} does not listen on {port} (add it to 'listen')")
    rate, seconds = _pool(rt, kind, count, where)
    return TrafficSpec(src, dst, port, kind, count, rate=rate, seconds=seconds)


def parse_plan(doc: Mapping[str, Any]) -> Plan:
    """Validate a decoded plan document and assign pod addresses."""
    if not isinstance(doc, Mapping):
        raise PlanError("a plan is a JSON object with 'pods' and 'traffic'")
    unknown = set(doc) - {"pods", "traffic", "services"}
    if unknown:
        raise PlanError(f"unknown top-level keys {sorted(unknown)}")
    pods = _pods(doc.get("pods"))
    raw_traffic = doc.get("traffic", [])
    if not isinstance(raw_traffic, list):
        raise PlanError("'traffic' must be a list")
    by_ref = {p.ref: p for p in pods}
    services = {s.ref: s for s in _services(doc.get("services", []), by_ref)}
    traffic = [_traffic_entry(rt, f"traffic[{i}]", by_ref, services) for i, rt in enumerate(raw_traffic)]
    return Plan(tuple(pods), tuple(traffic), tuple(services.values()))


def load_plan(path: str) -> Plan:
    """Read and validate a plan file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise PlanError(f"{path}: not JSON: {e}") from e
    return parse_plan(doc)


def builtin_plan() -> Plan:
    """The demo cluster: three nodes, eight pods, services that talk across nodes, pod to pod and
    through two Services (kube-proxy's NAT: one with a backend on each of two nodes, one without
    endpoints).

    Its traffic list describes one round of the built-in mix; the driver repeats it forever (or for
    --duration) and adds the kinds a plan cannot express exactly: data retransmits from random drops
    and a server that stops accepting.
    """
    pods: list[dict[str, Any]] = [
        {"namespace": "shop", "name": "frontend-1", "node": "node-1", "listen": [8080]},
        {"namespace": "shop", "name": "frontend-2", "node": "node-2", "listen": [8080]},
        {"namespace": "shop", "name": "cart-1", "node": "node-2", "listen": [7070]},
        {"namespace": "shop", "name": "checkout-1", "node": "node-3", "listen": [5050]},
        {"namespace": "payments", "name": "gateway-1", "node": "node-3", "listen": [9443]},
        {"namespace": "data", "name": "redis-1", "node": "node-1", "listen": [6379]},
        {"namespace": "batch", "name": "reports-1", "node": "node-2", "listen": [9100]},
        {"namespace": "shop", "name": "cart-2", "node": "node-3", "listen": [7070]},
    ]
    # through kube-proxy's NAT: a Service with a backend on each of two nodes, one with no endpoints
    services: list[dict[str, Any]] = [
        {
            "namespace": "shop",
            "name": "cart",
            "port": 80,
            "targetPort": 7070,
            "backends": ["shop/cart-1", "shop/cart-2"],
        },
        {"namespace": "payments", "name": "ledger", "port": 443, "targetPort": 8443, "backends": []},
    ]
    traffic: list[dict[str, Any]] = [
        {"from": "shop/frontend-1", "to": "shop/cart-1", "port": 7070, "kind": "ok", "count": 5},
        {"from": "shop/frontend-2", "to": "shop/cart-1", "port": 7070, "kind": "ok", "count": 5},
        {"from": "shop/cart-1", "to": "data/redis-1", "port": 6379, "kind": "ok", "count": 8},
        {"from": "shop/frontend-1", "to": "shop/checkout-1", "port": 5050, "kind": "ok", "count": 2},
        {"from": "shop/checkout-1", "to": "payments/gateway-1", "port": 9443, "kind": "server_reset", "count": 1},
        {"from": "shop/checkout-1", "to": "payments/gateway-1", "port": 9443, "kind": "ok", "count": 2},
        {"from": "shop/frontend-2", "to": "shop/checkout-1", "port": 5051, "kind": "refused", "count": 1},
        {"from": "batch/reports-1", "to": "data/redis-1", "port": 6379, "kind": "client_reset", "count": 1},
        {"from": "batch/reports-1", "to": "shop/checkout-1", "port": 5050, "kind": "timeout", "count": 1},
        {"from": "shop/frontend-1", "to": "shop/cart-1", "port": 7070, "kind": "network_reset", "count": 1},
        {"from": "shop/frontend-1", "service": "shop/cart", "kind": "ok", "count": 4},
        {"from": "shop/frontend-2", "service": "shop/cart", "kind": "client_reset", "count": 1},
        {"from": "shop/frontend-2", "service": "shop/cart", "kind": "server_reset", "count": 1},
        {"from": "shop/frontend-1", "service": "shop/cart", "kind": "network_reset", "count": 2},
        {"from": "shop/checkout-1", "service": "payments/ledger", "kind": "refused", "count": 1},
    ]
    return parse_plan({"pods": pods, "services": services, "traffic": traffic})


def plan_to_doc(plan: Plan) -> dict[str, Any]:
    """The JSON document of a plan (addresses are derived, so they are not part of it)."""
    pods: Sequence[dict[str, Any]] = [
        {
            "namespace": p.namespace,
            "name": p.name,
            "node": p.node,
            "listen": list(p.listen),
            "workload": p.workload,
            "labels": dict(p.labels),
        }
        for p in plan.pods
    ]
    traffic = [
        (
            {"from": t.src, "service": t.service, "port": t.port, "kind": t.kind, "count": t.count}
            | ({"node": t.node} if t.node else {})
            if t.service
            else {"from": t.src, "to": t.dst, "port": t.port, "kind": t.kind, "count": t.count}
        )
        | ({"rate": t.rate, "seconds": t.seconds} if t.kind == "pooled" else {})
        for t in plan.traffic
    ]
    services = [
        {
            "namespace": s.namespace,
            "name": s.name,
            "port": s.port,
            "targetPort": s.target_port,
            "backends": list(s.backends),
        }
        | ({"nodePort": s.node_port} if s.node_port else {})
        for s in plan.services
    ]
    return {"pods": list(pods), "traffic": traffic, **({"services": services} if services else {})}
