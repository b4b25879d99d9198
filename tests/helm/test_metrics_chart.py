"""The chart's Grafana dashboard and PrometheusRule, rendered by the real Helm engine, checked by
kubernetes-validate, Prometheus's own `promtool check rules`, and `promtool test rules` with one
firing and one quiet unit test per alert. promtool comes from Debian's `prometheus` package
(scripts/setup.sh): missing, these tests fail."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from collector.config import CollectorConfig
from tests.support.helm import KAFKA, env_of, find, merge, render

METRICS_ON = merge(KAFKA, {"metrics": {"dashboards": {"enabled": True}, "prometheusRule": {"enabled": True}}})
ALERTS = (
    "TcpscopePairResetRateHigh",
    "TcpscopePairRefusedRateHigh",
    "TcpscopePairConnectLatencyRising",
    "TcpscopePairRttRising",
    "TcpscopeSynFloodSuspected",
    "TcpscopeScanSuspected",
    "TcpscopeResetStorm",
    "TcpscopeAgentLosingEvents",
    "TcpscopeAgentDisconnected",
    "TcpscopeCollectorKafkaErrors",
    "TcpscopeAgentClockOffset",
)
PAIR = 'client_namespace="shop",client_workload="web",server_namespace="shop",server_workload="api"'


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (scripts/setup.sh installs it)"
    return path


def dashboard(values: dict[str, Any] = METRICS_ON) -> dict[str, Any]:
    cm = find(render(values), "ConfigMap", "-dashboards")
    (text,) = cm["data"].values()
    doc: dict[str, Any] = json.loads(text)
    return doc


def dashboard_exprs(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of every panel."""
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p["targets"]]


def rule_groups(values: dict[str, Any] = METRICS_ON) -> dict[str, Any]:
    rule = find(render(values), "PrometheusRule")
    groups: dict[str, Any] = rule["spec"]
    return groups


def test_off_by_default() -> None:
    assert not [
        o for o in render(KAFKA) if o["kind"] == "PrometheusRule" or o["metadata"]["name"].endswith("-dashboards")
    ]


