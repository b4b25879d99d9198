"""tail/connections.py on hand-built events: one row per connection, both ends joined, the reset's
sender decided, evidence folded in, flows once per pair, bounded; and the rows' format."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest

from tail import connections as cx
from tail import live
from tail import resetcause as rc
from tcpscope.kinds import parse_view
from tcpscope.v1 import events_pb2 as pb
from tests.support import natmix as nm
from tests.tail.test_resetcause import MS, T0, C, S, life, received, sent

HOLD_S = rc.HOLD_NS / 1e9


def _error(node: str, local: tuple[str, int], remote: tuple[str, int], t: int, errno: int = 104) -> pb.TcpEvent:
    e = pb.TcpEvent(node=node, socket_id=7)
    e.local.ip, e.local.port = local
    e.remote.ip, e.remote.port = remote
    e.time.FromNanoseconds(t)
    e.socket_error.errno, e.socket_error.errno_name = errno, "ECONNRESET"
    return e


def _feed(j: cx.ConnectionRows, events: list[pb.TcpEvent], now: float = 0.0) -> list[cx.Row]:
    out: list[cx.Row] = []
    for e in events:
        out += j.add(e, now)
    return out


def test_an_app_reset_is_one_row_at_once_with_its_sender_and_every_event_folded_in() -> None:
    j = cx.ConnectionRows()
    client_life = life("node-1", C, S, T0, T0 + 10 * MS, pb.RESET_SENT, pb.ACTIVE, reason="TCP_STATE")
    client_life.lifecycle.tx_bytes, client_life.lifecycle.rx_bytes = 120, 4096
    server_life = life("node-2", S, C, T0 + MS, T0 + 11 * MS, pb.RESET_RECEIVED, pb.PASSIVE)
    node1 = [sent("node-1", C, S, T0 + 10 * MS, "TCP_STATE", socket_id=7), client_life]
    node2 = [received("node-2", S, C, T0 + 11 * MS), _error("node-2", S, C, T0 + 11 * MS), server_life]
    assert _feed(j, node1) == []  # the client's end waits for the server's
    rows = _feed(j, node2)
    assert len(rows) == 1 and isinstance(rows[0], cx.ConnectionRow)
    row = rows[0]
    assert (row.client, row.server, row.ended, row.evidence) == (client_life, server_life, "client_reset", 3)
    assert row.reset_by == cx.ResetBy("client", rc.Verdict(rc.APP, "TCP_STATE", "node-1"))
    assert len(j) == 0 and j.counts == {"rows_from_both_ends": 1, "events_folded_into_rows": 3}
    assert j.close(100.0) == []  # nothing else comes out: no per-socket rows
    line = cx.table_row(row)
    assert line.split()[1:] == [
        "198.18.1.2:40000",
        "198.18.2.2:9000",
        "client_reset",
        "client",
        "app",
        "(TCP_STATE)",
        "10ms",
        "120",
        "4096",
    ]
    doc = json.loads(cx.json_row(row))
    assert doc["row"] == "connection" and doc["ended"] == "client_reset"
    assert doc["reset_by"] == {"side": "client", "cause": "app", "detail": "TCP_STATE", "peer_node": "node-1"}
    assert (doc["client_to_server_bytes"], doc["server_to_client_bytes"], doc["duration_ns"]) == (120, 4096, 10 * MS)
    assert doc["sockets"]["client"]["lifecycle"]["ending"] == "RESET_SENT"


def test_a_network_reset_waits_for_the_absence_of_a_send_then_is_one_row() -> None:
    j = cx.ConnectionRows()
    events = [
        received("node-1", C, S, T0 + 10 * MS),
        life("node-1", C, S, T0, T0 + 10 * MS, pb.RESET_RECEIVED, pb.ACTIVE),
        received("node-2", S, C, T0 + 10 * MS),
        life("node-2", S, C, T0 + MS, T0 + 10 * MS, pb.RESET_RECEIVED, pb.PASSIVE),
    ]
    assert _feed(j, events, now=1.0) == []  # both ends are there; a send could still come
    assert j.tick(1.0 + HOLD_S - 0.01) == []
    rows = j.tick(1.0 + HOLD_S)
    assert len(rows) == 1 and isinstance(rows[0], cx.ConnectionRow)
    assert rows[0].ended == "network_reset" and rows[0].reset_by is not None
    assert rows[0].reset_by.side == "network" and rows[0].reset_by.verdict.cause == rc.NETWORK
    assert rows[0].evidence == 2


def test_the_connection_id_joins_ends_that_nat_gave_other_addresses() -> None:
    vip = ("198.19.0.10", 80)  # the client's view: the Service; the server's: the pod, and the client

    def ends(cid_client: int, cid_server: int) -> list[pb.TcpEvent]:
        c = life("node-1", C, vip, T0, T0 + 5 * MS, pb.NORMAL, pb.ACTIVE)
        s = life("node-2", S, C, T0 + MS, T0 + 6 * MS, pb.NORMAL, pb.PASSIVE)
        c.connection_id, s.connection_id = cid_client, cid_server
        return [c, s]

    j = cx.ConnectionRows()
    rows = _feed(j, ends(42, 42))
    assert len(rows) == 1 and isinstance(rows[0], cx.ConnectionRow) and rows[0].ended == "ok"
    assert cx.row_ends(rows[0]) == ("198.18.1.2:40000", "198.18.2.2:9000")  # each end as its own agent names it
    j = cx.ConnectionRows()
    assert _feed(j, ends(0, 0)) == []  # no identity, and the 4-tuples differ: two connections, one end each
    rows = j.tick(cx.DEFAULT_HOLD_S)
    assert [(r.client is None, r.server is None) for r in rows if isinstance(r, cx.ConnectionRow)] == [
        (False, True),
        (True, False),
    ]
    assert j.counts["rows_from_the_client_only"] == j.counts["rows_from_the_server_only"] == 1
    j = cx.ConnectionRows()
    same = ends(42, 43)
    same[1].local.ip, same[1].local.port = vip  # the same 4-tuple, but different identities: not joined
    same[1].remote.ip, same[1].remote.port = C
    assert _feed(j, same) == []


def test_a_refusal_is_one_row_and_the_servers_late_rst_from_no_socket_is_folded_in() -> None:
    j = cx.ConnectionRows()
    client = life("node-1", C, S, T0, T0 + MS, pb.RESET_RECEIVED, pb.ACTIVE, last_state=pb.SYN_SENT)
    client.lifecycle.errno, client.lifecycle.errno_name = 111, "ECONNREFUSED"
    rows = _feed(j, [received("node-1", C, S, T0 + MS, state=pb.SYN_SENT), client])
    assert len(rows) == 1 and isinstance(rows[0], cx.ConnectionRow)  # no server socket can exist: at once
    assert rows[0].ended == "refused" and rows[0].reset_by is not None
    assert rows[0].reset_by.text() == "server kernel (refused)"
    assert "errno=ECONNREFUSED" in cx.table_row(rows[0])
    # the server's kernel answered from no socket; its agent's event arrives later: taken, not shown
    late = sent("node-2", S, C, T0 + MS, "NO_SOCKET", state=pb.LISTEN, socket_id=0)
    assert j.add(late, 1.0) == [] and j.close(10.0) == []
    assert j.counts["events_folded_into_rows"] == 2


def test_an_event_no_connection_takes_prints_on_its_own_after_the_hold() -> None:
    j = cx.ConnectionRows()
    stray = sent("node-2", S, C, T0, "NO_SOCKET", state=pb.LISTEN, socket_id=0)  # its client is not watched
    assert j.add(stray, 0.0) == []
    rows = j.tick(cx.DEFAULT_HOLD_S)
    assert rows == [cx.SocketRow(stray, None)] and j.counts == {"events_shown_on_their_own": 1}
    line = cx.socket_table_row(cx.SocketRow(stray))
    assert "RST_SENT" in line and "no connection row took it" in line


def test_waiting_is_bounded_and_counted() -> None:
    j = cx.ConnectionRows(max_pending=2)
    lives = [life("node-1", (C[0], C[1] + i), S, T0, T0 + MS, pb.NORMAL, pb.ACTIVE) for i in range(3)]
    rows = _feed(j, lives)
    assert [r.client for r in rows if isinstance(r, cx.ConnectionRow)] == [lives[0]]  # the one due first
    assert j.counts["released_early_over_the_bound"] == 1 and len(j) == 2


def _flow(role: pb.Role, node: str, conns: int) -> pb.TcpEvent:
    local, remote = ((C[0], 0), S) if role == pb.ACTIVE else (S, (C[0], 0))
    e = pb.TcpEvent(node=node)
    e.local.ip, e.local.port = local
    e.remote.ip, e.remote.port = remote
    e.time.FromNanoseconds(T0)
    fl = e.flow
    fl.role, fl.connections, fl.tx_bytes, fl.rx_bytes, fl.interval_ns = role, conns, 100, 2000, 2 * 10**9
    fl.duration_sum_ns = conns * 3_100_000
    fl.duration_us_log2.extend([0] * 12 + [conns])  # bucket 12: [4.096 ms, 8.192 ms)
    return e


def test_a_pair_prints_one_flow_row_per_interval() -> None:
    j = cx.ConnectionRows()
    server = _flow(pb.PASSIVE, "node-2", 20)
    client = _flow(pb.ACTIVE, "node-1", 20)
    assert j.add(server, 0.0) == []  # the server's flow waits for the client's
    assert j.add(client, 0.5) == [cx.FlowRow(client, "client", True)]
    assert j.tick(10.0) == []  # the server's was dropped: the client's counts the same connections
    assert j.add(_flow(pb.PASSIVE, "node-2", 20), 11.0) == []  # from now on at once
    assert j.counts == {"server_flows_covered_by_the_client": 2}
    alone = cx.ConnectionRows()
    # alone, it waits the hold plus its flow interval for a client's flow (the client's agent flushes
    # its own flows once per interval), then it is the pair's row
    assert alone.add(server, 0.0) == [] and alone.tick(cx.DEFAULT_HOLD_S + 1.99) == []
    assert alone.tick(cx.DEFAULT_HOLD_S + 2.0) == [cx.FlowRow(server, "server")]
    line = cx.table_row(cx.FlowRow(client, "client", True)).split()
    assert line[1:9] == ["198.18.1.2", "198.18.2.2:9000", "20", "ok", "(flow)", "p50<8.2ms", "100", "2000"]
    assert line[9:] == ["mean=3.1ms", "p99<8.2ms", "in", "2.0s", "reported", "by", "the", "client's", "agent"]


def test_rows_flag_follows_the_kinds_unless_given() -> None:
    assert live.parse_rows(None, "") == "connection"
    assert live.parse_rows(None, "lifecycle,reset") == "connection"
    assert live.parse_rows(None, "state") == live.parse_rows(None, "all") == "socket"
    assert live.parse_rows("socket", "") == "socket"
    with pytest.raises(ValueError, match="kinds probe have no connection rows: use --rows socket"):
        live.parse_rows("connection", "reset,probe")


def test_the_live_view_shows_connection_rows_by_kind_and_end() -> None:
    shown: list[str] = []

    def view(kinds: str, keep: object = None) -> live.LiveView:
        return live.LiveView(
            lambda ev, v: "socket",
            kinds=parse_view(kinds),
            hold=0.0,
            keep=keep,  # type: ignore[arg-type]
            render_row=lambda row: row.ended if isinstance(row, cx.ConnectionRow) else type(row).__name__,
        )

    ok = [
        life("node-1", C, S, T0, T0 + MS, pb.NORMAL, pb.ACTIVE),
        life("node-2", S, C, T0, T0 + MS, pb.NORMAL, pb.PASSIVE),
    ]
    for kinds, want in (("", ["ok"]), ("lifecycle", ["ok"]), ("reset", []), ("flow", [])):
        v = view(kinds)
        shown = [x for e in ok for x in v.add(e, 0.0)] + v.close(1.0)
        assert shown == want, kinds
    v = view("", keep=lambda e: e.node == "node-2")  # either end may match a filter
    assert [x for e in ok for x in v.add(e, 0.0)] + v.close(1.0) == ["ok"]


# --- through a Service (kube-proxy's DNAT): events as tests/support/natmix.py builds them ---------------

SERVICE_JSON = {"ip": nm.VIP[0], "port": nm.VIP[1], "namespace": "shop", "name": "api-svc", "kind": "SERVICE"}
NODES = ("node-1", "node-2", "node-3")


def _joined(events: list[pb.TcpEvent], step: float = 0.001) -> tuple[list[cx.Row], cx.ConnectionRows]:
    """Every event in the order given, a millisecond apart on the reader's clock, then every hold
    ended (rows out by their own timers, not by close); the three nodes' agents watched."""
    j = cx.ConnectionRows()
    for agent, b in nm.watched_batches(NODES):
        j.add_batch(agent, b)
    now, rows = 0.0, []
    for e in events:
        now += step
        rows += j.add(e, now)
    rows += j.tick(now + cx.RECENT_S)
    assert len(j) == 0
    return rows, j


