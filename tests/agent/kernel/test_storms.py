"""Storms with real BPF and real traffic (bpf/anomaly.h): past the budgets anomalies are counted in the
kernel per key, and every one is accounted for exactly, as its own event or in an aggregate.

- a storm of 100,000 refused connects beside known ordinary connections and resets;
- the budget boundaries: exactly the per-key budget arrives as events per key, the rest aggregated;
  the node budget likewise;
- a full ring buffer: the anomalies it had no room for are aggregated, not lost;
- keys past the map's room fold into coarse keys, still exact;
- a SYN flood (the server's SYN-ACKs dropped on the way, non-blocking connects): its SYN-ACK
  retransmits counted exactly against the server namespace's own TcpExtTCPSynRetrans.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    ANOMALY_LIFECYCLE,
    ANOMALY_RESET_RECEIVED,
    ANOMALY_RESET_SENT,
    ANOMALY_SOCKET_ERROR,
    ANOMALY_SYNACK_RETRANSMIT,
    PASSIVE,
    RECEIVED,
    RESET_RECEIVED,
    SENT,
    SYN_SENT,
    TcpEvent,
)
from tests.support import conncount, traffic
from tests.support.kernel import Harness, kernel_harness, kind, on_port, traces_error_reports, traces_socketless_resets

KINDS = ("lifecycle", "retransmit", "synack", "reset", "error")
# the four anomalies of one refused connect: the client's lifecycle, the RST it received, its socket
# error, and the RST the server's kernel sent from no socket
REFUSED_KINDS = (ANOMALY_LIFECYCLE, ANOMALY_RESET_RECEIVED, ANOMALY_SOCKET_ERROR, ANOMALY_RESET_SENT)


def refused_kinds(h: Harness) -> tuple[int, ...]:
    """The anomalies of one refused connect on this kernel: no socket error event where the kernel has
    no sock:inet_sk_error_report (5.10: the lifecycle's errno comes from sk_err at CLOSE), and no reset
    sent where tcp:tcp_send_reset does not fire for a RST sent from no socket (before 6.10)."""
    absent = set()
    if not traces_error_reports(h):
        absent.add(ANOMALY_SOCKET_ERROR)
    if not traces_socketless_resets(h):
        absent.add(ANOMALY_RESET_SENT)
    return tuple(k for k in REFUSED_KINDS if k not in absent)


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conncount.build(tmp_path_factory.mktemp("conncount"))


def drain(h: Harness) -> None:
    """Detach, then poll until the buffer, the flow maps and the anomaly maps are empty."""
    h.source.stop()
    empty = 0
    while empty < 2:
        got = h.source.poll(50)
        h.seen.extend(got)
        empty = 0 if got else empty + 1


def anomaly_kind(e: TcpEvent) -> int | None:
    """The AnomalyKind an individual event would be counted as (None: not an anomaly kind)."""
    k = kind(e)
    if k == "lifecycle":
        return ANOMALY_LIFECYCLE
    if k == "reset":
        return ANOMALY_RESET_SENT if e.reset.direction == SENT else ANOMALY_RESET_RECEIVED
    if k == "socket_error":
        return ANOMALY_SOCKET_ERROR
    if k == "synack_retransmit":
        return ANOMALY_SYNACK_RETRANSMIT
    return None


def tally(h: Harness, match: Callable[[TcpEvent], bool]) -> dict[int, tuple[int, int, int]]:
    """Per AnomalyKind: (individual events, aggregated count, exemplars the aggregates report)."""
    out: dict[int, list[int]] = {}
    for e in h.seen:
        if not match(e):
            continue
        if kind(e) == "anomalies":
            row = out.setdefault(e.anomalies.kind, [0, 0, 0])
            row[1] += e.anomalies.count
            row[2] += e.anomalies.exemplars
        else:
            k = anomaly_kind(e)
            if k is not None:
                out.setdefault(k, [0, 0, 0])[0] += 1
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def refused_tuple(port: int) -> Callable[[TcpEvent], bool]:
    """Events of the refused connects to `port`: on the client, and the server kernel's RSTs."""
    return on_port(port)


def _assert_accounted(h: Harness, losses: dict[str, int], counters: dict[str, int]) -> None:
    """The kernel's own accounting agrees with what arrived: every anomaly it sent as an event arrived,
    and the aggregates sum to what it aggregated (independent of what the test expected)."""
    assert {k: v for k, v in losses.items() if v and k != "kernel.recursion_misses"} == {}
    individual = sum(1 for e in h.seen if anomaly_kind(e) is not None and not _ordinary(e))
    aggregated = sum(e.anomalies.count for e in h.seen if kind(e) == "anomalies")
    assert counters["anomalies.individual"] == individual
    assert counters["anomalies.aggregated"] == aggregated
    assert counters["anomalies.no_key"] == 0


def _ordinary(e: TcpEvent) -> bool:
    """An ordinary lifecycle (not an anomaly; in `each` mode sent as an event, not through the budget)."""
    lc = e.lifecycle
    return kind(e) == "lifecycle" and lc.ending == 1 and lc.errno == 0 and lc.retransmits == 0 and lc.role in (1, 2)


@pytest.mark.root
@pytest.mark.slow
def test_a_storm_of_100k_refused_connects_is_accounted_for_exactly_beside_ordinary_flows_and_resets(
    exe: Path,
) -> None:
    n_refused, n_load, n_rst, req, resp = 100_000, 20_000, 12, 100, 1000
    ports = {name: traffic.free_port() for name in ("refused", "load", "rst")}
    budget = 5
    cfg = AgentConfig(
        ports=tuple(ports.values()),
        events=KINDS,
        connections="aggregate",
        flow_interval=2.0,
        anomaly_budget=budget,
        max_anomaly_events=2000,
    )
    with kernel_harness(cfg) as h, conncount.serving(exe, "127.0.0.1", ports["load"], req=req, resp=resp):
        pumping = threading.Event()

        def pump() -> None:
            while not pumping.is_set():
                h.pump(50)

        def resets() -> None:
            for _ in range(n_rst):
                traffic.tcp_exchange(port=ports["rst"], client_bytes=500, server_bytes=50, closer="client-rst")

        t = threading.Thread(target=pump)
        t.start()
        try:
            side = [threading.Thread(target=resets)]
            load: list[conncount.Churned] = []
            side.append(
                threading.Thread(
                    target=lambda: load.append(
                        conncount.churn(exe, "127.0.0.1", ports["load"], n_load, req=req, resp=resp)
                    )
                )
            )
            for s in side:
                s.start()
            made = conncount.refuse(exe, "127.0.0.1", ports["refused"], n_refused)
            for s in side:
                s.join()
        finally:
            pumping.set()
            t.join()
        drain(h)
        losses = h.source.losses()
        counters = h.source.anomaly_counters()

    assert (made.refused, made.other) == (n_refused, 0)
    assert (load[0].completed, load[0].failed) == (n_load, 0)
    _assert_accounted(h, losses, counters)
    skipped = losses.get("kernel.recursion_misses", 0)

    def exactly(got: int, want: int, what: str) -> None:
        assert want - skipped <= got <= want, f"{what}: {got} of {want} ({skipped} program runs skipped)"

    # every anomaly of the refused storm: an event or in an aggregate, each kind exactly once per connect
    refused = tally(h, refused_tuple(ports["refused"]))
    assert set(refused) == set(refused_kinds(h))
    for k, (individual, aggregated, exemplars) in refused.items():
        exactly(individual + aggregated, n_refused, f"refused, anomaly kind {k}")
        # the storm was aggregated: a few exemplars per key and interval, the rest counted
        assert individual < n_refused / 100, f"kind {k}: {individual} sent one by one"
        # the aggregates name their exemplars: all of them, but those of a last interval with no excess
        assert individual - budget <= exemplars <= individual, f"kind {k}: {exemplars} of {individual}"
    # the exemplars are real events: distinct client ports, the client's pid, errno ECONNREFUSED
    lcs = [e for e in h.seen if kind(e) == "lifecycle" and on_port(ports["refused"])(e)]
    assert lcs and all(e.lifecycle.errno == 111 and e.lifecycle.ending == RESET_RECEIVED for e in lcs)
    assert all(e.lifecycle.role == ACTIVE and e.lifecycle.last_state == SYN_SENT for e in lcs)
    assert len({e.local.port for e in lcs}) == len(lcs) and all(e.process.pid for e in lcs)
    received = [
        e for e in h.seen if kind(e) == "reset" and e.reset.direction == RECEIVED and on_port(ports["refused"])(e)
    ]
    assert {(e.local.ip, e.local.port) for e in received} <= {(e.local.ip, e.local.port) for e in lcs} | {
        (e.local.ip, e.local.port) for e in received
    }
    aggs = [e for e in h.seen if kind(e) == "anomalies" and on_port(ports["refused"])(e)]
    assert all(not a.anomalies.coarse and a.anomalies.first.ToNanoseconds() <= a.time.ToNanoseconds() for a in aggs)
    lc_aggs = [a.anomalies for a in aggs if a.anomalies.kind == ANOMALY_LIFECYCLE]
    assert all((a.errno, a.ending, a.state, a.role) == (111, RESET_RECEIVED, SYN_SENT, ACTIVE) for a in lc_aggs)

    # the ordinary connections are exact, bytes included: flows, plus any that were anomalies (a SYN
    # retransmitted under the load) as events or aggregated
    for role, each_tx, each_rx in ((ACTIVE, req, resp), (PASSIVE, resp, req)):
        conns = tx = rx = 0
        for e in h.seen:
            if not on_port(ports["load"])(e):
                continue
            if kind(e) == "flow" and e.flow.role == role:
                conns, tx, rx = conns + e.flow.connections, tx + e.flow.tx_bytes, rx + e.flow.rx_bytes
            elif kind(e) == "lifecycle" and e.lifecycle.role == role:
                conns, tx, rx = conns + 1, tx + e.lifecycle.tx_bytes, rx + e.lifecycle.rx_bytes
            elif kind(e) == "anomalies" and e.anomalies.kind == ANOMALY_LIFECYCLE and e.anomalies.role == role:
                a = e.anomalies
                conns, tx, rx = conns + a.count, tx + a.tx_bytes, rx + a.rx_bytes
        exactly(conns, n_load, f"load connections, role {role}")
        assert (tx, rx) == (conns * each_tx, conns * each_rx)

    # the resets: each kind once per connection, as events or aggregated
    rst = tally(h, on_port(ports["rst"]))
    exactly(rst[ANOMALY_RESET_SENT][0] + rst[ANOMALY_RESET_SENT][1], n_rst, "resets sent")
    exactly(rst[ANOMALY_RESET_RECEIVED][0] + rst[ANOMALY_RESET_RECEIVED][1], n_rst, "resets received")
    exactly(rst[ANOMALY_LIFECYCLE][0] + rst[ANOMALY_LIFECYCLE][1], 2 * n_rst, "reset lifecycles, both ends")


def _refused_serially(port: int, n: int) -> None:
    for _ in range(n):
        assert traffic.refused_connect(port=port)[2] == 111


@pytest.mark.root
def test_the_per_key_budget_boundary_exactly_the_budget_as_events_the_rest_aggregated() -> None:
    port, budget, n = traffic.free_port(), 7, 50
    cfg = AgentConfig(
        ports=(port,),
        events=KINDS,
        connections="aggregate",
        flow_interval=3600,
        anomaly_budget=budget,
        max_anomaly_events=0,
    )
    with kernel_harness(cfg) as h:
        _refused_serially(port, n)
        drain(h)
        losses, counters = h.source.losses(), h.source.anomaly_counters()
    _assert_accounted(h, losses, counters)
    got = tally(h, on_port(port))
    # one interval, one key per kind: exactly `budget` events, the rest in its one aggregate
    kinds = refused_kinds(h)
    assert got == {k: (budget, n - budget, budget) for k in kinds}
    assert Counter(e.anomalies.kind for e in h.seen if kind(e) == "anomalies") == {k: 1 for k in kinds}
    assert counters["anomalies.over_key"] == len(kinds) * (n - budget) and counters["anomalies.over_node"] == 0
    # the exemplars are the first `budget` connects: their lifecycles end before the aggregate's first
    agg = next(e.anomalies for e in h.seen if kind(e) == "anomalies" and e.anomalies.kind == ANOMALY_LIFECYCLE)
    lcs = [e for e in h.seen if kind(e) == "lifecycle"]
    assert max(e.time.ToNanoseconds() for e in lcs) < agg.first.ToNanoseconds()


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """This process pinned to one CPU for the test: a loopback connect's softirq work (the RST, the
    error) runs on the sending CPU, so all of its anomalies count against that CPU's node budget."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.root
def test_the_node_budget_boundary(one_cpu: int) -> None:
    port, n = traffic.free_port(), 30
    cpus = os.cpu_count() or 1
    per_cpu = 10
    cfg = AgentConfig(
        ports=(port,),
        events=KINDS,
        connections="aggregate",
        flow_interval=3600,
        anomaly_budget=0,
        max_anomaly_events=per_cpu * cpus,
    )
    with kernel_harness(cfg) as h:
        started = time.monotonic()
        _refused_serially(port, n)  # the node budget is per second: well within one
        elapsed = time.monotonic() - started
        drain(h)
        losses, counters = h.source.losses(), h.source.anomaly_counters()
    assert elapsed < 0.9, "the connects took a second or more: the budget's window moved on"
    _assert_accounted(h, losses, counters)
    got = tally(h, on_port(port))
    assert sum(v[0] for v in got.values()) == per_cpu
    kinds = refused_kinds(h)
    assert {k: v[0] + v[1] for k, v in got.items()} == {k: n for k in kinds}
    assert counters["anomalies.over_node"] == len(kinds) * n - per_cpu and counters["anomalies.over_key"] == 0


@pytest.mark.root
def test_a_full_ring_buffer_aggregates_the_anomalies_it_has_no_room_for() -> None:
    port, n = traffic.free_port(), 200
    # one page of ring buffer (about 27 records), not read until the storm is over
    cfg = AgentConfig(
        ports=(port,),
        events=KINDS,
        connections="aggregate",
        flow_interval=3600,
        anomaly_budget=0,
        max_anomaly_events=10**6,
        ring_buffer_kb=4,
    )
    with kernel_harness(cfg) as h:
        _refused_serially(port, n)
        drain(h)
        losses, counters = h.source.losses(), h.source.anomaly_counters()
    _assert_accounted(h, losses, counters)  # no kernel loss: kernel.ringbuf_full is 0
    got = tally(h, on_port(port))
    kinds = refused_kinds(h)
    assert {k: v[0] + v[1] for k, v in got.items()} == {k: n for k in kinds}
    assert counters["anomalies.output_full"] == counters["anomalies.aggregated"] > 0
    assert counters["anomalies.individual"] < len(kinds) * n


@pytest.mark.root
def test_keys_past_the_maps_room_fold_into_coarse_keys_and_stay_exact() -> None:
    n_ports = 120
    ports = [traffic.free_port() for _ in range(n_ports)]
    # 64 keys per map, 4 of them reserved for coarse keys: 120 ports x 4 kinds do not fit
    cfg = AgentConfig(
        ports=tuple(ports),
        events=KINDS,
        connections="aggregate",
        flow_interval=3600,
        anomaly_budget=1,
        max_anomaly_events=0,
        max_anomaly_keys=64,
    )
    with kernel_harness(cfg) as h:
        for p in ports:
            _refused_serially(p, 2)
        drain(h)
        losses, counters = h.source.losses(), h.source.anomaly_counters()
    _assert_accounted(h, losses, counters)
    individual = sum(1 for e in h.seen if anomaly_kind(e) is not None)
    aggregated = sum(e.anomalies.count for e in h.seen if kind(e) == "anomalies")
    assert individual + aggregated == len(refused_kinds(h)) * 2 * n_ports
    coarse = [e for e in h.seen if kind(e) == "anomalies" and e.anomalies.coarse]
    assert coarse and counters["anomalies.coarse"] > 0
    assert all((e.remote.ip, e.remote.port, e.local.port) == ("", 0, 0) for e in coarse)


def _listen(port: int, seconds: float) -> int:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(4096)
    time.sleep(seconds)
    ls.close()
    return os.getpid()


@pytest.mark.root
@pytest.mark.slow
def test_a_syn_flood_s_synack_retransmits_match_the_server_namespace_s_own_counter() -> None:
    """The server's SYN-ACKs are dropped on the way (the client namespace's input hook), so no
    handshake completes; the client's connects give up after one SYN retransmit (TCP_SYNCNT 1), the
    server's requests after tcp_synack_retries = 2 SYN-ACK retransmits. The agent watches the server's
    namespace only."""
    port, n, budget = 9000, 100, 5
    with traffic.netns_pair() as pair:
        for k, v in (("tcp_synack_retries", 2), ("tcp_max_syn_backlog", 4096), ("tcp_syncookies", 0)):
            traffic.run("ip", "netns", "exec", pair.b, "sysctl", "-q", "-w", f"net.ipv4.{k}={v}")
        server = traffic.Child(_listen, port, 25.0, netns=pair.b)
        time.sleep(0.3)
        cfg = AgentConfig(
            netns=pair.path("b"),
            events=KINDS,
            connections="aggregate",
            flow_interval=3600,
            anomaly_budget=budget,
            max_anomaly_events=0,
        )
        with (
            kernel_harness(cfg) as h,
            traffic.nft_drop(
                f"ip saddr {pair.b_addr} tcp sport {port} tcp flags & (syn | ack) == syn | ack drop",
                netns=pair.a,
                hook="input",
            ),
        ):
            before = traffic.netstat(pair.b)["TCPSynRetrans"]
            outcomes = traffic.syn_flood(pair.b_addr, port, n, netns=pair.a)
            # the requests' last SYN-ACK retransmit comes 1 + 2 s after their SYN, their expiry 4 s later
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                h.pump(100)
            after = traffic.netstat(pair.b)["TCPSynRetrans"]
            drain(h)
            losses, counters = h.source.losses(), h.source.anomaly_counters()
        server.proc.kill()
    assert outcomes == {"ETIMEDOUT": n}
    _assert_accounted(h, losses, counters)
    skipped = losses.get("kernel.recursion_misses", 0)
    synack = [e for e in h.seen if kind(e) == "synack_retransmit"]
    aggs = [e.anomalies for e in h.seen if kind(e) == "anomalies" and e.anomalies.kind == ANOMALY_SYNACK_RETRANSMIT]
    counted = len(synack) + sum(a.count for a in aggs)
    assert after - before >= 2 * n  # each request at least twice (the timer's and the client's SYN retransmit)
    detail = (
        f"{len(synack)} events {Counter(e.synack_retransmit.request_retransmit for e in synack)}, aggregates "
        f"{[(a.count, a.exemplars, a.first_of_request, a.coarse) for a in aggs]}, counters {counters}"
    )
    assert after - before - skipped <= counted <= after - before, detail
    # one first retransmit per request: each half-open connection timed out once
    firsts = sum(1 for e in synack if e.synack_retransmit.request_retransmit == 1) + sum(
        a.count for a in aggs if a.first_of_request
    )
    assert n - skipped <= firsts <= n
    assert all(e.local.port == port and e.remote.ip == pair.a_addr for e in synack)
    assert len(synack) <= 2 * budget  # two keys: first retransmits and later ones
