"""collector/pair_metrics.py: the traffic metrics per pair, from hand-made lifecycle events and flows."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from collector.config import CollectorConfig
from collector.pair_metrics import (
    DURATION_BOUNDS_S,
    DURATION_EXPONENTS,
    TrafficMetrics,
    build_traffic_metrics,
    log2_bucket,
)
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    CLOSE,
    ERROR,
    EXTERNAL,
    FIN_WAIT1,
    HOST,
    LAST_ACK,
    LISTEN,
    NODE,
    NORMAL,
    PASSIVE,
    POD,
    RESET_RECEIVED,
    RESET_SENT,
    SERVICE,
    SYN_SENT,
    Endpoint,
    EventBatch,
    Flow,
    Lifecycle,
    OpenConnection,
    TcpEvent,
    Workload,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def pod(ns: str, name: str, ip: str, port: int = 0, workload: str = "") -> Endpoint:
    wl = workload or name.rsplit("-", 1)[0]
    return Endpoint(ip=ip, port=port, kind=POD, namespace=ns, name=name, workload=Workload(kind="Deployment", name=wl))


WEB = ("shop", "web-1", "198.18.1.2")
API = ("shop", "api-1", "198.18.2.2")


def lifecycle(local: Endpoint, remote: Endpoint, role: int, node: str = "node-1", **lc: object) -> TcpEvent:
    defaults = {"duration_ns": 3_000_000, "ending": NORMAL, "last_state": FIN_WAIT1 if role == ACTIVE else LAST_ACK}
    ev = TcpEvent(node=node, local=local, remote=remote, socket_id=1)
    ev.lifecycle.CopyFrom(Lifecycle(role=role, **{**defaults, **lc}))  # type: ignore[arg-type]
    return ev


def client_event(**lc: object) -> TcpEvent:
    """The client's (web-1) socket of a connection to api-1:9000, both ends pods."""
    return lifecycle(pod(*WEB, port=40001), pod(*API, port=9000), ACTIVE, "node-1", **lc)


def server_event(client: Endpoint | None = None, **lc: object) -> TcpEvent:
    """The server's (api-1:9000) socket of a connection from web-1 (or from `client`)."""
    return lifecycle(pod(*API, port=9000), client or pod(*WEB, port=40001), PASSIVE, node="node-2", **lc)


def flow_event(role: int, local: Endpoint, remote: Endpoint, **f: object) -> TcpEvent:
    ev = TcpEvent(node="node-1", local=local, remote=remote)
    ev.flow.CopyFrom(Flow(role=role, source=1, **f))  # type: ignore[arg-type]
    return ev


_seq = iter(range(1, 10**9))


def batch(*events: TcpEvent, agent: str = "node-1-a") -> EventBatch:
    return EventBatch(schema_version=1, node="node-1", agent_id=agent, sequence=next(_seq), events=events)


def sample(t: TrafficMetrics, name: str, **labels: str) -> float:
    reg = CollectorRegistry()
    reg.register(t)
    v = reg.get_sample_value(name, labels)
    return 0.0 if v is None else v


PAIR = {
    "client_namespace": "shop",
    "client_workload": "web",
    "server_namespace": "shop",
    "server_workload": "api",
    "server_port": "9000",
}


def conns(t: TrafficMetrics, outcome: str, **pair: str) -> float:
    return sample(t, "tcpscope_connections_total", **{**PAIR, **pair}, outcome=outcome)


def test_both_ends_watched_counts_the_connection_once_by_the_client() -> None:
    t = TrafficMetrics()
    # the two sockets' events in different batches, as if from two agents (or two replicas' worth)
    t.observe(batch(client_event(tx_bytes=300, rx_bytes=70)))
    t.observe(batch(server_event(tx_bytes=70, rx_bytes=300), agent="node-2-a"))
    assert conns(t, "ok") == 1
    assert sample(t, "tcpscope_connection_bytes_total", **PAIR, direction="client_to_server") == 300
    assert sample(t, "tcpscope_connection_bytes_total", **PAIR, direction="server_to_client") == 70
    assert sample(t, "tcpscope_connection_duration_seconds_count", **PAIR) == 1


def test_a_server_view_the_client_counts_makes_no_series() -> None:
    """A replica that only receives the server's batches holds nothing for connections whose client
    is watched, unless the server retransmitted or sent the RST."""
    t = TrafficMetrics()
    t.observe(
        batch(
            server_event(tx_bytes=70, rx_bytes=300),
            flow_event(PASSIVE, pod(*API, port=9000), pod(*WEB), connections=3, duration_us_log2=[3]),
        )
    )
    assert t.pairs == 0 and t.series == 0
    t.observe(batch(server_event(retransmits=2)))
    assert t.pairs == 1 and conns(t, "ok") == 0
    assert sample(t, "tcpscope_retransmits_total", **PAIR) == 2


