"""tail.summary and the reset join with anomalies past the agents' budget (AnomalyAggregate): each
connection still counted once, by outcome, its resets judged by their exemplars' class."""

from __future__ import annotations

import errno as errno_mod

from tail import live, resetcause, summary
from tcpscope import kinds, render
from tcpscope.v1 import events_pb2 as pb
from tests.tail.test_summary import API, T0, WEB, _ep, both, counters, lifecycle, rows_by_pair, zero


def aggregate(
    role: pb.Role,
    local: tuple[str, str, str, str],
    remote: tuple[str, str, str, str],
    server_port: int,
    count: int,
    *,
    exemplars: int = 5,
    kind: pb.AnomalyKind = pb.ANOMALY_LIFECYCLE,
    ending: pb.Ending = pb.NORMAL,
    errno: int = 0,
    state: pb.TcpState = pb.FIN_WAIT1,
    reason_name: str = "",
    retransmitted: bool = False,
    last_ns: int = T0 + 10**9,
    node: str = "node-x",
) -> pb.TcpEvent:
    ev = pb.TcpEvent()
    ev.time.FromNanoseconds(last_ns)
    ev.node = node
    _ep(ev.local, local, local[2], server_port if role != pb.ACTIVE else 0)
    _ep(ev.remote, remote, remote[2], server_port if role == pb.ACTIVE else 0)
    a = ev.anomalies
    a.kind, a.count, a.exemplars, a.role, a.ending, a.errno, a.state = (
        kind,
        count,
        exemplars,
        role,
        ending,
        errno,
        state,
    )
    a.reason_name, a.retransmitted = reason_name, retransmitted
    a.errno_name = errno_mod.errorcode.get(errno, "") if errno else ""
    a.established = state not in (pb.SYN_SENT, pb.SYN_RECV)
    a.tx_bytes, a.rx_bytes = 100 * count, 10 * count
    a.first.FromNanoseconds(last_ns - 5 * 10**8)
    a.last.FromNanoseconds(last_ns)
    a.interval_ns = 10 * 10**9
    return ev


def test_a_refused_storm_counts_its_exemplars_and_its_aggregate_once() -> None:
    s = summary.Summarizer()
    exemplars = [
        lifecycle(
            pb.ACTIVE, WEB, API, 43000 + i, 9999, T0 + i, ending=pb.RESET_RECEIVED, errno=111, last_state=pb.SYN_SENT
        )
        for i in range(5)
    ]
    s.add_all(exemplars)
    s.add(aggregate(pb.ACTIVE, WEB, API, 9999, 99_995, ending=pb.RESET_RECEIVED, errno=111, state=pb.SYN_SENT))
    # the server's kernel answered from no socket: not a lifecycle, not counted as a connection
    s.add(
        aggregate(
            pb.ROLE_UNSPECIFIED, API, WEB, 9999, 99_995, kind=pb.ANOMALY_RESET_SENT, state=pb.TCP_STATE_UNSPECIFIED
        )
    )
    row = rows_by_pair(s)[("shop/web-1", "shop/api-1")]
    assert counters(row) == zero(refused=100_000)
    assert row["aggregated_connections"] == 99_995
    assert row["reset_causes"] == {"peer_kernel": {"refused": 100_000}}


def test_a_reset_storm_seen_by_both_agents_counts_each_connection_once() -> None:
    """1000 client aborts: each agent sent 5 as events and aggregated 995, not the same 5: the client
    side counts, the server's one-sided exemplars are in the client's aggregate."""
    s = summary.Summarizer()
    client_rst = {"ending": pb.RESET_SENT, "reason": "TCP_STATE"}
    server_rcv = {"ending": pb.RESET_RECEIVED, "errno": 104}
    for i in range(5):  # exemplars 0..4 on the client, 1..5 on the server
        c, _s = both(WEB, API, 41000 + i, 9000, T0 + i * 10**6, c_kw=client_rst, s_kw=server_rcv)
        s.add(c)
        _c, srv = both(WEB, API, 41001 + i, 9000, T0 + (i + 1) * 10**6, c_kw=client_rst, s_kw=server_rcv)
        s.add(srv)
    s.add(aggregate(pb.ACTIVE, WEB, API, 9000, 995, ending=pb.RESET_SENT, reason_name="TCP_STATE"))
    s.add(aggregate(pb.PASSIVE, API, WEB, 9000, 995, ending=pb.RESET_RECEIVED, errno=104))
    row = rows_by_pair(s)[("shop/web-1", "shop/api-1")]
    assert counters(row) == zero(connections=1000, client_resets=1000)
    assert row["client_reset_reasons"] == {"TCP_STATE": 1000}


