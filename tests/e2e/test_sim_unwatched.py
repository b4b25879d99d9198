"""End to end: a RST from a pod on a node without an agent is `unknown`, never `network`.

Real agents on node-1 and node-2 only (`tcpscope-sim --unwatched-node node-3`), real traffic: the
pod on node-3 aborts connections, and the router forges RSTs on some of its connections. With no
agent on its node, nothing can show it did not send them: every such RST is unknown/unwatched_peer
and counts as what the watched end saw; the same forged RSTs between two watched pods are network.
Needs root and BPF: fails (never skips) without them. About 20 s.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.kafka import Broker, kafka_broker
from tests.support.sim import run_plan, summary_json

__all__ = ["kafka_broker"]

PLAN = {
    "pods": [
        {"namespace": "shop", "name": "web-1", "node": "node-1", "listen": []},
        {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
        {"namespace": "ext", "name": "batch-1", "node": "node-3", "listen": [7000]},
    ],
    "traffic": [
        {"from": "ext/batch-1", "to": "shop/api-1", "port": 9000, "kind": "client_reset", "count": 2},
        {"from": "ext/batch-1", "to": "shop/api-1", "port": 9000, "kind": "network_reset", "count": 3},
        {"from": "shop/api-1", "to": "ext/batch-1", "port": 7000, "kind": "server_reset", "count": 1},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "network_reset", "count": 2},
    ],
}


def test_resets_from_an_unwatched_node_are_unknown_never_network(kafka_broker: Broker, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the end-to-end test needs root (BPF, netns, cgroups)"
    topic = f"e2e-unwatched-{os.getpid()}"
    sim = run_plan(PLAN, tmp_path, kafka_broker.bootstrap, topic, "--unwatched-node", "node-3")
    assert "no agent on node-3" in sim.stdout
    doc = summary_json(kafka_broker.bootstrap, topic)
    got = {}
    for row in doc["pairs"]:
        key = (
            f"{row['client']['namespace']}/{row['client']['name']}",
            f"{row['server']['namespace']}/{row['server']['name']}",
        )
        got[key] = (
            {k: row[k] for k in ("connections", "client_resets", "server_resets", "network_resets")},
            {c: sum(d.values()) for c, d in row["reset_causes"].items()},
            row["reset_causes"],
        )
    unknown = {"unknown": {"unwatched_peer": 5}}
    assert got[("ext/batch-1", "shop/api-1")] == (
        # api-1's agent saw 5 RSTs "from batch-1": 2 it sent, 3 the router forged; it cannot tell
        {"connections": 5, "client_resets": 5, "server_resets": 0, "network_resets": 0},
        {"unknown": 5},
        unknown,
    )
    assert got[("shop/api-1", "ext/batch-1")][:2] == (
        {"connections": 1, "client_resets": 0, "server_resets": 1, "network_resets": 0},
        {"unknown": 1},
    )
    # the control: the same forged RSTs between two watched pods
    assert got[("shop/web-1", "shop/api-1")][:2] == (
        {"connections": 2, "client_resets": 0, "server_resets": 0, "network_resets": 2},
        {"network": 2},
    )
    assert len(got) == 3
