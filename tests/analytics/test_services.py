"""The query pack through kube-proxy's NAT (docs/services.md), against the summary's own code, rule by
rule: the hand-built stream of tests/analytics/nat_scenario.py (the NAT mix of tests/support/natmix.py
and one case per other rule), laid out as the collector lays out records, in both value formats,
with repeats; then the same stream with node-2's clock 5 s ahead. chDB runs the DDL and the queries;
only the Kafka engine table is swapped for a table fed from the record values
(tests/support/analytics.py says how)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.analytics import nat_scenario
from tests.support.analytics import (
    Rec,
    as_summary_losses,
    as_summary_pairs,
    assert_same_pairs,
    by_pair,
    clickhouse_docs,
    laid_out,
    shifted,
    sql_verdicts,
    summary_doc,
    summary_verdicts,
    without_times,
)

SKEW_NS = 5 * 10**9


def records(value_format: str, skew_ns: int = 0, measured: bool = False) -> list[Rec]:
    """The scenario's batches (node-2's clock skew_ns off; measured: by the collector too), then two
    of them published again."""
    batches = nat_scenario.build().batches()
    if skew_ns:
        batches = shifted(batches, "node-2", skew_ns, measured)
    return laid_out(batches, value_format, repeat=(1, len(batches) - 1))


def _row(pairs: dict[str, dict[str, Any]], client: str, server: str, via: str | None) -> dict[str, Any]:
    (row,) = (
        p
        for p in pairs.values()
        if (p["client"]["name"], p["server"]["name"], p.get("via", {}).get("name")) == (client, server, via)
    )
    return row


@pytest.mark.slow  # chDB runs the whole DDL and query pack: a few seconds each
@pytest.mark.parametrize(
    ("skew_ns", "measured"),
    [(0, False), (SKEW_NS, False), (SKEW_NS, True)],
    ids=["clocks_agree", "node2_5s_ahead", "node2_5s_ahead_measured"],
)
@pytest.mark.parametrize("value_format", ["protobuf", "json"])
def test_through_services_the_query_pack_equals_the_summary(
    value_format: str, skew_ns: int, measured: bool, tmp_path: Path
) -> None:
    recs = records(value_format, skew_ns, measured)
    doc = summary_doc(recs)
    assert doc["duplicates"] > 0 and doc["conflicts"] == 0
    want = by_pair(doc["pairs"])
    with clickhouse_docs(tmp_path, value_format) as ch:
        ch.feed(recs)
        got = by_pair(as_summary_pairs(ch.query("pairs")))
        assert_same_pairs(got, want)
        (losses,) = ch.query("losses")
        assert as_summary_losses(losses) == doc["losses"]
        assert sql_verdicts(ch) == summary_verdicts(recs)

    # what the scenario's rows are, so an equal mistake on both sides shows too
    joined = [p for p in want.values() if p.get("via", {}).get("kind") == "SERVICE" and p["server"]["kind"] == "POD"]
    assert {p["server"]["name"] for p in joined} == {"api-0", "api-1", "api-2", "api-5", "api-6"}
    assert all(p["via"] == {"namespace": "shop", "name": "api-svc", "kind": "SERVICE", "port": 80} for p in joined)
    svc = _row(want, "web-1", "api-svc", "api-svc")  # no backend socket: refused, timed out, flows
    assert (svc["refused"], svc["timeouts"], svc["flow_connections"]) == (2, 1, 6)
    assert svc["server_ports"] == [80]
    assert svc["reset_causes"]["unknown"] == {"backend_unseen": 1}
    assert svc["reset_causes"]["network"] == {"no_send_seen": 1}  # the backend's socket still open
    nodeport = _row(want, "web-1", "api-1", "node-1")
    assert nodeport["via"] == {"namespace": "", "name": "node-1", "kind": "NODE", "port": 30080}
    assert (nodeport["connections"], nodeport["server_resets"], nodeport["reset_causes"]) == (
        1,
        1,
        {"app": {"TCP_STATE": 1}},
    )
    # the backends' flows from node-1's address: the 6 web-1's flows counted already, then the rest
    assert _row(want, "web-1", "node-1", None)["flow_connections"] == 6
    assert _row(want, "node-1", "api-2", None)["flow_connections"] == 3
    assert not [p for p in want.values() if (p["client"]["name"], p["server"]["name"]) == ("node-1", "api-1")]
    # the absorbed backend socket adds its retransmit, not a connection; the one connection is the
    # RST from api-1's port 9100 nobody reported (by tuple: unknown/peer_socket_unseen)
    straight = _row(want, "web-1", "api-1", None)
    assert (straight["connections"], straight["retransmits"], straight["server_ports"]) == (1, 1, [9000, 9100])
    assert straight["reset_causes"] == {"unknown": {"peer_socket_unseen": 1}}
    direct = _row(want, "web-1", "api-2", None)  # one agent with ids, one without: one connection each
    assert direct["connections"] == 2


@pytest.mark.slow  # chDB, three times
def test_a_node_whose_clock_is_off_gives_the_same_answers(tmp_path: Path) -> None:
    """node-2's clock 5 s ahead: joined by connection_id, every counter and cause is the same (a
    connection both of whose ends received a forged RST is both_ends whichever came first). When the
    collector measured the offset, the tables hold node-2's times on its clock: the same answers
    to the nanosecond."""
    answers = []
    for skew, measured in ((0, False), (SKEW_NS, False), (SKEW_NS, True)):
        with clickhouse_docs(tmp_path / f"{skew}-{measured}", "protobuf") as ch:
            ch.feed(records("protobuf", skew, measured))
            answers.append(by_pair(as_summary_pairs(ch.query("pairs"))))
            corrections = ch.rows(
                "SELECT node, groupUniqArray(clock_correction_ns) AS c FROM tcpscope_lifecycles FINAL GROUP BY node"
            )
            assert {r["node"]: [int(c) for c in r["c"]] for r in corrections}["node-2"] == [SKEW_NS if measured else 0]
    # a connection's network detail too: both ends' forged RSTs are both_ends in either order
    assert without_times(list(answers[1].values())) == without_times(list(answers[0].values()))
    assert answers[2] == answers[0]
    # both of the Service's backends hold their connections, each once: nothing counted twice
    api1 = _row(answers[1], "web-1", "api-1", "api-svc")
    assert (api1["connections"], api1["network_resets"]) == (11, 2)  # 10 of the mix, peer_closed


@pytest.mark.slow  # chDB
def test_a_window_counts_what_the_summarys_window_counts(tmp_path: Path) -> None:
    """`since` as `--window`: connections and flows that closed before it are left out, and the
    NodePort's backends' flows give up only the connections web-1's flows counted in the window."""
    recs = records("protobuf")
    since_ns = nat_scenario.at("nodeport_flows") - 10**9
    now_ns = nat_scenario.at("unseen_pod_peer") + 60 * 10**9
    doc = summary_doc(recs, window_s=(now_ns - since_ns) / 1e9, now_ns=now_ns)
    with clickhouse_docs(tmp_path, "protobuf") as ch:
        ch.feed(recs)
        since = ch.execute(f"SELECT fromUnixTimestamp64Nano({since_ns}, 'UTC')", "TSVRaw").strip()
        got = by_pair(as_summary_pairs(ch.query("pairs", since)))
        durations = {(r["client_name"], r["server_name"]): r for r in ch.query("durations", since)}
        minutes = [
            r
            for r in ch.query("bytes_per_minute", since)
            if (r["client_name"], r["server_name"]) == ("node-1", "api-1")
        ]
    want = by_pair(doc["pairs"])
    assert_same_pairs(got, want)
    # in the window: 4 of web-1's flows to the node port, so api-1's backend flow keeps 2 of its 6
    assert _row(want, "node-1", "api-1", None)["flow_connections"] == 2
    assert _row(want, "web-1", "node-1", None)["flow_connections"] == 4
    assert not [p for p in want.values() if p["server"]["name"] == "api-svc"]  # all before the window
    # the part of api-1's flow counted, in the durations and bytes: its histogram less the 4 taken
    # from its lowest buckets, its sums in proportion (docs/analytics.md)
    partial = durations[("node-1", "api-1")]
    assert (int(partial["connections"]), float(partial["mean_us"])) == (2, 3000.0)
    assert (int(partial["p50_bucket"]), int(partial["p99_bucket"])) == (12, 12)
    assert [(int(r["connections"]), int(r["client_sent_bytes"])) for r in minutes] == [(2, 42 * 2 // 6)]
