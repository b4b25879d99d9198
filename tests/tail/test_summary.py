"""tail.summary on hand-built lifecycle events: each connection counted once, by outcome."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tail import cli as tail
from tail import pairs, summary
from tcpscope import outcome
from tcpscope.v1 import events_pb2 as pb
from tests.support.kafka import Broker, publish_batches

T0 = 1_700_000_000 * 10**9
WEB = ("shop", "web-1", "198.18.1.2", "web")
API = ("shop", "api-1", "198.18.2.2", "api")
DB = ("data", "db-1", "198.18.3.2", "db")


def _ep(ep: pb.Endpoint, who: tuple[str, str, str, str] | None, ip: str, port: int) -> None:
    ep.ip, ep.port = ip, port
    if who is not None:
        ep.kind = pb.POD
        ep.namespace, ep.name = who[0], who[1]
        ep.workload.kind, ep.workload.name = "Deployment", who[3]


def lifecycle(
    role: pb.Role,
    local: tuple[str, str, str, str],
    remote: tuple[str, str, str, str],
    lport: int,
    rport: int,
    start_ns: int,
    dur_ns: int = 5_000_000,
    *,
    ending: pb.Ending = pb.NORMAL,
    errno: int = 0,
    last_state: pb.TcpState = pb.FIN_WAIT1,
    retransmits: int = 0,
    reason: str = "",
    resolve_remote: bool = True,
) -> pb.TcpEvent:
    ev = pb.TcpEvent()
    ev.time.FromNanoseconds(start_ns + dur_ns)
    ev.node = "node-x"
    _ep(ev.local, local, local[2], lport)
    _ep(ev.remote, remote if resolve_remote else None, remote[2], rport)
    lc = ev.lifecycle
    lc.role, lc.duration_ns, lc.ending, lc.errno = role, dur_ns, ending, errno
    lc.last_state, lc.retransmits, lc.reset_reason_name = last_state, retransmits, reason
    return ev


def both(
    client: tuple[str, str, str, str],
    server: tuple[str, str, str, str],
    cport: int,
    sport: int,
    start: int,
    *,
    c_kw: dict[str, Any] | None = None,
    s_kw: dict[str, Any] | None = None,
) -> list[pb.TcpEvent]:
    """The two agents' lifecycle events of one established connection."""
    c = lifecycle(pb.ACTIVE, client, server, cport, sport, start, **(c_kw or {}))
    s = lifecycle(
        pb.PASSIVE, server, client, sport, cport, start + 100_000, 4_000_000, last_state=pb.LAST_ACK, **(s_kw or {})
    )
    return [c, s]


def rows_by_pair(s: summary.Summarizer, **kw: Any) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for r in s.pairs(**kw):
        j = r.to_json()
        out[(r.client.label(), r.server.label())] = j
    return out


def counters(j: dict[str, object]) -> dict[str, object]:
    return {k: j[k] for k in pairs.COUNTERS}


def zero(**kw: int) -> dict[str, int]:
    return {**dict.fromkeys(pairs.COUNTERS, 0), **kw}


