"""The documented query pack (docs/analytics/3-queries.sql) against the summary's own code, case by
case: every rule of tail/summary.py and tail/resetcause.py on a hand-built stream
(tests/analytics/scenario.py), laid out as the collector lays out records (tcpscope/kafka_layout.py),
in both value formats, with repeats. chDB runs the DDL and the queries; only the Kafka engine table
is swapped for a table fed from the record values (tests/support/analytics.py says how)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tail.summary import Report, Summarizer, SummaryOptions
from tcpscope.kafka_layout import batch_records, decode_records
from tests.analytics import scenario
from tests.support.analytics import Rec, as_summary_losses, as_summary_pairs, by_pair, clickhouse_docs


def records(value_format: str) -> list[Rec]:
    """The stream's records in publishing order, then two batches published again verbatim, as a
    collector that died before its ack makes the agent resend them."""
    batches = scenario.build().batches()
    out: list[Rec] = []
    for b in batches:
        out += [Rec(0, len(out) + i, r.key, r.value, r.headers) for i, r in enumerate(batch_records(b, value_format))]
    again = [r for b in (batches[1], batches[-1]) for r in batch_records(b, value_format)]
    out += [Rec(0, len(out) + i, r.key, r.value, r.headers) for i, r in enumerate(again)]
    return out


def summary(recs: list[Rec]) -> dict[str, Any]:
    """`tcpscope-tail --summary --format json` of these records (its Report, fed as it feeds it)."""
    rep = Report(Summarizer())
    for r in recs:
        for d in decode_records(r.headers, r.value):
            rep.take(d)
    return json.loads(rep.render("json", SummaryOptions()))


@pytest.mark.slow  # chDB runs the whole DDL and query pack: a few seconds
@pytest.mark.parametrize("value_format", ["protobuf", "json"])
def test_the_query_pack_equals_the_summary_rule_by_rule(value_format: str, tmp_path: Path) -> None:
    recs = records(value_format)
    doc = summary(recs)
    assert doc["duplicates"] > 0 and doc["conflicts"] == 0
    with clickhouse_docs(tmp_path, value_format) as ch:
        ch.feed(recs)
        got = by_pair(as_summary_pairs(ch.query("pairs")))
        want = by_pair(doc["pairs"])
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == want[k], k
        (losses,) = ch.query("losses")
        assert as_summary_losses(losses) == doc["losses"]
        assert losses["batches"] == doc["batches"]