def _senders(rows: list[cx.Row]) -> Counter[tuple[str, str, str]]:
    return Counter(
        (r.ended, r.reset_by.side, r.reset_by.verdict.cause) if r.reset_by else (r.ended, "", "")
        for r in rows
        if isinstance(r, cx.ConnectionRow)
    )


MIX_SENDERS = {
    ("ok", "", ""): nm.COUNTS["ok"],
    ("client_reset", "client", "app"): nm.COUNTS["client_reset"],
    ("server_reset", "server", "app"): nm.COUNTS["server_reset"],
    ("network_reset", "network", "network"): nm.COUNTS["network_reset"],
    ("refused", "server", "peer_kernel"): nm.COUNTS["refused"],
    ("timeout", "", ""): nm.COUNTS["timeout"],
}
MIX_EVIDENCE = sum(nm.COUNTS[k] * n for k, n in {"client_reset": 4, "server_reset": 4, "network_reset": 4}.items()) + (
    nm.COUNTS["refused"] * 2 + nm.COUNTS["timeout"]
)
"""reset and error events of the mix: a reset's send, receive and both sockets' ECONNRESET (two receives
for the network's), a refusal's receive and ECONNREFUSED, a timeout's ETIMEDOUT"""


@pytest.mark.parametrize("skew_s", [0, 5])
def test_through_a_clusterip_each_connection_is_one_row_naming_the_backend_and_the_service(skew_s: int) -> None:
    shift = {"node-2": skew_s * 10**9}  # the backend's node's clock, off by that much
    via_rows, via = _joined(nm.mix(True, shift, errors=True))
    direct_rows, direct = _joined(nm.mix(False, shift, errors=True))
    for rows, j in ((via_rows, via), (direct_rows, direct)):
        assert all(isinstance(r, cx.ConnectionRow) for r in rows), [r for r in rows if isinstance(r, cx.SocketRow)]
        conns = [r for r in rows if isinstance(r, cx.ConnectionRow)]
        assert sorted(r.client.local.port for r in conns if r.client) == list(range(40000, 40000 + len(conns)))
        assert len(conns) == sum(nm.COUNTS.values())
        assert j.counts["events_folded_into_rows"] == MIX_EVIDENCE and "events_shown_on_their_own" not in j.counts
        assert j.counts["rows_from_both_ends"] == sum(nm.COUNTS.values()) - nm.COUNTS["refused"] - nm.COUNTS["timeout"]
    assert _senders(via_rows) == _senders(direct_rows) == MIX_SENDERS
    assert via.counts["rows_through_a_service_or_node_port"] == sum(nm.COUNTS.values())
    assert "rows_through_a_service_or_node_port" not in direct.counts

    for r in via_rows:
        assert isinstance(r, cx.ConnectionRow)
        line, doc = cx.table_row(r), json.loads(cx.json_row(r))
        assert doc["via"] == SERVICE_JSON  # as the summary's rows: the Service with its port
        if r.server is not None:  # joined to the backend: the server is it, and the Service is said
            assert cx.row_ends(r) == ("shop/web-1:" + str(r.client.local.port), "shop/api-1:9000")  # type: ignore[union-attr]
            assert line[cx.TABLE_HEADER.index("DETAILS") :].split()[:2] == ["via", "shop/api-svc:80"], line
            assert doc["server"]["name"] == "api-1" and doc["server"]["port"] == nm.TARGET_PORT
        else:  # refused or timed out: no backend socket, the server shown is the Service itself
            assert r.ended in ("refused", "timeout")
            assert cx.row_ends(r)[1] == "shop/api-svc:80" and " via " not in line
    for r in direct_rows:
        assert isinstance(r, cx.ConnectionRow)
        assert "via" not in json.loads(cx.json_row(r)) and " via " not in cx.table_row(r)
    tally = via.tally()
    assert f"{sum(nm.COUNTS.values())} of them through a Service or node port" in tally
    assert f"{MIX_EVIDENCE} reset and error events folded into them, 0 shown on their own" in tally


