"""Schema evolution (docs/analytics.md): records of the current schema read with the DDL made for the
previous proto. tcpscope.v1 only ever adds fields; the field added last is TcpEvent.connection_id
(commit 33f7885). A ClickHouse that still has the previous events.proto in its format_schemas, and
Kafka tables and views without the new column, must keep reading the upgraded collector's records:
every event in its table, the new field ignored, the same answers from the query pack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tcpscope.kafka_layout import batch_records, decode_records
from tests.analytics import scenario
from tests.support.analytics import Rec, as_summary_pairs, by_pair, clickhouse_docs

PREVIOUS_PROTO = Path(__file__).with_name("events_before_connection_id.proto")


def previous_ddl(name: str, text: str) -> str:
    """The Kafka tables and their views as written for the previous proto: no connection_id (the
    tables of 1-tables.sql keep theirs, filled with its default, as after the ALTER the docs give)."""
    if not name.startswith("2-kafka-"):
        return text
    text = re.sub(r"\n\s*connection_id UInt64,", "", text)
    text = re.sub(r"\n\s*JSONExtract\(json, 'connection_id', 'UInt64'\) AS connection_id,", "", text)
    text = text.replace("node, socket_id, connection_id,", "node, socket_id,")
    assert "connection_id" not in text, "the previous DDL knows nothing of connection_id"
    return text


def records(value_format: str) -> list[Rec]:
    """The scenario's stream with the current schema's new field on the wire: a connection id on
    every reset, error and state change (the lifecycles keep 0, so the pairs are the same ones)."""
    batches = scenario.build().batches()
    for b in batches:
        for i, e in enumerate(b.events):
            if e.WhichOneof("kind") not in ("lifecycle", "flow"):
                e.connection_id = 0xA5A5_0000_0000_0000 + i
    out: list[Rec] = []
    for b in batches:
        out += [Rec(0, len(out) + i, r.key, r.value, r.headers) for i, r in enumerate(batch_records(b, value_format))]
    return out


@pytest.mark.slow  # chDB, twice
@pytest.mark.parametrize("value_format", ["protobuf", "json"])
def test_the_previous_ddl_reads_the_current_records(value_format: str, tmp_path: Path) -> None:
    recs = records(value_format)
    assert any(d.event.connection_id for r in recs for d in decode_records(r.headers, r.value) if d.event)
    tables = ("tcpscope_lifecycles", "tcpscope_flows", "tcpscope_socket_events", "tcpscope_batches")
    with clickhouse_docs(tmp_path / "current", value_format) as ch:
        ch.feed(recs)
        current = {t: ch.rows(f"SELECT * EXCEPT connection_id FROM {t} FINAL ORDER BY ALL") for t in tables[:3]}
        current["tcpscope_batches"] = ch.rows("SELECT * FROM tcpscope_batches FINAL ORDER BY ALL")
        pairs = by_pair(as_summary_pairs(ch.query("pairs")))
        ids = int(ch.execute("SELECT countIf(connection_id != 0) FROM tcpscope_socket_events FINAL"))
    with clickhouse_docs(tmp_path / "previous", value_format, proto=PREVIOUS_PROTO, edit=previous_ddl) as old:
        old.feed(recs)
        previous = {t: old.rows(f"SELECT * EXCEPT connection_id FROM {t} FINAL ORDER BY ALL") for t in tables[:3]}
        previous["tcpscope_batches"] = old.rows("SELECT * FROM tcpscope_batches FINAL ORDER BY ALL")
        assert int(old.execute("SELECT countIf(connection_id != 0) FROM tcpscope_socket_events FINAL")) == 0
        assert by_pair(as_summary_pairs(old.query("pairs"))) == pairs
    assert ids > 0, "the current DDL reads the new field"
    assert all(previous[t] for t in tables)
    assert previous == current
