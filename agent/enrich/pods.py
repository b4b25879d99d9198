"""Pod metadata cache: this node's pods by container id and pod uid, with recently deleted pods.

`PodIndex` is the sink of a node-scoped pod `Reflector` (`spec.nodeName=<node>`; tcpscope.kube).
It keeps only what enrichment needs (`PodInfo`), covers regular, init and ephemeral containers, and
moves deleted pods (a DELETED event, or absent from a relist) into an LRU with a TTL so events that
arrive after the pod is gone still resolve. Thread-safe: the reflector writes from its thread,
the enricher reads from the pipeline's.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import replace

from tcpscope.kube.pods import JsonObj, PodInfo, pod_info


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
