"""`tcpscope-tail`: read the events topic and print events as the agent's `--stdout` does, or a
summary per pair (`--summary`, aggregated by tail/summary.py), or one connection's timeline
(`--connection`, tail/timeline.py).

Reading is tail/consume.py's loop (partitions assigned and seeked directly, no consumer group,
unless `--group` is given); filtering (`EventFilter`) and printing are here, one `run*` per mode.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from tail import clock, connections, consume, live, resetcause, timeline
from tail import query as querylib
from tail import summary as summary_mode
from tail.gaps import unobserved_line
from tail.query import Query
from tcpscope import kafka_client, render
from tcpscope.bounds import OutOfBounds
from tcpscope.kafka_client import KafkaSecurity
from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, Decoded
from tcpscope.kinds import VIEW_HELP, parse_view
from tcpscope.losses import definite_total, possible_text, possible_total, untracked_total
from tcpscope.settings import number, one_line_errors
from tcpscope.v1.events_pb2 import EventBatch, TcpEvent


@dataclass(frozen=True)
class TailOptions:
    bootstrap: tuple[str, ...]
    topic: str
    format: str = "table"
    from_beginning: bool = False
    duration: float | None = None
    namespace: str | None = None
    pod: str | None = None
    kinds: tuple[str, ...] = ()
    group: str | None = None
    summary: summary_mode.SummaryOptions | None = None  # --summary: per-pair counters (tail/summary.py)
    connection: timeline.ConnectionSpec | None = None  # --connection: one connection's timeline
    reorder_window: float = live.DEFAULT_HOLD_S  # seconds each event is held to print in time order; 0: as read
    rows: str = "connection"  # --rows: one row per connection (tail/connections.py), or per socket event
    query: Query = field(default_factory=Query)  # --since/--until, --label, --service, ... (tail/query.py)
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def source(self) -> consume.Source:
        """What to read, and from where (--since seeks by time)."""
        return consume.Source(
            self.bootstrap, self.topic, self.security, self.from_beginning, self.query.since_ns, self.group
        )


@dataclass(frozen=True)
class EventFilter:
    """Keeps events whose local or remote end is in the namespace / pod, and of the given kinds."""

    namespace: str | None = None
    pod: str | None = None
    kinds: frozenset[str] = frozenset()  # oneof field names; empty = all (EventFilter.from_options: the live view)
    query: Query = field(default_factory=Query)

    def __call__(self, ev: TcpEvent) -> bool:
        if self.kinds and ev.WhichOneof("kind") not in self.kinds:
            return False
        ends = (ev.local, ev.remote)
        if self.namespace is not None and all(e.namespace != self.namespace for e in ends):
            return False
        if self.pod is not None and all(e.name != self.pod and f"{e.namespace}/{e.name}" != self.pod for e in ends):
            return False
        return self.query.empty or self.query(ev)

    @staticmethod
    def from_options(o: TailOptions) -> EventFilter:
        return EventFilter(o.namespace, o.pod, parse_view(",".join(o.kinds)), o.query)


# records remembered for dropping at-least-once repeats (about 100 bytes each; tail/consume.py Dedup)
LIVE_DEDUP_WINDOW = 200_000
SUMMARY_DEDUP_WINDOW = 1_000_000


def live_view(o: TailOptions) -> tuple[live.LiveView, str | None]:
    """The live view (tail/live.py) of these options, and its table header (None for JSON). Socket
    rows: received resets wait (bounded) for the peer node's evidence and print with their cause.
    Connection rows: both ends joined (tail/connections.py). Every row is held o.reorder_window
    seconds to print in time order."""
    keep = EventFilter.from_options(o)
    header = None if o.format == "json" else render.TABLE_HEADER

    def socket_line(ev: TcpEvent, v: resetcause.Verdict | None) -> str:
        # lines as the agent prints them (tcpscope/render.py), with the cause once the join knows
        return render.event_line(ev, o.format, v)

    if o.rows == "socket":
        return live.LiveView(socket_line, keep=keep, hold=o.reorder_window), header
    # the kinds choose rows (live.LiveView._row_shown); namespace, pod and the query choose sockets
    by_end = EventFilter(o.namespace, o.pod, frozenset(), o.query)
    return live.LiveView(
        socket_line,
        kinds=keep.kinds,
        keep=by_end,
        hold=o.reorder_window,
        render_row=lambda row: connection_line(o.format, row, socket_line),
    ), (None if o.format == "json" else connections.TABLE_HEADER)


def connection_line(
    fmt: str, row: connections.Row, socket_line: Callable[[TcpEvent, resetcause.Verdict | None], str]
) -> str:
    """A connection, flow or stray event row of the connection view."""
    if isinstance(row, connections.SocketRow):
        return socket_line(row.event, row.verdict) if fmt == "json" else connections.socket_table_row(row)
    return connections.json_row(row) if fmt == "json" else connections.table_row(row)


def _connection_counts(view: live.LiveView) -> str:
    """The connection view's tally at the end of a run (tail/connections.py), '' with nothing to say."""
    return view.connections.tally() if view.connections is not None else ""


