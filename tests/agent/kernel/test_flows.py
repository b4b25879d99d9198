"""In-kernel aggregation (bpf/flow.h) with real connections and exact counts: ordinary connections
become flows that sum exactly, every anomaly stays an individual event, a full flow map falls back to
lifecycles (counted), the shutdown flush loses nothing, and agents scoped by cgroup each count their
own side."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.metrics import AgentMetrics
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    AGGREGATE,
    NORMAL,
    PASSIVE,
    RESET_RECEIVED,
    RESET_SENT,
    SENT,
    TcpEvent,
)
from tests.support import conncount, traffic
from tests.support.kernel import Harness, kernel_harness, kind, on_port

KINDS = ("lifecycle", "retransmit", "synack", "reset", "error")


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conncount.build(tmp_path_factory.mktemp("conncount"))


def flows(h: Harness, match: Callable[[TcpEvent], bool], role: int) -> list[TcpEvent]:
    return [e for e in h.seen if kind(e) == "flow" and match(e) and e.flow.role == role]


def lifecycles(h: Harness, match: Callable[[TcpEvent], bool], role: int) -> list[TcpEvent]:
    return [e for e in h.seen if kind(e) == "lifecycle" and match(e) and e.lifecycle.role == role]


def is_ordinary(e: TcpEvent) -> bool:
    lc = e.lifecycle
    return lc.ending == NORMAL and lc.errno == 0 and lc.retransmits == 0


def side_totals(h: Harness, port: int, role: int) -> tuple[int, int, int]:
    """(connections, tx bytes, rx bytes) of one side on a server port: flows plus lifecycles."""
    fs = flows(h, on_port(port), role)
    ls = lifecycles(h, on_port(port), role)
    return (
        sum(f.flow.connections for f in fs) + len(ls),
        sum(f.flow.tx_bytes for f in fs) + sum(e.lifecycle.tx_bytes for e in ls),
        sum(f.flow.rx_bytes for f in fs) + sum(e.lifecycle.rx_bytes for e in ls),
    )


def _anomalies(ports: dict[str, int], counts: dict[str, int]) -> None:
    for _ in range(counts["client-rst"]):
        traffic.tcp_exchange(port=ports["client-rst"], client_bytes=500, server_bytes=50, closer="client-rst")
    for _ in range(counts["server-rst"]):
        traffic.tcp_exchange(port=ports["server-rst"], client_bytes=500, server_bytes=50, closer="server-rst")
    for _ in range(counts["refused"]):
        assert traffic.refused_connect(port=ports["refused"])[2] == 111
    # every other SYN to this port is lost: each connection's first SYN, so each client retransmits once
    with traffic.nft_drop(f"tcp dport {ports['rtx']} tcp flags syn numgen inc mod 2 == 0 drop"):
        for _ in range(counts["rtx"]):
            traffic.tcp_exchange(port=ports["rtx"], client_bytes=500, server_bytes=50, closer="server")


@pytest.mark.root
@pytest.mark.slow
def test_mixed_load_flows_sum_exactly_and_every_anomaly_stays_individual(exe: Path) -> None:
    n, req, resp = 100_000, 100, 1000
    names = ("load", "client-rst", "server-rst", "refused", "rtx")
    ports = {name: traffic.free_port() for name in names}
    counts = {"client-rst": 7, "server-rst": 5, "refused": 11, "rtx": 3}
    cfg = AgentConfig(ports=tuple(ports.values()), events=KINDS, connections="aggregate", flow_interval=2.0)
    with kernel_harness(cfg) as h, conncount.serving(exe, "127.0.0.1", ports["load"], req=req, resp=resp):
        pumping = threading.Event()

        def pump() -> None:
            while not pumping.is_set():
                h.pump(50)

        t = threading.Thread(target=pump)
        t.start()
        try:
            anomalies = threading.Thread(target=_anomalies, args=(ports, counts))
            anomalies.start()
            made = conncount.churn(exe, "127.0.0.1", ports["load"], n, req=req, resp=resp)
            anomalies.join()
        finally:
            pumping.set()
            t.join()
        h.drain()
        losses = h.source.losses()
        counters = h.source.flow_counters()

    assert (made.completed, made.failed, made.bytes_read) == (n, 0, n * resp)
    assert {k: v for k, v in losses.items() if v and k != "kernel.recursion_misses"} == {}
    # The kernel may skip a program run while another of ours runs on that CPU (counted:
    # kernel.recursion_misses, the summary's kernel_skipped_runs); under this load it happens now and
    # then, and one skipped run can cost one connection (or one anomaly its details). So each count
    # below is exact when nothing was skipped, and otherwise short by no more than the runs the kernel
    # reported skipping, never over.
    skipped = losses.get("kernel.recursion_misses", 0)

    def exactly(got: int, want: int, what: str) -> None:
        assert want - skipped <= got <= want, f"{what}: {got} of {want} ({skipped} program runs skipped)"

    load = on_port(ports["load"])
    # each side of the load accounts for every connection, bytes included
    for role, each_tx, each_rx in ((ACTIVE, req, resp), (PASSIVE, resp, req)):
        conns, tx, rx = side_totals(h, ports["load"], role)
        exactly(conns, n, f"load connections, role {role}")
        assert (tx, rx) == (conns * each_tx, conns * each_rx)
    # what was not aggregated is an anomaly (e.g. a SYN retransmitted under load), never an ordinary one
    assert not [e for r in (ACTIVE, PASSIVE) for e in lifecycles(h, load, r) if is_ordinary(e)]
    # most were aggregated, into a handful of flow records (one per key and flush), not one per connection
    in_flows = sum(f.flow.connections for r in (ACTIVE, PASSIVE) for f in flows(h, load, r))
    assert in_flows > 0.99 * 2 * n
    all_flows = sum(e.flow.connections for e in h.seen if kind(e) == "flow")
    assert counters["flows.aggregated"] == all_flows and counters["flows.map_full"] == 0
    assert len([e for e in h.seen if kind(e) == "flow"]) < 100
    for f in (e for e in h.seen if kind(e) == "flow"):
        assert f.flow.source == AGGREGATE and f.socket_id == 0
        assert sum(f.flow.duration_us_log2) == f.flow.connections
        assert f.flow.first_close.ToNanoseconds() <= f.flow.last_close.ToNanoseconds()
        assert f.process.cgroup_id != 0
        server_ports = {ports["load"], ports["rtx"]}
        if f.flow.role == ACTIVE:
            assert f.local.port == 0 and f.remote.port in server_ports
        else:
            assert f.local.port in server_ports and f.remote.port == 0

    # every anomaly is individual, with its details, and none of them is in a flow

    def each(events: list[TcpEvent], right: Callable[[TcpEvent], bool], want: int, what: str) -> None:
        good = sum(1 for e in events if right(e))
        exactly(good, want, what)
        assert len(events) - good <= skipped, f"{what}: {len(events) - good} wrong ({skipped} runs skipped)"

    for name in ("client-rst", "server-rst", "refused"):
        stray = sum(e.flow.connections for e in h.seen if kind(e) == "flow" and on_port(ports[name])(e))
        assert stray <= skipped, f"{name}: {stray} connections in a flow"

    def sent_rst(e: TcpEvent) -> bool:
        return e.lifecycle.ending == RESET_SENT

    def got_rst(e: TcpEvent) -> bool:
        return e.lifecycle.ending == RESET_RECEIVED

    crst, srst = on_port(ports["client-rst"]), on_port(ports["server-rst"])
    each(lifecycles(h, crst, ACTIVE), sent_rst, counts["client-rst"], "client-rst clients")
    each(lifecycles(h, crst, PASSIVE), got_rst, counts["client-rst"], "client-rst servers")
    each(lifecycles(h, srst, PASSIVE), sent_rst, counts["server-rst"], "server-rst servers")
    each(lifecycles(h, srst, ACTIVE), got_rst, counts["server-rst"], "server-rst clients")
    sent = [e for e in h.seen if kind(e) == "reset" and e.reset.direction == SENT]
    exactly(len([e for e in sent if crst(e)]), counts["client-rst"], "resets sent by clients")
    exactly(len([e for e in sent if srst(e)]), counts["server-rst"], "resets sent by servers")
    refused = lifecycles(h, on_port(ports["refused"]), ACTIVE)
    each(refused, lambda e: e.lifecycle.errno == 111, counts["refused"], "refused")
    rtx = on_port(ports["rtx"])
    # nft drops every other SYN to this port, so each client retransmits its SYN once, unless the load
    # delays a SYN-ACK past the 1 s RTO: that client retransmits twice and shifts the parity, and the
    # next one's first SYN passes (an ordinary connection, in a flow). CI saw "2 of 3" once under the
    # 100k churn, details not kept. Exact either way: every connection once, each retransmit once.
    rtx_lcs = lifecycles(h, rtx, ACTIVE)
    rtx_in_flows = sum(f.flow.connections for f in flows(h, rtx, ACTIVE))
    detail = f"retransmits {[e.lifecycle.retransmits for e in rtx_lcs]}, {rtx_in_flows} in flows"
    exactly(len(rtx_lcs) + rtx_in_flows, counts["rtx"], f"rtx clients ({detail})")
    assert rtx_lcs and all(e.lifecycle.retransmits >= 1 for e in rtx_lcs), detail
    want_rtx = sum(e.lifecycle.retransmits for e in rtx_lcs)
    client_rtx = [e for e in h.seen if kind(e) == "retransmit" and e.remote.port == ports["rtx"]]
    exactly(len(client_rtx), want_rtx, f"the clients' retransmit events ({detail})")
    if rtx_in_flows == 0:  # the parity held: the planned one retransmit each
        assert [e.lifecycle.retransmits for e in rtx_lcs] == [1] * counts["rtx"], detail
    # the servers of those saw nothing unusual: aggregated, and still counted exactly
    conns, tx, rx = side_totals(h, ports["rtx"], PASSIVE)
    exactly(conns, counts["rtx"], "rtx servers")
    assert skipped or (tx, rx) == (50 * counts["rtx"], 500 * counts["rtx"])


def _exchanges(ports: list[int], per_port: int) -> None:
    for port in ports:
        for _ in range(per_port):
            traffic.tcp_exchange(port=port, client_bytes=300, server_bytes=30, closer="server")


@pytest.mark.root
def test_a_full_flow_map_falls_back_to_lifecycles_and_counts_them() -> None:
    ports = [traffic.free_port() for _ in range(4)]
    per_port = 3
    # 8 keys (4 server ports x 2 roles) into a map of 2
    cfg = AgentConfig(ports=tuple(ports), events=KINDS, connections="aggregate", flow_interval=3600, max_flows=2)
    with kernel_harness(cfg) as h:
        _exchanges(ports, per_port)
        h.drain()
        counters = h.source.flow_counters()
    total = 2 * per_port * len(ports)
    in_flows = [e for e in h.seen if kind(e) == "flow"]
    individual = [e for e in h.seen if kind(e) == "lifecycle"]
    assert len(in_flows) == 2  # the map held two keys
    assert sum(f.flow.connections for f in in_flows) + len(individual) == total
    # the individual ones: ordinary connections the full map sent back, and any connection that was
    # an anomaly anyway (a retransmit on a slow guest: 18 individual, 17 map_full on 5.10 once)
    ordinary = [e for e in individual if e.lifecycle.retransmits == 0 and e.lifecycle.ending == NORMAL]
    assert len(ordinary) == counters["flows.map_full"] > 0, [e.lifecycle for e in individual if e not in ordinary]
    assert counters["flows.aggregated"] == sum(f.flow.connections for f in in_flows)
    for port in ports:
        assert side_totals(h, port, ACTIVE) == (per_port, 300 * per_port, 30 * per_port)
        assert side_totals(h, port, PASSIVE) == (per_port, 30 * per_port, 300 * per_port)


@pytest.mark.root
def test_the_shutdown_flush_reports_what_the_interval_had_not() -> None:
    port = traffic.free_port()
    cfg = AgentConfig(ports=(port,), events=KINDS, connections="aggregate", flow_interval=3600)
    with kernel_harness(cfg) as h:
        _exchanges([port], 9)
        h.pump(200)
        # a connection that retransmitted is an anomaly, reported on its own at once (a slow guest
        # under TCG can retransmit on loopback); every other one waits for the flush
        early = [e for e in h.seen if kind(e) in ("flow", "lifecycle")]
        assert all(kind(e) == "lifecycle" and e.lifecycle.retransmits > 0 for e in early), early
        h.drain()
        metrics = AgentMetrics()
        metrics.watch_flows(h.source.flow_counters)
        assert metrics.value("tcpscope_agent_flows_aggregated_total") == 18 - len(early)
        assert metrics.value("tcpscope_agent_flows_map_full_total") == 0
    assert side_totals(h, port, ACTIVE) == (9, 2700, 270)
    assert side_totals(h, port, PASSIVE) == (9, 270, 2700)
    individual = {r: sum(1 for e in early if e.lifecycle.role == r) for r in (ACTIVE, PASSIVE)}
    flows = {e.flow.role: e.flow.connections for e in h.seen if kind(e) == "flow"}
    assert flows == {r: 9 - individual[r] for r in (ACTIVE, PASSIVE) if individual[r] < 9}
    # a flow is many connections: it has no connection id (and no socket id)
    assert {(e.connection_id, e.socket_id) for e in h.seen if kind(e) == "flow"} == {(0, 0)}


@pytest.mark.root
def test_each_mode_spills_the_excess_into_flows_and_still_counts_every_connection(exe: Path) -> None:
    port = traffic.free_port()
    n = 3000
    cfg = AgentConfig(ports=(port,), events=KINDS, connections="each", max_connection_events=200, flow_interval=1.0)
    with kernel_harness(cfg) as h, conncount.serving(exe, "127.0.0.1", port, req=10, resp=20):
        made = conncount.churn(exe, "127.0.0.1", port, n, req=10, resp=20)
        h.drain()
    assert made.completed == n
    assert side_totals(h, port, ACTIVE) == (n, 10 * n, 20 * n)
    assert side_totals(h, port, PASSIVE) == (n, 20 * n, 10 * n)
    spilled = [e for e in h.seen if kind(e) == "flow"]
    assert spilled and all(e.flow.source != AGGREGATE for e in spilled)
    # at most 200/s (split across CPUs) went out one by one
    assert len([e for e in h.seen if kind(e) == "lifecycle"]) < n


@pytest.fixture
def two_trees() -> Iterator[tuple[Path, Path]]:
    with traffic.kubepods_root() as a, traffic.kubepods_root() as b:
        yield a, b


@pytest.mark.root
def test_two_agents_scoped_by_cgroup_each_count_their_own_side(exe: Path, two_trees: tuple[Path, Path]) -> None:
    client_root, server_root = two_trees
    client_cg, server_cg = traffic.pod_cgroup(client_root), traffic.pod_cgroup(server_root)
    port = traffic.free_port(socket.AF_INET6, "::1")
    n = 2000
    cfg_c = AgentConfig(cgroup_root=str(client_root), events=KINDS, connections="aggregate", flow_interval=3600)
    cfg_s = AgentConfig(cgroup_root=str(server_root), events=KINDS, connections="aggregate", flow_interval=3600)
    with (
        kernel_harness(cfg_c) as hc,
        kernel_harness(cfg_s) as hs,
        conncount.serving(exe, "::1", port, req=64, resp=640, cgroup=server_cg.container),
    ):
        made = conncount.churn(exe, "::1", port, n, req=64, resp=640, cgroup=client_cg.container)
        hc.drain()
        hs.drain()
    assert made.completed == n
    assert side_totals(hc, port, ACTIVE) == (n, 64 * n, 640 * n)
    assert side_totals(hc, port, PASSIVE) == (0, 0, 0)
    assert side_totals(hs, port, PASSIVE) == (n, 640 * n, 64 * n)
    assert side_totals(hs, port, ACTIVE) == (0, 0, 0)
    assert {f.process.cgroup_id for f in hc.seen if kind(f) == "flow"} == {client_cg.id}
    assert {f.process.cgroup_id for f in hs.seen if kind(f) == "flow"} == {server_cg.id}
    assert {(f.local.ip, f.remote.ip) for f in hc.seen if kind(f) == "flow"} == {("::1", "::1")}
