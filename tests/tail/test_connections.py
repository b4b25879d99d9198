"""tail/connections.py on hand-built events: one row per connection, both ends joined, the reset's
sender decided, evidence folded in, flows once per pair, bounded; and the rows' format."""

from __future__ import annotations

import json

import pytest

from tail import connections as cx
from tail import live
from tail import resetcause as rc
from tcpscope.kinds import parse_view
from tcpscope.v1 import events_pb2 as pb
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
    assert alone.add(server, 0.0) == [] and alone.tick(cx.DEFAULT_HOLD_S) == [cx.FlowRow(server, "server")]
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
