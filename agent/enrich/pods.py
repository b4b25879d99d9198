"""Pod metadata cache: this node's pods by container id and pod uid, with recently deleted pods.

`PodIndex` is the sink of a node-scoped pod `Reflector` (`spec.nodeName=<node>`). It keeps only
what enrichment needs (`PodInfo`), covers regular, init and ephemeral containers, and moves
deleted pods (a DELETED event, or absent from a relist) into an LRU with a TTL so events that
arrive after the pod is gone still resolve. Thread-safe: the reflector writes from its thread,
the enricher reads from the pipeline's.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

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


class PodIndex:
    """Pods by uid and container id; deleted pods stay `ttl` seconds (at most `max_deleted`)."""

    def __init__(
        self,
        label_allowlist: Iterable[str] = (),
        *,
        ttl: float = 120.0,
        max_deleted: int = 4096,
        max_pods: int = 16384,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label_allowlist = tuple(label_allowlist)
        self.ttl = ttl
        self.max_deleted = max_deleted
        self.max_pods = max_pods
        self._clock = clock
        self._lock = threading.Lock()
        self._pods: dict[str, PodInfo] = {}
        self._by_cid: dict[str, str] = {}  # container id -> uid (live and deleted pods)
        self._deleted: OrderedDict[str, tuple[PodInfo, float]] = OrderedDict()
        self.version = 0  # bumped on every change, so waiters know when a retry can help
        self.counters: dict[str, int] = {"pods.deleted_evicted": 0, "pods.over_capacity": 0}

    # --- sink side (reflector thread) ---------------------------------------------------------
    def replace(self, items: list[JsonObj]) -> None:
        infos = [pod_info(o, self.label_allowlist) for o in items]
        with self._lock:
            now = self._clock()
            fresh = {p.uid for p in infos}
            for uid in [u for u in self._pods if u not in fresh]:
                self._mark_deleted(uid, now)
            for p in infos:
                self._put(p)
            self.version += 1

    def apply(self, event_type: str, obj: JsonObj) -> None:
        p = pod_info(obj, self.label_allowlist)
        with self._lock:
            if event_type == "DELETED":
                self._put(p)
                self._mark_deleted(p.uid, self._clock())
            else:
                self._put(p)
            self.version += 1

    def _put(self, p: PodInfo) -> None:
        old = self._pods.get(p.uid)
        if old is None and len(self._pods) >= self.max_pods:
            self.counters["pods.over_capacity"] += 1
            return
        self._deleted.pop(p.uid, None)
        if old is not None:
            for cid in old.containers:
                if cid not in p.containers and self._by_cid.get(cid) == p.uid:
                    del self._by_cid[cid]
            # keep ids the old status knew (a restarted container's sockets may linger)
            merged = {**old.containers, **p.containers}
            p = replace(p, containers=merged)
        self._pods[p.uid] = p
        for cid in p.containers:
            self._by_cid[cid] = p.uid

    def _mark_deleted(self, uid: str, now: float) -> None:
        p = self._pods.pop(uid, None)
        if p is None:
            return
        self._deleted[uid] = (p, now)
        self._deleted.move_to_end(uid)
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._deleted:
            uid, (p, t) = next(iter(self._deleted.items()))
            if len(self._deleted) > self.max_deleted or now - t > self.ttl:
                self._deleted.popitem(last=False)
                self.counters["pods.deleted_evicted"] += 1
                for cid in p.containers:
                    if self._by_cid.get(cid) == uid:
                        del self._by_cid[cid]
            else:
                break

    # --- lookup side (pipeline thread) ------------------------------------------------------
    def _get(self, uid: str) -> PodInfo | None:
        p = self._pods.get(uid)
        if p is not None:
            return p
        d = self._deleted.get(uid)
        return d[0] if d else None

    def by_container(self, container_id: str) -> tuple[PodInfo, str] | None:
        with self._lock:
            self._expire(self._clock())
            uid = self._by_cid.get(container_id)
            p = self._get(uid) if uid else None
            return (p, p.containers.get(container_id, "")) if p else None

    def by_uid(self, uid: str) -> PodInfo | None:
        with self._lock:
            self._expire(self._clock())
            return self._get(uid)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                **self.counters,
                "pods.cached": len(self._pods),
                "pods.deleted_cached": len(self._deleted),
                "pods.containers_indexed": len(self._by_cid),
            }