def _loss_line(d: Decoded) -> str:
    """A batch summary's losses for stderr ('' when it has none)."""
    assert d.summary is not None
    lost = d.summary.lost
    if not (definite_total(lost) or possible_total(lost)):
        return ""
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(lost.by_reason.items()))
    return (
        f"# lost {definite_total(lost)} events"
        + (f" ({possible_text(possible_total(lost))})" if possible_total(lost) else "")
        + f" on node {d.summary.node} (agent {d.agent_id}, batch {d.sequence}): {reasons}\n"
    )


def _untracked_line(d: Decoded) -> str:
    """A batch summary's sockets not tracked for stderr ('' when none): sockets, not lost events."""
    assert d.summary is not None
    n = untracked_total(d.summary.lost)
    if not n:
        return ""
    return (
        f"# {n} sockets not tracked on node {d.summary.node} (agent {d.agent_id}, batch {d.sequence}): "
        "its socket map was full, their events are missing\n"
    )


@dataclass
class _Skipped:
    """Records the live view skips, each said on stderr as it comes: not tcpscope records (foreign),
    or decodable but outside the bounds (tcpscope/bounds.py)."""

    err: TextIO
    foreign: int = 0
    bounds: int = 0

    def record(self, partition: int, offset: int, e: Exception) -> None:
        if isinstance(e, OutOfBounds):
            self.bounds += 1
            what = "a record outside the bounds"
        else:
            self.foreign += 1
            what = "a record that is not a tcpscope record"
        self.err.write(f"# skipped {what} (partition {partition}, offset {offset}): {e}\n")
        self.err.flush()


def run(o: TailOptions, out: TextIO, err: TextIO) -> int:
    view, header = live_view(o)

    def show(lines: list[str]) -> None:
        for text in lines:
            out.write(text + "\n")
        if lines:
            out.flush()

    skipped = _Skipped(err)

    def conflict(d: Decoded) -> None:  # two producers under one agent id: show both, say so
        err.write(
            f"# CONFLICT: agent {d.agent_id} batch {d.sequence}"
            + (f" index {d.index}" if d.kind == RECORD_EVENT else " summary")
            + " seen before with different content (two producers under one agent id): "
            "both shown\n"
        )
        err.flush()

    reader = consume.Reader(o.source(), dedup_window=LIVE_DEDUP_WINDOW)
    said_skipped = False

    def idle() -> None:
        nonlocal said_skipped
        show(view.tick(time.monotonic()))
        if not said_skipped and reader.skipped_at_start and reader.start_found():  # an early end offset
            said_skipped = True
            err.write(
                f"# started at the end of the topic: {reader.skipped_at_start} records that were already there "
                "were skipped (the broker reported an end offset before its last record; docs/kafka.md)\n"
            )
            err.flush()

    try:
        records = reader.records(
            consume.Stop(o.duration, until_ns=o.query.until_ns),
            poll_ms=100,
            on_idle=idle,
            on_undecodable=skipped.record,
            on_conflict=conflict,
        )
        if header:
            out.write(header + "\n")
        for d in records:
            if d.kind not in (RECORD_EVENT, RECORD_SUMMARY):
                skipped.foreign += 1  # another producer's record on this topic
                continue
            clock.correct(d)  # times on one clock (tail/clock.py)
            if d.kind == RECORD_EVENT and d.event is not None:
                show(view.add(d.event, time.monotonic()))
            elif d.kind == RECORD_SUMMARY and d.summary is not None:
                view.add_batch(d.agent_id, d.summary)
                err.write(
                    "".join(unobserved_line(w) + "\n" for w in d.summary.unobserved)
                    + _loss_line(d)
                    + _untracked_line(d)
                )
                err.flush()
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
        with contextlib.suppress(BrokenPipeError):
            show(view.close(time.monotonic()))
        err.write(_connection_counts(view))
        if reader.repeats or skipped.foreign or reader.conflicts or skipped.bounds:
            err.write(
                f"# {reader.repeats} repeated records (batches published twice) shown once; "
                f"{skipped.foreign} records that are not tcpscope records skipped"
                + (
                    f"; {skipped.bounds} records outside the bounds skipped (docs/kafka.md, Bounds)"
                    if skipped.bounds
                    else ""
                )
                + (
                    f"; {reader.conflicts} CONFLICTS (records under another record's dedup key, shown)"
                    if reader.conflicts
                    else ""
                )
                + "\n"
            )
            err.flush()
    return 0


