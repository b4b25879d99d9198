"""End to end through Kubernetes Services: the simulated kube-proxy's DNAT in the router netns (nft,
in kube-proxy's nftables and iptables forms), real BPF agents, the real collector (two replicas,
with their metrics), a Kafka-protocol broker, then tcpscope-tail's summary and live view.

One client pod connects to a Service's ClusterIP, another client pod sends the same mix straight to
the backend pod: every figure of the first (summary counters, reset causes and network_resets, the
live view's causes, the collectors' metrics) must equal the second's. A Service with a backend on
each of two nodes gives each backend its exact share (numgen inc hands them out in turn). A copy of
the topic in which one node's times are 5 s off gives the same summary.

Needs root, BPF, and agents that set TcpEvent.connection_id (the join across the NAT: branch connid).
About 35 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tcpscope.kafka_layout import LAYOUT_EVENT, RECORD_EVENT, RECORD_SUMMARY, decode_records
from tcpscope.v1.events_pb2 import EventBatch
from tcpscope_sim.plan import parse_plan
from tests.e2e.test_metrics_prometheus import Reader, _free_base
from tests.support.kafka import Broker, consume_all, kafka_broker, publish_batches, run_tail
from tests.support.sim import BIN, plan_argv, run_plan, stop_sim, summary_json

__all__ = ["kafka_broker"]

MIX = {"ok": 5, "client_reset": 3, "server_reset": 4, "network_reset": 3, "timeout": 1}

PLAN: dict[str, Any] = {
    "pods": [
        # two clients on node-1 with their own workloads, so the metrics tell them apart
        {"namespace": "shop", "name": "viasvc-1", "node": "node-1"},
        {"namespace": "shop", "name": "direct-1", "node": "node-1"},
        {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
    ],
    "services": [
        {"namespace": "shop", "name": "api-svc", "port": 80, "targetPort": 9000, "backends": ["shop/api-1"]},
        # its backend listens on no 9009: the DNATed SYN is refused by the backend's kernel
        {"namespace": "shop", "name": "closed-svc", "port": 80, "targetPort": 9009, "backends": ["shop/api-1"]},
    ],
    "traffic": [
        *({"from": "shop/viasvc-1", "service": "shop/api-svc", "kind": k, "count": n} for k, n in MIX.items()),
        {"from": "shop/viasvc-1", "service": "shop/closed-svc", "kind": "refused", "count": 2},
        *({"from": "shop/direct-1", "to": "shop/api-1", "port": 9000, "kind": k, "count": n} for k, n in MIX.items()),
        {"from": "shop/direct-1", "to": "shop/api-1", "port": 9009, "kind": "refused", "count": 2},
    ],
}

TWO_BACKENDS: dict[str, Any] = {
    "pods": [
        {"namespace": "shop", "name": "web-1", "node": "node-1"},
        {"namespace": "shop", "name": "api-1", "node": "node-2", "listen": [9000]},
        {"namespace": "shop", "name": "api-2", "node": "node-3", "listen": [9000]},
    ],
    "services": [
        {"namespace": "shop", "name": "api", "port": 80, "targetPort": 9000, "backends": ["shop/api-1", "shop/api-2"]}
    ],
    "traffic": [
        {"from": "shop/web-1", "service": "shop/api", "kind": "ok", "count": 5},
        {"from": "shop/web-1", "service": "shop/api", "kind": "server_reset", "count": 3},
        {"from": "shop/web-1", "service": "shop/api", "kind": "client_reset", "count": 2},
        {"from": "shop/web-1", "service": "shop/api", "kind": "network_reset", "count": 2},
    ],
}

COUNTERS = ("connections", "client_resets", "server_resets", "network_resets", "refused", "timeouts", "failed")


def _client_totals(doc: dict[str, Any], client: str) -> dict[str, Any]:
    """Counters and reset causes summed over the rows whose client is `client`."""
    out: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    causes: Counter[str] = Counter()
    for row in doc["pairs"]:
        if row["client"]["name"] != client:
            continue
        for c in COUNTERS:
            out[c] += row[c]
        for cause, details in row["reset_causes"].items():
            for d, n in details.items():
                causes[f"{cause}/{d}"] += n
    out["causes"] = dict(causes)
    return out


def _metrics(port: int) -> dict[str, dict[tuple[str, ...], float]]:
    """The collector's traffic counters by client workload: outcomes, resets by (sender, reason)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "tcpscope_connections_total":
                key: tuple[str, ...] = ("outcome", s.labels["outcome"])
            elif s.name == "tcpscope_resets_total":
                key = ("reset", s.labels["sender"], s.labels["reason"])
            else:
                continue
            by = out.setdefault(s.labels["client_workload"], {})
            by[key] = by.get(key, 0) + s.value
    return out


