"""The results API of remote-end resolution against the API stand-in: each remote end is filled in
place and counted once by what it became, with the exact labels the agent and the collector count."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tcpscope.kube import ClientKubeApi, RemoteResolver, RemoteResult, fill_remote_end, fill_remote_ends
from tcpscope.v1.events_pb2 import ENDPOINT_KIND_UNSPECIFIED, EXTERNAL, HOST, NODE, POD, SERVICE, TcpEvent
from tcpscope_sim.fakeapi import FakeApiServer, make_node, make_pod, make_service


def _event(remote_ip: str, local: tuple[int, str] = (HOST, "node-a")) -> TcpEvent:
    """An event seen now (resolution is by event time); `local` is the local end's (kind, node)."""
    ev = TcpEvent(node="node-a")
    ev.local.ip, ev.local.port = "198.18.1.10", 8443
    ev.local.kind = local[0]  # type: ignore[assignment]
    ev.local.node = local[1]
    ev.remote.ip = remote_ip
    ev.time.FromNanoseconds(time.time_ns())
    return ev


@pytest.fixture
def resolver(fakeapi: FakeApiServer, kube_api: ClientKubeApi) -> Iterator[RemoteResolver]:
    fakeapi.add(make_node("node-a", ["198.18.0.1"], pod_cidrs=["198.18.1.0/24"]))
    fakeapi.add(make_node("node-b", ["198.18.0.2"], pod_cidrs=["198.18.2.0/24"]))
    fakeapi.add(
        make_pod("web-1", "shop", "node-b", ips=["198.18.2.10"], owner=("StatefulSet", "web"), labels={"app": "web"})
    )
    fakeapi.add(make_service("web", "shop", ["198.19.0.10"]))
    r = RemoteResolver(kube_api, ["app"], backoff_initial=0.05, backoff_max=0.2).start()
    try:
        yield r
    finally:
        r.close()


def test_a_batch_is_counted_by_result(resolver: RemoteResolver) -> None:
    assert resolver.wait_synced(10)
    batch = {
        "pod": _event("198.18.2.10"),
        "pod_again_v4_mapped": _event("::ffff:198.18.2.10"),
        "service": _event("198.19.0.10"),
        "node": _event("198.18.0.2"),
        "external": _event("203.0.113.9"),
        "external_v6": _event("2001:db8::9"),
        "pod_unknown": _event("198.18.2.99"),  # node-b's pod range, no pod known
        "loopback_host": _event("127.0.0.1"),
        "loopback_pod": _event("::1", local=(POD, "node-a")),
        "listener": _event("0.0.0.0"),
        "no_address": _event(""),
    }
    got = fill_remote_ends(batch.values(), resolver, node_name="node-a")
    assert got == Counter(
        {
            RemoteResult.POD: 2,
            RemoteResult.SERVICE: 1,
            RemoteResult.NODE: 1,
            RemoteResult.EXTERNAL: 2,
            RemoteResult.POD_UNKNOWN: 1,
            RemoteResult.LOOPBACK: 2,
            RemoteResult.NO_IP: 2,
        }
    )
    assert sum(got.values()) == len(batch)  # every remote end counted exactly once
    r = {name: (ev.remote.kind, ev.remote.namespace, ev.remote.name, ev.remote.node) for name, ev in batch.items()}
    assert r["pod"] == r["pod_again_v4_mapped"] == (POD, "shop", "web-1", "node-b")
    assert dict(batch["pod"].remote.labels) == {"app": "web"}
    assert (batch["pod"].remote.workload.kind, batch["pod"].remote.workload.name) == ("StatefulSet", "web")
    assert r["service"] == (SERVICE, "shop", "web", "")
    assert r["node"] == (NODE, "", "node-b", "node-b")
    assert r["external"] == r["external_v6"] == (EXTERNAL, "", "", "")
    assert r["pod_unknown"] == (POD, "", "", "node-b")
    assert r["loopback_host"] == (NODE, "", "node-a", "node-a")
    assert r["loopback_pod"][0] == POD
    assert r["listener"] == r["no_address"] == (ENDPOINT_KIND_UNSPECIFIED, "", "", "")


def test_the_values_are_the_labels_the_agent_and_the_collector_count() -> None:
    # tcpscope_collector_remote_ends_total{result} and the agent's remote.<result> (docs/enrichment.md)
    assert [r.value for r in RemoteResult] == [
        "pod",
        "service",
        "node",
        "external",
        "pod_unknown",
        "loopback",
        "no_ip",
        "miss_api_unavailable",
    ]


def test_before_the_watches_sync_nothing_is_called_external(fakeapi: FakeApiServer, kube_api: ClientKubeApi) -> None:
    fakeapi.stop()  # the API server is away from the start: the index never syncs
    resolver = RemoteResolver(kube_api, backoff_initial=0.05, backoff_max=0.2).start()
    try:
        assert not resolver.synced()
        batch = [_event("198.18.2.10"), _event("203.0.113.9"), _event("127.0.0.1"), _event("::")]
        got = fill_remote_ends(batch, resolver, node_name="node-a")
        assert got == Counter({RemoteResult.MISS_API_UNAVAILABLE: 2, RemoteResult.LOOPBACK: 1, RemoteResult.NO_IP: 1})
        assert [ev.remote.kind for ev in batch] == [
            ENDPOINT_KIND_UNSPECIFIED,
            ENDPOINT_KIND_UNSPECIFIED,
            NODE,
            ENDPOINT_KIND_UNSPECIFIED,
        ]
        # one event at a time, told whether the index is synced
        one = _event("203.0.113.9")
        assert fill_remote_end(one, resolver, "node-a", synced=False) is RemoteResult.MISS_API_UNAVAILABLE
        assert one.remote.kind == ENDPOINT_KIND_UNSPECIFIED
    finally:
        resolver.close()
