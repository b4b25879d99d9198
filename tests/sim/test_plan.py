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
        (lambda d: d["traffic"][0].update(rate=10), "traffic[0]: rate only for kind 'pooled'"),
        (lambda d: d["traffic"][0].update(kind="pooled", count=65), "a pool has at most 64 connections"),
        (lambda d: d["traffic"][0].update(kind="pooled", count=2, seconds=0), "seconds must be an integer in 1..3600"),
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
    cross = [t for t in plan.traffic if t.dst and plan.pod(t.src).node != plan.pod(t.dst).node]
    assert cross
    # through the simulated kube-proxy: a Service with backends on two nodes, one without endpoints
    two = plan.service("shop/cart")
    assert len({plan.pod(b).node for b in two.backends}) == 2
    assert plan.service("payments/ledger").backends == ()
    assert {t.kind for t in plan.traffic if t.service} == {
        "ok",
        "client_reset",
        "server_reset",
        "network_reset",
        "refused",
    }


def test_services_get_cluster_ips_and_kube_proxy_hands_out_backends_in_turn() -> None:
    from tcpscope_sim.kubeproxy import ruleset

    doc = {
        "pods": [
            {"namespace": "shop", "name": "web-1", "node": "node-1"},
            {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
            {"namespace": "shop", "name": "api-2", "node": "node-3", "listen": [9000]},
        ],
        "services": [
            {
                "namespace": "shop",
                "name": "api",
                "port": 80,
                "targetPort": 9000,
                "backends": ["shop/api-1", "shop/api-2"],
            },
            {"namespace": "shop", "name": "none", "port": 80},
        ],
        "traffic": [
            {"from": "shop/web-1", "service": "shop/api", "kind": "ok", "count": 3},
            {"from": "shop/web-1", "service": "shop/none", "kind": "refused", "count": 2},
            {"from": "shop/web-1", "service": "shop/api", "kind": "server_reset", "count": 2},
        ],
    }
    plan = parse_plan(doc)
    assert [(s.ref, s.ip) for s in plan.services] == [("shop/api", "198.19.1.1"), ("shop/none", "198.19.1.2")]
    assert plan.backend_of() == [["shop/api-1", "shop/api-2", "shop/api-1"], [], ["shop/api-2", "shop/api-1"]]
    # client sockets 7, server sockets 5; node-3's agent missing: api-2's two sockets unseen
    assert plan.expected_lifecycles() == 12
    assert plan.expected_lifecycles(("node-1", "node-2")) == 10
    assert parse_plan(plan_to_doc(plan)) == plan
    nft = ruleset(plan, "t")
    assert "ip daddr 198.19.1.1 tcp dport 80 jump svc_0" in nft
    assert "meta l4proto tcp dnat to numgen inc mod 2 map { 0 : 198.18.2.2, 1 : 198.18.3.2 } : 9000" in nft
    assert "ip daddr 198.19.1.2 tcp dport 80 reject with icmp type port-unreachable" in nft
    ipt = ruleset(plan, "t", "iptables")
    assert "numgen inc mod 2 vmap { 0 : jump sep_0_0, 1 : jump sep_0_1 }" in ipt
    assert "dnat to 198.18.3.2:9000" in ipt
    for bad, why in (
        ({"from": "shop/web-1", "service": "shop/api", "kind": "refused"}, "refused"),
        ({"from": "shop/web-1", "service": "shop/none", "kind": "ok"}, "must listen"),
        ({"from": "shop/web-1", "service": "shop/zzz"}, "no service"),
        ({"from": "shop/web-1", "service": "shop/api", "port": 81}, "serves port 80"),
        ({"from": "shop/api-1", "service": "shop/api"}, "cannot be its client"),
    ):
        with pytest.raises(PlanError, match=why):
            parse_plan({**doc, "traffic": [bad]})


def test_expected_summary_per_client_counts_each_connection_once() -> None:
    from tcpscope_sim.plan import expected_summary

    doc = {
        "pods": [
            {"namespace": "shop", "name": "web-1", "node": "node-1"},
            {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
            {"namespace": "shop", "name": "api-2", "node": "node-3", "listen": [9000]},
        ],
        "services": [
            {
                "namespace": "shop",
                "name": "api",
                "port": 80,
                "targetPort": 9000,
                "backends": ["shop/api-1", "shop/api-2"],
            }
        ],
        "traffic": [
            {"from": "shop/web-1", "service": "shop/api", "kind": "ok", "count": 3},
            {"from": "shop/web-1", "service": "shop/api", "kind": "network_reset", "count": 2},
            {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "network_reset", "count": 1},
            {"from": "shop/web-1", "to": "shop/api-1", "port": 9009, "kind": "refused", "count": 4},
            {"from": "shop/api-1", "to": "shop/api-2", "port": 9000, "kind": "client_reset", "count": 5},
        ],
    }
    plan = parse_plan(doc)
    zero = {"connections": 0, "client_resets": 0, "server_resets": 0, "network_resets": 0, "refused": 0, "timeouts": 0}
    assert expected_summary(plan) == {
        "shop/web-1": {**zero, "connections": 6, "network_resets": 3, "refused": 4},
        "shop/api-1": {**zero, "connections": 5, "client_resets": 5},
    }
    # node-3 has no agent: a forged RST that may have come from api-2's side is unknown, a server
    # reset as the client saw it; api-1's client_resets still count from its own socket
    assert expected_summary(plan, ("node-1", "node-2")) == {
        "shop/web-1": {**zero, "connections": 6, "network_resets": 1, "server_resets": 2, "refused": 4},
        "shop/api-1": {**zero, "connections": 5, "client_resets": 5},
    }


def test_a_nodeport_is_on_every_node_and_masqueraded_to_the_node_addressed() -> None:
    from tcpscope_sim.kubeproxy import ruleset

    doc: dict[str, Any] = {
        "pods": [
            {"namespace": "shop", "name": "web-1", "node": "node-1"},
            {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
        ],
        "services": [
            {
                "namespace": "shop",
                "name": "api",
                "port": 80,
                "targetPort": 9000,
                "backends": ["shop/api-1"],
                "nodePort": 30080,
            }
        ],
        "traffic": [
            {"from": "shop/web-1", "service": "shop/api", "node": "node-2", "kind": "ok", "count": 2},
            {"from": "shop/web-1", "service": "shop/api", "kind": "ok", "count": 1},
        ],
    }
    plan = parse_plan(doc)
    assert [(t.node, t.port) for t in plan.traffic] == [("node-2", 30080), ("", 80)]
    assert plan.node_ip("node-2") == "198.19.255.2"
    assert parse_plan(plan_to_doc(plan)) == plan
    # the ClusterIP and the NodePorts share the Service's chain: one numgen counter (Plan.backend_of)
    nft = ruleset(plan, "t")
    for ip in ("198.19.255.1", "198.19.255.2"):
        assert f"ip daddr {ip} tcp dport 30080 meta mark set meta mark | 0x4000 jump svc_0" in nft
        assert f"meta mark & 0x4000 == 0x4000 ct original ip daddr {ip} snat to {ip}" in nft
    assert "type nat hook postrouting priority srcnat" in nft
    for bad, why in (
        ({**doc["traffic"][0], "node": "node-9"}, "no node"),
        ({**doc["traffic"][0], "port": 80}, "serves port 30080 on nodes"),
        ({"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "node": "node-2"}, "needs 'service'"),
    ):
        with pytest.raises(PlanError, match=why):
            parse_plan({**doc, "traffic": [bad]})
    with pytest.raises(PlanError, match=r"30000\.\.32767"):
        parse_plan({**doc, "services": [{**doc["services"][0], "nodePort": 8080}], "traffic": []})


def test_a_pooled_entry_and_the_bytes_it_writes() -> None:
    doc = json.loads(json.dumps(DOCUMENTED_PLAN))
    doc["traffic"] = [
        {
            "from": "shop/web-1",
            "to": "shop/api-1",
            "port": 9000,
            "kind": "pooled",
            "count": 4,
            "rate": 2000,
            "seconds": 10,
        }
    ]
    plan = parse_plan(doc)
    (t,) = plan.traffic
    assert (t.kind, t.count, t.rate, t.seconds) == ("pooled", 4, 2000, 10)
    # each connection: its request line, 2000 bytes a second for 10 s; back: "OK\n" for each second
    assert t.pooled_bytes() == (4 * (len("REQ pooled 2000\n") + 20_000), 4 * 3 * 10)
    assert plan.expected_lifecycles() == 8  # established: both ends of each
    assert parse_plan(plan_to_doc(plan)) == plan
    plain = dict(doc["traffic"][0])
    del plain["rate"], plain["seconds"]
    (d,) = parse_plan({**doc, "traffic": [plain]}).traffic
    assert (d.rate, d.seconds) == (1000, 10)


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