def test_an_unwatched_client_s_storm_counts_from_the_server() -> None:
    outside = ("", "", "203.0.113.9", "")
    s = summary.Summarizer()
    ev = aggregate(pb.PASSIVE, API, outside, 443, 400, ending=pb.RESET_SENT, reason_name="TCP_ABORT_ON_DATA")
    ev.remote.kind = pb.EXTERNAL
    s.add(ev)
    s.add(aggregate(pb.PASSIVE, API, outside, 443, 7, retransmitted=True))
    rows = rows_by_pair(s)
    row = rows[("203.0.113.9", "shop/api-1")]
    assert counters(row) == zero(connections=407, server_resets=400, retransmits=7)
    assert row["server_reset_reasons"] == {"TCP_ABORT_ON_DATA": 400}


def _received_rst(
    local: tuple[str, str, str, str], remote: tuple[str, str, str, str], lport: int, rport: int, t: int, node: str
) -> pb.TcpEvent:
    ev = pb.TcpEvent()
    ev.time.FromNanoseconds(t)
    ev.node, ev.socket_id = node, t
    _ep(ev.local, local, local[2], lport)
    _ep(ev.remote, remote, remote[2], rport)
    ev.reset.direction, ev.reset.state = pb.RECEIVED, pb.ESTABLISHED
    return ev


def test_aggregated_resets_take_the_cause_of_their_exemplars_class() -> None:
    join = resetcause.ResetJoin()
    # both nodes watched; the exemplars' RSTs were sent by nobody (the network forged them)
    join.add(lifecycle(pb.PASSIVE, API, WEB, 9000, 41000, T0 - 10**9))  # node-x reports API's sockets
    api_on_node = pb.TcpEvent(node="node-api")
    _ep(api_on_node.local, API, API[2], 9000)
    _ep(api_on_node.remote, WEB, WEB[2], 1)
    api_on_node.lifecycle.role = pb.PASSIVE
    api_on_node.time.FromNanoseconds(T0 - 5 * 10**9)
    join.add(api_on_node)
    for i in range(3):
        peer_life = lifecycle(pb.PASSIVE, API, WEB, 9000, 41000 + i, T0 - 10**8, 5 * 10**9)  # open at the RST
        peer_life.node = "node-api"
        join.add(peer_life)
        join.add(_received_rst(WEB, API, 41000 + i, 9000, T0 + i, "node-web"))
    agg = aggregate(
        pb.ACTIVE, WEB, API, 9000, 50, kind=pb.ANOMALY_RESET_RECEIVED, state=pb.ESTABLISHED, last_ns=T0 + 10**9
    )
    v = join.aggregate_verdict(agg)
    assert v is not None and v.cause == resetcause.NETWORK
    # no exemplar in the interval: unknown, said so
    later = aggregate(pb.ACTIVE, WEB, API, 9000, 50, kind=pb.ANOMALY_RESET_RECEIVED, last_ns=T0 + 100 * 10**9)
    assert join.aggregate_verdict(later) == resetcause.Verdict(resetcause.UNKNOWN, "no_exemplar")
    # refused: no join needed
    refused = aggregate(pb.ACTIVE, WEB, API, 9999, 9, kind=pb.ANOMALY_RESET_RECEIVED, state=pb.SYN_SENT)
    assert join.aggregate_verdict(refused) == resetcause.Verdict(resetcause.PEER_KERNEL, "refused")
    # other aggregates and events: no verdict
    assert join.aggregate_verdict(aggregate(pb.ACTIVE, WEB, API, 9000, 3, kind=pb.ANOMALY_RETRANSMIT)) is None


def test_the_live_view_shows_aggregates_by_default_with_their_exemplars_cause() -> None:
    lines: list[str] = []
    view = live.LiveView(
        lambda ev, v: render.table_line(ev) + ("" if v is None else f" cause={v.label}"),
        kinds=kinds.parse_view(""),
        hold=0.0,
    )
    agg = aggregate(pb.ACTIVE, WEB, API, 9999, 990, ending=pb.RESET_RECEIVED, errno=111, state=pb.SYN_SENT)
    lines += view.add(agg, 0.0)
    lines += view.close(1.0)
    assert len(lines) == 1
    assert "AGGREGATED" in lines[0] and "LIFECYCLE x990 (+5 as events)" in lines[0]
    assert "errno=ECONNREFUSED" in lines[0] and "end=RESET_RECEIVED" in lines[0]
    assert lines[0].endswith("cause=peer_kernel/refused")