def _interleavings(a: list[pb.TcpEvent], b: list[pb.TcpEvent]) -> list[list[pb.TcpEvent]]:
    """Every order of two nodes' events that keeps each node's own order (a partition's)."""
    out = []
    for picks in itertools.combinations(range(len(a) + len(b)), len(a)):
        ia, ib, order = iter(a), iter(b), []
        for i in range(len(a) + len(b)):
            order.append(next(ia) if i in picks else next(ib))
        out.append(order)
    return out


@pytest.mark.parametrize("via_service", [False, True])
@pytest.mark.parametrize("kind", ["network_reset", "client_reset", "server_reset"])
def test_every_reset_and_error_event_of_a_connection_is_folded_in_whatever_the_order(
    via_service: bool, kind: str
) -> None:
    # each end's RST and ERROR come before its lifecycle; the reader meets the two nodes' partitions
    # in any interleaving. Once, the second ERROR of a network reset printed on its own.
    events = nm.mix(via_service, counts={kind: 1}, errors=True)
    node1 = [e for e in events if e.node == "node-1"]
    node2 = [e for e in events if e.node == "node-2"]
    assert len(node1) == len(node2) == 3
    orders = _interleavings(node1, node2)
    assert len(orders) == 20
    for order in orders:
        rows, j = _joined(order)
        assert len(rows) == 1 and isinstance(rows[0], cx.ConnectionRow), [type(r).__name__ for r in rows]
        assert rows[0].evidence == 4 and j.counts["events_folded_into_rows"] == 4
        assert _senders(rows) == Counter({k: 1 for k in MIX_SENDERS if k[0] == kind})


