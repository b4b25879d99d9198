"""Open connections with real BPF and real connections (bpf/interim.h, bpf/seed.h,
agent/kernel/openconn.py): each flow interval reports every open connection's progress, exactly
against its lifecycle; RTTs and connect latency agree with what the socket's owner reads from
TCP_INFO; connections open before the agent started are found with their role; an agent restart
counts nothing twice.

Each test ends the flow intervals itself (ManualClock), after `settle()` saw every segment of both
ends acknowledged: then the kernel's counters hold exactly the bytes written, and every report can
be compared to the byte."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from agent.config import AgentConfig
from agent.kernel.probe import OPEN_PASS_SINCE, kernel_version
from tcpscope.v1.events_pb2 import ACTIVE, CLOSE_WAIT, ESTABLISHED, PASSIVE, Flow, TcpEvent
from tests.support import traffic
from tests.support.kernel import Harness, ManualClock, kernel_harness, kind
from tests.support.longconn import LongConnection, held_in, long_connection, rtt_us

KINDS = ("lifecycle", "retransmit", "reset", "error", "open")


def config(port: int, mode: str) -> AgentConfig:
    return AgentConfig(ports=(port,), connections=mode, events=KINDS)


def end_interval(h: Harness, clock: ManualClock) -> list[TcpEvent]:
    """End the flow interval; the reports it made (one poll runs the pass and the flush)."""
    before = len(h.seen)
    clock.interval()
    h.pump(0)
    h.pump(0)  # stragglers of the pass, if the ring buffer was read in two
    return h.seen[before:]


def side(e: TcpEvent, conn: LongConnection) -> int | None:
    """ACTIVE for the client socket's events, PASSIVE for the server socket's, None for others."""
    cport = conn.client_port
    if e.local.port == cport:
        return ACTIVE
    if e.remote.port == cport:
        return PASSIVE
    return None


def reports(events: list[TcpEvent], role: int, conn: LongConnection, mode: str) -> list[tuple[int, int]]:
    """(tx, rx) of each report of one side among events: open events (each), open flows (aggregate)."""
    if mode == "each":
        return [(e.open.tx_bytes, e.open.rx_bytes) for e in events if kind(e) == "open" and side(e, conn) == role]
    return [
        (e.flow.tx_bytes, e.flow.rx_bytes)
        for e in events
        if kind(e) == "flow" and e.flow.role == role and e.flow.open_connections == 1
    ]


def without_the_pass(h: Harness) -> bool:
    """On a kernel without BPF atomic exchange (before 5.12: Debian's 5.10 in `make test-kernels`)
    the plan says so and reports open connections at close only; anywhere else the pass must be on."""
    if not h.plan.open.interim:
        return False
    assert kernel_version(h.plan.kernel) < OPEN_PASS_SINCE, h.plan.open.interim
    assert "reported at close only: needs BPF atomic exchange, Linux 5.12+" in h.plan.describe()
    return True


def assert_reported_at_close_only(h: Harness, conn: LongConnection, intervals: int, mode: str = "each") -> None:
    """The fallback, explicit and counted: no open reports, each interval counted as skipped, the
    whole connection at its close (a lifecycle with nothing reported before, or its flow)."""
    assert not [e for e in h.seen if kind(e) == "open" or (kind(e) == "flow" and e.flow.open_connections)]
    counters = h.source.flow_counters()
    assert counters["open.passes_skipped"] == intervals + 1 and counters["open.passes"] == 0  # + the shutdown's
    if mode == "each":
        lcs = {side(e, conn): e.lifecycle for e in h.seen if kind(e) == "lifecycle"}
        client = lcs[ACTIVE]
        assert (client.tx_bytes, client.rx_bytes, client.reported_tx_bytes, client.reported_rx_bytes) == (
            conn.c2s,
            conn.s2c,
            0,
            0,
        )
    else:
        flows = {e.flow.role: e.flow for e in h.seen if kind(e) == "flow" and e.flow.connections == 1}
        assert (flows[ACTIVE].tx_bytes, flows[ACTIVE].rx_bytes) == (conn.c2s, conn.s2c)


@pytest.mark.root
@pytest.mark.parametrize("mode", ["each", "aggregate"])
def test_a_connection_open_for_five_intervals_is_reported_in_each_and_sums_to_its_lifecycle(mode: str) -> None:
    port = traffic.free_port()
    clock = ManualClock()
    writes = [(1000, 10), (20_000, 200), (0, 0), (300, 3000), (123_457, 1)]  # one interval idle
    last = (777, 77)  # written after the last report: the close's remainder
    with (
        kernel_harness(config(port, "each" if mode == "fallback" else mode), clock) as h,
        long_connection(port) as conn,
    ):
        per_interval = []
        for c2s, s2c in writes:
            conn.exchange(c2s, s2c)
            conn.settle()
            got = end_interval(h, clock)
            per_interval.append((reports(got, ACTIVE, conn, mode), reports(got, PASSIVE, conn, mode)))
        conn.exchange(*last)
        conn.settle()
        conn.close()
        h.drain()
        counters = h.source.flow_counters()

    if without_the_pass(h):
        assert_reported_at_close_only(h, conn, len(writes), mode)
        return
    # every interval reported both sides exactly once, with exactly what was written in it
    for (client, server), (c2s, s2c) in zip(per_interval, writes, strict=True):
        assert client == [(c2s, s2c)] and server == [(s2c, c2s)]
    sent, received = sum(w[0] for w in writes), sum(w[1] for w in writes)
    if mode == "each":
        lcs = {side(e, conn): e.lifecycle for e in h.seen if kind(e) == "lifecycle"}
        client_lc, server_lc = lcs[ACTIVE], lcs[PASSIVE]
        # the lifecycle's totals; what the reports took; the rest is the last write
        assert (client_lc.tx_bytes, client_lc.rx_bytes) == (sent + last[0], received + last[1])
        assert (client_lc.reported_tx_bytes, client_lc.reported_rx_bytes) == (sent, received)
        assert (server_lc.tx_bytes, server_lc.rx_bytes) == (received + last[1], sent + last[0])
        assert (server_lc.reported_tx_bytes, server_lc.reported_rx_bytes) == (received, sent)
        for lc in (client_lc, server_lc):
            assert lc.connect_latency_reported and not lc.seeded and lc.srtt_us > 0
        opens = [e.open for e in h.seen if kind(e) == "open"]
        # the connect latency once per socket, in its first report; the cumulative count in each
        assert [o.connect_latency_ns > 0 for o in opens] == [True, True] + [False] * (len(opens) - 2)
        assert all(o.state == ESTABLISHED and o.srtt_us > 0 and 0 < o.min_rtt_us <= o.srtt_us for o in opens)
        assert counters["open.events"] == 2 * len(writes) and counters["open.aggregated"] == 0
    else:
        closed = [e.flow for e in h.seen if kind(e) == "flow" and e.flow.connections == 1]
        by_role = {f.role: f for f in closed}
        assert (by_role[ACTIVE].tx_bytes, by_role[ACTIVE].rx_bytes) == last
        assert (by_role[PASSIVE].tx_bytes, by_role[PASSIVE].rx_bytes) == (last[1], last[0])
        assert not [e for e in h.seen if kind(e) in ("lifecycle", "open")]
        # each connection's connect latency counted once, RTTs once per report
        flows = [e.flow for e in h.seen if kind(e) == "flow"]
        for role in (ACTIVE, PASSIVE):
            mine = [f for f in flows if f.role == role]
            assert sum(sum(f.connect_latency_us_log2) for f in mine) == 1
            assert sum(sum(f.srtt_us_log2) for f in mine) == len(writes) + 1
        assert counters["open.aggregated"] == 2 * len(writes) and counters["open.events"] == 0
    assert counters["open.overshoot"] == 0 and counters["open.passes_skipped"] == 0


@pytest.mark.root
@pytest.mark.parametrize("mode", ["each", "aggregate"])
def test_reports_racing_with_traffic_and_the_close_add_up_exactly(mode: str) -> None:
    """A client streams while passes run back to back and the connection closes in the middle of
    them: no report exceeds what the application had written by then, and the reports plus the
    close's remainder are the bytes written, to the byte."""
    port = traffic.free_port()
    clock = ManualClock()
    chunk, chunks = 1357, 1500
    written = [0]

    def stream(conn: LongConnection) -> None:
        for _ in range(chunks):
            written[0] += chunk  # handed to the kernel from now on
            conn.exchange(chunk, 0)
        conn.close()

    with kernel_harness(config(port, mode), clock) as h, long_connection(port) as conn:
        writer = threading.Thread(target=stream, args=(conn,))
        writer.start()
        bounds = []  # (reported so far by the client side, written when that pass had finished)
        reported = 0
        while writer.is_alive():
            got = end_interval(h, clock)
            reported += sum(tx for tx, _rx in reports(got, ACTIVE, conn, mode))
            bounds.append((reported, written[0]))
        writer.join()
        h.drain()
        counters = h.source.flow_counters()

    total = chunk * chunks
    assert all(r <= w for r, w in bounds), [b for b in bounds if b[0] > b[1]][:3]
    assert len(bounds) > 5 and bounds[-1][0] > 0  # the passes did run while it streamed
    client_reports = sum(tx for tx, _rx in reports(h.seen, ACTIVE, conn, mode))
    server_reports = sum(rx for _tx, rx in reports(h.seen, PASSIVE, conn, mode))
    if mode == "each":
        lcs = {side(e, conn): e.lifecycle for e in h.seen if kind(e) == "lifecycle"}
        assert lcs[ACTIVE].tx_bytes == lcs[PASSIVE].rx_bytes == total
        assert client_reports + lcs[ACTIVE].tx_bytes - lcs[ACTIVE].reported_tx_bytes == total
        assert server_reports + lcs[PASSIVE].rx_bytes - lcs[PASSIVE].reported_rx_bytes == total
        assert lcs[ACTIVE].reported_tx_bytes == client_reports
    else:
        # each flow entry once: the close's remainder may share an entry with the last pass's report
        # when the close came between that pass and the flush (connections 1 and open_connections 1)
        def entries(role: int) -> list[Flow]:
            return [e.flow for e in h.seen if kind(e) == "flow" and e.flow.role == role]

        assert [sum(f.connections for f in entries(r)) for r in (ACTIVE, PASSIVE)] == [1, 1]
        assert sum(f.tx_bytes for f in entries(ACTIVE)) == total
        assert sum(f.rx_bytes for f in entries(PASSIVE)) == total
        # and the reports alone never went past it
        assert client_reports <= total and server_reports <= total
    assert counters["open.overshoot"] == 0


@pytest.mark.root
def test_without_seeding_a_restart_still_counts_nothing_twice() -> None:
    """The chart's agent cannot seed (no CAP_NET_ADMIN). A connection open across a restart is first
    seen by the new agent at its close, with no role: its lifecycle counts from then (`seeded`, its
    counters at first sight in reported_*), not the bytes the old agent reported again. What was sent
    while it went unseen is lost to the counts (the unobserved window), never counted twice."""
    port = traffic.free_port()
    with long_connection(port, keep_listener=True) as conn:
        clock_a = ManualClock()
        with kernel_harness(config(port, "each"), clock_a) as a:
            conn.exchange(1000, 100)
            conn.settle()
            end_interval(a, clock_a)
            a.drain()
        clock_b = ManualClock()
        with kernel_harness(config(port, "each"), clock_b, capabilities=0) as b:
            assert b.plan.open.seed.startswith("needs CAP_NET_ADMIN")
            conn.exchange(4000, 400)  # untracked: no state change since the agent started
            conn.settle()
            assert not [e for e in end_interval(b, clock_b) if kind(e) == "open"]
            conn.close()
            b.wait(lambda e: kind(e) == "lifecycle", 2)
    lcs = {side(e, conn): e.lifecycle for e in b.seen if kind(e) == "lifecycle"}
    # tracked mid-life: its bytes sent are not reported (whether the kernel's count holds its SYN is
    # unknown without a role), its bytes received are the kernel's totals, the whole connection
    for role, rx in ((ACTIVE, 500), (PASSIVE, 5000)):
        lc = lcs[role]
        assert lc.role == 0 and lc.tracked_mid_life and lc.seeded and lc.connect_latency_ns == 0
        assert (lc.tx_bytes, lc.reported_tx_bytes, lc.rx_bytes) == (0, 0, rx)
        assert (lc.tx_bytes - lc.reported_tx_bytes, lc.rx_bytes - lc.reported_rx_bytes) == (0, 0)


@pytest.mark.root
def test_without_the_pass_open_connections_are_reported_at_close_and_counted() -> None:
    """The fallback, on this kernel: planned as for 5.10 (no BPF atomic exchange), the agent says so
    in --dump-bpf, reports nothing while the connection is open, counts every interval whose open
    connections went unreported, and the lifecycle carries the whole connection."""
    port = traffic.free_port()
    clock = ManualClock()
    with (
        kernel_harness(config(port, "each"), clock, kernel="5.10.0-32-cloud-amd64") as h,
        long_connection(port) as conn,
    ):
        for c2s, s2c in ((1000, 10), (2000, 20)):
            conn.exchange(c2s, s2c)
            conn.settle()
            end_interval(h, clock)
        conn.close()
        h.drain()
    assert without_the_pass(h)
    assert h.plan.open.seed == "needs the open-connection reports"
    assert_reported_at_close_only(h, conn, 2)


def _first_reports(h: Harness, clock: ManualClock, conn: LongConnection) -> dict[int, TcpEvent]:
    return {side(e, conn) or 0: e for e in end_interval(h, clock) if kind(e) == "open"}


@pytest.fixture
def veth() -> Iterator[traffic.NetnsPair]:
    with traffic.netns_pair() as pair:
        yield pair


@pytest.mark.root
@pytest.mark.parametrize("where", ["loopback", "veth"])
def test_srtt_and_connect_latency_agree_with_tcp_info(where: str, request: pytest.FixtureRequest) -> None:
    """The owner's TCP_INFO (tcpi_rtt is tcp_sock.srtt_us >> 3, as the agent reads it) and the agent
    agree to the microsecond while nothing is sent; the client's connect latency holds its first RTT
    sample (SYN -> SYN-ACK), the server's is its handshake sample plus the time in SYN_RECV."""
    port = traffic.free_port()
    clock = ManualClock()
    if where == "veth":
        pair: traffic.NetnsPair = request.getfixturevalue("veth")
        where_args: dict[str, str] = {"server_addr": pair.b_addr, "server_netns": pair.b, "client_netns": pair.a}
    else:
        where_args = {}
    with kernel_harness(config(port, "each"), clock) as h, long_connection(port, **where_args) as conn:  # type: ignore[arg-type]
        handshake = rtt_us(conn.client), rtt_us(conn.server)  # the first samples: nothing sent since
        first = _first_reports(h, clock, conn)
        now = rtt_us(conn.client), rtt_us(conn.server)
        conn.exchange(5000, 5000)
        conn.settle()
        before_close = rtt_us(conn.client), rtt_us(conn.server)
        conn.close(linger0=True)  # a RST: no RTT sample after this
        h.wait(lambda e: kind(e) == "lifecycle", 2)
    client, server = first[ACTIVE].open, first[PASSIVE].open
    assert handshake == now == (client.srtt_us, server.srtt_us)
    assert 0 < client.min_rtt_us <= client.srtt_us and 0 < server.min_rtt_us <= server.srtt_us
    # the client's first sample is its SYN's round trip, inside connect(); the server's is the SYN-ACK's
    assert handshake[0] * 1000 <= client.connect_latency_ns < handshake[0] * 1000 + 50_000_000
    assert handshake[1] * 1000 <= server.connect_latency_ns < handshake[1] * 1000 + 50_000_000
    lcs = {side(e, conn): e.lifecycle for e in h.seen if kind(e) == "lifecycle"}
    assert (lcs[ACTIVE].srtt_us, lcs[PASSIVE].srtt_us) == before_close
    assert lcs[ACTIVE].connect_latency_ns == client.connect_latency_ns and lcs[ACTIVE].connect_latency_reported


@pytest.mark.root
def test_connections_open_before_the_agent_started_are_reported_with_their_role(
    veth: traffic.NetnsPair,
) -> None:
    """Opened and used before the agent: found at start-up in their namespaces, the server's socket
    PASSIVE (its port listens), the client's ACTIVE, each owned by the process of its namespace that
    holds it; only what happens after is reported."""
    port = traffic.free_port()
    clock = ManualClock()
    where = {"server_addr": veth.b_addr, "server_netns": veth.b, "client_netns": veth.a}
    with long_connection(port, keep_listener=True, **where) as conn, contextlib.ExitStack() as holders:  # type: ignore[arg-type]
        client_pid = holders.enter_context(held_in(veth.a, "tsc-client", drop=(conn.server,)))
        server_pid = holders.enter_context(held_in(veth.b, "tsc-server", drop=(conn.client,)))
        conn.exchange(50_000, 5_000)  # before the agent: never reported
        conn.settle()
        with kernel_harness(config(port, "each"), clock) as h:
            seeded = h.source.flow_counters()
            holders.close()  # their copies of the sockets would keep the connection open
            conn.exchange(4321, 1234)
            conn.settle()
            first = _first_reports(h, clock, conn)
            conn.server.shutdown(socket.SHUT_WR)  # the server half-closes: its FIN is one byte, never data
            conn.client.recv(1)
            conn.settle()
            second = _first_reports(h, clock, conn)
            conn.exchange(99, 0)
            conn.settle()
            conn.close()
            h.wait(lambda e: kind(e) == "lifecycle", 2)
    # ours, exactly (the port filter leaves every other connection of the host "filtered", or
    # "not_found" when it closed between the /proc scan and its lookup)
    assert seeded["open.seed_added"] == 2
    client, server = first[ACTIVE], first[PASSIVE]
    assert (client.open.role, server.open.role) == (ACTIVE, PASSIVE)
    assert client.open.seeded and server.open.seeded
    assert (client.open.tx_bytes, client.open.rx_bytes) == (4321, 1234)
    assert (server.open.tx_bytes, server.open.rx_bytes) == (1234, 4321)
    assert client.open.connect_latency_ns == 0  # unknown: connect() came before the agent
    assert (client.process.pid, client.process.comm) == (client_pid, "tsc-client")
    assert (server.process.pid, server.process.comm) == (server_pid, "tsc-server")
    assert (second[ACTIVE].open.rx_bytes, second[PASSIVE].open.tx_bytes) == (0, 0)  # the FIN is not data
    assert second[ACTIVE].open.state == CLOSE_WAIT
    lcs = {side(e, conn): e.lifecycle for e in h.seen if kind(e) == "lifecycle"}
    assert (lcs[ACTIVE].role, lcs[PASSIVE].role) == (ACTIVE, PASSIVE)
    assert lcs[ACTIVE].seeded and lcs[PASSIVE].seeded
    # the totals count from when it was found (the 55,000 bytes before are in reported_*)
    client_lc = lcs[ACTIVE]
    assert client_lc.tx_bytes - client_lc.reported_tx_bytes == 99
    assert client_lc.reported_tx_bytes == 50_000 + 4321 and client_lc.tx_bytes == 50_000 + 4321 + 99


@pytest.mark.root
def test_an_agent_restart_counts_nothing_twice() -> None:
    """Agent A reports a connection until it stops (its last pass at shutdown); bytes sent while no
    agent runs are the unobserved window; agent B finds the connection and reports only what follows."""
    port = traffic.free_port()
    with long_connection(port, keep_listener=True) as conn:
        clock_a = ManualClock()
        with kernel_harness(config(port, "each"), clock_a) as a:
            conn.exchange(1000, 100)
            conn.settle()
            end_interval(a, clock_a)
            conn.exchange(2000, 200)  # reported by A's last pass, at its shutdown
            conn.settle()
            a.drain()
        conn.exchange(4000, 400)  # nobody watching
        conn.settle()
        clock_b = ManualClock()
        with kernel_harness(config(port, "each"), clock_b) as b:
            conn.exchange(8000, 800)
            conn.settle()
            end_interval(b, clock_b)
            conn.exchange(16_000, 1600)
            conn.settle()
            conn.close()
            b.wait(lambda e: kind(e) == "lifecycle", 2)

    def counted(h: Harness, role: int) -> tuple[int, int]:
        """What an agent counted for one side: its reports plus its lifecycles' remainders."""
        tx = rx = 0
        for e in h.seen:
            if side(e, conn) != role:
                continue
            if kind(e) == "open":
                tx, rx = tx + e.open.tx_bytes, rx + e.open.rx_bytes
            elif kind(e) == "lifecycle":
                lc = e.lifecycle
                tx, rx = tx + lc.tx_bytes - lc.reported_tx_bytes, rx + lc.rx_bytes - lc.reported_rx_bytes
        return tx, rx

    assert counted(a, ACTIVE) == (3000, 300) and counted(a, PASSIVE) == (300, 3000)
    assert counted(b, ACTIVE) == (24_000, 2400) and counted(b, PASSIVE) == (2400, 24_000)
    assert not [e for e in a.seen if kind(e) == "lifecycle"]  # A never saw it close
    assert all(e.lifecycle.seeded for e in b.seen if kind(e) == "lifecycle")


@pytest.mark.root
def test_many_connections_closing_while_passes_run_keep_every_flow_exact() -> None:
    """Thirty connections, open together, exchange data of varied sizes and close at different times
    while passes run back to back (aggregate mode): each side's flows add up to the bytes written,
    to the byte, whichever pass each close raced with."""
    port = traffic.free_port()
    clock = ManualClock()
    plan = [(1 + (i * 7919) % 5000, 1 + (i * 104_729) % 700, 3 + i % 9) for i in range(30)]

    def run(conn: LongConnection, c2s: int, s2c: int, rounds: int) -> None:
        for _ in range(rounds):
            conn.exchange(c2s, s2c)
        conn.close()

    with kernel_harness(config(port, "aggregate"), clock) as h, contextlib.ExitStack() as stack:
        conns = [stack.enter_context(long_connection(port)) for _ in plan]
        workers = [threading.Thread(target=run, args=(c, *p)) for c, p in zip(conns, plan, strict=True)]
        for t in workers:
            t.start()
        while any(t.is_alive() for t in workers):
            end_interval(h, clock)
        for t in workers:
            t.join()
        h.drain()
        counters = h.source.flow_counters()
    want_c2s = sum(c * r for c, _s, r in plan)
    want_s2c = sum(s * r for _c, s, r in plan)
    flows = [e.flow for e in h.seen if kind(e) == "flow"]
    client = [f for f in flows if f.role == ACTIVE]
    server = [f for f in flows if f.role == PASSIVE]
    assert (sum(f.tx_bytes for f in client), sum(f.rx_bytes for f in client)) == (want_c2s, want_s2c)
    assert (sum(f.tx_bytes for f in server), sum(f.rx_bytes for f in server)) == (want_s2c, want_c2s)
    assert sum(f.connections for f in client) == sum(f.connections for f in server) == len(plan)
    assert not [e for e in h.seen if kind(e) in ("lifecycle", "open")]  # all ordinary
    assert counters["open.overshoot"] == 0 and counters["open.aggregated"] > len(plan)