def test_server_counts_when_the_client_is_not_watched() -> None:
    t = TrafficMetrics()
    outside = Endpoint(ip="203.0.113.9", port=51000, kind=EXTERNAL)
    t.observe(batch(server_event(outside, tx_bytes=5, rx_bytes=9)))
    pair = {"client_namespace": "", "client_workload": "external"}
    assert conns(t, "ok", **pair) == 1
    assert sample(t, "tcpscope_connection_bytes_total", **{**PAIR, **pair}, direction="client_to_server") == 9
    # a client on a node's host: watched with --metrics-watched-peers node (the default), not without
    node_client = Endpoint(ip="198.19.255.1", port=51001, kind=NODE, name="node-1")
    t.observe(batch(server_event(node_client)))
    assert conns(t, "ok", client_namespace="", client_workload="node/node-1") == 0
    t2 = TrafficMetrics(watched_peers=("pod",))
    t2.observe(batch(server_event(node_client)))
    assert conns(t2, "ok", client_namespace="", client_workload="node/node-1") == 1


def test_host_loopback_on_one_node_counts_once() -> None:
    t = TrafficMetrics()
    host_c = Endpoint(ip="127.0.0.1", port=40000, kind=HOST, node="node-1")
    host_s = Endpoint(ip="127.0.0.1", port=22, kind=HOST, node="node-1")
    as_node_s = Endpoint(ip="127.0.0.1", port=22, kind=NODE, name="node-1")
    as_node_c = Endpoint(ip="127.0.0.1", port=40000, kind=NODE, name="node-1")
    t.observe(batch(lifecycle(host_c, as_node_s, ACTIVE), lifecycle(host_s, as_node_c, PASSIVE)))
    assert (
        sample(
            t,
            "tcpscope_connections_total",
            client_namespace="",
            client_workload="host",
            server_namespace="",
            server_workload="node/node-1",
            server_port="22",
            outcome="ok",
        )
        == 1
    )
    assert (
        sample(
            t,
            "tcpscope_connections_total",
            client_namespace="",
            client_workload="node/node-1",
            server_namespace="",
            server_workload="host",
            server_port="22",
            outcome="ok",
        )
        == 0
    )


@pytest.mark.parametrize(
    ("client_lc", "server_lc", "outcome", "resets"),
    [
        ({"ending": RESET_RECEIVED, "errno": 111, "last_state": SYN_SENT}, None, "refused", {}),
        ({"ending": ERROR, "errno": 110, "last_state": SYN_SENT}, None, "timeout", {}),
        ({"ending": ERROR, "errno": 113, "last_state": SYN_SENT}, None, "failed", {}),
        (
            {"ending": RESET_SENT, "errno": 104, "reset_reason": 2, "reset_reason_name": "NOT_SPECIFIED"},
            {"ending": RESET_RECEIVED, "errno": 104},
            "client_reset",
            {("client", "NOT_SPECIFIED"): 1},
        ),
        (
            {"ending": RESET_RECEIVED, "errno": 104},
            {"ending": RESET_SENT, "reset_reason": 5, "reset_reason_name": "TCP_ABORT_ON_CLOSE"},
            "server_reset",
            {("server", "TCP_ABORT_ON_CLOSE"): 1},
        ),
        ({"ending": ERROR, "errno": 110}, {"ending": NORMAL}, "timeout", {}),
    ],
)
def test_outcomes_and_resets_with_both_ends_watched(
    client_lc: dict[str, int], server_lc: dict[str, int] | None, outcome: str, resets: dict[tuple[str, str], int]
) -> None:
    t = TrafficMetrics()
    events = [client_event(**client_lc)]
    if server_lc is not None:
        events.append(server_event(None, **server_lc))
    t.observe(batch(*events))
    assert {o: conns(t, o) for o in ("ok", "client_reset", "server_reset", "refused", "timeout", "failed")} == {
        o: (1 if o == outcome else 0) for o in ("ok", "client_reset", "server_reset", "refused", "timeout", "failed")
    }
    for sender in ("client", "server"):
        for reason in ("NOT_SPECIFIED", "TCP_ABORT_ON_CLOSE", "UNKNOWN"):
            want = resets.get((sender, reason), 0)
            assert sample(t, "tcpscope_resets_total", **PAIR, sender=sender, reason=reason) == want
    # only established connections have a duration
    established = outcome in ("ok", "client_reset", "server_reset") or server_lc is not None
    assert sample(t, "tcpscope_connection_duration_seconds_count", **PAIR) == (1 if established else 0)


def test_reset_from_an_unwatched_sender_is_counted_by_the_receiver() -> None:
    t = TrafficMetrics()
    outside = Endpoint(ip="203.0.113.9", port=51000, kind=EXTERNAL)
    t.observe(batch(server_event(outside, ending=RESET_RECEIVED, errno=104)))
    pair = {**PAIR, "client_namespace": "", "client_workload": "external"}
    assert sample(t, "tcpscope_connections_total", **pair, outcome="client_reset") == 1
    assert sample(t, "tcpscope_resets_total", **pair, sender="client", reason="UNKNOWN") == 1


def test_retransmits_are_each_sockets_own_segments() -> None:
    t = TrafficMetrics()
    t.observe(batch(client_event(retransmits=3), server_event(retransmits=4)))
    assert sample(t, "tcpscope_retransmits_total", **PAIR) == 7
    assert conns(t, "ok") == 1