def test_an_event_of_a_connection_is_taken_by_its_id_its_socket_or_its_addresses() -> None:
    events = nm.mix(True, counts={"server_reset": 1}, errors=True)
    rows, j = _joined(events)
    (row,) = rows
    assert isinstance(row, cx.ConnectionRow) and row.client is not None and row.server is not None
    end = row.time_ns()
    late = pb.TcpEvent()
    late.CopyFrom(row.server)  # the backend's socket, a minute later: its id still names the connection
    late.ClearField("lifecycle")
    late.socket_error.errno = 104
    late.time.FromNanoseconds(end + 60 * 10**9)
    assert j.add(late, 40.0) == []  # the row went out 10 s ago (reader's clock): still taken
    assert j.counts["events_folded_into_rows"] == 4 + 1
    # without an id, a socket id and an address pair are reused: only within the connection's life
    same_socket = pb.TcpEvent()
    same_socket.CopyFrom(late)
    same_socket.connection_id = 0
    assert j.add(same_socket, 40.0) == []
    assert j.tick(40.0 + cx.DEFAULT_HOLD_S) == [cx.SocketRow(same_socket)]
    # ...where the socket alone ties an event whose addresses the agent did not capture
    j = cx.ConnectionRows()
    for agent, b in nm.watched_batches(NODES):
        j.add_batch(agent, b)
    bare = pb.TcpEvent(node=row.server.node, socket_id=row.server.socket_id)
    bare.time.FromNanoseconds(end)
    bare.socket_error.errno = 104
    assert j.add(bare, 0.0) == []
    assert _joined_now(j, events, 0.1) == 1 and j.counts["events_folded_into_rows"] == 4 + 1


