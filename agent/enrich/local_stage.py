"""The local-end enricher: socket cgroup id -> cgroup path -> container -> pod.

Events from a cgroup that looks like a pod's but whose pod the cache does not know yet (the
container started a moment ago and its status has not reached us) are held up to
`pending_max_wait` seconds and retried whenever the pod cache changes; then they go on without pod
fields (counted). The holding buffer is bounded: when full, the oldest held event goes on
unresolved (counted). A container that timed out once is not held again for `negative_ttl`
seconds, so a pod the API never reports costs one wait, not one per event. Nothing is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.enrich.cgroups import CgroupIdentity, parse_cgroup_path
from tcpscope.kube.pods import PodInfo, fill_endpoint
from tcpscope.v1.events_pb2 import HOST, POD, TcpEvent


class CgroupLookup(Protocol):
    def lookup(self, cgroup_id: int) -> str | None: ...

    def stats(self) -> dict[str, int]: ...


class PodLookup(Protocol):
    version: int

    def by_container(self, container_id: str) -> tuple[PodInfo, str] | None: ...

    def by_uid(self, uid: str) -> PodInfo | None: ...

    def stats(self) -> dict[str, int]: ...


@dataclass
class _Held:
    event: TcpEvent
    ident: CgroupIdentity
    deadline: float


class LocalEnricher:
    """Fills `event.local` identity and `event.process.cgroup_path` (an `agent.pipeline.Enricher`)."""

    def __init__(
        self,
        cgroups: CgroupLookup,
        pods: PodLookup | None,
        node_name: str,
        *,
        pods_synced: Callable[[], bool] = lambda: True,
        pending_max_wait: float = 2.0,
        max_pending: int = 10_000,
        negative_ttl: float = 10.0,
        extra_stats: Callable[[], dict[str, int]] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.cgroups = cgroups
        self.pods = pods
        self.node_name = node_name
        self.pods_synced = pods_synced
        self.pending_max_wait = pending_max_wait
        self.max_pending = max_pending
        self.negative_ttl = negative_ttl
        self._extra_stats = extra_stats
        self._on_close = on_close
        self._pending: deque[_Held] = deque()
        self._negative: dict[str, float] = {}  # container id or pod uid -> monotonic until
        self._seen_version = -1
        self.counters: dict[str, int] = {
            "local.events": 0,
            "local.host": 0,
            "local.pod_hits": 0,
            "local.pod_misses": 0,
            "local.no_cgroup_id": 0,
            "local.cgroup_unknown": 0,
            "local.held": 0,
            "local.released_resolved": 0,
            "local.released_unresolved": 0,
            "local.released_overflow": 0,
            "local.miss_api_unavailable": 0,
            "local.miss_no_api": 0,
        }

    # --- the Enricher protocol --------------------------------------------------------------
    def process(self, events: list[TcpEvent], now: float) -> list[TcpEvent]:
        out = self._retry(now, force=False)
        for ev in events:
            self.counters["local.events"] += 1
            held = self._enrich(ev, now)
            if held is None:
                out.append(ev)
                continue
            if len(self._pending) >= self.max_pending:
                oldest = self._pending.popleft()
                self.counters["local.released_overflow"] += 1
                self.counters["local.pod_misses"] += 1
                out.append(oldest.event)
            self.counters["local.held"] += 1
            self._pending.append(held)
        return out

    def flush(self) -> list[TcpEvent]:
        return self._retry(float("inf"), force=True)

    def losses(self) -> dict[str, int]:
        return {}  # enrichment degrades, never drops

    def stats(self) -> dict[str, int]:
        out = {**self.counters, "local.pending": len(self._pending)}
        out.update(self.cgroups.stats())
        if self.pods is not None:
            out.update(self.pods.stats())
        if self._extra_stats is not None:
            out.update(self._extra_stats())
        return out

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

    # --- internals ----------------------------------------------------------------------------
    def _lookup(self, ident: CgroupIdentity) -> tuple[PodInfo, str] | None:
        if self.pods is None:
            return None
        if ident.container_id:
            hit = self.pods.by_container(ident.container_id)
            if hit is not None:
                return hit
        p = self.pods.by_uid(ident.pod_uid)
        return (p, "") if p is not None else None

    def _enrich(self, ev: TcpEvent, now: float) -> _Held | None:
        """Enrich in place; return a _Held when the event should wait for its pod."""
        cg = ev.process.cgroup_id
        if not cg:
            self.counters["local.no_cgroup_id"] += 1
            return None
        path = self.cgroups.lookup(cg)
        if path is None:
            self.counters["local.cgroup_unknown"] += 1
            return None
        ev.process.cgroup_path = path
        ident = parse_cgroup_path(path)
        loc = ev.local
        loc.node = self.node_name
        if not ident.in_pod:
            loc.kind = HOST
            self.counters["local.host"] += 1
            return None
        loc.kind = POD
        loc.uid = ident.pod_uid
        if ident.container_id:
            loc.container_id = ident.container_id
        hit = self._lookup(ident)
        if hit is not None:
            fill_endpoint(loc, POD, *hit)
            self.counters["local.pod_hits"] += 1
            return None
        if self.pods is None:
            self.counters["local.miss_no_api"] += 1
            return None
        if not self.pods_synced():
            self.counters["local.miss_api_unavailable"] += 1
            self.counters["local.pod_misses"] += 1
            return None
        neg = ident.container_id or ident.pod_uid
        until = self._negative.get(neg)
        if until is not None and until > now:
            self.counters["local.pod_misses"] += 1
            return None
        return _Held(ev, ident, now + self.pending_max_wait)

    def _retry(self, now: float, force: bool) -> list[TcpEvent]:
        if not self._pending:
            return []
        version = self.pods.version if self.pods is not None else 0
        changed = version != self._seen_version
        if not (changed or force or self._pending[0].deadline <= now):
            return []
        self._seen_version = version
        out: list[TcpEvent] = []
        keep: deque[_Held] = deque()
        for h in self._pending:
            hit = self._lookup(h.ident) if changed or force else None
            if hit is not None:
                fill_endpoint(h.event.local, POD, *hit)
                self.counters["local.released_resolved"] += 1
                self.counters["local.pod_hits"] += 1
                out.append(h.event)
            elif h.deadline <= now or force:
                self.counters["local.released_unresolved"] += 1
                self.counters["local.pod_misses"] += 1
                self._negative[h.ident.container_id or h.ident.pod_uid] = now + self.negative_ttl
                out.append(h.event)
            else:
                keep.append(h)
        self._pending = keep
        if len(self._negative) > 4 * self.max_pending:
            self._negative = {k: v for k, v in self._negative.items() if v > now}
        return out
