"""collector/storm_metrics.py (SYN floods, scans) and the traffic metrics of anomalies past the agents'
budget (collector/pair_metrics.py), from hand-made events and aggregates."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from collector.pair_metrics import TrafficMetrics
from collector.storm_metrics import Observers, StormMetrics
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    ANOMALY_LIFECYCLE,
    ANOMALY_RESET_SENT,
    ANOMALY_SYNACK_RETRANSMIT,
    ESTABLISHED,
    EXTERNAL,
    PASSIVE,
    RESET_RECEIVED,
    RESET_SENT,
    SENT,
    SYN_SENT,
    AnomalyAggregate,
    Endpoint,
    TcpEvent,
)
from tests.collector.test_pair_metrics import API, PAIR, WEB, Clock, batch, client_event, conns, pod, sample


def storms(clock: Clock | None = None) -> tuple[StormMetrics, TrafficMetrics]:
    traffic = TrafficMetrics()
    return StormMetrics(traffic.party, window_s=60.0, clock=clock or Clock()), traffic


def value(m: StormMetrics, name: str, **labels: str) -> float:
    reg = CollectorRegistry()
    reg.register(m)
    v = reg.get_sample_value(name, labels)
    return 0.0 if v is None else v


def aggregate(local: Endpoint, remote: Endpoint, **a: object) -> TcpEvent:
    ev = TcpEvent(node="node-2", local=local, remote=remote)
    ev.anomalies.CopyFrom(AnomalyAggregate(**a))  # type: ignore[arg-type]
    return ev


LISTENER = {"server_namespace": "shop", "server_workload": "api", "server_port": "9000"}


def test_syn_flood_synack_retransmits_and_half_open_timeouts_per_listener() -> None:
    m, _ = storms()
    attacker = Endpoint(ip="203.0.113.7", port=50000, kind=EXTERNAL)
    events = []
    for n in (1, 2, 3):  # one request's three retransmits, one by one: one half-open timeout
        ev = TcpEvent(node="node-2", local=pod(*API, port=9000), remote=attacker)
        ev.synack_retransmit.request_retransmit = n
        events.append(ev)
    events.append(
        aggregate(pod(*API, port=9000), attacker, kind=ANOMALY_SYNACK_RETRANSMIT, count=995, first_of_request=True)
    )
    events.append(aggregate(pod(*API, port=9000), attacker, kind=ANOMALY_SYNACK_RETRANSMIT, count=2000))
    m.observe(batch(*events))
    assert value(m, "tcpscope_synack_retransmits_total", **LISTENER) == 3 + 995 + 2000
    assert value(m, "tcpscope_half_open_timeouts_total", **LISTENER) == 1 + 995


def test_a_port_scan_counts_distinct_ports_per_host_once_whoever_saw_each_refusal() -> None:
    clock = Clock()
    m, _ = storms(clock)
    events = []
    for port in range(1000, 1030):
        # the client's own refused lifecycle and the server kernel's RST from no socket: one refusal
        ev = client_event(ending=RESET_RECEIVED, errno=111, last_state=SYN_SENT)
        ev.remote.port = port
        events.append(ev)
        rst = TcpEvent(node="node-2", local=pod(*API, port=port), remote=pod(*WEB, port=40001))
        rst.reset.direction = SENT
        events.append(rst)
    # aggregated refusals of a port already counted add no port
    events.append(
        aggregate(
            pod(*WEB, port=0),
            pod(*API, port=1000),
            kind=ANOMALY_LIFECYCLE,
            role=ACTIVE,
            count=500,
            ending=RESET_RECEIVED,
            errno=111,
            state=SYN_SENT,
        )
    )
    m.observe(batch(*events))
    who = {"client_namespace": "shop", "client_workload": "web"}
    assert value(m, "tcpscope_scan_ports", **who, server_namespace="shop", server_workload="api") == 30
    assert value(m, "tcpscope_scan_hosts", **who, server_port="1000") == 1
    clock.t += 61  # past the window: the gauges forget
    assert value(m, "tcpscope_scan_ports", **who, server_namespace="shop", server_workload="api") == 0


def test_a_horizontal_scan_from_outside_counts_hosts_refusing_one_port() -> None:
    m, _ = storms()
    scanner = Endpoint(ip="203.0.113.9", port=41000, kind=EXTERNAL)
    events = []
    for i in range(25):
        ev = aggregate(Endpoint(ip=f"198.18.{i}.2", port=22), scanner, kind=ANOMALY_RESET_SENT, count=3, no_socket=True)
        events.append(ev)
    # a coarse key (no address, no port) is no evidence of a spread
    events.append(
        aggregate(
            Endpoint(ip="198.18.99.2"), Endpoint(), kind=ANOMALY_RESET_SENT, count=900, no_socket=True, coarse=True
        )
    )
    m.observe(batch(*events))
    assert value(m, "tcpscope_scan_hosts", client_namespace="", client_workload="external", server_port="22") == 25
    text = generate_latest(_registry(m)).decode()
    assert "tcpscope_scan_hosts" in text and "tcpscope_storm_folded_events_total 0.0" in text


def _registry(m: StormMetrics) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(m)
    return reg


def test_the_key_bound_folds_new_sources_into_other() -> None:
    traffic = TrafficMetrics()
    m = StormMetrics(traffic.party, max_keys=3, clock=Clock())
    events = []
    for i in range(5):
        ev = TcpEvent(
            node="n", local=pod("ns", f"srv{i}-1", f"198.18.0.{i}", port=80), remote=Endpoint(ip="203.0.113.1")
        )
        ev.synack_retransmit.request_retransmit = 1
        events.append(ev)
    m.observe(batch(*events))
    assert (
        value(
            m,
            "tcpscope_synack_retransmits_total",
            server_namespace="other",
            server_workload="other",
            server_port="other",
        )
        == 2
    )
    assert m.folded == 2


def test_aggregated_lifecycles_count_in_the_traffic_metrics_and_observers_fan_out() -> None:
    m, t = storms()
    both = Observers(t, m)
    refused = aggregate(
        pod(*WEB),
        pod(*API, port=9000),
        kind=ANOMALY_LIFECYCLE,
        role=ACTIVE,
        count=990,
        ending=RESET_RECEIVED,
        errno=111,
        state=SYN_SENT,
    )
    resets = aggregate(
        pod(*API, port=9000),
        Endpoint(ip="203.0.113.5", kind=EXTERNAL),
        kind=ANOMALY_LIFECYCLE,
        role=PASSIVE,
        count=40,
        ending=RESET_SENT,
        reason_name="TCP_ABORT_ON_DATA",
        state=ESTABLISHED,
        established=True,
        tx_bytes=4000,
        rx_bytes=400,
        retransmits=7,
    )
    both.observe(batch(refused, resets))
    assert conns(t, "refused") == 990
    ext = {**PAIR, "client_namespace": "", "client_workload": "external"}
    assert conns(t, "server_reset", **ext) == 40
    assert sample(t, "tcpscope_resets_total", **ext, sender="server", reason="TCP_ABORT_ON_DATA") == 40
    assert sample(t, "tcpscope_retransmits_total", **ext) == 7
    assert sample(t, "tcpscope_connection_bytes_total", **ext, direction="server_to_client") == 4000
    assert value(m, "tcpscope_scan_hosts", client_namespace="shop", client_workload="web", server_port="9000") == 1