def _joined_now(j: cx.ConnectionRows, events: list[pb.TcpEvent], now: float) -> int:
    rows = [r for e in events for r in j.add(e, now)] + j.tick(now + cx.RECENT_S)
    assert all(isinstance(r, cx.ConnectionRow) for r in rows), rows
    return len(rows)


def test_a_backend_refusing_a_dnated_syn_from_no_socket_is_folded_into_the_clients_row() -> None:
    # through a Service whose backend does not listen, the backend's kernel answers the client's
    # address from no socket: neither the id (none) nor the address pair (S:9000 <- C:e, the client's
    # socket says C:e -> VIP:80) ties it, the client's address within the connect's life does
    events = nm.mix(True, counts={"refused": 1}, errors=True)
    client = next(e for e in events if e.WhichOneof("kind") == "lifecycle")
    t = client.time.ToNanoseconds() - 2000
    backend_rst = sent("node-2", (nm.API1.ip, nm.TARGET_PORT), C, t, "NO_SOCKET", state=pb.LISTEN, socket_id=0)
    assert (client.local.ip, client.local.port) == C
    rows, j = _joined([backend_rst, *events])
    assert len(rows) == 1 and isinstance(rows[0], cx.ConnectionRow) and rows[0].ended == "refused"
    assert rows[0].evidence == 3 and "events_shown_on_their_own" not in j.counts
    # the same RST to a client address no row through a Service has is a stray
    rows, j = _joined([backend_rst])
    assert rows == [cx.SocketRow(backend_rst)]


