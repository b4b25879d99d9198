"""The simulator's traffic plan: which pods run on which nodes, and which connections they make.

A plan is JSON (see docs/sim.md)::

    {"pods": [{"namespace": "shop", "name": "web-1", "node": "node-1", "listen": [8080]}, ...],
     "traffic": [{"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "ok", "count": 20}]}

Parsing is pure and strict: every error names the offending entry, so a typo in a plan fails
before any namespace or cgroup is created. Addresses are assigned here, deterministically:
node i (1-based, in order of first appearance) holds 198.18.i.0/24 and its pods get .2, .3, ...
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KINDS: tuple[str, ...] = (
    "ok",
    "refused",
    "client_reset",
    "server_reset",
    "timeout",
    "network_reset",
    "syn_flood",
    "port_scan",
)
"""Traffic kinds a plan may ask for (the built-in mix adds retransmits and a stalled server).
syn_flood: `count` half-open connects to a listening port whose SYN-ACKs the router drops; port_scan:
one connect to each of `count` ports from `port` up, none of them listened on (docs/sim.md)."""

ESTABLISHED_KINDS = frozenset({"ok", "client_reset", "server_reset", "network_reset"})
"""Kinds whose connections complete the handshake (so both ends have a socket)."""

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
class TrafficSpec:
    src: str  # "namespace/name" of the client pod
    dst: str  # "namespace/name" of the server pod
    port: int
    kind: str
    count: int


@dataclass(frozen=True)
class Plan:
    pods: tuple[PodSpec, ...]
    traffic: tuple[TrafficSpec, ...]

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
        for t in self.traffic:
            src, dst = self.pod(t.src).node, self.pod(t.dst).node
            n += t.count * (watched is None or src in watched)
            n += t.count * (t.kind in ESTABLISHED_KINDS and (watched is None or dst in watched))
        return n


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


def _traffic_entry(raw: Any, where: str, by_ref: Mapping[str, PodSpec]) -> TrafficSpec:
    rt = _object(raw, where, {"from", "to", "port", "kind", "count"})
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
    count = rt.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
        raise PlanError(f"{where}: count must be an integer in 1..100000, got {count!r}")
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
    return TrafficSpec(src, dst, port, kind, count)


def parse_plan(doc: Mapping[str, Any]) -> Plan:
    """Validate a decoded plan document and assign pod addresses."""
    if not isinstance(doc, Mapping):
        raise PlanError("a plan is a JSON object with 'pods' and 'traffic'")
    unknown = set(doc) - {"pods", "traffic"}
    if unknown:
        raise PlanError(f"unknown top-level keys {sorted(unknown)}")
    pods = _pods(doc.get("pods"))
    raw_traffic = doc.get("traffic", [])
    if not isinstance(raw_traffic, list):
        raise PlanError("'traffic' must be a list")
    by_ref = {p.ref: p for p in pods}
    traffic = [_traffic_entry(rt, f"traffic[{i}]", by_ref) for i, rt in enumerate(raw_traffic)]
    return Plan(tuple(pods), tuple(traffic))


def load_plan(path: str) -> Plan:
    """Read and validate a plan file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise PlanError(f"{path}: not JSON: {e}") from e
    return parse_plan(doc)


def builtin_plan() -> Plan:
    """The demo cluster: three nodes, seven pods, services that talk across nodes.

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
    ]
    return parse_plan({"pods": pods, "traffic": traffic})


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
    traffic = [{"from": t.src, "to": t.dst, "port": t.port, "kind": t.kind, "count": t.count} for t in plan.traffic]
    return {"pods": list(pods), "traffic": traffic}