def _live(bootstrap: str, topic: str) -> tuple[list[dict[str, Any]], str]:
    """`tcpscope-tail` (the live view, one row per connection, JSON) over the topic: its rows, and
    the tally it ends with on stderr."""
    live = subprocess.run(
        [
            str(BIN / "tcpscope-tail"),
            "--kafka-bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--from-beginning",
            "--duration",
            "12",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert live.returncode == 0, live.stderr
    return [json.loads(line) for line in live.stdout.splitlines()], live.stderr


def _live_causes(rows: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """How each connection ended and who reset it, by client pod, from the live view's rows."""
    out: dict[str, Counter[str]] = {"viasvc-1": Counter(), "direct-1": Counter()}
    for row in rows:
        if row.get("row") != "connection" or row["client"].get("name") not in out:
            continue
        by = row.get("reset_by") or {}
        cause = f"{by.get('side', '')} {by.get('cause', '')}/{by.get('detail', '')}" if by else "-"
        if by.get("cause") == "network":
            cause = "network"  # no_send_seen or both_ends: by which end's socket closed first
        out[row["client"]["name"]][f"{row['ended']} {cause}"] += 1
    return out


def _flow_connections(rows: list[dict[str, Any]], client: str) -> int:
    """Connections the live view's flow rows count for a client pod (each flow row once)."""
    return sum(r["connections"] for r in rows if r["row"] == "flow" and r["client"].get("name") == client)


def _dialed(r: dict[str, Any]) -> tuple[Any, ...]:
    to = r.get("via") or r["server"]
    return (r["client"]["port"], to["ip"], to.get("port"))


def _check_live_rows(rows: list[dict[str, Any]], tally: str) -> None:
    """Through the ClusterIP as pod to pod: one row per connection, the backend and the Service
    named, no stray per-socket row, each ordinary connection once in the flows."""
    # every reset and error event went into its connection's row: no per-socket row at all
    assert all("row" in r for r in rows), [r for r in rows if "row" not in r]
    assert " 0 shown on their own" in tally, tally
    for client, via in (("viasvc-1", True), ("direct-1", False)):
        conns = [r for r in rows if r["row"] == "connection" and r["client"].get("name") == client]
        # one row per connection: a client port with the address it dialed (the Service's, else the
        # server's). The kernel reuses an ephemeral port for another destination (viasvc-1 dials two
        # ClusterIPs: 53110 twice in one CI run), so the port alone does not name a connection
        dialed = Counter(_dialed(r) for r in conns)
        assert all(n == 1 for n in dialed.values()), [r for r in conns if dialed[_dialed(r)] > 1]
        problems = sum(n for k, n in MIX.items() if k != "ok") + 2  # and the two refused
        assert len([r for r in conns if r["ended"] != "ok"]) == problems, conns
        # the ordinary connections: in the client's flows once (the backend's flows from a client whose
        # agent reports flows are not shown again), or as a row of their own if a socket retransmitted
        # (the backend's socket alone: its client's agent counted it in a flow, said on the row)
        ok_rows = [r for r in conns if r["ended"] == "ok" and not r.get("in_client_flow")]
        assert _flow_connections(rows, client) + len(ok_rows) == MIX["ok"], (client, rows)
        for r in conns:
            established = r["ended"] not in ("refused", "timeout")
            if established:  # joined to the backend, whatever the NAT did to its addresses
                assert sorted(r["sockets"]) == ["client", "server"], r
                assert (r["server"]["name"], r["server"]["port"]) == ("api-1", 9000), r
            if not via:
                assert "via" not in r, r
                continue
            svc = "closed-svc" if r["ended"] == "refused" else "api-svc"
            assert {k: v for k, v in r["via"].items() if k != "ip"} == {
                "port": 80,
                "namespace": "shop",
                "name": svc,
                "kind": "SERVICE",
            }, r
            if not established:  # no backend socket: the server shown is the Service itself
                assert (r["server"]["name"], r["server"]["port"]) == (svc, 80), r
    flows = [r for r in rows if r["row"] == "flow" and r["client"].get("name") == "viasvc-1"]
    assert flows and all(r["reported_by"] == "client" and r["via"]["name"] == "api-svc" for r in flows), flows


def _tail(path: Path, n: int = 80) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-n:] if path.exists() else []


def _metrics_of_two_replicas(plan: dict[str, Any], tmp_path: Path, bootstrap: str, topic: str) -> dict[str, Any]:
    """Run the plan with two collector replicas (node 1's agent streams to the first, node 2's to the
    second, as agents spread over a collector Service) with their defaults, hold, and sum their
    traffic counters by client workload (`sum without (instance)`)."""
    nodes = len({p["node"] for p in plan["pods"]})
    port = _free_base(2 + nodes)  # two collector replicas, then the nodes' agents
    stderr = (tmp_path / "sim.stderr").open("w")
    sim = subprocess.Popen(
        [
            *plan_argv(plan, tmp_path, bootstrap, topic, "--metrics-port", str(port), "--collectors", "2"),
            "--hold",
            "--keep-logs",  # removed below; read when a connection end is missing
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    out: Reader | None = None
    try:
        out = Reader(sim)
        try:
            _, shipped = out.wait(r"shipped \d+/\d+", 180)
        except AssertionError as e:  # the sim stopped before its check: say why (its stderr)
            raise AssertionError("\n".join([str(e), "---- stderr tail ----", *_tail(tmp_path / "sim.stderr")])) from e
        # a connection end that never arrived (65/66 now and then: the pod-to-pod timeout connect's
        # client socket, no event of it at all): the sim's output, its stderr and the topic socket
        # by socket, to find why
        if not re.search(r"shipped (\d+)/\1 ", shipped):
            dump = run_tail(
                bootstrap,
                topic,
                "--from-beginning",
                "--duration",
                "8",
                "--rows",
                "socket",
                "--kind",
                "lifecycle,retransmit,synack,reset,error,flow,open,anomalies",
                timeout=60,
            )
            # the agents' own counters, which they log as they exit
            stop_sim(sim)
            raise AssertionError(
                "\n".join(
                    [
                        shipped,
                        *(x for _, x in out.lines),
                        "---- stderr tail ----",
                        *_tail(tmp_path / "sim.stderr"),
                        "---- the topic, socket by socket ----",
                        dump.stdout,
                        dump.stderr[-2000:],
                        *_agent_logs(out),
                    ]
                )
            )
        out.wait(r"holding", 60)
        by_client: dict[str, dict[tuple[str, ...], float]] = {}
        for p in (port, port + 1):
            for wl, counts in _metrics(p).items():
                for k, v in counts.items():
                    by_client.setdefault(wl, {})[k] = by_client.setdefault(wl, {}).get(k, 0) + v
    finally:
        stop_sim(sim)
        stderr.close()
        if sim.stdout is not None:
            sim.stdout.close()
        logs = _logs_dir(out) if out is not None else None
        if logs is not None:
            shutil.rmtree(logs, ignore_errors=True)
    return by_client


def _logs_dir(out: Reader) -> Path | None:
    """The run's log directory, as the sim names it on its first line (stdout)."""
    for _, line in list(out.lines):
        m = re.search(r", logs (/\S+)$", line)
        if m:
            return Path(m.group(1))
    return None


def _agent_logs(out: Reader) -> list[str]:
    logs = _logs_dir(out)
    tails: list[str] = []
    for f in sorted(logs.glob("agent-*.log")) if logs is not None else []:
        tails += [f"---- {f.name} (tail) ----", *_tail(f, 12)]
    return tails


def test_through_a_clusterip_every_figure_equals_pod_to_pod(kafka_broker: Broker, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the end-to-end test needs root (BPF, netns, cgroups)"
    topic = f"e2e-svc-{os.getpid()}"
    by_client = _metrics_of_two_replicas(PLAN, tmp_path, kafka_broker.bootstrap, topic)
    want_metrics = {
        ("outcome", "ok"): 5,
        ("outcome", "client_reset"): 3,
        ("outcome", "server_reset"): 4 + 3,  # the forged RSTs: the outcome the client saw
        ("outcome", "refused"): 2,
        ("outcome", "timeout"): 1,
    }
    for wl in ("viasvc", "direct"):
        got = {k: v for k, v in by_client[wl].items() if v}
        outcomes = {k: v for k, v in got.items() if k[0] == "outcome"}
        resets = {k: v for k, v in got.items() if k[0] == "reset"}
        assert outcomes == want_metrics, (wl, got)
        # each RST once, by its sender; the router's forged ones by nobody
        assert sorted(k[1] for k, v in resets.items() for _ in range(int(v))) == ["client"] * 3 + ["server"] * 4, (
            wl,
            got,
        )

    doc = summary_json(kafka_broker.bootstrap, topic)
    via, direct = _client_totals(doc, "viasvc-1"), _client_totals(doc, "direct-1")
    app = next(k for k in direct["causes"] if k.startswith("app/"))
    assert direct == {
        "connections": 15,
        "client_resets": 3,
        "server_resets": 4,
        "network_resets": 3,
        "refused": 2,
        "timeouts": 1,
        "failed": 0,
        "causes": {app: 7, "network/both_ends": 3, "peer_kernel/refused": 2},
    }
    assert via == direct
    rows = {(r["client"]["name"], r["server"]["name"], r.get("via", {}).get("name")) for r in doc["pairs"]}
    assert ("viasvc-1", "api-1", "api-svc") in rows  # the joined connections name the backend and the Service
    assert ("direct-1", "api-1", None) in rows

    live_rows, tally = _live(kafka_broker.bootstrap, topic)
    live = _live_causes(live_rows)
    assert live["viasvc-1"] == live["direct-1"], live
    assert live["direct-1"]["network_reset network"] == MIX["network_reset"], live
    assert sum(n for k, n in live["direct-1"].items() if k.startswith("server_reset server app/")) == 4, live
    _check_live_rows(live_rows, tally)

    # node-2's clock 5 s ahead: a copy of the topic with its times moved, as a reader would meet it
    shifted = f"{topic}-skew"
    _copy_shifted(kafka_broker.bootstrap, topic, shifted, "node-2", 5 * 10**9)
    skewed = summary_json(kafka_broker.bootstrap, shifted)
    assert _client_totals(skewed, "viasvc-1") == via
    assert _client_totals(skewed, "direct-1") == direct


def _copy_shifted(bootstrap: str, topic: str, to: str, node: str, shift_ns: int) -> None:
    """Every batch of the topic republished to `to` with `node`'s event, flow and batch times moved."""
    batches: dict[tuple[str, int], EventBatch] = {}
    records = consume_all(bootstrap, topic, want=10**9, timeout=5)
    for d in (d for r in records for d in decode_records(r.headers, r.value)):
        if d.kind == RECORD_SUMMARY and d.summary is not None:
            b = batches.setdefault((d.agent_id, d.sequence), EventBatch())
            events = list(b.events)
            b.CopyFrom(d.summary)
            del b.events[:]
            b.events.extend(events)
        elif d.kind == RECORD_EVENT and d.event is not None:
            batches.setdefault((d.agent_id, d.sequence), EventBatch(agent_id=d.agent_id, sequence=d.sequence))
            batches[(d.agent_id, d.sequence)].events.append(d.event)
    for b in batches.values():
        for ev in b.events:
            if ev.node != node:
                continue
            ev.time.FromNanoseconds(ev.time.ToNanoseconds() + shift_ns)
            if ev.WhichOneof("kind") == "flow":
                for ts in (ev.flow.first_close, ev.flow.last_close):
                    ts.FromNanoseconds(ts.ToNanoseconds() + shift_ns)
        if b.node == node:
            b.sent_time.FromNanoseconds(b.sent_time.ToNanoseconds() + shift_ns)
    publish_batches(bootstrap, to, list(batches.values()), layout=LAYOUT_EVENT, partitions=3)


def test_two_backends_on_two_nodes_each_get_their_exact_share(kafka_broker: Broker, tmp_path: Path) -> None:
    # the iptables form of kube-proxy's rules; every connection reported one by one, so the ok
    # ones too are joined to their backend by connection_id (aggregated: the next test)
    assert os.geteuid() == 0, "the end-to-end test needs root (BPF, netns, cgroups)"
    topic = f"e2e-svc2-{os.getpid()}"
    run_plan(
        TWO_BACKENDS,
        tmp_path,
        kafka_broker.bootstrap,
        topic,
        "--kube-proxy",
        "iptables",
        "--agent-arg=--connections=each",
    )
    doc = summary_json(kafka_broker.bootstrap, topic)
    plan = parse_plan(TWO_BACKENDS)
    want: dict[str, Counter[str]] = {"api-1": Counter(), "api-2": Counter()}
    for t, backends in zip(plan.traffic, plan.backend_of(), strict=True):
        for b in backends:
            want[b.split("/")[1]][t.kind] += 1
    got: dict[str, Counter[str]] = {}
    for row in doc["pairs"]:
        assert row["client"]["name"] == "web-1", row
        assert row.get("via") == {"namespace": "shop", "name": "api", "kind": "SERVICE", "port": 80}, row
        assert row["server"]["kind"] == "POD", row  # every connection joined to its backend
        got[row["server"]["name"]] = Counter(
            {
                "client_reset": row["client_resets"],
                "server_reset": row["server_resets"],
                "network_reset": row["network_resets"],
                "ok": row["connections"] - row["client_resets"] - row["server_resets"] - row["network_resets"],
            }
        )
    assert {b: +c for b, c in got.items()} == want
    assert all(want[b] for b in want)  # both backends got some


TWO_BACKENDS_AGGREGATED: dict[str, Any] = {
    "pods": TWO_BACKENDS["pods"],
    "services": [
        *TWO_BACKENDS["services"],
        # no endpoints: kube-proxy's reject, an ICMP port unreachable (refused, no RST anywhere)
        {"namespace": "shop", "name": "none", "port": 80, "targetPort": 9000, "backends": []},
    ],
    "traffic": [
        {"from": "shop/web-1", "service": "shop/api", "kind": "ok", "count": 9},
        {"from": "shop/web-1", "service": "shop/api", "kind": "server_reset", "count": 3},
        {"from": "shop/web-1", "service": "shop/none", "kind": "refused", "count": 3},
        {"from": "shop/web-1", "service": "shop/api", "kind": "ok", "count": 4},
        {"from": "shop/web-1", "service": "shop/api", "kind": "client_reset", "count": 2},
    ],
}


def test_two_backends_on_two_nodes_get_their_exact_shares_of_aggregated_connections(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    """As the chart deploys it: ordinary connections aggregated into flows at both ends (the client's
    name the Service, each backend's name itself), the collector naming each backend's Service ports
    from the EndpointSlices (--resolve-backends). The summary splits the client's flows by backend:
    each backend's row holds exactly the connections kube-proxy gave it, resets and flows alike, and
    no Service row is left. The sim's own check holds every plan to the same (it exits 0)."""
    assert os.geteuid() == 0, "the end-to-end test needs root (BPF, netns, cgroups)"
    topic = f"e2e-svcagg-{os.getpid()}"
    run_plan(TWO_BACKENDS_AGGREGATED, tmp_path, kafka_broker.bootstrap, topic)
    doc = summary_json(kafka_broker.bootstrap, topic)
    plan = parse_plan(TWO_BACKENDS_AGGREGATED)
    want: dict[str, Counter[str]] = {"api-1": Counter(), "api-2": Counter()}
    for t, backends in zip(plan.traffic, plan.backend_of(), strict=True):
        for b in backends:
            want[b.split("/")[1]][t.kind] += 1
    got: dict[str, Counter[str]] = {}
    flows: dict[str, int] = {}
    refused = []
    for row in doc["pairs"]:
        assert row["client"]["name"] == "web-1", row
        if row["via"]["name"] == "none":
            refused.append((row["server"]["name"], row["refused"], row["reset_causes"], row["connections"]))
            continue
        assert row.get("via") == {"namespace": "shop", "name": "api", "kind": "SERVICE", "port": 80}, row
        assert row["server"]["kind"] == "POD", row  # every connection's backend known: no Service row
        name = row["server"]["name"]
        got[name] = Counter(
            {
                "client_reset": row["client_resets"],
                "server_reset": row["server_resets"],
                "ok": row["connections"] - row["client_resets"] - row["server_resets"],
            }
        )
        flows[name] = row["flow_connections"]
    assert {b: +c for b, c in got.items()} == want
    # the ordinary ones came aggregated: each backend's row holds them from the split of flows
    assert flows == {b: want[b]["ok"] for b in want} and all(flows.values())
    # refused by the ICMP of kube-proxy's reject: counted refused, no reset anywhere
    assert refused == [("none", 3, {}, 0)]


NODEPORT: dict[str, Any] = {
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
    # through node-1's and node-2's NodePort: masqueraded to that node's address (externalTrafficPolicy:
    # Cluster), so the backend's sockets and flows name the node as their client
    "traffic": [
        {"from": "shop/web-1", "service": "shop/api", "node": "node-1", "kind": "ok", "count": 4},
        {"from": "shop/web-1", "service": "shop/api", "node": "node-1", "kind": "client_reset", "count": 2},
        {"from": "shop/web-1", "service": "shop/api", "node": "node-2", "kind": "server_reset", "count": 3},
        {"from": "shop/web-1", "service": "shop/api", "node": "node-1", "kind": "network_reset", "count": 2},
        {"from": "shop/web-1", "service": "shop/api", "node": "node-2", "kind": "ok", "count": 3},
    ],
}


def test_a_nodeport_with_snat_counts_each_connection_once_and_judges_no_reset_by_the_nat(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    assert os.geteuid() == 0, "the end-to-end test needs root (BPF, netns, cgroups)"
    topic = f"e2e-np-{os.getpid()}"
    # the sim's own check (each connection once) passed, and the two collector replicas, with their
    # default --metrics-watched-peers (pod,node: the chart's when agents watch host processes), count
    # each connection and each RST once although the client's and the backend's agents stream to
    # different replicas: the backend's peer is the node the NodePort masqueraded it to
    metrics = _metrics_of_two_replicas(NODEPORT, tmp_path, kafka_broker.bootstrap, topic)
    outcomes = {(wl, k[1]): v for wl, counts in metrics.items() for k, v in counts.items() if k[0] == "outcome" and v}
    assert outcomes == {
        ("web", "ok"): 7,
        ("web", "client_reset"): 2,
        ("web", "server_reset"): 3 + 2,  # the forged RSTs: the outcome the client saw
    }, metrics  # none under a node as the client: the backend's view counted nothing again
    senders = Counter(
        k[1] for counts in metrics.values() for k, v in counts.items() if k[0] == "reset" for _ in range(int(v))
    )
    # each RST once, by its sender (the backend's under the node it saw as its client); forged: nobody
    assert senders == Counter({"client": 2, "server": 3}), metrics
    doc = summary_json(kafka_broker.bootstrap, topic)
    totals = _client_totals(doc, "web-1")
    app = next(k for k in totals["causes"] if k.startswith("app/"))
    assert totals == {
        "connections": 14,
        "client_resets": 2,
        "server_resets": 3,
        "network_resets": 2,
        "refused": 0,
        "timeouts": 0,
        "failed": 0,
        "causes": {app: 5, "network/both_ends": 2},
    }
    # every connection is web-1's: none left to the node the backend saw it from
    assert {r["client"]["name"] for r in doc["pairs"]} == {"web-1"}, doc["pairs"]
    joined = [r for r in doc["pairs"] if r["server"]["name"] == "api-1"]
    assert {(r["via"]["kind"], r["via"]["name"], r["via"]["port"]) for r in joined} == {
        ("NODE", "node-1", 30080),
        ("NODE", "node-2", 30080),
    }

    # the live view: each connection once, joined to the backend, via the node port it went through;
    # the backend's flows name the node that SNATed them: the client's flows to it count them
    rows, tally = _live(kafka_broker.bootstrap, topic)
    assert all("row" in r for r in rows), [r for r in rows if "row" not in r]
    assert " 0 shown on their own" in tally, tally
    conns = [r for r in rows if r["row"] == "connection"]
    assert len(conns) == 2 + 3 + 2 + len([r for r in conns if r["ended"] == "ok"]), conns
    assert all(r["client"]["name"] == "web-1" and r["server"]["name"] == "api-1" for r in conns), conns
    assert {(r["via"]["kind"], r["via"]["name"], r["via"]["port"]) for r in conns} == {
        ("NODE", "node-1", 30080),
        ("NODE", "node-2", 30080),
    }
    flows = [r for r in rows if r["row"] == "flow"]
    assert all(r["reported_by"] == "client" for r in flows), flows
    ok_rows = [r for r in conns if r["ended"] == "ok" and not r.get("in_client_flow")]
    assert sum(r["connections"] for r in flows) + len(ok_rows) == 4 + 3, rows