def test_a_complete_row_waiting_for_its_resets_sender_goes_out_when_the_send_arrives() -> None:
    j = cx.ConnectionRows()
    both = [
        life("node-1", C, S, T0, T0 + 10 * MS, pb.RESET_RECEIVED, pb.ACTIVE),
        life("node-2", S, C, T0 + MS, T0 + 11 * MS, pb.RESET_RECEIVED, pb.PASSIVE),
    ]
    assert _feed(j, both, now=1.0) == []  # both received one: nobody is known to have sent it yet
    rows = j.add(sent("node-2", S, C, T0 + 10 * MS, "TCP_ABORT_ON_DATA", socket_id=7), 1.5)
    assert len(rows) == 1 and isinstance(rows[0], cx.ConnectionRow)  # at once, not after the reset hold
    assert rows[0].ended == "server_reset"
    assert rows[0].reset_by == cx.ResetBy("server", rc.Verdict(rc.APP, "TCP_ABORT_ON_DATA", "node-2"))


def test_through_a_clusterip_the_backends_flows_are_counted_once_by_the_clients() -> None:
    m = nm.Mix(True, {}, [])
    m.flows(nm.WEB, {nm.API1: 3, nm.API2: 2}, T0)
    client_flow, *backend_flows = m.events
    assert client_flow.remote.kind == pb.SERVICE and {e.local.name for e in backend_flows} == {"api-1", "api-2"}
    j = cx.ConnectionRows()
    # the backends' flows (C -> S:9000) come first: they wait for a flow from their client's address
    assert j.add(backend_flows[0], 0.0) == [] and j.add(backend_flows[1], 0.1) == []
    shown = cx.FlowRow(client_flow, "client", True)
    assert j.add(client_flow, 1.0) == [shown]  # C -> VIP:80 counts them: they are not shown
    assert j.tick(100.0) == [] and len(j) == 0
    # the next interval: the backends' flows from that client go at once, whatever their order
    assert j.add(backend_flows[0], 101.0) == [] and len(j) == 0
    assert j.counts == {"server_flows_covered_by_the_client": 3}
    doc = json.loads(cx.json_row(shown))
    assert (doc["connections"], doc["reported_by"], doc["via"]) == (5, "client", SERVICE_JSON)
    assert (doc["client"]["name"], doc["server"]["name"], doc["server"]["port"]) == ("web-1", "api-svc", 80)
    assert cx.table_row(shown).split()[1:5] == ["shop/web-1", "shop/api-svc:80", "5", "ok"]
    assert "3 server flows not shown (their clients' flows count them" in j.tally()
    # the same connections pod to pod: the client's two flows, one per backend, and nothing else
    m = nm.Mix(False, {}, [])
    m.flows(nm.WEB, {nm.API1: 3, nm.API2: 2}, T0)
    rows, j = _joined(m.events)
    assert [(r.side, r.flow.flow.connections) for r in rows if isinstance(r, cx.FlowRow)] == [
        ("client", 3),
        ("client", 2),
    ]
    assert len(rows) == 2 and all("via" not in json.loads(cx.json_row(r)) for r in rows if isinstance(r, cx.FlowRow))


