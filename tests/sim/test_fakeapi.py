"""The API server stand-in, exercised with the real `kubernetes` client over HTTP."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from tcpscope_sim.fakeapi import FakeApiServer, make_node, make_pod, make_service


@pytest.fixture
def srv() -> Iterator[FakeApiServer]:
    s = FakeApiServer(bookmark_interval=0.2).start()
    try:
        yield s
    finally:
        s.stop()


# The real client's models type every field Optional; these tests read what the stand-in served
# through them, so the API object is untyped here rather than a None check before every attribute.
CoreApi = Any


@pytest.fixture
def core(srv: FakeApiServer, tmp_path: Path) -> CoreApi:
    k = srv.write_kubeconfig(tmp_path / "kubeconfig")
    return client.CoreV1Api(config.new_client_from_config(config_file=str(k)))


def watch_lines(core: CoreApi, **kw: Any) -> list[dict[str, Any]]:
    resp = core.list_pod_for_all_namespaces(watch=True, _preload_content=False, **kw)
    return [json.loads(line) for line in iter_resp_lines(resp) if line]


def test_list_deserializes_into_models_and_filters_by_node(srv: FakeApiServer, core: CoreApi) -> None:
    a = srv.add(make_pod("a", "shop", "node-1", ips=["198.18.0.5"], containers={"app": "ab" * 32}))
    srv.add(make_pod("b", "shop", "node-2"))
    srv.add(make_service("web", "shop", ["198.19.0.10"]))
    srv.add(make_node("node-1", ["198.18.100.1"]))
    pods = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-1")
    assert [p.metadata.name for p in pods.items] == ["a"]
    p = pods.items[0]
    assert p.metadata.uid == a["metadata"]["uid"]
    assert p.status.container_statuses[0].container_id == "containerd://" + "ab" * 32
    assert [i.ip for i in p.status.pod_ips] == ["198.18.0.5"]
    assert int(pods.metadata.resource_version) == srv.resource_version == 5
    assert [s.spec.cluster_ips for s in core.list_service_for_all_namespaces().items] == [["198.19.0.10"]]
    assert core.list_node().items[0].status.addresses[1].address == "198.18.100.1"
    others = core.list_namespaced_pod("shop", field_selector="spec.nodeName!=node-1").items
    assert [x.metadata.name for x in others] == ["b"]
    assert core.read_namespaced_pod("a", "shop").metadata.name == "a"
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod("zzz", "shop")
    assert e.value.status == 404


def test_pagination_with_limit_and_continue(srv: FakeApiServer, core: CoreApi) -> None:
    for i in range(5):
        srv.add(make_pod(f"p{i}"))
    first = core.list_pod_for_all_namespaces(limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3
    second = core.list_pod_for_all_namespaces(limit=2, _continue=first.metadata.var_continue)
    third = core.list_pod_for_all_namespaces(limit=2, _continue=second.metadata.var_continue)
    assert [p.metadata.name for p in second.items + third.items] == ["p2", "p3", "p4"]
    assert third.metadata.var_continue is None


def test_watch_streams_changes_bookmarks_and_ends_on_timeout(srv: FakeApiServer, core: CoreApi) -> None:
    srv.add(make_pod("a"))
    rv = str(srv.resource_version)

    def change() -> None:
        time.sleep(0.3)
        pod = srv.get("pods", "a")
        assert pod is not None
        pod["metadata"]["labels"] = {"app": "x"}
        srv.update(pod)
        srv.delete("pods", "a")

    t = threading.Thread(target=change)
    t.start()
    started = time.monotonic()
    evs = watch_lines(core, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=1)
    t.join()
    assert 0.9 < time.monotonic() - started < 3
    types = [e["type"] for e in evs if e["type"] != "BOOKMARK"]
    assert types == ["MODIFIED", "DELETED"]
    assert [int(e["object"]["metadata"]["resourceVersion"]) for e in evs if e["type"] != "BOOKMARK"] == [3, 4]
    bookmarks = [e for e in evs if e["type"] == "BOOKMARK"]
    assert len(bookmarks) >= 2
    assert bookmarks[-1]["object"]["metadata"]["resourceVersion"] == "4"
    # without allowWatchBookmarks there are none; without resourceVersion the current state comes first
    srv.add(make_pod("b"))
    evs = watch_lines(core, timeout_seconds=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "b")]


def test_field_selected_watch_sees_scheduling_as_added_and_leaving_as_deleted(
    srv: FakeApiServer, core: CoreApi
) -> None:
    srv.add(make_pod("p", node=""))
    rv = str(srv.resource_version)
    pod = srv.get("pods", "p")
    assert pod is not None
    pod["spec"]["nodeName"] = "node-1"
    srv.update(pod)
    pod["spec"]["nodeName"] = "node-2"
    srv.update(pod)
    evs = watch_lines(core, resource_version=rv, field_selector="spec.nodeName=node-1", timeout_seconds=1)
    assert [e["type"] for e in evs] == ["ADDED", "DELETED"]


def test_too_old_resource_version_gives_410(srv: FakeApiServer, core: CoreApi) -> None:
    srv.add(make_pod("a"))
    srv.compact()
    evs = watch_lines(core, resource_version="1", timeout_seconds=1)
    assert len(evs) == 1 and evs[0]["type"] == "ERROR"
    assert evs[0]["object"]["code"] == 410 and evs[0]["object"]["reason"] == "Expired"
    with pytest.raises(ApiException) as e:
        core.list_pod_for_all_namespaces(resource_version="1", resource_version_match="Exact")
    assert e.value.status == 410


def test_restart_keeps_state_and_port_and_cuts_watches(srv: FakeApiServer, core: CoreApi) -> None:
    srv.add(make_pod("a"))
    port = srv.port
    resp = core.list_pod_for_all_namespaces(watch=True, _preload_content=False, timeout_seconds=30)
    lines: list[str] = []
    ended = threading.Event()

    def read() -> None:
        with contextlib.suppress(Exception):
            lines.extend(iter_resp_lines(resp))
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.2)
    srv.restart()
    assert ended.wait(3), "a restart must break open watch streams"
    assert json.loads(lines[0])["type"] == "ADDED"
    assert srv.port == port
    assert [p.metadata.name for p in core.list_pod_for_all_namespaces().items] == ["a"]
    srv.stop()
    with pytest.raises(Exception):  # connection refused  # noqa: B017
        core.list_pod_for_all_namespaces(_request_timeout=2)


def test_kubeconfig_points_at_the_server(srv: FakeApiServer, tmp_path: Path) -> None:
    k = json.loads(srv.write_kubeconfig(tmp_path / "k").read_text())
    assert k["clusters"][0]["cluster"]["server"] == f"http://127.0.0.1:{srv.port}"
    assert k["current-context"] == "fake"


def test_endpoint_slices_list_and_watch_with_the_discovery_client(srv: FakeApiServer, tmp_path: Path) -> None:
    from kubernetes import watch

    from tcpscope_sim.fakeapi import make_endpoint_slice, make_service_ports

    api: Any = client.DiscoveryV1Api(  # untyped, as CoreApi above
        config.new_client_from_config(config_file=str(srv.write_kubeconfig(tmp_path / "k")))
    )
    srv.add(make_service_ports("api-svc", "shop", "198.19.1.1", [("http", 80, 9000)], {"app": "api"}))
    srv.add(
        make_endpoint_slice(
            "api-svc", "shop", [("198.18.2.2", "node-2", "api-1"), ("198.18.3.2", "node-3", "api-2")], [("http", 9000)]
        )
    )
    slices: Any = api.list_endpoint_slice_for_all_namespaces(label_selector="kubernetes.io/service-name=api-svc")
    s: Any
    (s,) = slices.items
    assert s.address_type == "IPv4" and s.metadata.labels["kubernetes.io/service-name"] == "api-svc"
    assert [(e.addresses, e.node_name, e.target_ref.name, e.conditions.ready) for e in s.endpoints] == [
        (["198.18.2.2"], "node-2", "api-1", True),
        (["198.18.3.2"], "node-3", "api-2", True),
    ]
    assert [(p.name, p.port) for p in s.ports] == [("http", 9000)]
    assert [x.metadata.name for x in api.list_namespaced_endpoint_slice("shop").items] == [s.metadata.name]
    # a watch from the list's version sees an endpoint leaving, as kube-proxy would
    rv = slices.metadata.resource_version

    def change() -> None:
        time.sleep(0.3)
        obj = srv.get("endpointslices", s.metadata.name, "shop")
        assert obj is not None
        obj["endpoints"] = obj["endpoints"][:1]
        srv.update(obj)

    t = threading.Thread(target=change)
    t.start()
    seen = [
        (e["type"], [x.addresses[0] for x in e["object"].endpoints])
        for e in watch.Watch().stream(
            api.list_endpoint_slice_for_all_namespaces, resource_version=rv, timeout_seconds=1
        )
    ]
    t.join()
    assert seen == [("MODIFIED", ["198.18.2.2"])]
