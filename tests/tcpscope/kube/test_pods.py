"""Pod metadata: distilling pod JSON, the node pod index, and the reflector against the stand-in."""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.enrich.pods import PodIndex
from tcpscope.kube.ipindex import IpOwner
from tcpscope.kube.pods import fill_endpoint, pod_info, workload_of
from tcpscope.kube.watch import ClientKubeApi, Reflector
from tcpscope.v1.events_pb2 import NODE, POD, SERVICE, Endpoint
from tcpscope_sim.fakeapi import FakeApiServer, make_pod


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_workload_owner_by_convention() -> None:
    rs = make_pod(
        "web-5d2a8f9c7b-x7k2p", labels={"pod-template-hash": "5d2a8f9c7b"}, owner=("ReplicaSet", "web-5d2a8f9c7b")
    )
    assert workload_of(rs) == ("Deployment", "web")
    bare_rs = make_pod("x-abc", owner=("ReplicaSet", "x"))
    assert workload_of(bare_rs) == ("ReplicaSet", "x")
    assert workload_of(make_pod("b-28391234-q", owner=("Job", "backup-28391234"))) == ("CronJob", "backup")
    assert workload_of(make_pod("m-x", owner=("Job", "migrate"))) == ("Job", "migrate")
    assert workload_of(make_pod("db-0", owner=("StatefulSet", "db"))) == ("StatefulSet", "db")
    assert workload_of(make_pod("fluent-x", owner=("DaemonSet", "fluent"))) == ("DaemonSet", "fluent")
    assert workload_of(make_pod("lonely")) == ("Pod", "lonely")
    assert workload_of(make_pod("etcd-n1", owner=("Node", "n1"))) == ("Pod", "etcd-n1")


def test_pod_info_covers_init_and_ephemeral_containers_and_filters_labels() -> None:
    obj = make_pod(
        "a",
        "shop",
        "node-1",
        ips=["198.18.0.5", "2001:db8::5"],
        containers={"app": "a" * 64, "starting": ""},
        init_containers={"init": "b" * 64},
        ephemeral_containers={"debug": "c" * 64},
        runtime="cri-o",
        labels={"app": "web", "pod-template-hash": "zz", "team": "x"},
    )
    p = pod_info(obj, ["app", "team"])
    assert p.containers == {"a" * 64: "app", "b" * 64: "init", "c" * 64: "debug"}
    assert p.labels == (("app", "web"), ("team", "x"))
    assert p.ips == ("198.18.0.5", "2001:db8::5")
    assert (p.namespace, p.name, p.node) == ("shop", "a", "node-1")
    assert p.created > 0


def test_fill_endpoint_from_a_pod_or_an_ip_owner() -> None:
    """One function fills both ends: the local end from cgroup -> pod (with its container), the
    remote end from IP -> owner; identity and labels are replaced, the rest set only when known."""
    p = pod_info(make_pod("db-0", "data", "node-2", labels={"app": "db"}, owner=("StatefulSet", "db")), ["app"])
    local = Endpoint(ip="198.18.0.5", container_id="c" * 64)
    local.labels["stale"] = "x"
    fill_endpoint(local, POD, p, "postgres")
    assert (local.kind, local.namespace, local.name, local.uid) == (POD, "data", "db-0", p.uid)
    assert (local.container, local.container_id, local.ip, local.node) == ("postgres", "c" * 64, "198.18.0.5", "node-2")
    assert dict(local.labels) == {"app": "db"}
    assert (local.workload.kind, local.workload.name) == ("StatefulSet", "db")
    by_uid = Endpoint(node="node-x")
    fill_endpoint(by_uid, POD, p)  # found by pod uid only: no container name
    assert (by_uid.container, by_uid.node) == ("", "node-2")

    remote = Endpoint(ip="198.19.0.10")
    fill_endpoint(remote, SERVICE, IpOwner(SERVICE, "shop", "web", "u-1"))
    assert (remote.kind, remote.namespace, remote.name, remote.uid, remote.node) == (SERVICE, "shop", "web", "u-1", "")
    assert not remote.HasField("workload") and not remote.labels and not remote.container
    node = Endpoint(ip="198.18.0.3")
    fill_endpoint(node, NODE, IpOwner(NODE, "", "node-3", "u-3", node="node-3"))
    assert (node.kind, node.name, node.node) == (NODE, "node-3", "node-3") and not node.HasField("workload")


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


def test_reflector_lists_watches_only_this_node(fakeapi: FakeApiServer, kube_api: ClientKubeApi) -> None:
    fakeapi.add(make_pod("mine", node="node-1", containers={"app": "1" * 64}))
    fakeapi.add(make_pod("other", node="node-2", containers={"app": "2" * 64}))
    idx = PodIndex()
    r = Reflector(kube_api, "pods", idx, field_selector="spec.nodeName=node-1").start()
    try:
        assert r.synced.wait(5)
        assert idx.by_container("1" * 64) is not None and idx.by_container("2" * 64) is None
        late = fakeapi.add(make_pod("late", node="node-1", containers={"app": "3" * 64}))
        wait_for(lambda: idx.by_container("3" * 64) is not None)
        fakeapi.delete("pods", "late")
        wait_for(lambda: idx.stats()["pods.deleted_cached"] == 1)
        assert idx.by_uid(late["metadata"]["uid"]) is not None  # still resolvable after deletion
        wait_for(lambda: r.counters["bookmarks"] >= 1)
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
        wait_for(lambda: idx.by_container("b" * 64) is not None)
        assert r.counters["lists"] == 1 and r.counters["gone"] == 0
        # restart with compacted history while a pod is deleted meanwhile: 410 -> relist
        fakeapi.stop()
        fakeapi.delete("pods", "a")
        fakeapi.store.compact()  # the deletion is now older than anything the server can replay
        fakeapi.start()
        wait_for(lambda: r.counters["relists"] == 1)
        assert r.counters["gone"] == 1
        wait_for(lambda: idx.stats()["pods.cached"] == 1)  # 'a' left the live set at the relist
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
        wait_for(lambda: r.counters["api_errors"] >= 3)
        assert not r.synced.is_set()
        fakeapi.add(make_pod("a", containers={"app": "a" * 64}))
        fakeapi.start()
        assert r.synced.wait(5)
        assert idx.by_container("a" * 64) is not None
    finally:
        r.close()