def test_listeners_and_sockets_without_role_are_skipped() -> None:
    t = TrafficMetrics()
    listener = lifecycle(pod(*API, port=9000), Endpoint(ip="0.0.0.0"), PASSIVE, last_state=LISTEN)
    old = lifecycle(pod(*WEB, port=40001), pod(*API, port=9000), 0)
    t.observe(batch(listener, old))
    assert t.skipped == {"listener": 1, "no_role": 1}
    assert t.pairs == 0


def test_duration_buckets_are_powers_of_two_microseconds_and_flows_map_exactly() -> None:
    assert tuple(range(8, 31, 2)) == DURATION_EXPONENTS
    assert DURATION_BOUNDS_S[:3] == (0.000256, 0.001024, 0.004096)
    assert [log2_bucket(us) for us in (0, 1, 1023, 1024, 2**40)] == [0, 0, 9, 10, 31]
    one_by_one, aggregated = TrafficMetrics(), TrafficMetrics()
    durations_us = [0, 1, 255, 256, 300, 1023, 1024, 5000, 70_000, 3_000_000, 2**31 + 5]
    for us in durations_us:
        one_by_one.observe(batch(client_event(duration_ns=us * 1000)))
    hist = [0] * 32
    for us in durations_us:
        hist[log2_bucket(us)] += 1
    while hist and hist[-1] == 0:
        hist.pop()
    aggregated.observe(
        batch(
            flow_event(
                ACTIVE,
                pod(*WEB),
                pod(*API, port=9000),
                connections=len(durations_us),
                duration_us_log2=hist,
                duration_sum_ns=sum(durations_us) * 1000,
            )
        )
    )
    for le in [*(repr(b) for b in DURATION_BOUNDS_S), "+Inf"]:
        a = sample(one_by_one, "tcpscope_connection_duration_seconds_bucket", **PAIR, le=le)
        b = sample(aggregated, "tcpscope_connection_duration_seconds_bucket", **PAIR, le=le)
        assert a == b, le
    # by hand: < 256 us is [0, 1, 255] (255 us is bucket 7 = [128, 256) us); 256 us counts one bucket up
    assert sample(aggregated, "tcpscope_connection_duration_seconds_bucket", **PAIR, le="0.000256") == 3
    assert sample(aggregated, "tcpscope_connection_duration_seconds_bucket", **PAIR, le="0.001024") == 6
    assert sample(aggregated, "tcpscope_connection_duration_seconds_bucket", **PAIR, le="0.004096") == 7
    assert sample(aggregated, "tcpscope_connection_duration_seconds_bucket", **PAIR, le="1073.741824") == 10
    assert sample(aggregated, "tcpscope_connection_duration_seconds_bucket", **PAIR, le="+Inf") == 11
    s = sum(durations_us) / 1e6
    assert sample(one_by_one, "tcpscope_connection_duration_seconds_sum", **PAIR) == pytest.approx(s)
    assert sample(aggregated, "tcpscope_connection_duration_seconds_sum", **PAIR) == pytest.approx(s)


def test_flows_count_their_connections_ok_once() -> None:
    t = TrafficMetrics()
    # both ends watched: the client's flow counts, the server's does not
    client_flow = flow_event(
        ACTIVE,
        pod(*WEB),
        pod(*API, port=9000),
        connections=40,
        tx_bytes=4000,
        rx_bytes=800,
        duration_us_log2=[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40],
        duration_sum_ns=40 * 1_500_000,
    )
    server_flow = flow_event(
        PASSIVE,
        pod(*API, port=9000),
        pod(*WEB),
        connections=40,
        tx_bytes=800,
        rx_bytes=4000,
        duration_us_log2=[0] * 10 + [40],
        duration_sum_ns=40 * 1_400_000,
    )
    t.observe(batch(client_flow))
    t.observe(batch(server_flow, agent="node-2-a"))
    assert conns(t, "ok") == 40
    assert sample(t, "tcpscope_connection_bytes_total", **PAIR, direction="client_to_server") == 4000
    assert sample(t, "tcpscope_connection_bytes_total", **PAIR, direction="server_to_client") == 800
    assert sample(t, "tcpscope_connection_duration_seconds_bucket", **PAIR, le="0.001024") == 0
    assert sample(t, "tcpscope_connection_duration_seconds_bucket", **PAIR, le="0.004096") == 40
    assert sample(t, "tcpscope_connection_duration_seconds_sum", **PAIR) == pytest.approx(0.06)
    # with lifecycles of the same pair: flows and single connections add up
    t.observe(batch(client_event(), client_event(ending=RESET_SENT)))
    assert conns(t, "ok") == 41 and conns(t, "client_reset") == 1
    # a server's flow from an unwatched client counts
    outside = Endpoint(ip="203.0.113.9", kind=EXTERNAL)
    t.observe(
        batch(
            flow_event(
                PASSIVE,
                pod(*API, port=9000),
                outside,
                connections=7,
                tx_bytes=1,
                rx_bytes=2,
                duration_us_log2=[7],
                duration_sum_ns=7,
            )
        )
    )
    assert conns(t, "ok", client_namespace="", client_workload="external") == 7


