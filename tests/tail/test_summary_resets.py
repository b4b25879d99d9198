"""The summary's reset attribution (tail.resetcause through tail.summary): network_resets
and the per-pair breakdown of who sent each connection's RST."""

from __future__ import annotations

import json

import pytest

from tail import summary
from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, Decoded
from tcpscope.v1 import events_pb2 as pb
from tests.tail.test_summary import API, T0, WEB, both, counters, lifecycle, rows_by_pair, zero


def _reset(
    node: str, ev: pb.TcpEvent, direction: pb.Direction, t: int, reason: str = "", state: pb.TcpState = pb.ESTABLISHED
) -> pb.TcpEvent:
    """A Reset event on the socket of lifecycle ev (same node, id and tuple)."""
    r = pb.TcpEvent(node=node, socket_id=ev.socket_id)
    r.local.CopyFrom(ev.local)
    r.remote.CopyFrom(ev.remote)
    r.time.FromNanoseconds(t)
    r.reset.direction, r.reset.state, r.reset.reason_name = direction, state, reason
    return r


def _on(node: str, socket_id: int, ev: pb.TcpEvent) -> pb.TcpEvent:
    ev.node, ev.socket_id = node, socket_id
    return ev


def _mixed() -> list[pb.TcpEvent]:
    """web-1 (node-1) -> api-1 (node-2): 2 ok, 3 killed by the network, 1 server abort, 2 refused,
    with the reset events both agents report."""
    evs: list[pb.TcpEvent] = []
    t = T0
    sid = 100
    for i in range(2):
        c, s = both(WEB, API, 40000 + i, 9000, t)
        evs += [_on("node-1", sid, c), _on("node-2", sid + 1, s)]
        t, sid = t + 10 * 10**9, sid + 2
    for i in range(3):  # the network: each end received a RST, neither sent one
        c, s = both(
            WEB,
            API,
            41000 + i,
            9000,
            t,
            c_kw={"ending": pb.RESET_RECEIVED, "errno": 104, "last_state": pb.ESTABLISHED},
            s_kw={"ending": pb.RESET_RECEIVED, "errno": 104},
        )
        c, s = _on("node-1", sid, c), _on("node-2", sid + 1, s)
        evs += [
            c,
            s,
            _reset("node-1", c, pb.RECEIVED, c.time.ToNanoseconds() - 1000),
            _reset("node-2", s, pb.RECEIVED, s.time.ToNanoseconds() - 1000),
        ]
        t, sid = t + 10 * 10**9, sid + 2
    c, s = both(
        WEB,
        API,
        42000,
        9000,
        t,
        c_kw={"ending": pb.RESET_RECEIVED, "errno": 104, "last_state": pb.ESTABLISHED},
        s_kw={"ending": pb.RESET_SENT, "reason": "TCP_ABORT_ON_CLOSE"},
    )
    c, s = _on("node-1", sid, c), _on("node-2", sid + 1, s)
    evs += [
        c,
        s,
        _reset("node-2", s, pb.SENT, s.time.ToNanoseconds(), "TCP_ABORT_ON_CLOSE"),
        _reset("node-1", c, pb.RECEIVED, c.time.ToNanoseconds() - 1000),
    ]
    t, sid = t + 10 * 10**9, sid + 2
    for i in range(2):  # refused: the server's kernel, no socket (its agent cannot see that send)
        c = _on(
            "node-1",
            sid,
            lifecycle(
                pb.ACTIVE, WEB, API, 43000 + i, 9999, t + i, ending=pb.RESET_RECEIVED, errno=111, last_state=pb.SYN_SENT
            ),
        )
        evs += [c, _reset("node-1", c, pb.RECEIVED, c.time.ToNanoseconds(), state=pb.SYN_SENT)]
        sid += 1
    return evs


def test_network_resets_are_counted_apart_and_the_others_stay_exact() -> None:
    s = summary.Summarizer()
    s.add_all(_mixed())
    j = rows_by_pair(s)[("shop/web-1", "shop/api-1")]
    assert counters(j) == zero(connections=6, network_resets=3, server_resets=1, refused=2)
    assert j["server_reset_reasons"] == {"TCP_ABORT_ON_CLOSE": 1}
    # a server reset stays app with its reason, a refused connect stays peer_kernel/refused
    assert j["reset_causes"] == {
        "app": {"TCP_ABORT_ON_CLOSE": 1},
        "network": {"both_ends": 3},  # each end received a RST nobody sent
        "peer_kernel": {"refused": 2},
    }