def test_each_kind_counted_once_although_both_ends_reported_it() -> None:
    evs: list[pb.TcpEvent] = []
    t = T0
    for i in range(3):  # ok
        evs += both(WEB, API, 40000 + i, 9000, t)
        t += 10**9
    for i in range(2):  # client aborts: client RESET_SENT, server RESET_RECEIVED
        evs += both(
            WEB,
            API,
            41000 + i,
            9000,
            t,
            c_kw={"ending": pb.RESET_SENT, "reason": "NOT_SPECIFIED"},
            s_kw={"ending": pb.RESET_RECEIVED, "errno": 104},
        )
        t += 10**9
    evs += both(
        WEB,
        API,
        42000,
        9000,
        t,  # server abort
        c_kw={"ending": pb.RESET_RECEIVED, "errno": 104},
        s_kw={"ending": pb.RESET_SENT, "reason": "NOT_SPECIFIED"},
    )
    # refused x4 and a timeout: client view only (no server socket ever exists)
    for i in range(4):
        evs.append(
            lifecycle(
                pb.ACTIVE, WEB, API, 43000 + i, 9999, t + i, ending=pb.RESET_RECEIVED, errno=111, last_state=pb.SYN_SENT
            )
        )
    evs.append(
        lifecycle(
            pb.ACTIVE,
            WEB,
            API,
            44000,
            9000,
            t,
            3 * 10**9,
            ending=pb.ERROR,
            errno=110,
            last_state=pb.SYN_SENT,
            retransmits=1,
        )
    )
    s = summary.Summarizer()
    s.add_all(evs)
    rows = rows_by_pair(s)
    assert list(rows) == [("shop/web-1", "shop/api-1")]
    j = rows[("shop/web-1", "shop/api-1")]
    assert counters(j) == zero(connections=6, client_resets=2, server_resets=1, refused=4, timeouts=1)
    assert j["client"] == {"namespace": "shop", "name": "web-1", "kind": "POD"}
    assert j["server"] == {"namespace": "shop", "name": "api-1", "kind": "POD"}
    assert j["server_ports"] == [9000, 9999]
    assert j["client_reset_reasons"] == {"NOT_SPECIFIED": 2}
    assert j["server_reset_reasons"] == {"NOT_SPECIFIED": 1}


def test_port_reuse_is_two_connections_and_nearest_start_pairs_views() -> None:
    # the same 4-tuple twice, 1.5 s apart: two connections, not one
    evs = both(WEB, API, 40000, 9000, T0) + both(
        WEB, API, 40000, 9000, T0 + 1_500_000_000, c_kw={"ending": pb.RESET_SENT}, s_kw={"ending": pb.RESET_RECEIVED}
    )
    s = summary.Summarizer()
    s.add_all(reversed(evs))  # arrival order does not matter
    j = rows_by_pair(s)[("shop/web-1", "shop/api-1")]
    assert counters(j) == zero(connections=2, client_resets=1)


def test_one_sided_views_fall_back_and_name_both_ends() -> None:
    # only the server's agent saw this connection (client's node has no agent): its remote end
    # names the client
    s_only = lifecycle(pb.PASSIVE, API, WEB, 9000, 40000, T0, ending=pb.RESET_RECEIVED, errno=104)
    # only the client's agent saw this one, and could not resolve the remote address
    c_only = lifecycle(pb.ACTIVE, WEB, DB, 40001, 5432, T0, retransmits=2, resolve_remote=False)
    s = summary.Summarizer()
    s.add_all([s_only, c_only])
    rows = rows_by_pair(s)
    assert counters(rows[("shop/web-1", "shop/api-1")]) == zero(connections=1, client_resets=1)
    assert rows[("shop/web-1", "shop/api-1")]["client_reset_reasons"] == {"UNKNOWN": 1}
    j = rows[("shop/web-1", "198.18.3.2")]
    assert counters(j) == zero(connections=1, retransmits=1)
    assert j["server"] == {"namespace": "", "name": "198.18.3.2", "kind": "UNRESOLVED"}


def test_server_view_names_the_server_when_client_agent_could_not() -> None:
    c, sv = both(WEB, API, 40000, 9000, T0, s_kw={"retransmits": 3})
    c.remote.Clear()
    c.remote.ip, c.remote.port = API[2], 9000
    s = summary.Summarizer()
    s.add_all([c, sv])
    rows = rows_by_pair(s)
    assert list(rows) == [("shop/web-1", "shop/api-1")]
    assert counters(rows[("shop/web-1", "shop/api-1")]) == zero(connections=1, retransmits=1)