def _reads_everything(o: TailOptions) -> bool:
    """--summary and --connection with --from-beginning and no --duration: the topic as it is now."""
    return o.from_beginning and o.duration is None


def run_summary(o: TailOptions, s: summary_mode.SummaryOptions, out: TextIO, err: TextIO) -> int:
    """`--summary`: read the topic (to its end now with --from-beginning and no --duration, else
    until --duration, --until or Ctrl-C, printing every --every seconds without --duration) and
    print the per-pair summary (tail/summary.py)."""
    keep_all = EventFilter.from_options(o)
    keep = EventFilter(None, None, keep_all.kinds, keep_all.query)  # namespace/pod select pairs, not events
    report = summary_mode.Report(summary_mode.Summarizer(by=s.by))
    once = _reads_everything(o)
    periodic = not once and o.duration is None
    next_print = time.monotonic() + s.every_s
    # the reader drops at-least-once repeats (its count is the report's duplicates) and hands over
    # conflicts (kept, and listed by the report)
    reader = consume.Reader(o.source(), dedup_window=SUMMARY_DEDUP_WINDOW)

    def show() -> None:
        report.duplicates = reader.repeats
        out.write(report.render(o.format, s, o.namespace, o.pod))
        out.flush()

    def every() -> None:
        nonlocal next_print
        if periodic and time.monotonic() >= next_print:
            show()
            next_print = time.monotonic() + s.every_s

    def bad_record(partition: int, offset: int, e: Exception) -> None:
        if isinstance(e, OutOfBounds):  # decodable, but outside the bounds (tcpscope/bounds.py)
            report.out_of_bounds += 1
        else:
            report.undecodable += 1  # a foreign or damaged record must not stop the summary

    with reader:
        try:
            stop = consume.Stop(o.duration, at_end=once, until_ns=o.query.until_ns)
            for d in reader.records(stop, on_idle=every, on_undecodable=bad_record, on_conflict=report.conflicts.add):
                report.take(d, keep)
        except KeyboardInterrupt:
            pass
    show()
    return 0


def run_connection(o: TailOptions, spec: timeline.ConnectionSpec, out: TextIO, err: TextIO) -> int:
    """`--connection`: read (to the topic's end with --from-beginning and no --duration, else until
    --duration, --until or Ctrl-C), then print the connection's events from both ends in time order."""
    events: list[TcpEvent] = []
    batches: list[tuple[str, EventBatch]] = []
    skipped = {"foreign": 0, "bounds": 0}

    def bad_record(partition: int, offset: int, e: Exception) -> None:  # must not stop the timeline
        skipped["bounds" if isinstance(e, OutOfBounds) else "foreign"] += 1

    def conflict(d: Decoded) -> None:  # kept: never drop a record as a "duplicate" of another
        err.write(
            f"# CONFLICT: agent {d.agent_id} batch {d.sequence} seen before with "
            "different content (two producers under one agent id): both kept\n"
        )

    with consume.Reader(o.source(), dedup_window=LIVE_DEDUP_WINDOW) as reader:
        try:
            for d in reader.records(
                consume.Stop(o.duration, at_end=_reads_everything(o), until_ns=o.query.until_ns),
                on_undecodable=bad_record,
                on_conflict=conflict,
            ):
                clock.correct(d)  # times on one clock (tail/clock.py)
                if d.event is not None:
                    events.append(d.event)
                elif d.summary is not None:
                    batches.append((d.agent_id, d.summary))
        except KeyboardInterrupt:
            pass
    if skipped["bounds"] or skipped["foreign"]:
        err.write(
            f"# {skipped['foreign']} records that are not tcpscope records and {skipped['bounds']} records "
            "outside the bounds skipped (docs/kafka.md, Bounds)\n"
        )
    picked = timeline.select(spec, events)
    if not picked:
        err.write("# no events of that connection in what was read\n")
        return 1
    out.write(timeline.render_timeline(picked, events, batches))
    out.flush()
    return 0


