"""Where the query pack and `tcpscope-tail --summary` differ, by design (docs/analytics.md, "Where SQL
and the summary differ"): each documented difference made to happen on a small hand-built stream,
and the test asserts exactly the difference the page describes, on both sides."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tcpscope.kafka_layout import H_CLOCK_OFFSET
from tcpscope.v1 import events_pb2 as pb
from tests.analytics import scenario
from tests.analytics.scenario import MS, S_NS, Stream, endpoint
from tests.support.analytics import (
    Rec,
    as_summary_pairs,
    by_pair,
    clickhouse_docs,
    laid_out,
    sql_verdicts,
    summary_doc,
    summary_verdicts,
    without_times,
)

T = scenario.T0
C, S = scenario.C, scenario.S  # web-1 on node-1, api-1 on node-2


def _batch(node: str, seq: int, events: Sequence[pb.TcpEvent], sent_ns: int, **lost: int) -> pb.EventBatch:
    b = pb.EventBatch(schema_version=1, node=node, agent_id=f"{node}/a1", sequence=seq)
    b.events.extend(events)
    b.sent_time.FromNanoseconds(sent_ns)
    for reason, n in lost.items():
        b.lost.by_reason[reason.replace("_", ".", 1)] = n
        b.lost.kernel += n
    return b


def _names(pairs: dict[str, dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {(p["client"]["name"], p["server"]["name"]): p["connections"] for p in pairs.values()}


def _both(tmp_path: Path, recs: list[Rec]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], Any]:
    """The summary's document, and the query pack's pairs and verdicts, of the same records."""
    doc = summary_doc(recs)
    with clickhouse_docs(tmp_path, "protobuf") as ch:
        ch.feed(recs)
        return doc, by_pair(as_summary_pairs(ch.query("pairs"))), sql_verdicts(ch)


@pytest.mark.slow  # chDB
def test_one_tuple_reused_within_2_s_pairs_nearest_first_in_the_summary_mutually_nearest_in_sql(
    tmp_path: Path,
) -> None:
    # two client sockets of one 4-tuple (no ids) 1 s apart, two server sockets 0.6 s and 1.5 s in
    s = Stream()
    cli, srv = endpoint(C, 40100), endpoint(S, 9000)
    for start in (0, S_NS):
        s.socket("node-1", cli, srv, T + start, T + start + 5 * MS, pb.ACTIVE)
    for start in (6 * S_NS // 10, 15 * S_NS // 10):
        s.socket("node-2", srv, cli, T + start, T + start + 5 * MS, pb.PASSIVE, last_state=pb.LAST_ACK)
    doc, pairs, _ = _both(tmp_path, laid_out(s.batches(), "protobuf"))
    # the summary: the nearest gap first (0.4 s), then the rest within 2 s (1.5 s): two connections;
    # SQL: only sockets each other's nearest pair (0.4 s); the other client and server count alone
    assert [p["connections"] for p in doc["pairs"]] == [2]
    assert [p["connections"] for p in pairs.values()] == [3]


@pytest.mark.slow  # chDB
def test_one_connection_id_on_two_client_sockets_pairs_in_reading_order_or_in_batch_order(tmp_path: Path) -> None:
    # two client sockets on two nodes report one id (two connections whose initial sequence numbers
    # hash alike) and one server socket: one client joins the server, the other counts alone
    s = Stream()
    s.socket("node-1", endpoint(C, 40200), endpoint(S, 9000), T, T + 5 * MS, pb.ACTIVE, cid=77)
    s.socket("node-3", endpoint(scenario.S3, 40201), endpoint(S, 9000), T, T + 5 * MS, pb.ACTIVE, cid=77)
    s.socket("node-2", endpoint(S, 9000), endpoint(C, 40200), T + MS, T + 6 * MS, pb.PASSIVE, cid=77)
    batches = s.batches()
    order = [b for b in batches if b.node == "node-3"] + [b for b in batches if b.node != "node-3"]
    doc, pairs, _ = _both(tmp_path, laid_out(order, "protobuf"))
    # the summary joins the client it read first (db-1 on node-3); SQL the first by (agent id,
    # batch, index): web-1 on node-1 (agent node-1/a1). Either way two connections, one joined.
    assert _names(by_pair(doc["pairs"])) == _names(pairs) == {("db-1", "api-1"): 1, ("web-1", "api-1"): 1}
    # the joined connection ends with the server socket (6 ms), the lone one with its client (5 ms)
    summary_last = {p["client"]["name"]: p["last_seen"] for p in doc["pairs"]}
    sql_last = {p["client"]["name"]: p["last_seen"] for p in pairs.values()}
    assert summary_last["db-1"] > summary_last["web-1"]
    assert sql_last["web-1"] > sql_last["db-1"]


@pytest.mark.slow  # chDB
def test_a_peer_socket_without_lifecycle_reads_the_clock_offset_of_a_different_connection(tmp_path: Path) -> None:
    # node-2's clock was 5 s ahead for connection A, then stepped back (NTP) before B; P's backend
    # socket reported only its handshake; node-2 lost events around P's RST by A's offset, not B's
    s = Stream()
    evs: dict[str, list[pb.TcpEvent]] = {}
    for name, cid, at, skew in (("A", 1, T, 5 * S_NS), ("B", 2, T + 20 * S_NS, 0)):
        c = endpoint(C, 40300 + cid)
        s.socket("node-1", c, endpoint(S, 9000), at, at + 5 * MS, pb.ACTIVE, cid=cid)
        s.socket(
            "node-2",
            endpoint(S, 9000),
            c,
            at + skew + MS,
            at + skew + 6 * MS,
            pb.PASSIVE,
            pb.NORMAL,
            pb.LAST_ACK,
            cid=cid,
        )
        evs[name] = s.events.pop("node-2")
    p_at = T + 40 * S_NS
    c = endpoint(C, 40303)
    s.socket(
        "node-1", c, endpoint(S, 9000), p_at, p_at + 5 * MS, pb.ACTIVE, pb.RESET_RECEIVED, pb.ESTABLISHED, 104, cid=3
    )
    hs = pb.TcpEvent(node="node-2", socket_id=9303, connection_id=3)
    hs.local.CopyFrom(endpoint(S, 9000))
    hs.remote.CopyFrom(c)
    hs.time.FromNanoseconds(p_at + MS)
    hs.state_change.old_state, hs.state_change.new_state = pb.SYN_RECV, pb.ESTABLISHED
    node1 = [b for b in s.batches() if b.node == "node-1"]
    node2 = [
        _batch("node-2", 1, evs["A"], T + 5 * S_NS + 10 * MS),
        _batch("node-2", 2, evs["B"], T + 20 * S_NS + 10 * MS),
        _batch("node-2", 3, [hs], p_at + 3 * S_NS),
        _batch("node-2", 4, [], p_at + 8 * S_NS, kernel_ringbuf_full=5),  # covers P + 5 s, not P
    ]
    # the summary reads A's backend last (its batch was delayed), so learns node-2's offset from A
    recs = laid_out([*node1, node2[1], node2[0], node2[2], node2[3]], "protobuf")
    doc, pairs, got = _both(tmp_path, recs)
    want = summary_verdicts(recs)
    key = ("node-1", next(e.socket_id for e in node1[-1].events if e.connection_id == 3), 40303, S, 9000)
    # the summary: P's RST in node-2's clock by A's offset (+5 s), in the lost span: unknown; SQL: by
    # the offset of the connection that closed last (B, 0 s), outside it: network
    assert want[key] == ("unknown", "peer_losses")
    assert got[key] == ("network", "no_send_seen")
    assert {k: v for k, v in got.items() if k != key} == {k: v for k, v in want.items() if k != key}
    assert sum(p["network_resets"] for p in pairs.values()) == 1 and doc["pairs"][0]["network_resets"] == 0


@pytest.mark.slow  # chDB
def test_a_resend_with_another_clock_measurement_keeps_the_first_in_the_summary_the_last_in_sql(
    tmp_path: Path,
) -> None:
    batches = scenario.build().batches()
    i = next(i for i, b in enumerate(batches) if b.node == "node-2" and len(b.events) > 1)
    for b in batches:
        if b.node == "node-2":
            b.collector.clock_offset_ns, b.collector.clock_offset_error_ns = 100 * MS, MS
            b.collector.clock_offset_bounded = True
    recs = laid_out(batches, "protobuf")
    resend = pb.EventBatch()
    resend.CopyFrom(batches[i])
    resend.collector.clock_offset_ns = 130 * MS  # the collector the agent resent to measured 130 ms
    recs += laid_out([resend], "protobuf")
    assert {dict(r.headers).get(H_CLOCK_OFFSET) for r in recs[-len(resend.events) - 1 : -1]} == {b"130000000"}
    doc, pairs, _ = _both(tmp_path, recs)
    assert doc["duplicates"] == len(resend.events) + 1
    want = by_pair(doc["pairs"])
    assert without_times(list(pairs.values())) == without_times(list(want.values()))
    # the summary corrected the resent batch's events by its first copy's 100 ms, ClickHouse kept the
    # last copy (130 ms): the times that come from that batch are 30 ms earlier in SQL, no other
    moved = [(k, f) for k in want for f in ("first_seen", "last_seen") if pairs[k][f] != want[k][f]]
    assert moved
    import datetime as dt

    def ns(text: str) -> int:
        d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return int(d.timestamp()) * 10**9 + d.microsecond * 1000

    assert {ns(want[k][f]) - ns(pairs[k][f]) for k, f in moved} == {30 * MS}


@pytest.mark.slow  # chDB
def test_a_record_outside_the_bounds_is_skipped_by_the_summary_and_stored_by_clickhouse(tmp_path: Path) -> None:
    s = Stream()  # one batch, sent after the far socket closed
    s.socket("node-1", endpoint(C, 40400), endpoint(S, 9000), T, T + 5 * MS, pb.ACTIVE)
    far = T + 200 * 365 * 86400 * S_NS  # in the 2250s: no collector publishes it, a foreign producer might
    s.socket("node-1", endpoint(C, 40401), endpoint(S, 9000), far, far + 5 * MS, pb.ACTIVE)
    doc, pairs, _ = _both(tmp_path, laid_out(s.batches(), "protobuf"))
    # the far socket's state change and lifecycle, and the batch's summary (its send time is as far)
    assert doc["out_of_bounds_records"] == 3
    assert [p["connections"] for p in doc["pairs"]] == [1]
    assert [p["connections"] for p in pairs.values()] == [2]


@pytest.mark.slow  # chDB
def test_anomaly_aggregates_are_counted_by_the_summary_and_stored_but_not_counted_by_sql(tmp_path: Path) -> None:
    # one ordinary connection web-1 -> api-1:9000 seen by both ends, and, within its span, 5 more the
    # server reset that web-1's agent counted past its budget (no exemplar of theirs was sent)
    s = Stream()
    s.socket("node-1", endpoint(C, 40500), endpoint(S, 9000), T, T + 5 * S_NS, pb.ACTIVE)
    s.socket("node-2", endpoint(S, 9000), endpoint(C, 40500), T + MS, T + 5 * S_NS - MS, pb.PASSIVE)
    agg = s._ev("node-1", endpoint(C, 0), endpoint(S, 9000), T + 3 * S_NS, 0, "app")
    a = agg.anomalies
    a.kind, a.count, a.role, a.interval_ns = pb.ANOMALY_LIFECYCLE, 5, pb.ACTIVE, 2 * S_NS
    a.ending, a.state, a.established = pb.RESET_RECEIVED, pb.ESTABLISHED, True
    a.first.FromNanoseconds(T + 2 * S_NS)
    a.last.FromNanoseconds(T + 3 * S_NS)
    recs = laid_out(s.batches(), "protobuf")
    doc = summary_doc(recs)
    with clickhouse_docs(tmp_path, "protobuf") as ch:
        ch.feed(recs)
        pairs = by_pair(as_summary_pairs(ch.query("pairs")))
        stored = ch.rows(
            "SELECT anomaly_kind, count, role, ending, local_ip, remote_ip, remote_port FROM tcpscope_anomalies"
        )
    (key,) = pairs
    want = by_pair(doc["pairs"])
    assert want.keys() == pairs.keys()
    # exactly the aggregate's connections, with its key's outcome and its exemplars' class of cause
    # (none: unknown/no_exemplar), the only difference
    added = {
        "connections": 5,
        "server_resets": 5,
        "aggregated_connections": 5,
        "server_reset_reasons": {"UNKNOWN": 5},
        "reset_causes": {"unknown": {"no_exemplar": 5}},
    }
    expected = {**pairs[key], **{f: pairs[key].get(f, 0) + n for f, n in added.items() if isinstance(n, int)}}
    expected["server_reset_reasons"] = {"UNKNOWN": 5}
    expected["reset_causes"] = {"unknown": {"no_exemplar": 5}}
    assert (pairs[key]["server_reset_reasons"], pairs[key]["reset_causes"]) == ({}, {})
    latency = ("open_connections", "connect_latency_us", "rtt_us")  # SUMMARY_ONLY: none in this stream
    assert (want[key]["open_connections"], want[key]["rtt_us"]["samples"]) == (0, 0)
    assert {f: v for f, v in want[key].items() if f not in latency} == expected
    # SQL keeps the aggregate, for a query of one's own
    assert stored == [
        {
            "anomaly_kind": "ANOMALY_LIFECYCLE",
            "count": 5,
            "role": "ACTIVE",
            "ending": "RESET_RECEIVED",
            "local_ip": C,
            "remote_ip": S,
            "remote_port": 9000,
        }
    ]


@pytest.mark.slow  # chDB
def test_open_connections_are_the_summarys_and_sql_counts_their_bytes_so_far(tmp_path: Path) -> None:
    """A pooled connection web-1 -> db-1:5432 still open, reported in two flushes of its flow (the
    open part only: connections 0), beside one closed connection web-1 -> api-1:9000. The summary
    has a row for the open pair (no counter; OPEN 1, two RTT samples) and `pairs` none; SQL's
    bytes_per_minute holds the open connection's bytes so far, without a connection."""
    s = Stream()
    s.socket("node-1", endpoint(C, 40600), endpoint(S, 9000), T, T + 5 * MS, pb.ACTIVE)
    db = endpoint(scenario.S3, 5432)
    for i, (tx, rx) in enumerate(((1000, 30), (500, 15))):
        at = T + (i + 1) * 2 * S_NS
        s.flow("node-1", endpoint(C, 0), db, at, pb.ACTIVE, 0, [])
        f = s.events["node-1"][-1].flow
        f.ClearField("first_close")
        f.ClearField("last_close")
        f.tx_bytes, f.rx_bytes, f.duration_sum_ns, f.open_connections = tx, rx, 0, 1
        f.report_time.FromNanoseconds(at)
        f.srtt_us_log2.extend([0] * 6 + [1])  # 64 us
    recs = laid_out(s.batches(), "protobuf")
    doc = summary_doc(recs)
    with clickhouse_docs(tmp_path, "protobuf") as ch:
        ch.feed(recs)
        pairs = by_pair(as_summary_pairs(ch.query("pairs")))
        minutes = ch.query("bytes_per_minute")
    want = by_pair(doc["pairs"])
    (only,) = want.keys() - pairs.keys()
    row = want[only]
    assert (row["server"]["name"], row["connections"], row["open_connections"], row["rtt_us"]["samples"]) == (
        scenario.PODS[scenario.S3][1],
        0,
        1,
        2,
    )
    assert [p["connections"] for p in pairs.values()] == [1]
    open_bytes = [m for m in minutes if int(m["connections"]) == 0]
    assert sum(int(m["client_sent_bytes"]) for m in open_bytes) == 1500
    assert sum(int(m["server_sent_bytes"]) for m in open_bytes) == 45
