"""End to end on the simulated cluster: the live view's default rows are one per connection, both
ends joined, with who sent the reset; and the service map draws the network's resets.

Real pods in network namespaces on two "nodes", one BPF agent per node, the collector, a Kafka-protocol
broker, the router between the nodes forging RSTs (sim/tcpscope_sim/driver.py), then tcpscope-tail
as a user runs it. Needs root and BPF: fails (never skips) without them. About 25 s.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.kafka import Broker, kafka_broker
from tests.support.sim import BIN, run_plan

__all__ = ["kafka_broker"]  # the fixture, imported for pytest

PLAN: dict[str, Any] = {
    "pods": [
        {"namespace": "shop", "name": "web-1", "node": "node-1", "listen": []},
        {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
    ],
    "traffic": [
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "ok", "count": 3},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "client_reset", "count": 2},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "server_reset", "count": 4},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9009, "kind": "refused", "count": 1},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "network_reset", "count": 3},
    ],
}


def _tail(bootstrap: str, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tcpscope-tail"), "--kafka-bootstrap", bootstrap, "--topic", topic, "--from-beginning", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_one_row_per_reset_connection_with_its_sender_and_network_resets_on_the_map(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    assert os.geteuid() == 0, "the end-to-end test needs root (BPF, netns, cgroups)"
    topic = f"e2e-rows-{os.getpid()}"
    run_plan(PLAN, tmp_path, kafka_broker.bootstrap, topic)

    live = _tail(kafka_broker.bootstrap, topic, "--duration", "3", "--format", "json")
    assert live.returncode == 0, live.stderr
    rows = [json.loads(x) for x in live.stdout.splitlines()]
    assert all("row" in r for r in rows), [r for r in rows if "row" not in r]  # no per-socket row at all
    conns = [r for r in rows if r["row"] == "connection"]
    resets = [r for r in conns if r["ended"] != "ok"]
    # exactly one row per reset connection: each client port once
    ports = Counter(r["client"]["port"] for r in resets)
    assert all(n == 1 for n in ports.values()), ports
    assert all((r["client"]["name"], r["server"]["name"]) == ("web-1", "api-1") for r in resets)
    senders = Counter((r["ended"], r["reset_by"]["side"], r["reset_by"]["cause"]) for r in resets)
    assert senders == {
        ("client_reset", "client", "app"): 2,
        ("server_reset", "server", "app"): 4,
        ("network_reset", "network", "network"): 3,
        ("refused", "server", "peer_kernel"): 1,
    }, resets
    # established ones joined from both ends (the refused connect has no server socket)
    assert all(sorted(r["sockets"]) == ["client", "server"] for r in resets if r["ended"] != "refused")
    assert [r["reset_by"]["detail"] for r in resets if r["ended"] == "refused"] == ["refused"]
    # every reset and error event went into its row (a network reset's second ERROR once printed alone)
    assert " 0 shown on their own" in live.stderr, live.stderr
    assert all("via" not in r for r in conns)  # pod to pod: no Service, no node port
    # the ordinary connections once: the client's flows (the server's flows of the pair not shown
    # again), or a row of their own where a socket retransmitted
    flows = [r for r in rows if r["row"] == "flow"]
    assert all(r["reported_by"] == "client" for r in flows), flows
    ok_rows = [r for r in conns if r["ended"] == "ok" and not r.get("in_client_flow")]
    assert sum(r["connections"] for r in flows) + len(ok_rows) == 3, rows

    table = _tail(kafka_broker.bootstrap, topic, "--duration", "3", "--kind", "reset")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["TIME", "CLIENT", "SERVER", "ENDED"]
    assert len(lines) == 1 + 10  # the reset connections, one line each
    assert sum(" network_reset " in x and " network (" in x for x in lines) == 3

    dot = _tail(kafka_broker.bootstrap, topic, "--summary", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    edges = [x for x in dot.stdout.splitlines() if '"shop/web-1" -> "shop/api-1"' in x]
    assert any('label="3 network resets"' in x and "dashed" in x for x in edges), edges
    svg = subprocess.run(["dot", "-Tsvg"], input=dot.stdout, capture_output=True, text=True, check=True).stdout
    assert ">3 network resets<" in svg