def test_labels_by_workload_pod_namespace_and_stable_names_for_non_pods() -> None:
    web = pod(*WEB, port=40001)
    ends = {
        "pod": pod(*API, port=9000),
        "service": Endpoint(ip="198.19.0.1", port=80, kind=SERVICE, namespace="shop", name="cart"),
        "node": Endpoint(ip="198.19.255.3", port=10250, kind=NODE, name="node-3"),
        "external": Endpoint(ip="203.0.113.1", port=443, kind=EXTERNAL),
        "unresolved": Endpoint(ip="203.0.113.2", port=443),
        "unknown pod": Endpoint(ip="198.18.3.77", port=8080, kind=POD, node="node-3"),
    }
    want = {
        "workload": {
            "pod": ("shop", "api"),
            "service": ("shop", "cart"),
            "node": ("", "node/node-3"),
            "external": ("", "external"),
            "unresolved": ("", "unresolved"),
            "unknown pod": ("", "unknown"),
        },
        "pod": {"pod": ("shop", "api-1")},
        "namespace": {"pod": ("shop", ""), "service": ("shop", ""), "node": ("", "node/node-3")},
    }
    for by, names in want.items():
        t = TrafficMetrics(by=by)
        for what, (ns, wl) in names.items():
            assert t.party(ends[what]) == (ns, wl), (by, what)
        assert t.party(Endpoint(kind=HOST, node="node-1")) == ("", "host")
        t.observe(batch(lifecycle(web, ends["pod"], ACTIVE)))
        cwl = {"workload": "web", "pod": "web-1", "namespace": ""}[by]
        swl = names["pod"][1]
        assert conns(t, "ok", client_workload=cwl, server_workload=swl) == 1, by


def test_namespace_include_and_exclude() -> None:
    data = pod("data", "db-1", "198.18.3.2", 5432)
    kube = pod("kube-system", "coredns-1", "198.18.3.3", 53)
    events = [
        lifecycle(pod(*WEB), pod(*API, port=9000), ACTIVE),
        lifecycle(pod(*WEB), data, ACTIVE),
        lifecycle(pod(*WEB), kube, ACTIVE),
    ]
    t = TrafficMetrics(exclude_namespaces=["kube-system"])
    t.observe(batch(*events))
    assert t.pairs == 2 and t.skipped == {"namespace_filter": 1}
    t = TrafficMetrics(namespaces=["data"])
    t.observe(batch(*events))
    assert t.pairs == 1 and t.skipped == {"namespace_filter": 2}
    assert conns(t, "ok", server_namespace="data", server_workload="db", server_port="5432") == 1


def test_a_repeated_batch_is_counted_once() -> None:
    t = TrafficMetrics()
    b = batch(client_event())
    t.observe(b)
    t.observe(b)
    assert conns(t, "ok") == 1 and t.duplicates == 1


def _churn_event(i: int) -> TcpEvent:
    """A connection from a pod of a short-lived workload (a new name each time: pods churning)."""
    return lifecycle(
        pod("churn", f"job-{i}-1", f"198.18.{i // 250 % 250}.{i % 250 + 2}", 40000, f"job-{i}"),
        pod(*API, port=9000),
        ACTIVE,
    )


def test_series_bound_folds_new_pairs_into_other_and_ttl_removes_stale_ones() -> None:
    clock = Clock()
    per_pair = 1 + 3 + len(DURATION_BOUNDS_S) + 3  # one outcome, retransmits, 2 byte directions, histogram
    t = TrafficMetrics(max_series=10 * per_pair, ttl_s=60, clock=clock)
    for i in range(25):
        t.observe(batch(_churn_event(i)))
    # 9 pairs fit beside the room the `other` pair needs; the rest fold into it
    assert t.pairs == 10 and t.folded == 16 and t.series == 10 * per_pair
    other = {
        k: "other"
        for k in ("client_namespace", "client_workload", "server_namespace", "server_workload", "server_port")
    }
    assert sample(t, "tcpscope_connections_total", **other, outcome="ok") == 16
    assert sample(t, "tcpscope_traffic_folded_events_total") == 16
    assert sample(t, "tcpscope_traffic_series") == 10 * per_pair
    # an hour later nothing was updated: all gone, and new pairs get in again
    clock.t += 3600
    assert t.expire() == 10
    assert t.pairs == 0 and t.series == 0 and t.expired == 10
    t.observe(batch(_churn_event(100)))
    assert t.pairs == 1 and sample(t, "tcpscope_connections_total", **other, outcome="ok") == 0