def test_dashboard_configmap_is_for_the_grafana_sidecar_and_has_the_panels() -> None:
    objects = render(METRICS_ON)
    cm = find(objects, "ConfigMap", "-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    for version in ("1.30.0", kubernetes_validate.latest_version()):
        kubernetes_validate.validate(cm, version, strict=True)
    doc = dashboard()
    assert doc["uid"] == "tcpscope-tcp-health"
    panels = {p["title"]: p for p in doc["panels"]}
    for title in (
        "Reset rate by pair",
        "Refused rate by pair",
        "Timeout rate by pair",
        "Top talkers (bytes/s)",
        "Retransmitted segments per connection",
        "Connection duration p50 / p99",
        "Open connections by pair",
        "Connect latency p50 / p99 by pair",
        "RTT p50 / p99 by pair",
        "Service map",
        "Agents: events lost per second",
        "Agents connected to a collector",
        "Collectors: Kafka errors per second",
        "Storms: half-open timeouts and SYN-ACK retransmits by listener",
        "Storms: refused ports and hosts per source (scans)",
        "Storms: resets by pair against their own baseline",
    ):
        assert title in panels, title
    assert panels["Service map"]["type"] == "nodeGraph"
    assert {t["refId"] for t in panels["Service map"]["targets"]} == {"nodes", "edges", "edge_problems"}
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    boxes = [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"]) for p in doc["panels"]]
    assert all(x + w <= 24 for x, _, w, _ in boxes)
    for i, (x1, y1, w1, h1) in enumerate(boxes):  # no two panels overlap on Grafana's 24-column grid
        for x2, y2, w2, h2 in boxes[i + 1 :]:
            assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1
    for p in doc["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
    # the sidecar may watch another namespace
    other = dashboard_cm = find(
        render(merge(METRICS_ON, {"metrics": {"dashboards": {"namespace": "grafana"}}})), "ConfigMap", "-dashboards"
    )
    assert other["metadata"]["namespace"] == "grafana" and dashboard_cm is other


def test_every_dashboard_expression_parses_in_promtool(tmp_path: Path) -> None:
    """Each panel's query as a recording rule, so promtool parses it with Prometheus's parser."""
    rules = [
        {"record": f"tcpscope:panel_{i}", "expr": expr.replace("$__rate_interval", "1m").replace("$__range", "1h")}
        for i, (_, expr) in enumerate(dashboard_exprs(dashboard()))
    ]
    f = tmp_path / "panels.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    r = subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout


def test_rule_groups_pass_promtool_check_rules(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump(rule_groups()))
    r = subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 11 rules found" in r.stdout
    alerts = [rule["alert"] for g in rule_groups()["groups"] for rule in g["rules"]]
    assert tuple(alerts) == ALERTS
    # without the collector there is no stream to be disconnected from, nor Kafka
    no_collector = rule_groups({"metrics": {"prometheusRule": {"enabled": True}}})
    assert [r["alert"] for g in no_collector["groups"] for r in g["rules"]] == list(ALERTS[:8])


def _series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def _test(inputs: list[dict[str, str]], alert: str, at: str, fired: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": inputs,
        "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": fired}],
    }


def _unit_tests(thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """A firing and a quiet case per alert; rates are per second over the 5m window, evaluated after
    the alert's `for` (10m for pairs, 5m otherwise) has passed."""
    pair_labels = {
        "client_namespace": "shop",
        "client_workload": "web",
        "server_namespace": "shop",
        "server_workload": "api",
    }
    agent = 'instance="10.0.0.1:9500",namespace="tcpscope",pod="tcpscope-agent-x"'
    agent_labels = {"instance": "10.0.0.1:9500", "namespace": "tcpscope", "pod": "tcpscope-agent-x"}
    coll = 'instance="10.0.0.2:9501",namespace="tcpscope",pod="tcpscope-collector-y"'
    coll_labels = {"instance": "10.0.0.2:9501", "namespace": "tcpscope", "pod": "tcpscope-collector-y"}
    reset_fast = 60 * (thresholds["reset"] * 2)  # per minute: twice the threshold
    reset_slow = 60 * (thresholds["reset"] / 2)
    return [
        # resets: two senders of one pair add up past the threshold / stay below it
        _test(
            [
                _series(
                    "tcpscope_resets_total",
                    PAIR + ',server_port="9000",sender="client",reason="NOT_SPECIFIED"',
                    f"0+{reset_fast / 2}x30",
                ),
                _series(
                    "tcpscope_resets_total",
                    PAIR + ',server_port="9000",sender="server",reason="NOT_SPECIFIED"',
                    f"0+{reset_fast / 2}x30",
                ),
            ],
            "TcpscopePairResetRateHigh",
            "20m",
            [
                {
                    "exp_labels": {**pair_labels, "severity": "warning"},
                    "exp_annotations": {
                        "summary": "Connections from shop/web to shop/api are reset",
                        "description": f"{2 * thresholds['reset']:g} RSTs per second ended established "
                        f"connections of this pair (threshold {thresholds['reset']:g}/s); "
                        "tcpscope_resets_total{sender, reason} says which end sent them and why.",
                    },
                }
            ],
        ),
        _test(
            [
                _series(
                    "tcpscope_resets_total",
                    PAIR + ',server_port="9000",sender="client",reason="NOT_SPECIFIED"',
                    f"0+{reset_slow}x30",
                )
            ],
            "TcpscopePairResetRateHigh",
            "20m",
            [],
        ),
        # refused: only outcome="refused" counts; many ok connections do not
        _test(
            [_series("tcpscope_connections_total", PAIR + ',server_port="9009",outcome="refused"', "0+120x30")],
            "TcpscopePairRefusedRateHigh",
            "20m",
            [
                {
                    "exp_labels": {**pair_labels, "severity": "warning"},
                    "exp_annotations": {
                        "summary": "Connections from shop/web to shop/api are refused",
                        "description": "2 connects per second were refused (nothing listening; threshold 1/s).",
                    },
                }
            ],
        ),
        _test(
            [
                _series("tcpscope_connections_total", PAIR + ',server_port="9000",outcome="ok"', "0+6000x30"),
                _series("tcpscope_connections_total", PAIR + ',server_port="9009",outcome="refused"', "0+30x30"),
            ],
            "TcpscopePairRefusedRateHigh",
            "20m",
            [],
        ),
        # a pair's connect latency (then its RTT) five times its mean of the day before / steady / a
        # rise below the floor (a 0.1 ms loopback pair at 0.5 ms)
        *(
            case
            for metric, alert, what in (
                ("tcpscope_connect_latency_seconds", "TcpscopePairConnectLatencyRising", "connect latency"),
                ("tcpscope_rtt_seconds", "TcpscopePairRttRising", "RTT"),
            )
            for case in _rising_cases(metric, alert, what, pair_labels)
        ),
        *_storm_tests(pair_labels),
        # an agent losing events (its own buffer or upstream) / an agent whose counters stand still
        _test(
            [
                _series(
                    "tcpscope_agent_dropped_events_total",
                    agent + ',reason="buffer_full"',
                    "0 0 0 5 10 15 20 25 30 35 40 45",
                ),
                _series("tcpscope_agent_upstream_lost_events_total", agent + ',reason="kernel.ring_full"', "0x12"),
            ],
            "TcpscopeAgentLosingEvents",
            "11m",
            [
                {
                    "exp_labels": {**agent_labels, "severity": "warning"},
                    "exp_annotations": {
                        "summary": "tcpscope agent 10.0.0.1:9500 is losing events",
                        "description": "83.33m events per second lost (kernel buffer, enrichment or the agent's "
                        "own buffer): its counts are incomplete. tcpscope_agent_*_events_total{reason} says where.",
                    },
                }
            ],
        ),
        _test(
            [
                _series("tcpscope_agent_dropped_events_total", agent + ',reason="buffer_full"', "7x15"),
                _series("tcpscope_agent_upstream_lost_events_total", agent + ',reason="kernel.ring_full"', "3x15"),
                # possible losses only (program runs the kernel skipped): no alert
                _series(
                    "tcpscope_agent_upstream_lost_events_total", agent + ',reason="kernel.recursion_misses"', "0+50x15"
                ),
            ],
            "TcpscopeAgentLosingEvents",
            "14m",
            [],
        ),
        # disconnected for longer than `for` / a short reconnect
        _test(
            [_series("tcpscope_agent_stream_connected", agent, "1 1 0 0 0 0 0 0 0 0")],
            "TcpscopeAgentDisconnected",
            "9m",
            [
                {
                    "exp_labels": {**agent_labels, "severity": "critical"},
                    "exp_annotations": {
                        "summary": "tcpscope agent 10.0.0.1:9500 is connected to no collector",
                        "description": "The agent buffers its events and drops the oldest once its buffer is full; "
                        "tcpscope_agent_stream_reconnects_total{code} says why it cannot connect.",
                    },
                }
            ],
        ),
        _test(
            [_series("tcpscope_agent_stream_connected", agent, "1 1 0 0 1 1 0 1 1 1")],
            "TcpscopeAgentDisconnected",
            "9m",
            [],
        ),
        # Kafka errors / none
        _test(
            [_series("tcpscope_collector_kafka_errors_total", coll + ',error="KafkaTimeoutError"', "0+2x15")],
            "TcpscopeCollectorKafkaErrors",
            "14m",
            [
                {
                    "exp_labels": {**coll_labels, "severity": "critical"},
                    "exp_annotations": {
                        "summary": "tcpscope collector 10.0.0.2:9501 fails to publish to Kafka",
                        "description": "33.33m failed publishes per second: agents reconnect and resend, and buffer "
                        "meanwhile.",
                    },
                }
            ],
        ),
        _test(
            [_series("tcpscope_collector_kafka_errors_total", coll + ',error="KafkaTimeoutError"', "4x15")],
            "TcpscopeCollectorKafkaErrors",
            "14m",
            [],
        ),
        # an agent's clock off by -5 s for longer than `for`, seen by two collectors / off by 0.3 s,
        # or by 5 s for only a moment
        _test(
            [
                _series("tcpscope_agent_clock_offset_seconds", coll + ',node="n1",agent="n1/7"', "-5x10"),
                _series(
                    "tcpscope_agent_clock_offset_seconds",
                    'instance="10.0.0.3:9501",namespace="tcpscope",pod="tcpscope-collector-z",node="n1",agent="n1/7"',
                    "-4.9x10",
                ),
            ],
            "TcpscopeAgentClockOffset",
            "8m",
            [
                {
                    "exp_labels": {"node": "n1", "agent": "n1/7", "severity": "warning"},
                    "exp_annotations": {
                        "summary": "The clock of node n1 is off",
                        "description": f"Agent n1/7's clock is 5s off the collector's (threshold "
                        f"{thresholds.get('clock', 1):g}s): its NTP is broken. Readers correct event times by the "
                        "measured offset (docs/kafka.md, Clocks); past --max-event-ahead or --max-event-age its "
                        "events are left out and counted.",
                    },
                }
            ],
        ),
        _test(
            [
                _series("tcpscope_agent_clock_offset_seconds", coll + ',node="n1",agent="n1/7"', "0.3x10"),
                _series("tcpscope_agent_clock_offset_seconds", coll + ',node="n2",agent="n2/1"', "0 0 5 5 0 0 0 0 0 0"),
            ],
            "TcpscopeAgentClockOffset",
            "8m",
            [],
        ),
    ]


def _rising_cases(metric: str, alert: str, what: str, pair_labels: dict[str, str]) -> list[dict[str, Any]]:
    """One sample a second for a day and 40 minutes; the mean per sample from the sums' slope."""
    port = PAIR + ',server_port="5432"'
    count = _series(f"{metric}_count", port, "0+60x1500")

    def run(sums: str, fired: list[dict[str, Any]]) -> dict[str, Any]:
        return _test([count, _series(f"{metric}_sum", port, sums)], alert, "1480m", fired)

    description = (
        "5ms on average over the last 5m: more than 2 times this pair's own mean over the 1d before "
        f"({metric} by pair; at least 0.05 samples a second, above 0.001s)."
    )
    summary = f"The {what} from shop/web to shop/api is rising"
    return [
        run(
            "0+0.06x1440 86.7+0.3x59",  # 1 ms, then 5 ms
            [
                {
                    "exp_labels": {**pair_labels, "severity": "warning"},
                    "exp_annotations": {"summary": summary, "description": description},
                }
            ],
        ),
        run("0+0.06x1500", []),  # 1 ms all along
        run("0+0.006x1440 8.67+0.03x59", []),  # 0.1 ms, then 0.5 ms: five times, but under the floor
    ]


def _storm_tests(pair_labels: dict[str, str]) -> list[dict[str, Any]]:
    """SYN flood, scan and reset storm: a firing and a quiet case each, with the chart's defaults."""
    listener = 'server_namespace="shop",server_workload="api",server_port="9000"'
    listener_labels = {"server_namespace": "shop", "server_workload": "api", "server_port": "9000"}
    client = 'client_namespace="shop",client_workload="web"'
    reset = PAIR + ',server_port="9000",sender="server",reason="NOT_SPECIFIED"'
    storm_description = (
        "{v} RSTs per second ended established connections of this pair: more than 10 times its own rate over "
        "the 1h that ended 15m ago (or it had none), and above 1/s."
    )
    return [
        # 20 half-open timeouts per second at one listener / 5 per second
        _test(
            [_series("tcpscope_half_open_timeouts_total", listener, "0+1200x15")],
            "TcpscopeSynFloodSuspected",
            "10m",
            [
                {
                    "exp_labels": {**listener_labels, "severity": "warning"},
                    "exp_annotations": {
                        "summary": "shop/api:9000 may be under a SYN flood",
                        "description": "20 half-open connections per second timed out waiting for the handshake's "
                        "last ACK at this listener (threshold 10/s); tcpscope_synack_retransmits_total counts the "
                        "SYN-ACKs it sent again.",
                    },
                }
            ],
        ),
        _test(
            [
                _series("tcpscope_half_open_timeouts_total", listener, "0+300x15"),
                _series("tcpscope_synack_retransmits_total", listener, "0+6000x15"),  # retransmits alone: no
            ],
            "TcpscopeSynFloodSuspected",
            "10m",
            [],
        ),
        # refused on 30 ports of one host / on 5 ports and 3 hosts
        _test(
            [_series("tcpscope_scan_ports", client + ',server_namespace="shop",server_workload="api"', "30x10")],
            "TcpscopeScanSuspected",
            "5m",
            [
                {
                    "exp_labels": {"client_namespace": "shop", "client_workload": "web", "severity": "warning"},
                    "exp_annotations": {
                        "summary": "shop/web may be scanning",
                        "description": "Its connects were refused on 30 distinct ports of one host, or on one port "
                        "of as many hosts, within the scan window (thresholds 20 ports, 20 hosts); "
                        "tcpscope_scan_ports and tcpscope_scan_hosts say where.",
                    },
                }
            ],
        ),
        _test(
            [
                _series("tcpscope_scan_ports", client + ',server_namespace="shop",server_workload="api"', "5x10"),
                _series("tcpscope_scan_hosts", client + ',server_port="22"', "3x10"),
            ],
            "TcpscopeScanSuspected",
            "5m",
            [],
        ),
        # 0.1 RST/s for 70 minutes, then 10/s: ten times the hour before / steady 5/s for 80 minutes
        _test(
            [_series("tcpscope_resets_total", reset, "0+6x70 1020+600x20")],
            "TcpscopeResetStorm",
            "78m",
            [
                {
                    "exp_labels": {**pair_labels, "severity": "warning"},
                    "exp_annotations": {
                        "summary": "Resets from shop/web to shop/api jumped",
                        "description": storm_description.format(v="10"),
                    },
                }
            ],
        ),
        _test([_series("tcpscope_resets_total", reset, "0+300x80")], "TcpscopeResetStorm", "78m", []),
        # a new pair (no resets before 8m), no baseline yet: above minRate is enough / below it is not
        _test(
            [_series("tcpscope_resets_total", reset, "_x8 0+300x15")],
            "TcpscopeResetStorm",
            "16m",
            [
                {
                    "exp_labels": {**pair_labels, "severity": "warning"},
                    "exp_annotations": {
                        "summary": "Resets from shop/web to shop/api jumped",
                        "description": storm_description.format(v="5"),
                    },
                }
            ],
        ),
        _test([_series("tcpscope_resets_total", reset, "_x8 0+30x15")], "TcpscopeResetStorm", "16m", []),
    ]


def _promtool_test(tmp_path: Path, values: dict[str, Any], thresholds: dict[str, float]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups(values)))
    tests = tmp_path / "tests.yaml"
    tests.write_text(
        yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": _unit_tests(thresholds)})
    )
    r = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@pytest.mark.slow  # promtool over every alert: about 10 s each (the host suite runs it)
def test_each_alert_fires_and_stays_quiet_in_promtool_unit_tests(tmp_path: Path) -> None:
    _promtool_test(tmp_path, METRICS_ON, {"reset": 1})


@pytest.mark.slow  # promtool over every alert: about 10 s each (the host suite runs it)
def test_thresholds_are_values(tmp_path: Path) -> None:
    values = merge(METRICS_ON, {"metrics": {"prometheusRule": {"alerts": {"pairResetRate": {"threshold": 5}}}}})
    expr = rule_groups(values)["groups"][0]["rules"][0]["expr"]
    assert expr.endswith("> 5")
    _promtool_test(tmp_path, values, {"reset": 5})


def test_traffic_settings_become_collector_variables_it_accepts() -> None:
    values = merge(
        METRICS_ON,
        {
            "metrics": {
                "traffic": {
                    "by": "pod",
                    "excludeNamespaces": ["kube-system", "x"],
                    "maxSeries": 5000,
                    "ttlSeconds": 600,
                }
            }
        },
    )
    dep = find(render(values), "Deployment", "-collector")
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    traffic = {k: v for k, v in env.items() if k.startswith("TCPSCOPE_METRICS_")}
    assert traffic == {
        "TCPSCOPE_METRICS_PORT": "9501",
        "TCPSCOPE_METRICS_ADDRESS": "0.0.0.0",
        "TCPSCOPE_METRICS_BY": "pod",
        "TCPSCOPE_METRICS_NAMESPACES": "",
        "TCPSCOPE_METRICS_EXCLUDE_NAMESPACES": "kube-system,x",
        "TCPSCOPE_METRICS_MAX_SERIES": "5000",
        "TCPSCOPE_METRICS_TTL": "600",
        "TCPSCOPE_METRICS_WATCHED_PEERS": "pod,node",
        "TCPSCOPE_METRICS_SCAN_WINDOW": "60",
    }
    cfg = CollectorConfig.from_args([], env={**traffic, "TCPSCOPE_KAFKA_BOOTSTRAP": "k:9092"})
    assert (
        cfg.metrics_by,
        cfg.metrics_namespaces,
        cfg.metrics_exclude_namespaces,
        cfg.metrics_max_series,
        cfg.metrics_ttl,
    ) == ("pod", (), ("kube-system", "x"), 5000, 600.0)


@pytest.mark.parametrize(
    ("values", "peers"),
    [
        ({}, ("pod", "node")),  # agents watch every cgroup, host processes too
        ({"agent": {"cgroupRoot": "/sys/fs/cgroup/kubepods.slice"}}, ("pod",)),  # agents watch pods alone
        ({"metrics": {"traffic": {"watchedPeers": ["pod"]}}}, ("pod",)),
        (
            {"agent": {"cgroupRoot": "/kubepods"}, "metrics": {"traffic": {"watchedPeers": ["pod", "node"]}}},
            ("pod", "node"),
        ),
    ],
)
def test_watched_peers_follow_what_the_agents_watch(values: dict[str, Any], peers: tuple[str, ...]) -> None:
    """The counting rule's watched peers as the chart derives them: with agents on host processes too
    (no agent.cgroupRoot), a node as the peer is watched, so a NodePort's SNATed connection is counted
    once (by the client's socket), docs/metrics.md."""
    dep = find(render(merge(METRICS_ON, values)), "Deployment", "-collector")
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    cfg = CollectorConfig.from_args([], env={**env, "TCPSCOPE_KAFKA_BOOTSTRAP": "k:9092"})
    assert cfg.metrics_watched_peers == peers