def parse_args(argv: Sequence[str] | None, env: dict[str, str] | None = None) -> TailOptions:
    env = dict(os.environ) if env is None else env
    p = build_parser(env)
    a = p.parse_args(argv)
    return _options(p, a, env)


def build_parser(env: dict[str, str]) -> argparse.ArgumentParser:
    """tcpscope-tail's flags (every one with its help; a test checks)."""
    p = one_line_errors(argparse.ArgumentParser(prog="tcpscope-tail", description="Print tcpscope events from Kafka."))
    p.add_argument(
        "--kafka-bootstrap",
        default=env.get("TCPSCOPE_KAFKA_BOOTSTRAP"),
        help="HOST:PORT[,HOST:PORT] [TCPSCOPE_KAFKA_BOOTSTRAP]",
    )
    p.add_argument(
        "--topic",
        default=env.get("TCPSCOPE_TOPIC", "tcpscope-events"),
        help="the events topic (default %(default)s) [TCPSCOPE_TOPIC]",
    )
    p.add_argument(
        "--format",
        choices=("table", "json", "dot"),
        default="table",
        help="table (default) or json (one object per line); dot: with --summary, a Graphviz service map "
        "(render: dot -Tsvg)",
    )
    p.add_argument(
        "--from-beginning",
        action="store_true",
        help="read the topic from its oldest record (what Kafka still keeps) instead of only what arrives "
        "from now on; with --summary or --connection and no --duration: read to the end, print, exit",
    )
    p.add_argument("--duration", type=number(float, above=0), help="stop after this many seconds (> 0)")
    p.add_argument("--namespace", help="only events with an end in this namespace")
    p.add_argument("--pod", help="only events with an end in this pod (name)")
    p.add_argument(
        "--kind",
        default="",
        help=VIEW_HELP,
    )
    p.add_argument("--rows", choices=live.ROWS, help=live.ROWS_HELP)
    p.add_argument(
        "--reorder-window",
        type=float,
        default=live.DEFAULT_HOLD_S,
        metavar="S",
        help="hold each event S seconds to print events in time order (default %(default)s; 0: as read)",
    )
    p.add_argument("--group", help="join this consumer group instead of reading every partition")
    q = p.add_argument_group("investigation (every filter given must hold; see README)")
    q.add_argument("--since", help="events from this time: a duration back (90s, 15m, 1h30m, 2d) or RFC 3339")
    q.add_argument("--until", help="events up to this time (same forms); in the past: exit when read")
    q.add_argument("--label", action="append", default=[], metavar="K=V", help="an end's pod label (repeatable)")
    q.add_argument("--service", metavar="[NS/]NAME", help="an end that resolved to this Service (its ClusterIP)")
    q.add_argument("--workload", metavar="[NS/]NAME", help="an end's workload (Deployment, StatefulSet, ...)")
    q.add_argument("--node", help="reported on this node, or an end on it")
    q.add_argument("--port", action="append", default=[], help="either end's port (repeatable, comma separated)")
    q.add_argument(
        "--reason",
        action="append",
        default=[],
        help="reset reason: NO_SOCKET, TCP_STATE, ... (docs/resets.md; repeatable, comma separated)",
    )
    q.add_argument(
        "--errno",
        action="append",
        default=[],
        help="ECONNREFUSED, ECONNRESET, ETIMEDOUT or a number (repeatable, comma separated)",
    )
    q.add_argument("--from-pod", metavar="[NS/]NAME", help="the client (lifecycle/flow rows) or the reporting end")
    q.add_argument("--to-pod", metavar="[NS/]NAME", help="the server (lifecycle/flow rows) or the reporting end's peer")
    kafka_client.add_arguments(p)
    summary_mode.add_arguments(p)
    p.add_argument(
        "--connection",
        metavar="IP:PORT-IP:PORT|[NODE/]SOCKET_ID",
        help="print both ends' events of one connection, time-ordered, once read: with "
        "--from-beginning and no --duration, everything in the topic now",
    )
    return p


