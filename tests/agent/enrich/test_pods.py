"""The node pod index: pods by container id and uid, deleted pods kept for a TTL."""

from __future__ import annotations

from agent.enrich.pods import PodIndex
from tcpscope_sim.fakeapi import make_pod


def test_index_keeps_deleted_pods_for_ttl() -> None:
    t = [0.0]
    idx = PodIndex(ttl=10, clock=lambda: t[0])
    a = make_pod("a", containers={"app": "a" * 64})
    idx.replace([a])
    assert idx.by_container("a" * 64) is not None
    idx.apply("DELETED", a)
    t[0] = 9.0
    hit = idx.by_container("a" * 64)
    assert hit is not None and hit[0].name == "a" and hit[1] == "app"
    assert idx.stats()["pods.deleted_cached"] == 1
    t[0] = 10.5
    assert idx.by_container("a" * 64) is None
    assert idx.by_uid(a["metadata"]["uid"]) is None
    assert idx.stats()["pods.deleted_evicted"] == 1
    # a relist without a pod counts as its deletion too
    b = make_pod("b", containers={"app": "b" * 64})
    idx.replace([b])
    idx.replace([])
    assert idx.stats()["pods.cached"] == 0 and idx.by_uid(b["metadata"]["uid"]) is not None