def _feed(t: TrafficMetrics, events: list[TcpEvent]) -> int:
    """Count the events in batches of 100; returns the Python memory traced now."""
    for i in range(0, len(events), 100):
        t.observe(batch(*events[i : i + 100]))
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_memory_per_series_and_churn_stay_bounded() -> None:
    """Pods churn far beyond the bound and the TTL: series and memory stay bounded. Also prints the
    measured memory per series (docs/metrics.md quotes it)."""
    clock = Clock()
    per_pair = 1 + 3 + len(DURATION_BOUNDS_S) + 3
    bound = 2000 * per_pair
    rounds = [[_churn_event(r * 10_000 + i) for i in range(3000)] for r in range(11)]  # 3000 pods a round
    gc.collect()
    tracemalloc.start()
    try:
        t = TrafficMetrics(max_series=bound, ttl_s=900, clock=clock)
        base = tracemalloc.get_traced_memory()[0]
        first = _feed(t, rounds[0]) - base
        pairs, series = t.pairs, t.series
        print(
            f"\nmemory: {first / pairs:.0f} bytes per pair, {first / series:.0f} bytes per series "
            f"({pairs} pairs, {series} series)"
        )
        assert pairs == 1999 + 1 and series == bound  # 1999 pairs and `other`
        assert t.folded == 1001
        assert first / series < 100  # measured 48 (a pair of 19 series: about 0.9 KiB)
        # ten rounds of new pods, each past the TTL of the one before: nothing accumulates
        for r in range(1, 11):
            clock.t += 1000
            held = _feed(t, rounds[r]) - base
            assert t.series <= bound and t.pairs <= 2000
            assert held < 1.25 * first, (r, held, first)
    finally:
        tracemalloc.stop()
    assert t.expired == 10 * 2000


def test_exposition_is_valid_text_format() -> None:
    reg = CollectorRegistry()
    t = TrafficMetrics()
    reg.register(t)
    t.observe(
        batch(
            client_event(ending=RESET_SENT, reset_reason_name="NOT_SPECIFIED"),
            client_event(ending=RESET_RECEIVED, errno=111, last_state=CLOSE),
        )
    )
    text = generate_latest(reg).decode()
    assert "# TYPE tcpscope_connections_total counter" in text
    assert "# TYPE tcpscope_connection_duration_seconds histogram" in text
    assert (
        'tcpscope_resets_total{client_namespace="shop",client_workload="web",reason="NOT_SPECIFIED",'
        'sender="client",server_namespace="shop",server_port="9000",server_workload="api"} 1.0'
    ) in text


def test_config_flags() -> None:
    cfg = CollectorConfig.from_args(
        [
            "--kafka-bootstrap",
            "k:9092",
            "--metrics-by",
            "pod",
            "--metrics-namespaces",
            "a,b",
            "--metrics-exclude-namespaces",
            "kube-system",
            "--metrics-max-series",
            "500",
            "--metrics-ttl",
            "60",
            "--metrics-watched-peers",
            "pod,node",
        ],
        env={},
    )
    assert (
        cfg.metrics_by,
        cfg.metrics_namespaces,
        cfg.metrics_exclude_namespaces,
        cfg.metrics_max_series,
        cfg.metrics_ttl,
        cfg.metrics_watched_peers,
    ) == ("pod", ("a", "b"), ("kube-system",), 500, 60.0, ("pod", "node"))
    defaults = CollectorConfig.from_args(["--kafka-bootstrap", "k:9092"], env={})
    assert (defaults.metrics_by, defaults.metrics_ttl, defaults.metrics_watched_peers) == (
        "workload",
        900.0,
        ("pod", "node"),
    )
    with pytest.raises(SystemExit):
        CollectorConfig.from_args(["--kafka-bootstrap", "k:9092", "--metrics-by", "ip"], env={})


def test_two_replicas_sum_to_each_connection_once() -> None:
    """Batches of the two ends' agents reach different replicas at random: the sum over replicas
    (`sum without(instance)`) is still each connection once, by outcome."""
    import random

    rng = random.Random(7)
    replicas = [TrafficMetrics(), TrafficMetrics()]
    kinds: dict[str, tuple[dict[str, object], dict[str, object]]] = {
        "ok": ({}, {}),
        "client_reset": (
            {"ending": RESET_SENT, "reset_reason_name": "NOT_SPECIFIED"},
            {"ending": RESET_RECEIVED, "errno": 104},
        ),
        "server_reset": (
            {"ending": RESET_RECEIVED, "errno": 104},
            {"ending": RESET_SENT, "reset_reason_name": "TCP_ABORT_ON_CLOSE"},
        ),
    }
    want: dict[str, int] = {}
    for _ in range(300):
        kind = rng.choice([*kinds, "refused"])
        want[kind] = want.get(kind, 0) + 1
        if kind == "refused":
            events = [client_event(ending=RESET_RECEIVED, errno=111, last_state=SYN_SENT)]
        else:
            c, s = kinds[kind]
            events = [client_event(tx_bytes=10, rx_bytes=3, **c), server_event(None, tx_bytes=3, rx_bytes=10, **s)]
        for j, ev in enumerate(events):
            rng.choice(replicas).observe(batch(ev, agent=f"node-{j}"))
    for outcome in ("ok", "client_reset", "server_reset", "refused"):
        assert sum(conns(r, outcome) for r in replicas) == want[outcome], outcome
    established = want["ok"] + want["client_reset"] + want["server_reset"]
    assert (
        sum(sample(r, "tcpscope_connection_bytes_total", **PAIR, direction="client_to_server") for r in replicas)
        == 10 * established
    )
    assert (
        sum(sample(r, "tcpscope_resets_total", **PAIR, sender="server", reason="TCP_ABORT_ON_CLOSE") for r in replicas)
        == want["server_reset"]
    )
    assert (
        sum(sample(r, "tcpscope_resets_total", **PAIR, sender="client", reason="NOT_SPECIFIED") for r in replicas)
        == want["client_reset"]
    )
    assert all(
        sample(r, "tcpscope_resets_total", **PAIR, sender=s, reason="UNKNOWN") == 0
        for r in replicas
        for s in ("client", "server")
    )