def _options(p: argparse.ArgumentParser, a: argparse.Namespace, env: dict[str, str]) -> TailOptions:
    if not a.kafka_bootstrap:
        p.error("--kafka-bootstrap is required")
    if a.format == "dot" and not a.summary:
        p.error("--format dot draws the service map of --summary")
    kinds = tuple(k.strip() for k in a.kind.split(",") if k.strip())
    try:
        rows = live.parse_rows(a.rows, a.kind)
        qry = query_from_args(a, time.time_ns())
        security = kafka_client.from_args(a, env)
    except ValueError as e:
        p.error(str(e))
    o = TailOptions(
        tuple(x.strip() for x in a.kafka_bootstrap.split(",") if x.strip()),
        a.topic,
        a.format,
        a.from_beginning,
        a.duration,
        a.namespace,
        a.pod,
        kinds,
        a.group,
        summary_mode.options_from(a),
        reorder_window=max(0.0, a.reorder_window),
        rows=rows,
        query=qry,
        security=security,
    )
    if a.connection is not None:
        try:
            o = dataclasses.replace(o, connection=timeline.ConnectionSpec.parse(a.connection))
        except ValueError as e:
            p.error(str(e))
    try:
        EventFilter.from_options(o)
    except ValueError as e:
        p.error(str(e))
    return o


def query_from_args(a: argparse.Namespace, now_ns: int) -> Query:
    since = querylib.parse_time(a.since, now_ns) if a.since else None
    until = querylib.parse_time(a.until, now_ns) if a.until else None
    if since is not None and until is not None and until < since:
        raise ValueError("--until is before --since")
    ports = set()
    for x in querylib.split_list(a.port):
        if not x.isdigit() or not 0 < int(x) < 65536:
            raise ValueError(f"--port wants a port number, not {x!r}")
        ports.add(int(x))
    return Query(
        labels=tuple(querylib.parse_label(x) for x in a.label),
        service=a.service,
        workload=a.workload,
        node=a.node,
        ports=frozenset(ports),
        reasons=frozenset(querylib.parse_reason(x) for x in querylib.split_list(a.reason)),
        errnos=frozenset(querylib.parse_errno(x) for x in querylib.split_list(a.errno)),
        from_pod=a.from_pod,
        to_pod=a.to_pod,
        since_ns=since,
        until_ns=until,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_options(parse_args(argv))


def run_options(o: TailOptions) -> int:
    """The mode the options ask for (--summary, --connection, else the live events) on stdout, with
    the exit codes and one-line errors of tcpscope-tail (kubectl-tcpscope runs it the same way)."""
    from kafka.errors import KafkaError

    try:
        if o.summary is not None:
            return run_summary(o, o.summary, sys.stdout, sys.stderr)
        if o.connection is not None:
            return run_connection(o, o.connection, sys.stdout, sys.stderr)
        return run(o, sys.stdout, sys.stderr)
    except BrokenPipeError:  # `tcpscope-tail ... | head`: the reader is gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # a second Ctrl-C while closing the consumer
        return 130
    except (RuntimeError, KafkaError) as e:  # consume.ReadError (no such topic), and what the broker says
        print(f"tcpscope-tail: error: {kafka_problem(e, o)}", file=sys.stderr, flush=True)
        return 2


def kafka_problem(e: Exception, o: TailOptions) -> str:
    from kafka.errors import KafkaError

    if not isinstance(e, KafkaError):
        return str(e)
    text = str(e)
    name = type(e).__name__
    return f"Kafka at {','.join(o.bootstrap)}: " + (text if text.startswith(name) else f"{name}: {text}")


if __name__ == "__main__":
    raise SystemExit(main())
