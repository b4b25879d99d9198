"""docs/analytics.md is what the SQL files hold: the files it names exist, every table, view,
function and query the files define is in it, and each SQL block it shows runs against them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.analytics import ROOT, SQL_DIR, clickhouse_docs, kafka_table, sql_file

DOC = ROOT / "docs" / "analytics.md"
FILES = ("1-tables.sql", "2-kafka-protobuf.sql", "2-kafka-json.sql", "3-queries.sql")


def defined_names() -> set[str]:
    names: set[str] = set()
    for f in FILES:
        for st in sql_file(f):
            m = re.match(r"CREATE (?:TABLE|VIEW|MATERIALIZED VIEW|FUNCTION) (\w+)", st.sql)
            if m and not m.group(1).endswith("_mv"):
                names.add(m.group(1))
            if st.query_name:
                names.add(st.query_name)
    return names


def test_the_page_names_every_file_table_view_and_query() -> None:
    text = DOC.read_text()
    assert sorted(SQL_DIR.glob("*.sql")) == sorted(SQL_DIR / f for f in FILES)
    for f in FILES:
        assert f"(analytics/{f})" in text, f
    missing = sorted(n for n in defined_names() if f"`{n}`" not in text)
    assert not missing, f"docs/analytics.md does not mention {missing}"


def test_every_kafka_table_reads_the_collectors_topic_with_its_own_group() -> None:
    groups: dict[str, str] = {}
    for f in FILES[1:3]:
        for kt in filter(None, map(kafka_table, sql_file(f))):
            s = kt.settings
            assert s["kafka_topic_list"] == "tcpscope-events", kt.name  # the collector's default --topic
            groups[kt.name] = s["kafka_group_name"]
            if s["kafka_format"] == "ProtobufSingle":
                assert s["kafka_handle_error_mode"] == "stream", kt.name  # the other record type must not stop it
                assert s["kafka_schema"] in ("events.proto:TcpEvent", "events.proto:EventBatch")
            else:
                assert s["kafka_format"] == "JSONAsString"
    protobuf_groups = [g for n, g in groups.items() if n != "tcpscope_kafka_json"]
    assert len(set(protobuf_groups)) == len(protobuf_groups) == 2, groups


@pytest.mark.slow  # chDB
def test_each_sql_block_of_the_page_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)
    assert blocks
    with clickhouse_docs(tmp_path, "protobuf") as ch:
        for b in blocks:
            ch.execute(b)
        assert ch.rows(ch.queries["pairs"]) == []  # the window set by the page, over empty tables
