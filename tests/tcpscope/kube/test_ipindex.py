"""IP -> owner by time: reuse, services, nodes, relists, address normalisation."""

from __future__ import annotations

from tcpscope.kube.ipindex import IpIndex, IpOwner, NodeIpSink, PodIpSink, ServiceIpSink, normalize_ip
from tcpscope.v1.events_pb2 import NODE, POD, SERVICE
from tcpscope_sim.fakeapi import make_node, make_pod, make_service


def test_recycled_ip_resolves_by_event_time() -> None:
    t = [1000.0]
    idx = IpIndex(ttl=60, early_grace=5, wall=lambda: t[0])
    a, b = IpOwner(POD, "shop", "a"), IpOwner(POD, "shop", "b")
    idx.set("pod/a", ["198.18.0.5"], a, start=900.0)
    t[0] = 1010.0
    idx.remove("pod/a")  # a held it [900, 1010)
    t[0] = 1012.0
    idx.set("pod/b", ["198.18.0.5"], b)  # b holds it from 1012
    assert idx.resolve("198.18.0.5", 950.0) == a
    assert idx.resolve("198.18.0.5", 1009.0) == a
    # in the gap between the observed removal and the observed new owner, the new owner wins: watch
    # latency makes both observations late, so at 1011 a was surely gone and b possibly there
    assert idx.resolve("198.18.0.5", 1011.0) == b
    assert idx.resolve("198.18.0.5", 1013.0) == b
    assert idx.resolve("198.18.0.5", 800.0) is None  # before anyone held it (beyond the grace)
    assert idx.resolve("198.18.0.6", 1013.0) is None
    assert idx.stats()["ipindex.reused_ips"] == 1


def test_new_owner_closes_an_unseen_removal() -> None:
    t = [100.0]
    idx = IpIndex(wall=lambda: t[0])
    a, b = IpOwner(POD, "x", "a"), IpOwner(POD, "x", "b")
    idx.set("pod/a", ["198.18.0.7"], a, start=50.0)
    t[0] = 200.0
    idx.set("pod/b", ["198.18.0.7"], b)  # a's DELETED was missed (e.g. across a relist)
    assert idx.resolve("198.18.0.7", 150.0) == a
    assert idx.resolve("198.18.0.7", 201.0) == b


def test_sinks_map_pods_services_nodes() -> None:
    idx = IpIndex()
    pods = PodIpSink(idx, ["app"])
    pods.replace(
        [
            make_pod(
                "web-1",
                "shop",
                "node-1",
                ips=["198.18.1.2", "2001:db8::2"],
                labels={"app": "web", "x": "y"},
                owner=("StatefulSet", "web"),
            ),
            make_pod("hostnet", "kube-system", "node-1", ips=["198.18.100.1"], host_network=True),
        ]
    )
    ServiceIpSink(idx).replace(
        [make_service("web", "shop", ["198.19.0.10"]), make_service("headless", "shop", ["None"])]
    )
    NodeIpSink(idx).replace([make_node("node-1", ["198.18.100.1"], ["203.0.113.9"])])
    p = idx.resolve("198.18.1.2")
    assert p is not None and (p.kind, p.namespace, p.name, p.node) == (POD, "shop", "web-1", "node-1")
    assert p.labels == (("app", "web"),) and (p.workload_kind, p.workload_name) == ("StatefulSet", "web")
    v6 = idx.resolve("2001:0db8:0000::2")
    assert v6 is not None and v6.name == "web-1"
    s = idx.resolve("198.19.0.10")
    assert s is not None and (s.kind, s.namespace, s.name) == (SERVICE, "shop", "web")
    n = idx.resolve("198.18.100.1")  # the host-network pod's IP is the node's
    assert n is not None and (n.kind, n.name) == (NODE, "node-1")
    assert idx.resolve("::ffff:203.0.113.9") == n
    # a relist without the pod removes it (it then resolves only for earlier times)
    pods.replace([])
    assert idx.resolve("198.18.1.2", when=10**10) is None


def test_normalize_ip() -> None:
    assert normalize_ip("::ffff:198.18.0.1") == "198.18.0.1"
    assert normalize_ip("2001:DB8::1") == "2001:db8::1"
    assert normalize_ip("not-an-ip") == "not-an-ip"
