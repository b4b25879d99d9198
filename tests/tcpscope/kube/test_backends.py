"""Which Service ports a server's address and port is an endpoint of: the index by time, its two
sinks fed with Services and EndpointSlices as the API serves them, and the resolver against the API
stand-in (list, then watch: a backend added, one removed) filling server events' local ends."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tcpscope.kube import ClientKubeApi
from tcpscope.kube.backends import (
    BackendIndex,
    BackendResolver,
    BackendResult,
    EndpointSliceSink,
    ServicePortRef,
    ServicePortSink,
    fill_backend_end,
    fill_backend_ends,
    service_ports,
    slice_entries,
)
from tcpscope.v1.events_pb2 import ACTIVE, PASSIVE, TcpEvent
from tcpscope_sim.fakeapi import FakeApiServer, make_endpoint_slice, make_service_ports


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _server(kind: str, ip: str, port: int, role: int = PASSIVE, at: float | None = None) -> TcpEvent:
    ev = TcpEvent(node="node-2")
    ev.local.ip, ev.local.port = ip, port
    ev.remote.ip = "198.18.1.2"
    if kind == "flow":
        ev.flow.role = role  # type: ignore[assignment]
        ev.flow.connections = 3
    else:
        ev.lifecycle.role = role  # type: ignore[assignment]
    ev.time.FromNanoseconds(int((time.time() if at is None else at) * 1e9))
    return ev


API = make_service_ports("api", "shop", "198.19.1.1", [("http", 80, 9000), ("admin", 8080, 9001)])
API_SLICE = make_endpoint_slice(
    "api",
    "shop",
    [("198.18.2.2", "node-2", "api-1"), ("198.18.3.2", "node-3", "api-2")],
    [("http", 9000), ("admin", 9001)],
)


def test_a_slice_names_its_service_and_every_target_port_of_every_address() -> None:
    assert service_ports(API) == ("shop", "api", {"http": 80, "admin": 8080})
    key, entries = slice_entries(API_SLICE)
    assert key == f"shop/{API_SLICE['metadata']['name']}"
    assert sorted(entries) == [
        ("198.18.2.2", 9000, "shop", "api", "http"),
        ("198.18.2.2", 9001, "shop", "api", "admin"),
        ("198.18.3.2", 9000, "shop", "api", "http"),
        ("198.18.3.2", 9001, "shop", "api", "admin"),
    ]
    # a slice of no Service, and an FQDN slice, list nothing
    orphan: dict[str, Any] = {**API_SLICE, "metadata": {**API_SLICE["metadata"], "labels": {}}}
    assert slice_entries(orphan)[1] == []
    assert slice_entries({**API_SLICE, "addressType": "FQDN"})[1] == []


def test_the_index_names_the_service_port_by_time_with_a_grace_after_removal() -> None:
    clock = Clock()
    index = BackendIndex(ttl=60, early_grace=5, wall=clock)
    ServicePortSink(index).replace([API])
    sinks = EndpointSliceSink(index)
    sinks.replace([API_SLICE])  # the first list: listed since ever
    http, admin = ServicePortRef("shop", "api", 80), ServicePortRef("shop", "api", 8080)
    assert index.services_of("198.18.2.2", 9000, when=1.0) == [http]
    assert index.services_of("::ffff:198.18.3.2", 9001) == [admin]  # v4-mapped, as events may carry it
    assert index.services_of("198.18.2.2", 8080) == []  # the Service port is not a target port
    # a second Service selecting the same pods on the same target port: both named, sorted
    other = make_service_ports("api-canary", "shop", "198.19.1.9", [("http", 81, 9000)])
    ServicePortSink(index).apply("ADDED", other)
    clock.t = 1100
    sinks.apply(
        "ADDED", make_endpoint_slice("api-canary", "shop", [("198.18.2.2", "node-2", "api-1")], [("http", 9000)])
    )
    assert index.services_of("198.18.2.2", 9000, when=1100) == [
        ServicePortRef("shop", "api", 80),
        ServicePortRef("shop", "api-canary", 81),
    ]
    # added at 1100: an event from before (beyond the early grace) is not the canary's
    assert index.services_of("198.18.2.2", 9000, when=1090) == [http]
    # api-2 leaves api at 1200: still named for 60 s of event time after, then not
    clock.t = 1200
    sinks.apply(
        "MODIFIED",
        make_endpoint_slice("api", "shop", [("198.18.2.2", "node-2", "api-1")], [("http", 9000), ("admin", 9001)]),
    )
    assert index.services_of("198.18.3.2", 9000, when=1250) == [http]
    assert index.services_of("198.18.3.2", 9000, when=1261) == []
    clock.t = 1300
    index.prune()
    assert index.stats()["backends.endpoints"] == 2  # api-1's two target ports; api-2's closed ones pruned
    # the Service deleted: its endpoints name no port (counted), even while the slice lingers
    ServicePortSink(index).apply("DELETED", API)
    assert index.services_of("198.18.2.2", 9000) == [ServicePortRef("shop", "api-canary", 81)]
    assert index.stats()["backends.unknown_service"] >= 1


def test_only_server_lifecycles_and_flows_are_filled_and_each_is_counted_once() -> None:
    index = BackendIndex()
    ServicePortSink(index).replace([API])
    EndpointSliceSink(index).replace([API_SLICE])
    flow, lc = _server("flow", "198.18.2.2", 9000), _server("lifecycle", "198.18.3.2", 9001)
    other = _server("flow", "198.18.2.2", 22)
    assert fill_backend_end(flow, index, synced=True) == BackendResult.BACKEND
    assert [(s.namespace, s.name, s.port) for s in flow.local.services] == [("shop", "api", 80)]
    assert fill_backend_end(lc, index, synced=True) == BackendResult.BACKEND
    assert [(s.name, s.port) for s in lc.local.services] == [("api", 8080)]
    assert fill_backend_end(other, index, synced=True) == BackendResult.NOT_BACKEND
    assert len(other.local.services) == 0
    assert fill_backend_end(flow, index, synced=True) == BackendResult.ALREADY_SET  # not twice
    assert len(flow.local.services) == 1
    fresh = _server("flow", "198.18.2.2", 9000)
    assert fill_backend_end(fresh, index, synced=False) == BackendResult.MISS_API_UNAVAILABLE
    assert len(fresh.local.services) == 0


@pytest.fixture
def resolver(fakeapi: FakeApiServer, kube_api: ClientKubeApi) -> Iterator[BackendResolver]:
    fakeapi.add(API)
    fakeapi.add(API_SLICE)
    r = BackendResolver(kube_api, backoff_initial=0.05, backoff_max=0.2).start()
    try:
        yield r
    finally:
        r.close()


def _wait(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_the_resolver_lists_and_watches_services_and_endpointslices(
    resolver: BackendResolver, fakeapi: FakeApiServer
) -> None:
    assert resolver.wait_synced(10)
    batch = [
        _server("flow", "198.18.2.2", 9000),
        _server("lifecycle", "198.18.3.2", 9000),
        _server("flow", "198.18.4.2", 9000),  # no Service lists it yet
        _server("lifecycle", "198.18.1.2", 40000, role=ACTIVE),  # a client: not counted, not filled
    ]
    assert fill_backend_ends(batch, resolver) == Counter({BackendResult.BACKEND: 2, BackendResult.NOT_BACKEND: 1})
    assert [[s.name for s in ev.local.services] for ev in batch] == [["api"], ["api"], [], []]
    # a third backend joins (the slice is modified): the watch brings it
    fakeapi.update(
        make_endpoint_slice(
            "api",
            "shop",
            [("198.18.2.2", "node-2", "api-1"), ("198.18.3.2", "node-3", "api-2"), ("198.18.4.2", "node-4", "api-3")],
            [("http", 9000), ("admin", 9001)],
        )
    )
    assert _wait(lambda: resolver.services_of("198.18.4.2", 9000) != [])
    late = _server("flow", "198.18.4.2", 9000)
    assert fill_backend_ends([late], resolver) == Counter({BackendResult.BACKEND: 1})
    assert [(s.name, s.port) for s in late.local.services] == [("api", 80)]
    stats = resolver.stats()
    assert stats["backends.watch.endpointslices.synced"] == 1 and stats["backends.watch.services.synced"] == 1