def test_the_same_without_reset_events_lifecycles_alone() -> None:
    s = summary.Summarizer()
    s.add_all(e for e in _mixed() if e.WhichOneof("kind") == "lifecycle")
    j = rows_by_pair(s)[("shop/web-1", "shop/api-1")]
    assert counters(j) == zero(connections=6, network_resets=3, server_resets=1, refused=2)
    # both ends ended RESET_RECEIVED and neither sent one: both_ends
    assert j["reset_causes"]["network"] == {"both_ends": 3}


def test_an_unwatched_client_resetting_is_unknown_and_stays_a_client_reset() -> None:
    # only api-1's node has an agent: a RST from web-1 cannot be told from an injected one
    s_only = _on(
        "node-2",
        5,
        lifecycle(
            pb.PASSIVE, API, WEB, 9000, 40000, T0, ending=pb.RESET_RECEIVED, errno=104, last_state=pb.ESTABLISHED
        ),
    )
    s = summary.Summarizer()
    s.add_all([s_only, _reset("node-2", s_only, pb.RECEIVED, s_only.time.ToNanoseconds())])
    j = rows_by_pair(s)[("shop/web-1", "shop/api-1")]
    assert counters(j) == zero(connections=1, client_resets=1)
    assert j["reset_causes"] == {"unknown": {"unwatched_peer": 1}}


def _decoded_events(evs: list[pb.TcpEvent], agent: str) -> list[Decoded]:
    return [Decoded(RECORD_EVENT, agent, 1, i, e, None) for i, e in enumerate(evs)]


def test_losses_reported_by_the_peers_agent_in_the_window_make_it_unknown() -> None:
    evs = _mixed()
    report = summary.Report(summary.Summarizer())
    for node in ("node-1", "node-2"):
        for d in _decoded_events([e for e in evs if e.node == node], f"{node}-a"):
            report.take(d)
    # both agents lost events in a span that covers the 3rd network-killed connection only: each
    # end's RST may have been sent by its peer and lost (one end's alone would not do: the other
    # end's RST, that nobody sent, still proves the network)
    third = next(
        e for e in evs if e.node == "node-1" and e.local.port == 41002 and e.WhichOneof("kind") == "lifecycle"
    ).time.ToNanoseconds()
    for node in ("node-1", "node-2"):
        for seq, (sent_ns, lost) in enumerate([(third - 5 * 10**8, 0), (third + 10**8, 4)], start=2):
            b = pb.EventBatch(node=node, agent_id=f"{node}-a", sequence=seq)
            b.sent_time.FromNanoseconds(sent_ns)
            b.lost.kernel = lost
            report.take(Decoded(RECORD_SUMMARY, f"{node}-a", seq, 0, None, b))
    doc = json.loads(report.render("json", summary.SummaryOptions()))
    (row,) = doc["pairs"]
    assert row["network_resets"] == 2
    assert row["server_resets"] == 2  # the unknown one: the client saw a RST "from the server"
    assert row["reset_causes"]["unknown"] == {"peer_losses": 1}
    assert row["reset_causes"]["network"] == {"both_ends": 2}
    assert "N-RST" in report.render("table", summary.SummaryOptions())


@pytest.mark.parametrize("server_first_ns", [-5_000, 5_000])
def test_two_forged_rsts_are_both_ends_whichever_came_first(server_first_ns: int) -> None:
    """The network resets both ends microseconds apart: which one a node's clock puts first is a
    race, and the connection's detail does not follow it."""
    c, s = both(
        WEB,
        API,
        41000,
        9000,
        T0,
        c_kw={"ending": pb.RESET_RECEIVED, "errno": 104, "last_state": pb.ESTABLISHED},
        s_kw={"ending": pb.RESET_RECEIVED, "errno": 104},
    )
    c, s = _on("node-1", 100, c), _on("node-2", 101, s)
    at = c.time.ToNanoseconds() - 1000
    evs = [c, s, _reset("node-1", c, pb.RECEIVED, at), _reset("node-2", s, pb.RECEIVED, at - server_first_ns)]
    sm = summary.Summarizer()
    sm.add_all(evs)
    j = rows_by_pair(sm)[("shop/web-1", "shop/api-1")]
    assert counters(j) == zero(connections=1, network_resets=1)
    assert j["reset_causes"] == {"network": {"both_ends": 1}}
