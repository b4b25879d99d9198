"""The documented query pack (docs/analytics/3-queries.sql) against the summary's own code, case by
case: every rule of tail/summary.py and tail/resetcause.py on a hand-built stream
(tests/analytics/scenario.py), laid out as the collector lays out records (tcpscope/kafka_layout.py),
in both value formats, with repeats. chDB runs the DDL and the queries; only the Kafka engine table
is swapped for a table fed from the record values (tests/support/analytics.py says how)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcpscope.kafka_layout import batch_records
from tcpscope.v1 import events_pb2 as pb
from tests.analytics import scenario
from tests.support.analytics import (
    Rec,
    as_summary_losses,
    as_summary_pairs,
    assert_same_pairs,
    by_pair,
    clickhouse_docs,
    laid_out,
    sql_verdicts,
    summary_doc,
    summary_verdicts,
)


def records(value_format: str) -> list[Rec]:
    """The stream's records in publishing order, then two batches published again verbatim, as a
    collector that died before its ack makes the agent resend them."""
    batches = scenario.build().batches()
    return laid_out(batches, value_format, repeat=(1, len(batches) - 1))


@pytest.mark.slow  # chDB runs the whole DDL and query pack: a few seconds
@pytest.mark.parametrize("value_format", ["protobuf", "json"])
def test_the_query_pack_equals_the_summary_rule_by_rule(value_format: str, tmp_path: Path) -> None:
    recs = records(value_format)
    doc = summary_doc(recs)
    assert doc["duplicates"] > 0 and doc["conflicts"] == 0
    with clickhouse_docs(tmp_path, value_format) as ch:
        ch.feed(recs)
        got = by_pair(as_summary_pairs(ch.query("pairs")))
        want = by_pair(doc["pairs"])
        assert_same_pairs(got, want)
        (losses,) = ch.query("losses")
        assert as_summary_losses(losses) == doc["losses"]
        assert losses["batches"] == doc["batches"]


@pytest.mark.slow  # chDB
def test_every_received_reset_gets_the_summarys_verdict(tmp_path: Path) -> None:
    recs = records("protobuf")
    want = summary_verdicts(recs)
    # every rule of docs/reset-cause.md is taken at least once, on one end or the other
    assert {d for _, d in want.values()} >= {
        "TCP_STATE",
        "reason_5",
        "no_send_seen",
        "both_ends",
        "peer_closed",
        "peer_losses",
        "peer_possible_losses",
        "unwatched_peer",
        "peer_socket_unseen",
        "refused",
        "no_socket",
        "TCP_KEEPALIVE_TIMEOUT",
    }
    with clickhouse_docs(tmp_path, "protobuf") as ch:
        ch.feed(recs)
        assert sql_verdicts(ch) == want


@pytest.mark.slow  # chDB
def test_sockets_with_one_connection_id_are_one_connection_whatever_nat_did(tmp_path: Path) -> None:
    """Through a Service, the client's socket has the ClusterIP as its remote end and the backend's
    socket the pod's address: only connection_id tells they are one connection (docs/services.md).
    The pairing view joins them by it; a socket with id 0 still pairs by 4-tuple and start time."""
    s = scenario.Stream()
    vip, backend = scenario.endpoint("10.96.0.10", 80), scenario.endpoint(scenario.S, 9000)
    for i, cid in ((1, 0xC0FFEE), (2, 0xBEEF)):
        client = scenario.endpoint(scenario.C, 41000 + i)
        t = scenario.at(i)
        s.socket("node-1", client, vip, t, t + 5 * scenario.MS, pb.ACTIVE)
        s.socket("node-2", backend, client, t + scenario.MS, t + 6 * scenario.MS, pb.PASSIVE)
        for e in (s.events["node-1"][-1], s.events["node-2"][-1]):
            e.connection_id = cid
    recs = [Rec(0, i, r.key, r.value, r.headers) for b in s.batches() for i, r in enumerate(batch_records(b))]
    with clickhouse_docs(tmp_path, "protobuf") as ch:
        ch.feed(recs)
        (row,) = ch.rows("SELECT count() AS n, countIf(has_client AND has_server) AS both FROM tcpscope_connections")
    assert (int(row["n"]), int(row["both"])) == (2, 2)