def test_the_backends_flows_from_an_unwatched_client_are_shown_as_the_servers() -> None:
    m = nm.Mix(True, {}, [])
    m.flows(nm.WEB, {nm.API1: 3, nm.API2: 2}, T0)
    backend_flows = m.events[1:]
    rows, j = _joined(backend_flows)
    assert [(r.side, r.flow.local.name) for r in rows if isinstance(r, cx.FlowRow)] == [
        ("server", "api-1"),
        ("server", "api-2"),
    ]
    assert "server_flows_covered_by_the_client" not in j.counts


def _node_flow(role: pb.Role, conns: int) -> pb.TcpEvent:
    """A NodePort's flows under SNAT: the client's names node-2's address and node port, the
    backend's names that node's address as its client."""
    client_side = role == pb.ACTIVE
    e = pb.TcpEvent(node="node-1" if client_side else "node-2")
    pod, node = e.local, e.remote  # the node is the remote end of both: the SNATed client, the node port
    pod.ip, pod.kind, pod.namespace = (nm.WEB.ip if client_side else nm.API1.ip), pb.POD, "shop"
    pod.name, pod.port = ("web-1", 0) if client_side else ("api-1", nm.TARGET_PORT)
    node.ip, node.kind, node.name, node.port = "198.19.255.2", pb.NODE, "node-2", 30080 if client_side else 0
    e.time.FromNanoseconds(T0)
    e.flow.role, e.flow.connections, e.flow.interval_ns = role, conns, 2 * 10**9
    return e


def test_a_nodeports_backend_flows_from_the_node_are_covered_by_the_clients_flows_to_it() -> None:
    j = cx.ConnectionRows()
    client = _node_flow(pb.ACTIVE, 5)  # web-1's 5 connections to node-2:30080
    assert j.add(client, 0.0) == [cx.FlowRow(client, "client")]
    first, second = _node_flow(pb.PASSIVE, 3), _node_flow(pb.PASSIVE, 4)  # 7 from node-2's address
    assert j.add(first, 0.1) == [] and j.add(second, 0.2) == []
    shown = cx.FlowRow(second, "server", covered=2)
    assert j.tick(10.0) == [shown]  # 3 of web-1's: not shown; of the 4, 2 are web-1's, 2 someone else's
    assert "(2 of them also in clients' flows to node-2)" in cx.table_row(shown)
    assert json.loads(cx.json_row(shown))["also_in_client_flows"] == 2
    assert j.counts == {"server_flows_covered_by_the_client": 1, "server_flow_connections_covered_by_clients": 2}


def test_a_server_only_row_whose_client_counted_it_in_a_flow_says_so() -> None:
    # an ordinary connection the backend retransmitted: its agent reports the socket, the client's
    # agent aggregated it into a flow
    m = nm.Mix(True, {}, [])
    m.connection("ok", nm.WEB, nm.API1, 40000, T0)
    server = next(e for e in m.events if e.lifecycle.role == pb.PASSIVE)
    server.lifecycle.retransmits = 1
    m.flows(nm.WEB, {nm.API1: 1}, T0 + 10 * MS)
    client_flow = next(e for e in m.events if e.WhichOneof("kind") == "flow" and e.flow.role == pb.ACTIVE)
    rows, j = _joined([client_flow, server])
    row = next(r for r in rows if isinstance(r, cx.ConnectionRow))
    assert row.in_client_flow and row.client is None
    assert "(the client's agent counted it in a flow)" in cx.table_row(row)
    assert json.loads(cx.json_row(row))["in_client_flow"] is True
    assert j.counts["server_rows_in_client_flows"] == 1
    rows, _ = _joined([server])  # no flow from its client: a server-only row, nothing more said
    assert not next(r for r in rows if isinstance(r, cx.ConnectionRow)).in_client_flow


def test_the_live_view_prints_at_close_the_rows_whose_hold_ended_since_the_last_tick() -> None:
    v = live.LiveView(lambda ev, v: "socket", hold=1.0, render_row=lambda row: type(row).__name__)
    ok = [
        life("node-1", C, S, T0, T0 + MS, pb.NORMAL, pb.ACTIVE),
        life("node-2", S, C, T0, T0 + MS, pb.NORMAL, pb.PASSIVE),
    ]
    assert [x for e in ok for x in v.add(e, 0.0)] == []  # joined, held 1 s for time order
    assert v.close(5.0) == ["ConnectionRow"]  # no tick came in between: still printed
