"""tcpscope-sim's command line: plan errors exit 2 before anything is built; --cleanup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tcpscope_sim import net
from tcpscope_sim.__main__ import made_text, main
from tcpscope_sim.plan import builtin_plan
from tcpscope_sim.services import cluster_objects


def test_bad_plan_exits_2_and_builds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = net.all_run_ids()
    f = tmp_path / "p.json"
    f.write_text(
        json.dumps(
            {
                "pods": [{"namespace": "a", "name": "x", "node": "n"}],
                "traffic": [{"from": "a/x", "to": "a/y", "port": 1}],
            }
        )
    )
    assert main(["--plan", str(f)]) == 2
    assert "traffic[0]: no pod 'a/y'" in capsys.readouterr().err
    assert net.all_run_ids() == before


def test_cleanup_with_nothing_left(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cleanup"]) == 0
    assert capsys.readouterr().out.startswith("tcpscope-sim: cleaned ")


def test_api_objects_match_the_cgroup_tree() -> None:
    plan = builtin_plan()
    objs = cluster_objects(plan, "abc123")
    kinds = [o["kind"] for o in objs]
    # one Service per workload that listens, the plan's two (shop/cart replaces the workload's own)
    assert kinds.count("Node") == 3 and kinds.count("Pod") == 8 and kinds.count("Service") == 7
    assert kinds.count("EndpointSlice") == 2
    cart = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "cart")  # type: ignore[index]
    assert cart["spec"]["clusterIP"] == plan.service("shop/cart").ip  # type: ignore[index]
    slices: list[Any] = [o for o in objs if o["kind"] == "EndpointSlice" and o["metadata"]["namespace"] == "shop"]  # type: ignore[index]
    (slice_,) = slices
    assert [e["addresses"][0] for e in slice_["endpoints"]] == [
        plan.pod(b).ip for b in plan.service("shop/cart").backends
    ]
    pod = next(o for o in objs if o["kind"] == "Pod" and o["metadata"]["name"] == "cart-1")  # type: ignore[index]
    from tcpscope_sim.cgroups import container_id, pod_uid

    uid = pod_uid("abc123", "shop", "cart-1")
    assert pod["metadata"]["uid"] == uid  # type: ignore[index]
    assert pod["status"]["podIP"] == "198.18.2.3"  # type: ignore[index]
    assert pod["status"]["containerStatuses"][0]["containerID"] == f"containerd://{container_id(uid)}"  # type: ignore[index]
    assert pod["spec"]["nodeName"] == "node-2"  # type: ignore[index]
    owner = pod["metadata"]["ownerReferences"][0]  # type: ignore[index]
    assert owner["kind"] == "ReplicaSet" and owner["name"].startswith("cart-")


def test_an_unknown_show_kind_exits_2_and_builds_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    before = net.all_run_ids()
    assert main(["--show", "lifecycle,states"]) == 2
    assert capsys.readouterr().err == (
        "tcpscope-sim: unknown kinds ['states']; known: lifecycle, state, retransmit, synack, reset, error, probe, "
        "flow, anomalies, all\n"
    )
    assert net.all_run_ids() == before


def test_connections_made_read_as_words() -> None:
    made = {"timeout:ok": 13, "ok:ok": 40, "ok:eof": 1, "bulk:ok": 2}
    assert made_text(made) == "bulk 2 as planned; ok 40 as planned, 1 eof; timeout 13 as planned"
