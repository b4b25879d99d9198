"""End to end: a fixed traffic plan on the simulated cluster, read back from Kafka as a summary.

Real everything: pods in network namespaces and kubelet-style cgroups on three "nodes", one BPF
agent per node scoped to its node's cgroup subtree, the API server stand-in, the collector, a
Kafka-protocol broker, then `tcpscope-tail --summary`. The summary must equal the plan exactly per
pod pair, both ends named, every socket reported once (by its own node's agent), nothing lost.
Needs root and BPF: fails (never skips) without them. About 20 s.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, decode_records
from tcpscope.losses import POSSIBLE_LOSS_REASONS
from tcpscope.v1.events_pb2 import ACTIVE, LISTEN, RESET_RECEIVED
from tcpscope_sim import net
from tcpscope_sim.cgroups import PREFIX as CG_PREFIX
from tcpscope_sim.cgroups import cgroup2_mount
from tcpscope_sim.cluster import STATE_DIR
from tcpscope_sim.plan import parse_plan
from tests.support.kafka import Broker, consume_all, kafka_broker
from tests.support.sim import BIN, run_plan, summary_json

__all__ = ["kafka_broker"]  # the fixture, imported for pytest

# different numbers per kind, so a mix-up between counters shows
PLAN: dict[str, Any] = {
    "pods": [
        {"namespace": "shop", "name": "web-1", "node": "node-1", "listen": [8080]},
        {"namespace": "shop", "name": "web-2", "node": "node-1", "listen": []},
        {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
        {"namespace": "data", "name": "db-1", "node": "node-3", "listen": [5432]},
    ],
    "traffic": [
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "ok", "count": 5},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9009, "kind": "refused", "count": 2},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "client_reset", "count": 3},
        {"from": "shop/api-1", "to": "data/db-1", "port": 5432, "kind": "ok", "count": 4},
        {"from": "shop/api-1", "to": "data/db-1", "port": 5432, "kind": "server_reset", "count": 2},
        {"from": "shop/web-1", "to": "data/db-1", "port": 5432, "kind": "timeout", "count": 1},
        # the same node: both ends seen by one agent, still one connection each
        {"from": "shop/web-2", "to": "shop/web-1", "port": 8080, "kind": "ok", "count": 6},
        {"from": "shop/web-2", "to": "shop/web-1", "port": 8080, "kind": "server_reset", "count": 1},
        # the router between node-1 and node-2 forges a RST to each end: neither pod sent one
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "network_reset", "count": 4},
    ],
}
COUNTERS = ("connections", "client_resets", "server_resets", "network_resets", "refused", "timeouts", "retransmits")


def _zero(**kw: int) -> dict[str, int]:
    return {**dict.fromkeys(COUNTERS, 0), **kw}


# written out by hand from PLAN: "connections" counts established ones (ok + every kind of reset)
EXPECTED = {
    ("shop/web-1", "shop/api-1"): _zero(connections=12, client_resets=3, network_resets=4, refused=2),
    ("shop/api-1", "data/db-1"): _zero(connections=6, server_resets=2),
    ("shop/web-1", "data/db-1"): _zero(timeouts=1),
    ("shop/web-2", "shop/web-1"): _zero(connections=7, server_resets=1),
}


def test_summary_equals_the_plan(kafka_broker: Broker, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the end-to-end test needs root (BPF, netns, cgroups)"
    topic = f"e2e-sim-{os.getpid()}"
    sim = run_plan(PLAN, tmp_path, kafka_broker.bootstrap, topic)
    m = re.search(r"tcpscope-sim: run ([0-9a-f]+)", sim.stdout)
    assert m, sim.stdout
    run_id = m.group(1)

    # the sim cleaned up after itself
    assert net.netns_names(run_id) == []
    assert not os.path.exists(os.path.join(cgroup2_mount(), f"{CG_PREFIX}{run_id}"))
    assert not os.path.exists(os.path.join(STATE_DIR, f"{run_id}.json"))

    doc = summary_json(kafka_broker.bootstrap, topic)
    got = {}
    causes: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
    for row in doc["pairs"]:
        key = (
            f"{row['client']['namespace']}/{row['client']['name']}",
            f"{row['server']['namespace']}/{row['server']['name']}",
        )
        assert key not in got, f"pair {key} reported twice"
        assert row["client"]["kind"] == row["server"]["kind"] == "POD", row
        got[key] = {c: row[c] for c in COUNTERS}
        causes[key] = row["reset_causes"]
    assert got == EXPECTED
    # who sent each connection's RST (tail/resetcause.py): the aborting pod's application
    # (SO_LINGER 0 close: tcp_disconnect, reason TCP_STATE on 6.10+), the refusing server's kernel,
    # or the router between the nodes; never unknown: every node is watched, nothing was lost
    app = "TCP_STATE" if any("TCP_STATE" in d.get("app", {}) for d in causes.values()) else "NOT_SPECIFIED"
    # the router forges a RST to each end (the sim checks each end's EstabResets and that no pod sent
    # one): both ends' RSTs nobody sent make the connection `both_ends`, whichever came first
    network = causes[("shop/web-1", "shop/api-1")].pop("network", {})
    assert network == {"both_ends": 4}, network
    assert causes == {
        ("shop/web-1", "shop/api-1"): {"app": {app: 3}, "peer_kernel": {"refused": 2}},
        ("shop/api-1", "data/db-1"): {"app": {app: 2}},
        ("shop/web-1", "data/db-1"): {},
        ("shop/web-2", "shop/web-1"): {"app": {app: 1}},
    }
    assert doc["losses"]["kernel"] == doc["losses"]["agent_buffer"] == doc["losses"]["enrichment"] == 0
    # possible losses (program runs the kernel skipped, tcpscope/losses.py) may be non-zero only
    # because the exact summary above proves they cost no planned connection
    definite_losses = {
        k: v for k, v in doc["losses"].items() if k not in ("kernel_skipped_runs", *POSSIBLE_LOSS_REASONS)
    }
    assert all(v == 0 for v in definite_losses.values()), doc["losses"]

    # every socket reported exactly once, by the agent of the node its pod runs on
    plan = parse_plan(PLAN)
    node_of_ip = {p.ip: p.node for p in plan.pods}
    records = consume_all(kafka_broker.bootstrap, topic, want=10**9, timeout=5)
    # a socket = (node, socket id, tuple, close time): ids are only unique while the socket lives
    sockets: Counter[tuple[str, int, str, int]] = Counter()
    network_killed: list[str] = []
    in_flows = 0
    batches = 0
    seen: set[tuple[str, int, int]] = set()
    for d in (d for r in records for d in decode_records(r.headers, r.value)):
        if (d.agent_id, d.sequence, d.index) in seen:  # an at-least-once resend, not a second report
            continue
        seen.add((d.agent_id, d.sequence, d.index))
        if d.kind == RECORD_SUMMARY:
            batches += 1
        if d.kind != RECORD_EVENT or d.event is None:
            continue
        ev = d.event
        if ev.WhichOneof("kind") == "flow":  # the sim's agents aggregate ordinary connections
            assert ev.node == node_of_ip[ev.local.ip], f"flow of {ev.local.ip} reported by {ev.node}"
            assert ev.local.kind and ev.remote.kind, f"unresolved end: {ev}"
            assert sum(ev.flow.duration_us_log2) == ev.flow.connections
            in_flows += ev.flow.connections
            continue
        if ev.WhichOneof("kind") != "lifecycle":
            continue
        if ev.lifecycle.last_state == LISTEN or ev.remote.port == 0:
            continue
        assert ev.node == node_of_ip[ev.local.ip], f"socket of {ev.local.ip} reported by {ev.node}"
        assert ev.local.kind and ev.remote.kind, f"unresolved end: {ev}"
        tuple_ = f"{ev.local.ip}:{ev.local.port}-{ev.remote.ip}:{ev.remote.port}"
        sockets[(ev.node, ev.socket_id, tuple_, ev.time.ToNanoseconds())] += 1
        if (
            ev.lifecycle.role == ACTIVE
            and ev.lifecycle.ending == RESET_RECEIVED
            and ev.remote.port == 9000
            and ev.local.ip == plan.pod("shop/web-1").ip
        ):
            network_killed.append(tuple_)  # web-1 -> api-1:9000 received a RST: only network_reset does
    # every socket accounted for exactly once: individually (every anomaly) or in a flow
    assert sum(sockets.values()) + in_flows == plan.expected_lifecycles()
    assert max(sockets.values()) == 1
    # only ok connections are ordinary (both sockets aggregated, unless a segment was retransmitted);
    # every reset, refusal and timeout kept its own lifecycle on each side that had a socket
    assert 0 < in_flows <= 2 * sum(t["count"] for t in PLAN["traffic"] if t["kind"] == "ok")
    assert batches > 0

    # one network-killed connection, both ends, in time order: each end received a RST, neither sent one
    assert len(network_killed) == 4
    one = subprocess.run(
        [
            str(BIN / "tcpscope-tail"),
            "--kafka-bootstrap",
            kafka_broker.bootstrap,
            "--topic",
            topic,
            "--connection",
            network_killed[0],
            "--from-beginning",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()[1:]
    received = [x for x in lines if " RST_RECV " in x]
    assert sorted(x.split()[0] for x in received) == ["node-1", "node-2"], one.stdout
    assert all(x.endswith("cause=network/no_send_seen") or x.endswith("cause=network/both_ends") for x in received), (
        one.stdout
    )
    assert not [x for x in lines if " RST_SENT " in x], one.stdout
    assert sorted(x.split()[0] for x in lines if " LIFECYCLE " in x) == ["node-1", "node-2"], one.stdout
