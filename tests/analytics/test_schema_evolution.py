"""Schema evolution (docs/analytics.md): records of the current schema read with the DDL made for an
earlier proto. tcpscope.v1 only ever adds fields. A ClickHouse that still has an earlier events.proto
in its format_schemas, and Kafka tables and views without the new columns, must keep reading the
upgraded collector's records: every event in its table, the new fields ignored, the same answers
from the query pack.

Three generations: the proto before Endpoint.services (svcflows; its DDL did not read
TcpEvent.anomalies either, though the proto had it), the one before the fields added before that
(EventBatch.collector, the collector's clock measurement, with the `clock-offset-ns` header;
Losses.sockets_untracked; Lifecycle.tracked_mid_life), and the one before that (TcpEvent.connection_id,
commit 33f7885)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tcpscope.kafka_layout import decode_records
from tcpscope.v1 import events_pb2 as pb
from tests.analytics import scenario
from tests.support.analytics import ClickHouseDocs, Rec, as_summary_pairs, by_pair, clickhouse_docs, laid_out

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Generation:
    proto: Path
    columns: tuple[str, ...]
    """the names (Kafka table columns, stream columns) that read what this proto or its collector
    did not have: the earlier 2-kafka-*.sql has no line naming one"""
    stored: dict[str, tuple[str, ...]]
    """per stored table, the columns the upgrade added (the earlier DDL leaves their defaults)"""


NOTE_COLUMNS = (
    "lifecycle_tracked_mid_life",
    "lost_sockets_untracked",
    "collector_clock_offset_ns",
    "collector_clock_offset_error_ns",
    "collector_clock_offset_bounded",
    "clock_offset_ns",
    "clock_offset_error_ns",
    "clock_offset_bounded",
    "clock_correction_ns",
)
NOTE_STORED = {
    "tcpscope_lifecycles": ("tracked_mid_life",),
    "tcpscope_batches": ("lost_sockets_untracked", "clock_offset_ns", "clock_offset_error_ns", "clock_offset_bounded"),
}
ANOMALY_FIELDS = (
    "kind",
    "count",
    "exemplars",
    "first",
    "first_seconds",
    "first_nanos",
    "last",
    "last_seconds",
    "last_nanos",
    "interval_ns",
    "role",
    "state",
    "ending",
    "errno",
    "errno_name",
    "reason",
    "reason_name",
    "established",
    "retransmitted",
    "first_of_request",
    "no_socket",
    "coarse",
    "tx_bytes",
    "rx_bytes",
    "duration_sum_ns",
    "retransmits",
)
SERVICES_COLUMNS = ("local_services", *(f"anomalies_{f}" for f in ANOMALY_FIELDS))
"""Endpoint.services (the collector's --resolve-backends) and TcpEvent.anomalies: the proto before
svcflows had the anomalies already, the DDL did not read them"""
SERVICES_STORED: dict[str, tuple[str, ...]] = {
    "tcpscope_flows": ("`local_services.namespace`", "`local_services.name`", "`local_services.port`"),
}

GENERATIONS = {
    "before_services": Generation(HERE / "events_before_services.proto", SERVICES_COLUMNS, SERVICES_STORED),
    "before_collector_note": Generation(
        HERE / "events_before_collector_note.proto",
        (*SERVICES_COLUMNS, *NOTE_COLUMNS),
        {**NOTE_STORED, **SERVICES_STORED},
    ),
    "before_connection_id": Generation(
        HERE / "events_before_connection_id.proto",
        (*SERVICES_COLUMNS, *NOTE_COLUMNS, "connection_id"),
        {
            **SERVICES_STORED,
            **NOTE_STORED,
            "tcpscope_lifecycles": ("tracked_mid_life", "connection_id"),
            "tcpscope_socket_events": ("connection_id",),
        },
    ),
}
TABLES = ("tcpscope_lifecycles", "tcpscope_flows", "tcpscope_socket_events", "tcpscope_batches")


def earlier_ddl(gen: Generation, name: str, text: str) -> str:
    """The Kafka tables and their views as written for the earlier proto: no line naming what it
    lacked (the stored tables of 1-tables.sql keep their new columns, with their defaults, as after
    the ALTER the docs give)."""
    if not name.startswith("2-kafka-"):
        return text
    named = re.compile(r"\b(" + "|".join(gen.columns) + r")\b")
    text = "\n".join(line for line in text.splitlines() if not named.search(line))
    text = re.sub(r",(\n\s*\))", r"\1", text)  # a table's last column gone
    text = re.sub(r",(\nFROM )", r"\1", text)  # a view's last column gone
    assert not named.search(text), "the earlier DDL knows nothing of the new fields"
    return text


def records(value_format: str) -> list[Rec]:
    """The scenario's stream with the newer fields on the wire: a connection id on every reset, error
    and state change (the lifecycles keep 0, so the pairs are the same ones), a lifecycle tracked mid
    life, a socket not tracked, and the collector's clock measurement on every batch (3 ms: below what
    readers correct, as on one machine)."""
    batches = scenario.build().batches()
    for b in batches:
        b.collector.clock_offset_ns, b.collector.clock_offset_error_ns = 3_000_000, 1_000_000
        b.collector.clock_offset_bounded = True
        b.collector.received_time.FromNanoseconds(b.sent_time.ToNanoseconds() + 2_000_000)
        for i, e in enumerate(b.events):
            if e.WhichOneof("kind") not in ("lifecycle", "flow"):
                e.connection_id = 0xA5A5_0000_0000_0000 + i
            elif e.WhichOneof("kind") == "lifecycle" and (e.lifecycle.role, e.lifecycle.last_state) == (
                pb.ROLE_UNSPECIFIED,
                pb.FIN_WAIT2,
            ):
                e.lifecycle.tracked_mid_life = True  # the socket older than the agent
    batches[0].lost.sockets_untracked = 1
    batches[0].lost.by_reason["kernel.socket_map_full"] = 1
    server_flow = next(
        e for b in batches for e in b.events if e.WhichOneof("kind") == "flow" and e.flow.role == pb.PASSIVE
    )
    server_flow.local.services.add(namespace="shop", name="api-svc", port=80)  # the collector's --resolve-backends
    agg = batches[-1].events.add()  # anomalies past the budget: 7 refused connects
    agg.node, agg.time.seconds = batches[-1].node, server_flow.time.seconds
    agg.local.ip, agg.remote.ip, agg.remote.port = scenario.C, scenario.S, 9999
    agg.anomalies.kind, agg.anomalies.count, agg.anomalies.role = pb.ANOMALY_LIFECYCLE, 7, pb.ACTIVE
    agg.anomalies.ending, agg.anomalies.errno, agg.anomalies.state = pb.RESET_RECEIVED, 111, pb.SYN_SENT
    agg.anomalies.first.CopyFrom(agg.time)
    agg.anomalies.last.CopyFrom(agg.time)
    return laid_out(batches, value_format)


def _rows(ch: ClickHouseDocs, stored: dict[str, tuple[str, ...]]) -> dict[str, object]:
    """Every stored table's rows, without the columns the upgrade added."""
    out: dict[str, object] = {}
    for t in TABLES:
        cols = stored.get(t, ())
        except_ = f" EXCEPT ({', '.join(cols)})" if cols else ""
        out[t] = ch.rows(f"SELECT *{except_} FROM {t} FINAL ORDER BY ALL")
    return out


