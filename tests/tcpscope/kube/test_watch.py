"""The list+watch reflector against the API stand-in: a node-scoped watch, resuming after a restart,
relisting on 410, retrying while the server is down. The sink is the agent's node pod index, the way
the agent runs it (its deleted-pod LRU shows what a relist removed)."""

from __future__ import annotations

from agent.enrich.pods import PodIndex
from tcpscope.kube.watch import ClientKubeApi, Reflector
from tcpscope_sim.fakeapi import FakeApiServer, make_pod
from tests.support.streaming import wait_until


def test_reflector_lists_watches_only_this_node(fakeapi: FakeApiServer, kube_api: ClientKubeApi) -> None:
    fakeapi.add(make_pod("mine", node="node-1", containers={"app": "1" * 64}))
    fakeapi.add(make_pod("other", node="node-2", containers={"app": "2" * 64}))
    idx = PodIndex()
    r = Reflector(kube_api, "pods", idx, field_selector="spec.nodeName=node-1").start()
    try:
        assert r.synced.wait(5)
        assert idx.by_container("1" * 64) is not None and idx.by_container("2" * 64) is None
        late = fakeapi.add(make_pod("late", node="node-1", containers={"app": "3" * 64}))
        wait_until(lambda: idx.by_container("3" * 64) is not None)
        fakeapi.delete("pods", "late")
        wait_until(lambda: idx.stats()["pods.deleted_cached"] == 1)
        assert idx.by_uid(late["metadata"]["uid"]) is not None  # still resolvable after deletion
        wait_until(lambda: r.counters["bookmarks"] >= 1)
        assert r.counters["lists"] == 1 and r.counters["api_errors"] == 0
    finally:
        r.close()


def test_reflector_resumes_after_restart_and_relists_on_410(fakeapi: FakeApiServer, kube_api: ClientKubeApi) -> None:
    fakeapi.add(make_pod("a", containers={"app": "a" * 64}))
    idx = PodIndex()
    r = Reflector(kube_api, "pods", idx, field_selector="spec.nodeName=node-1", backoff_initial=0.05).start()
    try:
        assert r.synced.wait(5)
        # plain restart: history kept, the watch resumes from its resourceVersion without a relist
        fakeapi.restart()
        fakeapi.add(make_pod("b", containers={"app": "b" * 64}))
        wait_until(lambda: idx.by_container("b" * 64) is not None)
        assert r.counters["lists"] == 1 and r.counters["gone"] == 0
        # restart with compacted history while a pod is deleted meanwhile: 410 -> relist
        fakeapi.stop()
        fakeapi.delete("pods", "a")
        fakeapi.store.compact()  # the deletion is now older than anything the server can replay
        fakeapi.start()
        wait_until(lambda: r.counters["relists"] == 1)
        assert r.counters["gone"] == 1
        wait_until(lambda: idx.stats()["pods.cached"] == 1)  # 'a' left the live set at the relist
        assert idx.by_container("a" * 64) is not None  # ...and stays resolvable from the LRU
    finally:
        r.close()


def test_reflector_keeps_retrying_when_the_server_is_down_from_the_start(
    fakeapi: FakeApiServer, kube_api: ClientKubeApi
) -> None:
    fakeapi.stop()
    idx = PodIndex()
    r = Reflector(kube_api, "pods", idx, backoff_initial=0.05, backoff_max=0.2).start()
    try:
        wait_until(lambda: r.counters["api_errors"] >= 3)
        assert not r.synced.is_set()
        fakeapi.add(make_pod("a", containers={"app": "a" * 64}))
        fakeapi.start()
        assert r.synced.wait(5)
        assert idx.by_container("a" * 64) is not None
    finally:
        r.close()
