"""Pod metadata: distilling pod JSON, and copying it onto either end of an event."""

from __future__ import annotations

from tcpscope.kube.ipindex import IpOwner
from tcpscope.kube.pods import fill_endpoint, pod_info, workload_of
from tcpscope.v1.events_pb2 import NODE, POD, SERVICE, Endpoint
from tcpscope_sim.fakeapi import make_pod


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
