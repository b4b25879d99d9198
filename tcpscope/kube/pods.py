"""Pod metadata as enrichment needs it: `PodInfo`, distilled from the Pod JSON the API server sends.

`pod_info` keeps what either end of an event needs (namespace, name, uid, node, allow-listed
labels, workload, container ids, IPs); `workload_of` names the top-level owner without extra API
calls. The agent's node pod index (agent/enrich/pods.py) and the cluster-wide IP index
(ipindex.py) both build on it. `fill_endpoint` copies such metadata onto either end of an event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from tcpscope.v1.events_pb2 import Endpoint

JsonObj = dict[str, Any]

_CRONJOB_JOB = re.compile(r"^(.+)-(\d{8,})$")  # CronJob jobs are '<cronjob>-<scheduled minute>'


@dataclass(frozen=True)
class PodInfo:
    """What an event needs to know about a pod."""

    uid: str
    namespace: str
    name: str
    node: str
    labels: tuple[tuple[str, str], ...] = ()
    workload_kind: str = ""
    workload_name: str = ""
    containers: Mapping[str, str] = field(default_factory=dict)  # container id -> container name
    ips: tuple[str, ...] = ()
    host_network: bool = False
    created: float = 0.0  # wall-clock seconds (metadata.creationTimestamp)


def strip_runtime(container_id: str) -> str:
    """'containerd://<id>' / 'cri-o://<id>' / 'docker://<id>' -> '<id>'."""
    return container_id.split("://", 1)[-1]


def parse_time(ts: str | None) -> float:
    if not ts:
        return 0.0
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def workload_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    """The pod's top-level owner: Deployment via its ReplicaSet, CronJob via its Job, else the controller.

    Without an API call per ReplicaSet/Job, the owner of the owner comes from naming conventions:
    a Deployment's ReplicaSet is '<deployment>-<pod-template-hash>' (the hash is also the pod's
    'pod-template-hash' label); a CronJob's Job is '<cronjob>-<scheduled time in minutes>'.
    A pod with no controller is its own workload ('Pod', name).
    """
    meta = obj.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    ctrl = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if not ctrl or ctrl.get("kind") == "Node":  # bare or static (mirror) pod
        return "Pod", str(meta.get("name", ""))
    kind, name = str(ctrl.get("kind", "")), str(ctrl.get("name", ""))
    if kind == "ReplicaSet":
        h = (meta.get("labels") or {}).get("pod-template-hash", "")
        if h and name.endswith("-" + h):
            return "Deployment", name[: -len(h) - 1]
    elif kind == "Job":
        m = _CRONJOB_JOB.match(name)
        if m:
            return "CronJob", m.group(1)
    return kind, name


def pod_info(obj: Mapping[str, Any], label_allowlist: Iterable[str] = ()) -> PodInfo:
    """Distil a Pod JSON object (as the API server sends it) into a PodInfo."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    labels = meta.get("labels") or {}
    allow = set(label_allowlist)
    containers: dict[str, str] = {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            cid = strip_runtime(cs.get("containerID") or "")
            if cid:
                containers[cid] = str(cs.get("name", ""))
            # a restarted container's previous instance may still have sockets draining
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("containerID")
            if last:
                containers.setdefault(strip_runtime(last), str(cs.get("name", "")))
    ips = tuple(str(p["ip"]) for p in status.get("podIPs") or [] if p.get("ip"))
    if not ips and status.get("podIP"):
        ips = (str(status["podIP"]),)
    wk, wn = workload_of(obj)
    return PodInfo(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        node=str(spec.get("nodeName", "")),
        labels=tuple(sorted((k, str(v)) for k, v in labels.items() if k in allow)),
        workload_kind=wk,
        workload_name=wn,
        containers=containers,
        ips=ips,
        host_network=bool(spec.get("hostNetwork")),
        created=parse_time(meta.get("creationTimestamp")),
    )


class EndpointOwner(Protocol):
    """Who an end is, as far as an Endpoint shows it: a `PodInfo`, or an `IpOwner` (pod, service, node)."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def uid(self) -> str: ...

    @property
    def labels(self) -> tuple[tuple[str, str], ...]: ...

    @property
    def workload_kind(self) -> str: ...

    @property
    def workload_name(self) -> str: ...

    @property
    def node(self) -> str: ...


def fill_endpoint(ep: Endpoint, kind: int, owner: EndpointOwner, container: str = "") -> None:
    """Copy an owner's fields onto an end: the local end from cgroup -> pod, the remote end from
    IP -> owner. Identity and labels are replaced; workload, node and container only when known
    (a pod always has a workload, `workload_of`; a service or node has none)."""
    ep.kind = kind  # type: ignore[assignment]  # an EndpointKind value (IpOwner.kind is a plain int)
    ep.namespace = owner.namespace
    ep.name = owner.name
    ep.uid = owner.uid
    ep.labels.clear()
    ep.labels.update(dict(owner.labels))
    if container:
        ep.container = container
    if owner.workload_kind:
        ep.workload.kind = owner.workload_kind
        ep.workload.name = owner.workload_name
    if owner.node:
        ep.node = owner.node