# --- through a Service's ClusterIP, loopback without Kubernetes, one connection id ---------------


def _totals(t: TrafficMetrics) -> dict[str, dict[tuple[str, ...], float]]:
    """Every traffic counter summed over the pair labels: outcomes, resets by (sender, reason)."""
    reg = CollectorRegistry()
    reg.register(t)
    out: dict[str, dict[tuple[str, ...], float]] = {"outcome": {}, "resets": {}, "bytes": {}}
    for fam in reg.collect():
        for s in fam.samples:
            k: tuple[str, ...]
            if s.name == "tcpscope_connections_total":
                k = (s.labels["outcome"],)
                out["outcome"][k] = out["outcome"].get(k, 0) + s.value
            elif s.name == "tcpscope_resets_total":
                k = (s.labels["sender"], s.labels["reason"])
                out["resets"][k] = out["resets"].get(k, 0) + s.value
            elif s.name == "tcpscope_connection_bytes_total":
                k = (s.labels["direction"],)
                out["bytes"][k] = out["bytes"].get(k, 0) + s.value
    return out


def _observe_by_node(t: TrafficMetrics, events: list[TcpEvent]) -> None:
    """Each node's events as that node's agent's batch (to one replica or another: the rule needs
    no state shared between them)."""
    for node in sorted({e.node for e in events}):
        t.observe(
            EventBatch(
                schema_version=1,
                node=node,
                agent_id=f"{node}-a",
                sequence=next(_seq),
                events=[e for e in events if e.node == node],
            )
        )


def test_the_mix_through_a_service_counts_as_pod_to_pod() -> None:
    from tests.support.natmix import API1, API2, mix

    direct, via, two = TrafficMetrics(), TrafficMetrics(), TrafficMetrics()
    _observe_by_node(direct, mix(False))
    _observe_by_node(via, mix(True))
    _observe_by_node(two, mix(True, backends=(API1, API2)))
    want = {
        "outcome": {("ok",): 5, ("client_reset",): 3, ("server_reset",): 7 + 4, ("refused",): 2, ("timeout",): 1},
        # each RST once, by the socket that sent it; the 4 the router forged: by nobody
        "resets": {("client", "TCP_STATE"): 3, ("server", "TCP_STATE"): 7},
        "bytes": {("client_to_server",): 19 * 20, ("server_to_client",): 19 * 5},
    }
    assert _totals(direct) == _totals(via) == _totals(two) == want
    # the client's view names the Service (a bounded label: one value per Service) and its port
    svc = {**PAIR, "server_workload": "api-svc", "server_port": "80"}
    assert sample(via, "tcpscope_connections_total", **svc, outcome="ok") == 5
    assert sample(via, "tcpscope_connections_total", **svc, outcome="refused") == 2
    # the backend's own RSTs under the backend it is
    assert sample(via, "tcpscope_resets_total", **PAIR, sender="server", reason="TCP_STATE") == 7
    assert sample(via, "tcpscope_resets_total", **svc, sender="server", reason="UNKNOWN") == 0


def test_loopback_without_kubernetes_counts_each_connection_once() -> None:
    # --no-kubernetes: nothing resolved, the local end a host process, the remote 127.0.0.1
    t = TrafficMetrics()
    evs = []
    for i in range(11):
        c = lifecycle(Endpoint(ip="127.0.0.1", port=40000 + i, kind=HOST), Endpoint(ip="127.0.0.1", port=8080), ACTIVE)
        s = lifecycle(Endpoint(ip="127.0.0.1", port=8080, kind=HOST), Endpoint(ip="127.0.0.1", port=40000 + i), PASSIVE)
        if i < 5:
            s.lifecycle.ending, s.lifecycle.reset_reason_name = RESET_SENT, "TCP_STATE"
            c.lifecycle.ending = RESET_RECEIVED
        evs += [c, s]
    t.observe(batch(*evs))
    got = _totals(t)
    assert got["outcome"] == {("ok",): 6, ("server_reset",): 5}
    assert got["resets"] == {("server", "TCP_STATE"): 5}


def test_a_connection_id_counted_here_is_not_counted_again() -> None:
    # both sockets on one node, neither able to tell the other is watched (addresses no watch
    # resolves): the second of the pair is a connection this replica already counted
    t = TrafficMetrics()
    a = Endpoint(ip="192.0.2.1", port=40000, kind=EXTERNAL)
    b = Endpoint(ip="192.0.2.2", port=443, kind=EXTERNAL)
    c = lifecycle(Endpoint(ip="192.0.2.1", port=40000, kind=HOST), b, ACTIVE)
    s = lifecycle(Endpoint(ip="192.0.2.2", port=443, kind=HOST), a, PASSIVE)
    c.connection_id = s.connection_id = 0xABCDEF
    t.observe(batch(c, s))
    assert _totals(t)["outcome"] == {("ok",): 1}
    assert t.skipped == {"same_connection": 1}


