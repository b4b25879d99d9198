"""Plan parsing and validation: addresses are assigned deterministically, mistakes name their entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tcpscope_sim.plan import PlanError, builtin_plan, load_plan, parse_plan, plan_to_doc

DOCUMENTED_PLAN: dict[str, Any] = {
    "pods": [
        {"namespace": "shop", "name": "web-1", "node": "node-1", "listen": [8080]},
        {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
    ],
    "traffic": [{"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "ok", "count": 20}],
}


def test_the_documented_example_parses_with_addresses_and_defaults(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps(DOCUMENTED_PLAN))
    plan = load_plan(str(f))
    assert plan.nodes == ("node-1", "node-2")
    assert [(p.ref, p.ip, p.workload) for p in plan.pods] == [
        ("shop/web-1", "198.18.1.2", "web"),
        ("shop/api-1", "198.18.2.2", "api"),
    ]
    assert plan.pod("shop/api-1").labels == (("app", "api"),)
    assert plan.expected_lifecycles() == 40
    assert parse_plan(plan_to_doc(plan)) == plan


def test_addresses_per_node_and_expected_lifecycles() -> None:
    doc = {
        "pods": [
            {"namespace": "a", "name": "x", "node": "n2", "listen": [1]},
            {"namespace": "a", "name": "y", "node": "n1"},
            {"namespace": "b", "name": "x", "node": "n2", "workload": "xx", "labels": {"t": "1"}},
        ],
        "traffic": [
            {"from": "a/y", "to": "a/x", "port": 1, "kind": k, "count": 3}
            for k in ("ok", "client_reset", "server_reset", "timeout", "network_reset")
        ]
        + [{"from": "a/y", "to": "a/x", "port": 2, "kind": "refused", "count": 5}],
    }
    plan = parse_plan(doc)
    assert [p.ip for p in plan.pods] == ["198.18.1.2", "198.18.2.2", "198.18.1.3"]
    assert plan.pods[2].labels == (("app", "xx"), ("t", "1"))
    assert [p.name for p in plan.pods_on("n2")] == ["x", "x"]
    # network_reset connections are established (the router kills them mid-stream): both ends
    assert plan.expected_lifecycles() == 4 * 2 * 3 + 3 + 5
    # with an agent on one node only, only its pods' sockets: a/y's clients on n1, a/x's servers on n2
    assert plan.expected_lifecycles(["n1"]) == 5 * 3 + 5
    assert plan.expected_lifecycles(["n2"]) == 4 * 3
    assert plan.expected_lifecycles(["n1", "n2"]) == plan.expected_lifecycles()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["traffic"][0].update(kind="explode"), "traffic[0]: kind 'explode'"),
        (lambda d: d["traffic"][0].update(to="shop/nope"), "traffic[0]: no pod 'shop/nope'"),
        (lambda d: d["traffic"][0].update(port=9001), "does not listen on 9001"),
        (lambda d: d["traffic"][0].update(kind="refused"), "'refused' needs a port"),
        (lambda d: d["traffic"][0].update(count=0), "count must be"),
        (lambda d: d["traffic"][0].update(to="shop/web-1"), "cannot connect to itself"),
        (lambda d: d["traffic"][0].update(port=70000), "port must be"),
        (lambda d: d["traffic"][0].update(kind="port_scan", port=8999, count=5), "ports shop/api-1 does not listen on"),
        (lambda d: d["traffic"][0].update(kind="port_scan", port=65530, count=10), "runs past 65535"),
        (lambda d: d["traffic"][0].update(kind="syn_flood", port=9001), "does not listen on 9001"),
        (lambda d: d["pods"][1].update(name="web-1"), "declared twice"),
        (lambda d: d["pods"][0].update(node="Node_1"), "not a DNS label"),
        (lambda d: d["pods"][0].update(listen=[1, 1]), "duplicate port"),
        (lambda d: d["pods"][0].update(colour="red"), "pods[0]: unknown keys ['colour']"),
        (lambda d: d.update(pods=[]), "'pods' must be a non-empty list"),
        (lambda d: d.update(extra=1), "unknown top-level keys"),
    ],
)
def test_mistakes_are_reported_with_their_entry(mutate: Any, message: str) -> None:
    doc = json.loads(json.dumps(DOCUMENTED_PLAN))
    mutate(doc)
    with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_plan(doc)


def test_not_json(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text("{pods")
    with pytest.raises(PlanError, match="not JSON"):
        load_plan(str(f))


def test_builtin_plan_spans_three_nodes_and_every_kind() -> None:
    plan = builtin_plan()
    assert plan.nodes == ("node-1", "node-2", "node-3")
    assert {t.kind for t in plan.traffic} == {
        "ok",
        "refused",
        "client_reset",
        "server_reset",
        "timeout",
        "network_reset",
    }
    cross = [t for t in plan.traffic if plan.pod(t.src).node != plan.pod(t.dst).node]
    assert cross


def test_storm_kinds_count_their_client_sockets_and_name_the_flooded_listeners() -> None:
    doc = json.loads(json.dumps(DOCUMENTED_PLAN))
    doc["traffic"] = [
        {"from": "shop/web-1", "to": "shop/api-1", "port": 20000, "kind": "port_scan", "count": 500},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "syn_flood", "count": 70},
    ]
    plan = parse_plan(doc)
    # neither completes a handshake: the clients' sockets only (a refusal each, a timeout each)
    assert plan.expected_lifecycles() == 500 + 70
    assert plan.synack_listeners() == (("shop/api-1", 9000),)