def test_by_workload_groups_pods_and_listeners_and_roleless_sockets_are_skipped() -> None:
    web2 = ("shop", "web-2", "198.18.1.3", "web")
    evs = both(WEB, API, 40000, 9000, T0) + both(web2, API, 40000, 9000, T0)
    listener = lifecycle(pb.ROLE_UNSPECIFIED, API, API, 9000, 0, T0, last_state=pb.LISTEN)
    old = lifecycle(pb.ROLE_UNSPECIFIED, API, WEB, 9000, 40999, T0)
    selfish = lifecycle(pb.ACTIVE, API, API, 40998, 40998, T0)
    s = summary.Summarizer(by="workload")
    s.add_all([*evs, listener, old, selfish])
    rows = rows_by_pair(s)
    assert list(rows) == [("shop/web", "shop/api")]
    assert rows[("shop/web", "shop/api")]["client"] == {"namespace": "shop", "name": "web", "kind": "Deployment"}
    assert counters(rows[("shop/web", "shop/api")]) == zero(connections=2)
    assert s.skipped == {"listener": 1, "no_role": 1, "self": 1}


def test_window_filter_sort_and_outputs() -> None:
    evs = both(WEB, API, 40000, 9000, T0)
    evs += both(
        API, DB, 40001, 5432, T0 + 100 * 10**9, c_kw={"ending": pb.RESET_RECEIVED}, s_kw={"ending": pb.RESET_SENT}
    )
    evs.append(
        lifecycle(
            pb.ACTIVE,
            WEB,
            DB,
            40002,
            5433,
            T0 + 50 * 10**9,
            ending=pb.RESET_RECEIVED,
            errno=111,
            last_state=pb.SYN_SENT,
        )
    )
    s = summary.Summarizer()
    s.add_all(evs)
    now = T0 + 110 * 10**9
    assert set(rows_by_pair(s, window_s=30, now_ns=now)) == {("shop/api-1", "data/db-1")}
    rows = s.pairs()
    ordered = summary.select(rows, sort="problems")
    assert [(r.client.name, r.server.name) for r in ordered] == [
        ("api-1", "db-1"),
        ("web-1", "db-1"),
        ("web-1", "api-1"),
    ]
    assert next(r.server.name for r in summary.select(rows, sort="connections")) == "db-1"
    assert {(r.client.name, r.server.name) for r in summary.select(rows, namespace="data")} == {
        ("api-1", "db-1"),
        ("web-1", "db-1"),
    }
    assert [(r.client.name, r.server.name) for r in summary.select(rows, pod="shop/web-1", sort="server")] == [
        ("web-1", "db-1"),
        ("web-1", "api-1"),
    ]  # data/... sorts before shop/...
    lines = summary.render_json_lines(ordered).splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["client"]["name"] == "api-1" and first["server_resets"] == 1
    assert first["first_seen"] == "2023-11-14T22:15:00Z"  # T0 + 100 s, the client's connect
    table = summary.render_table(ordered).splitlines()
    assert table[0].split()[:4] == ["CLIENT", "SERVER", "CONNS", "C-RST"]
    assert table[1].split()[:5] == ["shop/api-1", "data/db-1:5432", "1", "0", "1"]
    with pytest.raises(ValueError):
        summary.select(rows, sort="bogus")


def test_capacity_is_bounded_and_counted() -> None:
    s = summary.Summarizer(max_sockets=3)
    s.add_all(both(WEB, API, 40000, 9000, T0) + both(WEB, API, 40001, 9000, T0))
    assert s.skipped == {"over_capacity": 1}
    s.evict_before(T0 + 10**10)
    s.add_all(both(WEB, API, 40002, 9000, T0 + 2 * 10**10))
    assert counters(rows_by_pair(s)[("shop/web-1", "shop/api-1")]) == zero(connections=1)