def open_event(local: Endpoint, remote: Endpoint, role: int, socket_id: int = 1, **o: object) -> TcpEvent:
    ev = TcpEvent(node="node-1", local=local, remote=remote, socket_id=socket_id)
    ev.open.CopyFrom(OpenConnection(role=role, interval_ns=10_000_000_000, **o))  # type: ignore[arg-type]
    return ev


def bytes_c2s(t: TrafficMetrics) -> float:
    return sample(t, "tcpscope_connection_bytes_total", **PAIR, direction="client_to_server")


def test_open_reports_grow_the_counters_and_the_close_adds_only_the_rest() -> None:
    """A long connection's bytes and retransmits count while it is open; its lifecycle adds what the
    reports had not taken, so the totals end exact; the server's reports of a watched client add
    only its own retransmits."""
    t = TrafficMetrics()
    web, api = pod(*WEB, port=40001), pod(*API, port=9000)
    t.observe(batch(open_event(web, api, ACTIVE, tx_bytes=1000, rx_bytes=10, retransmits=1)))
    assert bytes_c2s(t) == 1000 and sample(t, "tcpscope_retransmits_total", **PAIR) == 1
    t.observe(batch(open_event(web, api, ACTIVE, tx_bytes=2000, rx_bytes=20)))
    assert bytes_c2s(t) == 3000 and conns(t, "ok") == 0  # open: no outcome yet
    # the server's socket of the same connection: its client is watched, only its retransmits count
    t.observe(batch(open_event(api, web, PASSIVE, tx_bytes=20, rx_bytes=2000, retransmits=2), agent="node-2-a"))
    assert bytes_c2s(t) == 3000 and sample(t, "tcpscope_retransmits_total", **PAIR) == 3
    t.observe(
        batch(
            client_event(
                tx_bytes=3500,
                rx_bytes=35,
                reported_tx_bytes=3000,
                reported_rx_bytes=30,
                retransmits=1,
                reported_retransmits=1,
            )
        )
    )
    assert (
        bytes_c2s(t) == 3500
        and sample(t, "tcpscope_connection_bytes_total", **PAIR, direction="server_to_client") == 35
    )
    assert sample(t, "tcpscope_retransmits_total", **PAIR) == 3 and conns(t, "ok") == 1


def test_open_connections_gauge_follows_the_reports() -> None:
    clock = Clock()
    t = TrafficMetrics(clock=clock)
    web, api = pod(*WEB, port=40001), pod(*API, port=9000)
    # two connections reported one by one, a flow key with three ordinary ones
    t.observe(batch(open_event(web, api, ACTIVE, socket_id=1), open_event(web, api, ACTIVE, socket_id=2)))
    t.observe(batch(flow_event(ACTIVE, pod(*WEB), api, open_connections=3, interval_ns=10_000_000_000)))
    assert sample(t, "tcpscope_open_connections", **PAIR) == 5
    # socket 1 closes: its lifecycle takes it out at once
    closed = client_event()
    closed.socket_id = 1
    t.observe(batch(closed))
    assert sample(t, "tcpscope_open_connections", **PAIR) == 4
    # the next interval: the flow reports one still open, socket 2 reports again
    clock.t += 10
    t.observe(batch(flow_event(ACTIVE, pod(*WEB), api, open_connections=1, interval_ns=10_000_000_000)))
    t.observe(batch(open_event(web, api, ACTIVE, socket_id=2)))
    assert sample(t, "tcpscope_open_connections", **PAIR) == 2
    # no reports for longer than 2.5 intervals: nothing is open any more (the key's connections closed)
    clock.t += 26
    assert sample(t, "tcpscope_open_connections", **PAIR) == 0
    # a flow without open connections (they all closed) ends its key's count
    t.observe(batch(flow_event(ACTIVE, pod(*WEB), api, open_connections=2, interval_ns=10_000_000_000)))
    t.observe(batch(flow_event(ACTIVE, pod(*WEB), api, connections=2, interval_ns=10_000_000_000)))
    assert sample(t, "tcpscope_open_connections", **PAIR) == 0


