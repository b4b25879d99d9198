"""End to end: the simulator's storm kinds (syn_flood, port_scan) through agents with small anomaly
budgets, the collector and Kafka, read back with tcpscope-tail --summary.

The sim checks its own run exactly (it exits 0 only then): every client socket's lifecycle arrived
(one by one or in the agents' aggregates) and each flooded listener's SYN-ACK retransmits reported by
its agent equal its netns's TcpExt TCPSynRetrans. Here the summary must say the plan: the scan's
refusals on as many ports, the flood's connects timed out, the ordinary connections. About 40 s.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.kafka import Broker, kafka_broker
from tests.support.sim import run_plan, summary_json

__all__ = ["kafka_broker"]

SCAN_PORTS, FLOOD = 300, 60
PLAN: dict[str, Any] = {
    "pods": [
        {"namespace": "shop", "name": "web-1", "node": "node-1", "listen": []},
        {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
    ],
    "traffic": [
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "ok", "count": 5},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 20000, "kind": "port_scan", "count": SCAN_PORTS},
        {"from": "shop/web-1", "to": "shop/api-1", "port": 9000, "kind": "syn_flood", "count": FLOOD},
    ],
}


@pytest.mark.root
@pytest.mark.slow
def test_a_port_scan_and_a_syn_flood_are_counted_exactly_past_small_budgets(
    kafka_broker: Broker, tmp_path: Any
) -> None:
    topic = f"storms-{tmp_path.name}"
    sim = run_plan(
        PLAN,
        tmp_path,
        kafka_broker.bootstrap,
        topic,
        "--agent-arg=--anomaly-budget=3",
        "--agent-arg=--max-anomaly-events=40",
    )
    out = sim.stdout + sim.stderr
    assert "api-1:9000 SYN-ACK retransmits reported" in out, out
    doc = summary_json(kafka_broker.bootstrap, topic)
    (row,) = [p for p in doc["pairs"] if p["client"]["name"] == "web-1" and p["server"]["name"] == "api-1"]
    assert (row["connections"], row["refused"], row["timeouts"]) == (5, SCAN_PORTS, FLOOD)
    assert row["aggregated_connections"] > 0  # the budgets were passed: part of them came aggregated
    assert len(row["server_ports"]) == SCAN_PORTS + 1
    assert {k: v for k, v in doc["losses"].items() if v and k != "kernel_skipped_runs" and "recursion" not in k} == {}
