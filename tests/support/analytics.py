"""The documented ClickHouse DDL and queries (docs/analytics/*.sql) run in chDB, ClickHouse's
in-process engine, on Kafka records a test consumed or built.

chDB cannot run the Kafka engine's consumers without a server, so this is the one part swapped:
each documented `ENGINE = Kafka` table becomes a Null table with the same columns plus the Kafka
engine's virtual columns (`_key`, `_topic`, `_partition`, `_offset`, `_headers.name`,
`_headers.value`, and `_error`/`_raw_message` of `kafka_handle_error_mode = 'stream'`), and
`ClickHouseDocs.feed` inserts the records into it as that engine would: every record's value read
through the table's own `kafka_format` and `kafka_schema` and format settings (one value per file,
as one Kafka message is one input), its headers into the virtual columns, and a value that does not
parse as the table's message as a row with `_error` set. Everything else (the Null streams, the
MergeTree tables, every materialized view, the query pack) runs exactly as the files say.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tail.summary import Report
    from tcpscope.v1.events_pb2 import EventBatch

ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = ROOT / "docs" / "analytics"
PROTO = ROOT / "proto" / "tcpscope" / "v1" / "events.proto"

VIRTUAL_COLUMNS = (
    "_key String, _topic String, _partition UInt64, _offset UInt64, "
    "_headers Nested(name String, value String), _error String, _raw_message String"
)


@dataclass(frozen=True)
class Statement:
    sql: str  # without its leading comments
    comments: str  # the comment lines before it

    @property
    def query_name(self) -> str | None:
        m = re.search(r"^-- query: (\w+)", self.comments, re.M)
        return m.group(1) if m else None


def split_sql(text: str) -> list[Statement]:
    """Statements at `;` outside quotes and `--` comments, each with the comments before it."""
    out: list[Statement] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            buf.append(text[i:j])
            i = j
            continue
        if ch == "'":
            j = i + 1
            while j < n and text[j] != "'":
                j += 2 if text[j] == "\\" else 1
            buf.append(text[i : j + 1])
            i = j + 1
            continue
        if ch == ";":
            out.append(_statement("".join(buf)))
            buf = []
        else:
            buf.append(ch)
        i += 1
    rest = "".join(buf)
    if rest.strip() and any(line.strip() and not line.strip().startswith("--") for line in rest.splitlines()):
        out.append(_statement(rest))
    return out


def _statement(raw: str) -> Statement:
    lines = raw.strip("\n").splitlines()
    k = 0
    comments: list[str] = []
    while k < len(lines) and (not lines[k].strip() or lines[k].lstrip().startswith("--")):
        comments.append(lines[k])
        k += 1
    return Statement("\n".join(lines[k:]).strip(), "\n".join(comments))


def sql_file(name: str) -> list[Statement]:
    return split_sql((SQL_DIR / name).read_text())


@dataclass(frozen=True)
class KafkaTable:
    """A documented `ENGINE = Kafka` table: its name, column definitions and SETTINGS."""

    name: str
    columns: str  # the column definitions, as written (comments removed)
    settings: dict[str, str]

    @property
    def column_names(self) -> list[str]:
        """The columns' names, a Nested column's as its arrays (`local_services.name`, quoted)."""
        out: list[str] = []
        for c in _top_level_split(self.columns):
            name, _, typ = c.partition(" ")
            m = re.match(r"\s*Nested\((.*)\)\s*$", typ, re.S)
            if m is None:
                out.append(name)
            else:
                out += [f"`{name}.{sub.split()[0]}`" for sub in _top_level_split(m.group(1))]
        return out

    @property
    def format_settings(self) -> dict[str, str]:
        return {k: v for k, v in self.settings.items() if not k.startswith("kafka_")}


_KAFKA = re.compile(r"CREATE TABLE (\w+)\s*\((.*)\)\s*ENGINE = Kafka\s+SETTINGS\s+(.*)$", re.S)


def kafka_table(st: Statement) -> KafkaTable | None:
    m = _KAFKA.match(st.sql)
    if m is None:
        return None
    columns = "\n".join(line.split("--")[0] for line in m.group(2).splitlines())
    settings: dict[str, str] = {}
    for item in _top_level_split(m.group(3)):
        key, _, value = item.partition("=")
        value = value.strip()
        settings[key.strip()] = value[1:-1] if value.startswith("'") else value
    return KafkaTable(m.group(1), columns.strip(), settings)


def _top_level_split(text: str) -> list[str]:
    """Split at commas outside parentheses and quotes."""
    parts: list[str] = []
    depth, quoted, cur = 0, False, list[str]()
    for ch in text:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _lit(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Rec:
    """One Kafka record as a consumer got it."""

    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]]


def records_of(consumed: Sequence[Any]) -> list[Rec]:
    """kafka-python ConsumerRecords (or anything with those fields) as Recs, in offset order per partition."""
    return [Rec(r.partition, r.offset, r.key or b"", r.value or b"", list(r.headers or [])) for r in consumed]


class ClickHouseDocs:
    """A chDB session holding the documented tables, views and queries for one value format."""

    def __init__(
        self,
        workdir: Path,
        value_format: str,
        proto: Path = PROTO,
        files: Sequence[str] | None = None,
        edit: Callable[[str, str], str] | None = None,
    ) -> None:
        """The documented files for this value format, run in order; `edit(name, text)` may change a
        file's text first (a test's older version of the DDL)."""
        from chdb import session

        self.workdir = workdir
        self.schema_dir = workdir / "format_schemas"
        (self.schema_dir / "google" / "protobuf").mkdir(parents=True, exist_ok=True)
        shutil.copy(proto, self.schema_dir / "events.proto")
        shutil.copy(_timestamp_proto(), self.schema_dir / "google" / "protobuf" / "timestamp.proto")
        self.session = session.Session(str(workdir / "chdb"))
        self.kafka_tables: list[KafkaTable] = []
        self.queries: dict[str, str] = {}
        for name in files or ("1-tables.sql", f"2-kafka-{value_format}.sql", "3-queries.sql"):
            text = (SQL_DIR / name).read_text()
            for st in split_sql(edit(name, text) if edit else text):
                self._run_statement(st)

    def _run_statement(self, st: Statement) -> None:
        kt = kafka_table(st)
        if kt is not None:  # the swapped part: a Null table with the Kafka engine's virtual columns
            self.kafka_tables.append(kt)
            self.execute(f"CREATE TABLE {kt.name} ({kt.columns}, {VIRTUAL_COLUMNS}) ENGINE = Null")
        elif st.query_name:
            self.queries[st.query_name] = st.sql
        else:
            self.execute(st.sql)

    def execute(self, sql: str, fmt: str = "CSV") -> str:
        return str(self.session.query(sql, fmt))

    def rows(self, sql: str) -> list[dict[str, Any]]:
        out = self.execute(sql, "JSONEachRow")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def query(self, name: str, since: str = "1970-01-01 00:00:00") -> list[dict[str, Any]]:
        """One query of the pack, as a data engineer runs it: the window's start set first."""
        self.execute(f"SET param_since = {_lit(since)}")
        return self.rows(self.queries[name])

    def feed(self, records: Sequence[Rec], topic: str = "tcpscope-events") -> None:
        """Every record into every documented Kafka table, as its consumer group would read them."""
        for kt in self.kafka_tables:
            self._feed_table(kt, records, topic)

    def _settings(self, kt: KafkaTable) -> str:
        s = dict(kt.format_settings)
        if "kafka_schema" in kt.settings:  # chDB takes only an absolute schema path
            s["format_schema"] = str(self.schema_dir / kt.settings["kafka_schema"])
        text = ", ".join(f"{k} = {v if v.isdigit() else _lit(v)}" for k, v in s.items())
        return f" SETTINGS {text}" if text else ""

    def _feed_table(self, kt: KafkaTable, records: Sequence[Rec], topic: str) -> None:
        d = self.workdir / "feed" / kt.name
        if d.exists():
            shutil.rmtree(d)
        (d / "all").mkdir(parents=True)
        (d / "ok").mkdir()
        fmt = kt.settings["kafka_format"]
        settings = self._settings(kt)
        good, bad = [], []
        for i, r in enumerate(records):
            path = d / "all" / f"{i:08d}.msg"
            path.write_bytes(r.value)
            row = {
                "file": path.name,
                "seq": i,
                "key": r.key.decode("utf-8", "replace"),
                "topic": topic,
                "partition": r.partition,
                "offset": r.offset,
                "names": [k for k, _ in r.headers],
                "values": [v.decode("utf-8", "replace") for _, v in r.headers],
            }
            try:  # does this message parse as the table's format and message type?
                self.execute(
                    f"SELECT * FROM file({_lit(str(path))}, {_lit(fmt)}, {_lit(kt.columns)}){settings}", "Null"
                )
            except Exception as e:  # chDB raises its own error type for any query error
                row["error"] = str(e).splitlines()[0]
                row["raw"] = r.value.decode("latin-1")
                bad.append(row)
                continue
            path.rename(d / "ok" / path.name)
            good.append(row)
        header_cols = (
            "file String, seq UInt64, key String, topic String, partition UInt64, offset UInt64, "
            "names Array(String), values Array(String), error String, raw String"
        )
        virtual = "_key, _topic, _partition, _offset, `_headers.name`, `_headers.value`"
        if good:
            (d / "ok.jsonl").write_text("".join(json.dumps(x) + "\n" for x in good))
            cols = kt.column_names
            self.execute(
                f"INSERT INTO {kt.name} ({', '.join(cols)}, {virtual}) "
                f"SELECT {', '.join('v.' + c for c in cols)}, h.key, h.topic, h.partition, h.offset, h.names, h.values "
                f"FROM file({_lit(str(d / 'ok' / '*.msg'))}, {_lit(fmt)}, {_lit(kt.columns)}) AS v "
                f"INNER JOIN file({_lit(str(d / 'ok.jsonl'))}, 'JSONEachRow', {_lit(header_cols)}) AS h "
                f"ON v._file = h.file ORDER BY h.seq{settings}"
            )
        if bad:
            (d / "bad.jsonl").write_text("".join(json.dumps(x) + "\n" for x in bad))
            self.execute(
                f"INSERT INTO {kt.name} ({virtual}, _error, _raw_message) "
                f"SELECT key, topic, partition, offset, names, values, error, raw "
                f"FROM file({_lit(str(d / 'bad.jsonl'))}, 'JSONEachRow', {_lit(header_cols)}) ORDER BY seq"
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session.close()


def _timestamp_proto() -> Path:
    """google/protobuf/timestamp.proto from grpc_tools (a dev dependency), as protoc would include it."""
    import grpc_tools

    return Path(grpc_tools.__file__).parent / "_proto" / "google" / "protobuf" / "timestamp.proto"


@contextlib.contextmanager
def clickhouse_docs(workdir: Path, value_format: str, **kw: Any) -> Iterator[ClickHouseDocs]:
    ch = ClickHouseDocs(workdir, value_format, **kw)
    try:
        yield ch
    finally:
        ch.close()


COUNTERS = (
    "connections",
    "client_resets",
    "server_resets",
    "network_resets",
    "refused",
    "timeouts",
    "retransmits",
    "failed",
    "flow_connections",
)


SUMMARY_ONLY: dict[str, str] = {
    "aggregated_connections": "anomaly aggregates (TcpEvent.anomalies) are stored in tcpscope_anomalies, "
    "not counted by the pairs query",
    "open_connections": "open reports (TcpEvent.open, the open part of flows): the pack counts a connection "
    "when it closes",
    "connect_latency_us": "latency histograms (lifecycles, open reports, flows): not in the tables",
    "rtt_us": "latency histograms (lifecycles, open reports, flows): not in the tables",
}
"""The keys of the summary's pair rows that the query pack does not compute, each with why: the one
list (docs/analytics.md, "Where SQL and the summary differ", mirrors it). `assert_same_pairs` checks
that every summary row has exactly SQL's keys plus these, so a column the summary gains fails the
comparison until SQL computes it or it is listed here (and documented)."""


def assert_same_pairs(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> None:
    """SQL's pairs (`got`, by_pair of as_summary_pairs) equal the summary's (`want`, by_pair of its
    JSON) row by row and key by key, but for the SUMMARY_ONLY keys, which every summary row has and
    SQL's do not. Where the summary counted anomaly aggregates the rows differ (docs/analytics.md),
    so this also asserts the stream had none: aggregated_connections 0 on every summary row. A pair
    only the summary has must be one of connections that were open and have not closed."""
    assert got.keys() <= want.keys(), sorted(got.keys() - want.keys())
    for k, w in want.items():
        if k not in got:  # a pair whose connections were all open: in the summary only (no counter)
            assert not any(w[c] for c in (*COUNTERS, "flow_connections")), k
            assert w["open_connections"] or w["rtt_us"]["samples"], k
            continue
        assert set(w) == set(got[k]) | set(SUMMARY_ONLY), (k, sorted(set(w) ^ set(got[k])))
        assert w["aggregated_connections"] == 0, k  # else the counters differ by design (test_differences)
        assert got[k] == {f: v for f, v in w.items() if f not in SUMMARY_ONLY}, k


def without_backend_names(records: Sequence[Rec]) -> list[Rec]:
    """The records as a collector without --resolve-backends publishes them: every event's
    Endpoint.services left out (the summary then splits no Service's flows by backend, as SQL does
    not: docs/analytics.md, "Where SQL and the summary differ")."""
    from tcpscope.kafka_layout import H_RECORD, RECORD_EVENT, header_map
    from tcpscope.v1.events_pb2 import TcpEvent

    out = []
    for r in records:
        value = r.value
        if header_map(r.headers).get(H_RECORD) == RECORD_EVENT:
            if value[:1] == b"{":
                doc = json.loads(value)
                for side in ("local", "remote"):
                    doc.get(side, {}).pop("services", None)
                value = json.dumps(doc, separators=(",", ":")).encode()
            else:
                ev = TcpEvent.FromString(value)
                ev.local.ClearField("services")
                ev.remote.ClearField("services")
                value = ev.SerializeToString()
        out.append(Rec(r.partition, r.offset, r.key, value, r.headers))
    return out


def assert_backend_split(split: dict[str, dict[str, Any]], unsplit: dict[str, dict[str, Any]]) -> int:
    """The summary with its per-backend split (`split`) against the same summary without it
    (`unsplit`: its records without Endpoint.services), exactly as docs/analytics.md describes: rows
    not through a Service are equal; per (client, via Service) every problem counter's rows are
    equal, and the split only moved connections (and as many flow_connections) from the row whose
    server is the Service to rows whose server is a backend. Returns how many connections moved."""
    problems = ("client_resets", "server_resets", "network_resets", "refused", "timeouts", "retransmits", "failed")

    def through_service(p: dict[str, Any]) -> bool:
        return bool(p.get("via")) and p["via"]["kind"] == "SERVICE"

    assert {k: p for k, p in split.items() if not through_service(p)} == {
        k: p for k, p in unsplit.items() if not through_service(p)
    }
    moved = 0
    groups = {
        json.dumps([p["client"], p["via"]], sort_keys=True)
        for p in [*split.values(), *unsplit.values()]
        if through_service(p)
    }
    for g in sorted(groups):
        rows_s = [
            p for p in split.values() if through_service(p) and json.dumps([p["client"], p["via"]], sort_keys=True) == g
        ]
        rows_u = [
            p
            for p in unsplit.values()
            if through_service(p) and json.dumps([p["client"], p["via"]], sort_keys=True) == g
        ]
        for c in (*problems, "connections", "flow_connections"):
            assert sum(p[c] for p in rows_s) == sum(p[c] for p in rows_u), (g, c)
        by_server_s = {json.dumps(p["server"], sort_keys=True): p for p in rows_s}
        by_server_u = {json.dumps(p["server"], sort_keys=True): p for p in rows_u}
        for srv in by_server_s.keys() | by_server_u.keys():
            ps, pu = by_server_s.get(srv), by_server_u.get(srv)
            n = (ps["connections"] if ps else 0) - (pu["connections"] if pu else 0)
            assert n == (ps["flow_connections"] if ps else 0) - (pu["flow_connections"] if pu else 0), (g, srv)
            is_service = json.loads(srv)["kind"] == "SERVICE"
            assert (n <= 0) if is_service else (n >= 0), (g, srv, n)
            moved += max(n, 0)
            for c in problems:
                assert (ps[c] if ps else 0) == (pu[c] if pu else 0), (g, srv, c)
    return moved


def datetime64_ns(text: str) -> int:
    """'2026-12-07 09:29:54.930134029' (ClickHouse's DateTime64(9) in UTC) as ns since the epoch."""
    import datetime as dt

    whole, _, frac = text.partition(".")
    secs = int(dt.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC).timestamp())
    return secs * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def _party(row: dict[str, Any], side: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "namespace": row[f"{side}_namespace"],
        "name": row[f"{side}_name"],
        "kind": row[f"{side}_kind"],
    }
    if row[f"{side}_process"]:
        out["process"] = row[f"{side}_process"]
    port = row["client_port" if side == "client" else "server_party_port"]
    if port:
        out["port"] = port
    return out


def as_summary_pairs(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `pairs` query's rows in the shape of `tcpscope-tail --summary --format json`'s pairs."""
    from tail.gaps import rfc3339

    out = []
    for r in rows:
        causes: dict[str, dict[str, int]] = {}
        for key, n in r["reset_causes"].items():
            cause, _, detail = key.partition("/")
            causes.setdefault(cause, {})[detail] = int(n)
        out.append(
            {
                "client": _party(r, "client"),
                "server": _party(r, "server"),
                **{c: int(r[c]) for c in COUNTERS},
                "server_ports": r["server_ports"],
                "client_reset_reasons": {k: int(v) for k, v in sorted(r["client_reset_reasons"].items())},
                "server_reset_reasons": {k: int(v) for k, v in sorted(r["server_reset_reasons"].items())},
                "reset_causes": {c: dict(sorted(d.items())) for c, d in sorted(causes.items())},
                "first_seen": rfc3339(datetime64_ns(r["first_seen"])),
                "last_seen": rfc3339(datetime64_ns(r["last_seen"])),
            }
        )
        if r["via_kind"]:  # only rows through a Service or a node port, as the summary's JSON
            via: dict[str, Any] = {"namespace": r["via_namespace"], "name": r["via_name"], "kind": r["via_kind"]}
            if r["via_port"]:
                via["port"] = r["via_port"]
            out[-1]["via"] = via
    return out


def by_pair(pairs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pairs keyed by their parties, client, server and via (for comparing without caring about the
    order)."""
    out: dict[str, dict[str, Any]] = {}
    for p in pairs:
        key = json.dumps([p["client"], p["server"], p.get("via")], sort_keys=True)
        assert key not in out, f"pair {key} twice"
        out[key] = p
    return out


def as_summary_losses(row: dict[str, Any]) -> dict[str, int]:
    """The `losses` query's row in the shape of the summary's `losses` (its loss line's figures)."""
    out = {k: int(row[k]) for k in ("kernel", "agent_buffer", "enrichment", "kernel_skipped_runs", "sockets_untracked")}
    out.update({k: int(v) for k, v in row["by_reason"].items()})
    return dict(sorted(out.items()))


# --- the summary's side, in-process: `tcpscope-tail --summary` fed the same records -----------------


def summary_report(records: Sequence[Rec]) -> Report:
    """The Report of `tcpscope-tail --summary` fed as it feeds it: through the reader's dedup policy
    (tail/consume.py Dedup), repeats counted as its duplicates, conflicts handed to it."""
    from tail.cli import SUMMARY_DEDUP_WINDOW
    from tail.consume import Dedup
    from tail.summary import Report, Summarizer
    from tcpscope.bounds import OutOfBounds
    from tcpscope.kafka_layout import decode_records

    rep = Report(Summarizer())
    dedup = Dedup(SUMMARY_DEDUP_WINDOW)
    for r in records:
        try:
            decoded = decode_records(r.headers, r.value)
        except OutOfBounds:  # decodable, outside the bounds: the reader skips and counts it
            rep.out_of_bounds += 1
            continue
        except ValueError:
            rep.undecodable += 1
            continue
        for d in decoded:
            if dedup.keep(d, rep.conflicts.add):
                rep.take(d)
    rep.duplicates = dedup.repeats
    return rep


def summary_doc(records: Sequence[Rec], window_s: float | None = None, now_ns: int | None = None) -> dict[str, Any]:
    """`tcpscope-tail --summary --format json [--window S]` of these records (now: now_ns)."""
    from tail.summary import SummaryOptions

    out: dict[str, Any] = json.loads(
        summary_report(records).render("json", SummaryOptions(window_s=window_s), now_ns=now_ns)
    )
    return out


SocketKey = tuple[str, int, int, str, int]
"""(node, socket id, local port, remote ip, remote port): one socket (the kernel reuses socket ids)"""


def summary_verdicts(records: Sequence[Rec]) -> dict[SocketKey, tuple[str, str]]:
    """tail/resetcause.py's verdict on the RST each counted socket received."""
    s = summary_report(records).summarizer
    out: dict[SocketKey, tuple[str, str]] = {}
    for cv, sv in s.connections():
        for v in (cv, sv):
            got = s.resets.received_by(v.event) if v is not None else None
            if v is not None and got is not None:
                verdict = s.resets.classify(got)
                e = v.event
                key = (e.node, e.socket_id, e.local.port, e.remote.ip, e.remote.port)
                assert key not in out, key
                out[key] = (verdict.cause, verdict.detail)
    return out


def sql_verdicts(ch: ClickHouseDocs) -> dict[SocketKey, tuple[str, str]]:
    """The view tcpscope_reset_verdicts in the same shape."""
    rows = ch.rows(
        "SELECT s.node AS node, s.socket_id AS socket_id, s.local_port AS local_port, s.remote_ip AS remote_ip, "
        "s.remote_port AS remote_port, v.cause AS cause, v.detail AS detail "
        "FROM tcpscope_reset_verdicts AS v INNER JOIN tcpscope_sockets AS s ON v.id = s.id"
    )
    out: dict[SocketKey, tuple[str, str]] = {}
    for r in rows:
        key = (r["node"], int(r["socket_id"]), int(r["local_port"]), r["remote_ip"], int(r["remote_port"]))
        assert key not in out, key
        out[key] = (r["cause"], r["detail"])
    return out


# --- records as batches again, and one node's clock moved ------------------------------------------


def batches_of(records: Sequence[Rec]) -> list[EventBatch]:
    """The agent batches the records came from, each once (repeats dropped), events in batch order
    and the batch summary's fields (losses, node, send time) set."""
    from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, decode_records
    from tcpscope.v1.events_pb2 import EventBatch

    events: dict[tuple[str, int], dict[int, Any]] = {}
    summaries: dict[tuple[str, int], EventBatch] = {}
    for r in records:
        for d in decode_records(r.headers, r.value):
            key = (d.agent_id, d.sequence)
            if d.kind == RECORD_SUMMARY and d.summary is not None:
                summaries[key] = d.summary
            elif d.kind == RECORD_EVENT and d.event is not None:
                events.setdefault(key, {})[d.index] = d.event
    out = []
    for key in sorted(summaries.keys() | events.keys()):
        b = EventBatch()
        if key in summaries:
            b.CopyFrom(summaries[key])
            del b.events[:]
        b.agent_id, b.sequence = key
        b.events.extend(e for _, e in sorted(events.get(key, {}).items()))
        out.append(b)
    return out


def shifted(batches: Sequence[EventBatch], node: str, shift_ns: int, measured: bool = False) -> list[EventBatch]:
    """Copies of the batches with `node`'s clock moved by shift_ns: its events' times, its flows'
    first and last close, its agent's batch send times (what a reader meets when a node's clock is off).
    measured: the collector measured the offset too (its note on the node's batches, bounded within
    1 ms), so the node's records carry the correction readers subtract (docs/kafka.md, "Clocks")."""
    from tcpscope.v1.events_pb2 import EventBatch

    out = []
    for b in batches:
        c = EventBatch()
        c.CopyFrom(b)
        for ev in c.events:
            if ev.node != node:
                continue
            ev.time.FromNanoseconds(ev.time.ToNanoseconds() + shift_ns)
            if ev.WhichOneof("kind") == "flow":
                for ts in (ev.flow.first_close, ev.flow.last_close):
                    ts.FromNanoseconds(ts.ToNanoseconds() + shift_ns)
        if c.node == node:
            c.sent_time.FromNanoseconds(c.sent_time.ToNanoseconds() + shift_ns)
            if measured:
                c.collector.clock_offset_ns, c.collector.clock_offset_error_ns = shift_ns, 1_000_000
                c.collector.clock_offset_bounded = True
        out.append(c)
    return out


def laid_out(batches: Sequence[EventBatch], value_format: str, repeat: Sequence[int] = ()) -> list[Rec]:
    """The batches' records as the collector lays them out (tcpscope/kafka_layout.py), in order, then
    the batches at the positions in `repeat` published again verbatim (an agent's resend after a
    collector died before its ack)."""
    from tcpscope.kafka_layout import batch_records

    out: list[Rec] = []
    for b in [*batches, *(batches[i] for i in repeat)]:
        out += [Rec(0, len(out) + i, r.key, r.value, r.headers) for i, r in enumerate(batch_records(b, value_format))]
    return out


def without_times(pairs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """by_pair without first_seen and last_seen (they move with a node's clock), nor the SUMMARY_ONLY
    keys (asserted neutral, as assert_same_pairs does)."""
    out = {}
    for k, p in by_pair(pairs).items():
        assert p.get("aggregated_connections", 0) == 0, k  # else SQL's counters differ by design (SUMMARY_ONLY)
        q = {f: v for f, v in p.items() if f not in ("first_seen", "last_seen", *SUMMARY_ONLY)}
        out[k] = q
    return out


def republish_one_batch(bootstrap: str, topic: str, records: Sequence[Any]) -> int:
    """Every record of the first simulator batch that carried events, published again byte for byte
    (key, value, headers, partition): what a collector that died after Kafka's ack leaves behind.
    Returns how many records."""
    from kafka import KafkaProducer

    from tcpscope.kafka_layout import H_AGENT_ID, H_BATCH_SEQ, H_RECORD, RECORD_SUMMARY, header_map

    summaries = [header_map(r.headers) for r in records if header_map(r.headers).get(H_RECORD) == RECORD_SUMMARY]
    batch = next(
        (h[H_AGENT_ID], h[H_BATCH_SEQ])
        for h in summaries
        if h[H_AGENT_ID].startswith("node-") and h["batch-events"] != "0"
    )
    again = [
        r for r in records if (header_map(r.headers).get(H_AGENT_ID), header_map(r.headers).get(H_BATCH_SEQ)) == batch
    ]
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for r in again:
            p.send(topic, key=r.key, value=r.value, headers=list(r.headers), partition=r.partition)
        p.flush(10)
    finally:
        p.close()
    return len(again)