def test_latency_histograms_count_each_connection_once_and_flows_map_exactly() -> None:
    t = TrafficMetrics()
    web, api = pod(*WEB, port=40001), pod(*API, port=9000)
    # a flow: 3 connect latencies in [512, 1024) us, RTT samples in [32, 64) us (2) and [64, 128) us (1)
    t.observe(
        batch(
            flow_event(
                ACTIVE,
                pod(*WEB),
                api,
                open_connections=3,
                connect_latency_us_log2=[0] * 9 + [3],
                connect_latency_sum_ns=3 * 700_000,
                srtt_us_log2=[0] * 5 + [2, 1],
                srtt_sum_us=2 * 40 + 100,
            )
        )
    )
    # an open connection's first report carries its connect latency; its lifecycle says it did
    t.observe(batch(open_event(web, api, ACTIVE, connect_latency_ns=2_500_000, srtt_us=300)))
    t.observe(batch(client_event(connect_latency_ns=2_500_000, connect_latency_reported=True, srtt_us=310)))
    # a connection never reported open: counted at its close
    t.observe(batch(client_event(connect_latency_ns=20_000, srtt_us=15)))

    def bucket(name: str, le: str) -> float:
        return sample(t, f"tcpscope_{name}_seconds_bucket", **PAIR, le=le)

    assert sample(t, "tcpscope_connect_latency_seconds_count", **PAIR) == 5
    assert bucket("connect_latency", "1.6e-05") == 0 and bucket("connect_latency", "6.4e-05") == 1  # 20 us
    assert bucket("connect_latency", "0.001024") == 4 and bucket("connect_latency", "0.004096") == 5
    assert sample(t, "tcpscope_connect_latency_seconds_sum", **PAIR) == pytest.approx(0.0021 + 0.0025 + 0.00002)
    assert sample(t, "tcpscope_rtt_seconds_count", **PAIR) == 6
    assert bucket("rtt", "1.6e-05") == 1 and bucket("rtt", "6.4e-05") == 3 and bucket("rtt", "0.000256") == 4
    assert bucket("rtt", "0.001024") == 6 and bucket("rtt", "+Inf") == 6


def _nodeport_mix(client: Endpoint | None) -> tuple[list[TcpEvent], list[TcpEvent]]:
    """(the client's events, the backend's) of 4 ordinary connections and 3 the backend reset,
    through node-2's NodePort 30080 with SNAT (externalTrafficPolicy: Cluster): the client's socket
    names the node and the node port, the backend's names the node as its peer. client None: a
    client outside the cluster (no agent reports its socket)."""
    node2 = Endpoint(ip="198.19.255.2", port=30080, kind=NODE, name="node-2")
    snat = Endpoint(ip="198.19.255.2", port=0, kind=NODE, name="node-2")
    backend = pod(*API, port=9000)
    ours: list[TcpEvent] = []
    theirs = [flow_event(PASSIVE, backend, snat, connections=4, duration_us_log2=[0, 0, 4])]
    for i in range(3):
        peer = Endpoint(ip=snat.ip, port=52000 + i, kind=NODE, name="node-2")
        s = lifecycle(backend, peer, PASSIVE, node="node-2", ending=RESET_SENT, reset_reason_name="TCP_ABORT_ON_CLOSE")
        s.connection_id = 0x5000 + i
        theirs.append(s)
        if client is not None:
            local = Endpoint()
            local.CopyFrom(client)
            local.port = 41000 + i
            c = lifecycle(local, node2, ACTIVE, ending=RESET_RECEIVED)
            c.connection_id = s.connection_id
            ours.append(c)
    if client is not None:
        ours.append(flow_event(ACTIVE, client, node2, connections=4, duration_us_log2=[0, 0, 4]))
    return ours, theirs


def test_a_nodeport_with_snat_counts_once_across_replicas_with_the_defaults() -> None:
    """The default rule (--metrics-watched-peers pod,node: agents watch host processes too): the
    client pod's socket counts its NodePort connection under the node and node port, the backend's
    does not (its peer, the SNAT address, is a node), whichever replica each end's batches reach;
    the backend's RSTs are counted once, by it. With `pod` alone both ends would count."""
    defaults = CollectorConfig.from_args(["--kafka-bootstrap", "k:9092"], env={})
    client_side, backend_side = _nodeport_mix(pod(*WEB))
    replicas = [build_traffic_metrics(defaults), build_traffic_metrics(defaults)]
    _observe_by_node(replicas[0], client_side)
    _observe_by_node(replicas[1], backend_side)
    got = [_totals(r) for r in replicas]
    outcomes = {k: sum(g["outcome"].get(k, 0) for g in got) for g in got for k in g["outcome"]}
    resets = {k: sum(g["resets"].get(k, 0) for g in got) for g in got for k in g["resets"]}
    assert outcomes == {("ok",): 4, ("server_reset",): 3}
    assert resets == {("server", "TCP_ABORT_ON_CLOSE"): 3}
    via_node = {**PAIR, "server_namespace": "", "server_workload": "node/node-2", "server_port": "30080"}
    assert sample(replicas[0], "tcpscope_connections_total", **via_node, outcome="ok") == 4
    # with pod alone the backend's view counts them again under the node as the client
    pod_only = TrafficMetrics(watched_peers=("pod",))
    _observe_by_node(pod_only, backend_side)
    assert _totals(pod_only)["outcome"] == {("ok",): 4, ("server_reset",): 3}
    # the limit of the default, documented (docs/metrics.md): a client outside the cluster through the
    # NodePort is SNATed to the node too, and no agent reports its socket: counted by nobody
    _, outside = _nodeport_mix(None)
    alone = build_traffic_metrics(defaults)
    _observe_by_node(alone, outside)
    assert _totals(alone)["outcome"] == {}
    assert _totals(alone)["resets"] == {("server", "TCP_ABORT_ON_CLOSE"): 3}  # its RSTs still, by their sender