def test_tail_summary_reads_kafka_dedups_resent_batches_and_sums_losses(
    kafka_broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"summary-{os.getpid()}"
    kafka_broker.create_topic(topic)
    c1, s1 = both(WEB, API, 40000, 9000, T0, c_kw={"ending": pb.RESET_SENT}, s_kw={"ending": pb.RESET_RECEIVED})
    c2, s2 = both(WEB, API, 40001, 9000, T0 + 10**9)
    refused = lifecycle(
        pb.ACTIVE, WEB, DB, 40002, 5433, T0, ending=pb.RESET_RECEIVED, errno=111, last_state=pb.SYN_SENT
    )
    a = pb.EventBatch(schema_version=1, node="node-1", agent_id="node-1-a", sequence=1)
    a.events.extend([c1, c2, refused])
    b = pb.EventBatch(schema_version=1, node="node-2", agent_id="node-2-b", sequence=1)
    b.events.extend([s1, s2])
    b.lost.kernel = 2
    b.lost.by_reason["kernel.ringbuf_full"] = 2
    publish_batches(kafka_broker.bootstrap, topic, [a, b, a])  # batch a resent (at-least-once)
    assert (
        tail.main(
            [
                "--kafka-bootstrap",
                kafka_broker.bootstrap,
                "--topic",
                topic,
                "--summary",
                "--format",
                "json",
                "--from-beginning",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    got = {(p["client"]["name"], p["server"]["name"]): counters(p) for p in doc["pairs"]}
    assert got == {("web-1", "api-1"): zero(connections=2, client_resets=1), ("web-1", "db-1"): zero(refused=1)}
    assert doc["losses"] == {
        "agent_buffer": 0,
        "enrichment": 0,
        "kernel": 2,
        "kernel.ringbuf_full": 2,
        "kernel_skipped_runs": 0,
        "sockets_untracked": 0,
    }
    assert (doc["batches"], doc["events"], doc["duplicates"]) == (2, 5, 4)
    # the table, filtered to one namespace, says what was lost
    assert (
        tail.main(
            [
                "--kafka-bootstrap",
                kafka_broker.bootstrap,
                "--topic",
                topic,
                "--summary",
                "--from-beginning",
                "--namespace",
                "data",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out[1:] if not line.startswith("#")] == [["shop/web-1", "data/db-1:5433"]]
    assert out[-2].startswith("# 1 pairs from 5 events in 2 batches; LOST 2 events")
    assert out[-1] == summary.RESET_LEGEND  # the pair had resets: what the two reset columns mean
    # in a consumer group too: its partitions come with the first poll, the end is taken then
    # (it used to end after that one poll, with nothing read)
    group = ["--summary", "--format", "json", "--from-beginning", "--group", f"g-{os.getpid()}"]
    assert tail.main(["--kafka-bootstrap", kafka_broker.bootstrap, "--topic", topic, *group]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["batches"], doc["events"], doc["duplicates"]) == (2, 5, 4)


def flow(
    role: pb.Role,
    local: tuple[str, str, str, str],
    remote: tuple[str, str, str, str],
    server_port: int,
    connections: int,
    last_ns: int = T0 + 10**9,
) -> pb.TcpEvent:
    ev = pb.TcpEvent()
    ev.time.FromNanoseconds(last_ns)
    ev.node = "node-x"
    _ep(ev.local, local, local[2], server_port if role == pb.PASSIVE else 0)
    _ep(ev.remote, remote, remote[2], server_port if role == pb.ACTIVE else 0)
    fl = ev.flow
    fl.role, fl.connections = role, connections
    fl.tx_bytes, fl.rx_bytes = 10 * connections, 20 * connections
    fl.duration_us_log2.extend([0, connections])
    fl.first_close.FromNanoseconds(last_ns - 10**8)
    fl.last_close.FromNanoseconds(last_ns)
    return ev


def test_flows_count_once_from_the_client_when_both_sides_are_watched() -> None:
    s = summary.Summarizer()
    # 40 ordinary connections seen by both agents as flows (in two intervals on the client)
    s.add_all(
        [flow(pb.ACTIVE, WEB, API, 9000, 25), flow(pb.ACTIVE, WEB, API, 9000, 15), flow(pb.PASSIVE, API, WEB, 9000, 38)]
    )
    # two more: the server retransmitted (its lifecycle is individual), the client saw nothing unusual
    # and counted them in its flows above: they add a retransmit, not a connection
    s.add_all([lifecycle(pb.PASSIVE, API, WEB, 9000, 40_000 + i, T0 + i, retransmits=1) for i in range(2)])
    # one client reset: individual on both sides
    s.add_all(both(WEB, API, 41_000, 9000, T0 + 5 * 10**8, c_kw={"ending": pb.RESET_SENT}))
    rows = rows_by_pair(s)
    assert list(rows) == [("shop/web-1", "shop/api-1")]
    row = rows[("shop/web-1", "shop/api-1")]
    assert (row["connections"], row["flow_connections"], row["retransmits"], row["client_resets"]) == (41, 40, 2, 1)
    assert row["server_ports"] == [9000]


def test_flows_of_an_unwatched_client_count_from_the_server() -> None:
    s = summary.Summarizer()
    outside = ("", "", "203.0.113.9", "")
    ev = flow(pb.PASSIVE, API, outside, 443, 12)
    ev.remote.kind = pb.EXTERNAL
    s.add(ev)
    s.add(
        lifecycle(
            pb.PASSIVE,
            API,
            outside,
            443,
            50_000,
            T0,
            ending=pb.RESET_SENT,
            reason="NOT_SPECIFIED",
            resolve_remote=False,
        )
    )
    rows = rows_by_pair(s)
    assert [(k, r["connections"], r["flow_connections"], r["server_resets"]) for k, r in rows.items()] == [
        (("203.0.113.9", "shop/api-1"), 13, 12, 1)
    ]


def _host(role: int, lport: int, rport: int, comm: str, start: int, **kw: object) -> pb.TcpEvent:
    """A lifecycle event on a host without Kubernetes: both ends 127.0.0.1, nothing resolved."""
    ev = lifecycle(role, ("", "", "127.0.0.1", ""), ("", "", "127.0.0.1", ""), lport, rport, start, **kw)  # type: ignore[arg-type]
    for ep in (ev.local, ev.remote):
        ep.kind, ep.namespace, ep.name = pb.ENDPOINT_KIND_UNSPECIFIED, "", ""
        ep.ClearField("workload")
    ev.local.kind, ev.local.node = pb.HOST, "vm"  # what the agent sets with --no-kubernetes
    ev.process.comm = comm
    return ev


def test_without_kubernetes_rows_are_processes_and_server_ports() -> None:
    evs = []
    for i, (client, server, port) in enumerate(
        [
            ("curl", "nginx", 8080),
            ("curl", "nginx", 8080),
            ("curl", "python3", 8765),
            ("wget", "python3", 8765),
            ("curl", "python3", 8799),
        ]
    ):
        t = T0 + i * 10_000_000
        evs.append(_host(pb.ACTIVE, 40000 + i, port, client, t))
        evs.append(_host(pb.PASSIVE, port, 40000 + i, server, t + 100_000, last_state=pb.LAST_ACK))
    refused = _host(
        pb.ACTIVE, 41000, 8799, "curl", T0, last_state=pb.SYN_SENT, errno=111, ending=pb.RESET_RECEIVED
    )  # nobody listening: the server end has no process
    s = summary.Summarizer()
    s.add_all([*evs, refused])
    got = sorted(
        (r.client.label(), r.server.label(), sorted(r.server_ports), r.connections, r.refused) for r in s.pairs()
    )
    assert got == [
        ("curl@127.0.0.1", "127.0.0.1", [8799], 0, 1),  # refused: no process owns the server end
        ("curl@127.0.0.1", "nginx@127.0.0.1", [8080], 2, 0),
        ("curl@127.0.0.1", "python3@127.0.0.1", [8765], 1, 0),
        ("curl@127.0.0.1", "python3@127.0.0.1", [8799], 1, 0),  # same process, another port: its own row
        ("wget@127.0.0.1", "python3@127.0.0.1", [8765], 1, 0),
    ]
    # a server socket whose process is unknown (pid 0: its listener predates the agent) still gets
    # a row per port
    s2 = summary.Summarizer()
    for i, port in enumerate((8080, 8081)):
        s2.add(_host(pb.ACTIVE, 42000 + i, port, "curl", T0))
        s2.add(_host(pb.PASSIVE, port, 42000 + i, "", T0 + 100_000, last_state=pb.LAST_ACK))
    for i, port in enumerate((9001, 9002)):  # refused: only the client's view, the server end unnamed
        s2.add(
            _host(pb.ACTIVE, 43000 + i, port, "curl", T0, last_state=pb.SYN_SENT, errno=111, ending=pb.RESET_RECEIVED)
        )
    assert sorted((r.client.label(), r.server.label(), sorted(r.server_ports), r.refused) for r in s2.pairs()) == [
        ("curl@127.0.0.1", "127.0.0.1", [8080], 0),
        ("curl@127.0.0.1", "127.0.0.1", [8081], 0),
        ("curl@127.0.0.1", "127.0.0.1", [9001], 1),
        ("curl@127.0.0.1", "127.0.0.1", [9002], 1),
    ]
    table = summary.render_table(summary.select(s.pairs(), sort="client")).splitlines()
    assert [line.split()[:2] for line in table[1:]] == [
        ["curl@127.0.0.1", "127.0.0.1:8799"],
        ["curl@127.0.0.1", "nginx@127.0.0.1:8080"],
        ["curl@127.0.0.1", "python3@127.0.0.1:8765"],
        ["curl@127.0.0.1", "python3@127.0.0.1:8799"],
        ["wget@127.0.0.1", "python3@127.0.0.1:8765"],
    ]
    j = next(r.to_json() for r in s.pairs() if r.server.label() == "nginx@127.0.0.1")
    assert j["client"] == {"namespace": "", "name": "127.0.0.1", "kind": "PROCESS", "process": "curl"}
    assert j["server"] == {"namespace": "", "name": "127.0.0.1", "kind": "PROCESS", "process": "nginx", "port": 8080}


def test_a_duplicate_handshake_child_is_not_a_second_connection() -> None:
    # seen in tests/agent/kernel/test_tuples.py: two children for one handshake; the loser dies in
    # SYN_RECV with nothing carried, and starts nearer the client's view than the real server socket
    c, sv = both(WEB, API, 40000, 9000, T0)
    loser = lifecycle(pb.PASSIVE, API, WEB, 9000, 40000, T0 + 50_000, 120_000, last_state=pb.SYN_RECV)
    assert outcome.is_duplicate_child(loser.lifecycle) and not outcome.is_duplicate_child(sv.lifecycle)
    s = summary.Summarizer()
    s.add_all([c, loser, sv])
    assert counters(rows_by_pair(s)[("shop/web-1", "shop/api-1")]) == zero(connections=1)
    assert s.skipped == {"duplicate_child": 1}


def test_reset_columns_read_as_words() -> None:
    row = pairs.PairSummary(pairs.Party("shop", "web-1", "POD"), pairs.Party("shop", "api-1", "POD"), client_resets=3)
    row.client_reset_reasons = {"TCP_STATE": 3}
    row.reset_causes = {"app": {"TCP_STATE": 13}, "network": {"no_send_seen": 4}, "peer_kernel": {"refused": 2}}
    line = summary.render_table([row]).splitlines()[1]
    assert line.endswith("3 client (TCP_STATE)  13 app (TCP_STATE), 4 network (no_send_seen), 2 peer kernel (refused)")