@pytest.mark.slow  # chDB, twice per case
@pytest.mark.parametrize("generation", list(GENERATIONS))
@pytest.mark.parametrize("value_format", ["protobuf", "json"])
def test_the_earlier_ddl_reads_the_current_records(value_format: str, generation: str, tmp_path: Path) -> None:
    gen = GENERATIONS[generation]
    recs = records(value_format)
    events = [d.event for r in recs for d in decode_records(r.headers, r.value) if d.event]
    assert any(e.connection_id for e in events) and any(e.lifecycle.tracked_mid_life for e in events)
    assert any(e.local.services for e in events) and any(e.anomalies.count for e in events)
    with clickhouse_docs(tmp_path / "current", value_format) as ch:
        ch.feed(recs)
        current = _rows(ch, gen.stored)
        pairs = by_pair(as_summary_pairs(ch.query("pairs")))
        new_values = ch.rows(
            "SELECT (SELECT countIf(connection_id != 0) FROM tcpscope_socket_events FINAL) AS ids, "
            "(SELECT countIf(tracked_mid_life) FROM tcpscope_lifecycles FINAL) AS mid_life, "
            "(SELECT sum(lost_sockets_untracked) FROM tcpscope_batches FINAL) AS untracked, "
            "(SELECT countIf(clock_offset_ns = 3000000 AND clock_offset_bounded) FROM tcpscope_batches FINAL)"
            " AS noted, "
            "(SELECT count() FROM tcpscope_batches FINAL) AS batches, "
            "(SELECT groupArray(local_services.name) FROM tcpscope_flows FINAL WHERE notEmpty(local_services.name))"
            " AS services, "
            "(SELECT groupArray((anomaly_kind, count, role, ending)) FROM tcpscope_anomalies FINAL) AS anomalies"
        )[0]
    with clickhouse_docs(
        tmp_path / "earlier", value_format, proto=gen.proto, edit=lambda n, t: earlier_ddl(gen, n, t)
    ) as old:
        old.feed(recs)
        earlier = _rows(old, gen.stored)
        assert by_pair(as_summary_pairs(old.query("pairs"))) == pairs
        (defaults,) = old.rows(
            "SELECT (SELECT countIf(tracked_mid_life) FROM tcpscope_lifecycles FINAL) AS mid_life, "
            "(SELECT sum(lost_sockets_untracked) + countIf(clock_offset_bounded) FROM tcpscope_batches FINAL) AS note, "
            "(SELECT countIf(notEmpty(local_services.name)) FROM tcpscope_flows FINAL) AS services, "
            "(SELECT sum(count) FROM tcpscope_anomalies FINAL) AS anomalies"
        )
        assert (int(defaults["services"]), int(defaults["anomalies"])) == (0, 0), "the new fields are not stored"
        if "lifecycle_tracked_mid_life" in gen.columns:
            assert (int(defaults["mid_life"]), int(defaults["note"])) == (0, 0), "the new fields are not stored"
    # the current DDL reads the new fields
    assert int(new_values["ids"]) > 0 and int(new_values["mid_life"]) == 1 and int(new_values["untracked"]) == 1
    assert int(new_values["noted"]) == int(new_values["batches"]) > 0
    assert new_values["services"] == [["api-svc"]]
    assert new_values["anomalies"] == [["ANOMALY_LIFECYCLE", 7, "ACTIVE", "RESET_RECEIVED"]]
    assert all(earlier[t] for t in TABLES)
    assert earlier == current
