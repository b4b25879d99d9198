"""`tcpscope-tail`: read the events topic and print events as the agent's `--stdout` does.

Reading (`open_consumer`, `read_decoded`), filtering (`EventFilter`) and printing are separate; the
modes (events, `--summary` aggregated by tcpscope/summary.py, `--connection`) are wired here, so the
summary module stays pure and never imports the reader. Partitions are assigned and seeked
directly, no consumer group, unless `--group` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from tcpscope import kafka_client, live, render, resetcause, timeline
from tcpscope import query as querylib
from tcpscope import summary as summary_mode
from tcpscope.gaps import unobserved_line
from tcpscope.kafka_client import KafkaSecurity
from tcpscope.kafka_layout import (
    CONFLICT,
    RECORD_EVENT,
    RECORD_SUMMARY,
    REPEAT,
    Decoded,
    RecentKeys,
    decode_records,
    dedup_key,
    fingerprint,
    lost_total,
)
from tcpscope.query import Query
from tcpscope.settings import number, one_line_errors
from tcpscope.v1.events_pb2 import EventBatch, TcpEvent

# the agent's --events names -> the TcpEvent `kind` oneof field names (tcpscope/live.py)
KINDS: dict[str, str] = live.KINDS


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
    summary: summary_mode.SummaryOptions | None = None  # --summary: per-pair counters (tcpscope/summary.py)
    connection: timeline.ConnectionSpec | None = None  # --connection: one connection's timeline
    reorder_window: float = live.DEFAULT_HOLD_S  # seconds each event is held to print in time order; 0: as read
    query: Query = field(default_factory=Query)  # --since/--until, --label, --service, ... (tcpscope/query.py)
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


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
        return EventFilter(o.namespace, o.pod, live.parse_kinds(",".join(o.kinds)), o.query)


BOOTSTRAP_TIMEOUT_MS = 5000
TOPIC_WAIT_S = 3.0  # metadata may lag a just-created topic; a missing one is reported after this


class TailError(RuntimeError):
    """Reading cannot start (no broker, no such topic): main() prints one line and exits 2."""


def _partitions(c: Any, o: TailOptions) -> set[int]:
    """The topic's partitions, waiting TOPIC_WAIT_S for metadata; TailError (consumer closed) if none."""
    deadline = time.monotonic() + TOPIC_WAIT_S
    parts = c.partitions_for_topic(o.topic)
    while not parts and time.monotonic() < deadline:
        time.sleep(0.2)
        parts = c.partitions_for_topic(o.topic)
    if not parts:
        c.close()
        raise TailError(f"topic {o.topic!r} not found on {','.join(o.bootstrap)} (--topic)")
    return set(parts)


def open_consumer(o: TailOptions) -> Any:
    """A KafkaConsumer positioned at the end (or the beginning) of every partition of the topic."""
    from kafka import KafkaConsumer, TopicPartition

    # an unreachable broker is a one-line error within seconds, not a traceback after 30 s
    kw: dict[str, Any] = {
        "bootstrap_servers": list(o.bootstrap),
        "enable_auto_commit": o.group is not None,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        **o.security.client_kwargs(),
    }
    if o.group:
        kw.update(
            group_id=o.group,
            auto_offset_reset="earliest" if o.from_beginning else "latest",
            max_poll_interval_ms=30_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
        )
        c = KafkaConsumer(**kw)
        _partitions(c, o)  # a missing topic is an error here too, not a silent wait
        c.subscribe([o.topic])
        return c
    c = KafkaConsumer(**kw)
    parts = _partitions(c, o)
    tps = [TopicPartition(o.topic, p) for p in sorted(parts)]
    c.assign(tps)
    if o.query.since_ns is not None:
        seek_to_time(c, tps, o.query.since_ns)
    elif o.from_beginning:
        c.seek_to_beginning(*tps)
    else:
        c.seek_to_end(*tps)
    for tp in tps:  # resolve positions now, so events produced after start-up are never skipped
        c.position(tp)
    return c


TIME_SLACK_MS = 60_000
"""How far a record's Kafka timestamp (when the collector published it) may trail or lead the times
of the events in it: an agent batches for up to its batch age and retries for a while after a
collector outage, and node clocks differ. Offsets are looked up with this margin; the events' own
times decide (query.Query)."""


def _time_offsets(c: Any, tps: list[Any], ms: int) -> dict[Any, int | None]:
    """The first offset at or after `ms` per partition, None where no record is that recent. A
    broker that answers without a timestamp (-1) did not look the time up: None too."""
    found = c.offsets_for_times(dict.fromkeys(tps, max(0, ms)))
    out: dict[Any, int | None] = {}
    for tp in tps:
        ot = found.get(tp)
        out[tp] = ot.offset if ot is not None and ot.timestamp is not None and ot.timestamp >= 0 else None
    return out


def seek_to_time(c: Any, tps: list[Any], since_ns: int) -> None:
    """Position every partition at the records published since `since_ns` (minus the slack); from
    the beginning where the broker cannot say, at the end where nothing is that recent."""
    offsets = _time_offsets(c, tps, since_ns // 1_000_000 - TIME_SLACK_MS)
    answered = c.offsets_for_times(dict.fromkeys(tps, 0))  # does the broker look times up at all?
    for tp in tps:
        off = offsets[tp]
        if off is not None:
            c.seek(tp, off)
        elif answered.get(tp) is not None and answered[tp].timestamp is not None and answered[tp].timestamp >= 0:
            c.seek_to_end(tp)  # the broker looks times up, and has nothing that recent
        else:
            c.seek_to_beginning(tp)


def stop_offsets(c: Any, tps: list[Any], until_ns: int) -> dict[Any, int]:
    """Per partition, the offset past which no record can hold events up to `until_ns`: the first
    record published after until + slack, else the end of the partition now."""
    ends = c.end_offsets(tps)
    after = _time_offsets(c, tps, until_ns // 1_000_000 + TIME_SLACK_MS)
    out: dict[Any, int] = {}
    for tp in tps:
        off = after[tp]
        out[tp] = int(ends[tp]) if off is None else off
    return out


# records remembered for dropping at-least-once repeats (about 100 bytes each)
LIVE_DEDUP_WINDOW = 200_000


def read_decoded(
    consumer: Any,
    deadline: float | None,
    clock: Callable[[], float] = time.monotonic,
    on_undecodable: Callable[[Any, Exception], None] | None = None,
    on_idle: Callable[[], None] | None = None,
    poll_ms: int = 500,
    done: Callable[[], bool] | None = None,
) -> Iterator[Decoded]:
    """Decoded events and summaries until the monotonic deadline (forever with None); each poll's
    records in partition order (Kafka orders only within a partition). Both record layouts: a packed
    record yields each of its events in order (kafka_layout.decode_records). A record that does not
    decode goes to `on_undecodable` (it must not stop an SRE's terminal, nor vanish unsaid).
    `on_idle` runs after every poll, records or not (for work due on a timer); `done` ends the
    reading when it says so (a --until range read to its end)."""
    while deadline is None or clock() < deadline:
        if done is not None and done():
            return
        wait = poll_ms if deadline is None else max(1, min(poll_ms, int((deadline - clock()) * 1000)))
        for recs in consumer.poll(timeout_ms=wait).values():
            for r in recs:
                try:
                    ds = decode_records(r.headers, r.value)
                except Exception as e:
                    if on_undecodable is not None:
                        on_undecodable(r, e)
                    continue
                yield from ds
        if on_idle is not None:
            on_idle()


def read_range(
    consumer: Any,
    o: TailOptions,
    wall_ns: Callable[[], int] = time.time_ns,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[float | None, Callable[[], bool] | None]:
    """(monotonic deadline, done check) for a run: --duration; --until in the future ends when the
    wall clock passes it (plus the slack for late batches, at most --duration); --until in the
    past ends once every partition is read up to its stop offset."""
    deadline = None if o.duration is None else clock() + o.duration
    until = o.query.until_ns
    if until is None or o.group:
        return deadline, None
    ahead_s = (until - wall_ns()) / 1e9
    if ahead_s > 0:
        end = clock() + ahead_s + TIME_SLACK_MS / 1000
        return (end if deadline is None else min(deadline, end)), None
    tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
    stops = stop_offsets(consumer, tps, until)
    return deadline, lambda: all(consumer.position(tp) >= off for tp, off in stops.items())


def _renderer(fmt: str) -> tuple[Callable[[TcpEvent], str], str | None]:
    """The agent's own renderers (tcpscope.render: one implementation for --stdout and tail)."""
    if fmt == "json":
        return render.json_line, None
    return render.table_line, render.TABLE_HEADER


def _with_cause(fmt: str, text: str, v: resetcause.Verdict) -> str:
    """A received reset's line, marked with who sent it (tcpscope/resetcause.py)."""
    if fmt == "json":
        return text[:-1] + ', "reset_cause": ' + json.dumps(v.to_json()) + "}"
    return f"{text} cause={v.label}"


def run(o: TailOptions, out: TextIO, err: TextIO) -> int:
    keep = EventFilter.from_options(o)
    line, header = _renderer(o.format)
    # the live view (tcpscope/live.py): received resets wait (bounded) for the peer node's evidence
    # and print with their cause; every row is held o.reorder_window seconds to print in time order
    view = live.LiveView(
        lambda ev, v: line(ev) if v is None else _with_cause(o.format, line(ev), v), keep=keep, hold=o.reorder_window
    )

    def show(lines: list[str]) -> None:
        for text in lines:
            out.write(text + "\n")
        if lines:
            out.flush()

    consumer = open_consumer(o)
    deadline, done = read_range(consumer, o)
    recent = RecentKeys(LIVE_DEDUP_WINDOW)
    repeats = undecodable = conflicts = 0

    def bad_record(r: Any, e: Exception) -> None:
        nonlocal undecodable
        undecodable += 1
        err.write(
            f"# skipped a record that is not a tcpscope record (partition {getattr(r, 'partition', '?')}, "
            f"offset {getattr(r, 'offset', '?')}): {e}\n"
        )
        err.flush()

    if header:
        out.write(header + "\n")
    try:
        for d in read_decoded(
            consumer,
            deadline,
            on_undecodable=bad_record,
            poll_ms=100,
            on_idle=lambda: show(view.tick(time.monotonic())),
            done=done,
        ):
            if d.kind not in (RECORD_EVENT, RECORD_SUMMARY):
                undecodable += 1  # another producer's record on this topic
                continue
            seen = recent.see(dedup_key(d), fingerprint(d))
            if seen == REPEAT:
                repeats += 1  # a batch the collector published twice (at least once): shown once
                continue
            if seen == CONFLICT:  # two producers under one agent id: show both, say so
                conflicts += 1
                err.write(
                    f"# CONFLICT: agent {d.agent_id} batch {d.sequence}"
                    + (f" index {d.index}" if d.kind == RECORD_EVENT else " summary")
                    + " seen before with different content (two producers under one agent id): "
                    "both shown\n"
                )
                err.flush()
            if d.kind == RECORD_EVENT and d.event is not None:
                show(view.add(d.event, time.monotonic()))
            elif d.kind == RECORD_SUMMARY and d.summary is not None:
                view.add_batch(d.agent_id, d.summary)
                for w in d.summary.unobserved:
                    err.write(unobserved_line(w) + "\n")
                    err.flush()
            if (
                d.kind == RECORD_SUMMARY
                and d.summary is not None
                and (lost_total(d.summary) or d.summary.lost.kernel_skipped_runs)
            ):
                reasons = ", ".join(f"{k}={v}" for k, v in sorted(d.summary.lost.by_reason.items()))
                maybe = d.summary.lost.kernel_skipped_runs
                err.write(
                    f"# lost {lost_total(d.summary)} events"
                    + (f" (possibly {maybe} more)" if maybe else "")
                    + f" on node {d.summary.node} (agent {d.agent_id}, batch {d.sequence}): {reasons}\n"
                )
                err.flush()
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        with contextlib.suppress(BrokenPipeError):
            show(view.close(time.monotonic()))
        if repeats or undecodable or conflicts:
            err.write(
                f"# {repeats} repeated records (batches published twice) shown once; "
                f"{undecodable} records that are not tcpscope records skipped"
                + (f"; {conflicts} CONFLICTS (records under another record's dedup key, shown)" if conflicts else "")
                + "\n"
            )
            err.flush()
    return 0


def run_summary(o: TailOptions, s: summary_mode.SummaryOptions, out: TextIO, err: TextIO) -> int:
    """`--summary`: read the topic and print the per-pair summary (tcpscope/summary.py)."""
    keep_all = EventFilter.from_options(o)
    keep = EventFilter(None, None, keep_all.kinds, keep_all.query)  # namespace/pod select pairs, not events
    report = summary_mode.Report(summary_mode.Summarizer(by=s.by))
    consumer = open_consumer(o)
    once = o.from_beginning and o.duration is None
    deadline = None if o.duration is None else time.monotonic() + o.duration
    try:
        ends = consumer.end_offsets(list(consumer.assignment())) if once else {}
        next_print = time.monotonic() + s.every_s
        while deadline is None or time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=200)
            for recs in polled.values():
                for r in recs:
                    try:
                        decoded = decode_records(r.headers, r.value)
                    except Exception:  # a foreign or damaged record must not stop the summary
                        report.undecodable += 1
                        continue
                    for d in decoded:
                        report.take(d, keep)
            if once and all(consumer.position(tp) >= off for tp, off in ends.items()):
                break
            if not once and deadline is None and time.monotonic() >= next_print:
                out.write(report.render(o.format, s, o.namespace, o.pod))
                out.flush()
                next_print = time.monotonic() + s.every_s
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    out.write(report.render(o.format, s, o.namespace, o.pod))
    out.flush()
    return 0


def run_connection(o: TailOptions, spec: timeline.ConnectionSpec, out: TextIO, err: TextIO) -> int:
    """`--connection`: read (to the topic's end with --from-beginning and no --duration, else until
    --duration or Ctrl-C), then print the connection's events from both ends in time order."""
    consumer = open_consumer(o)
    once = o.from_beginning and o.duration is None
    deadline = None if o.duration is None else time.monotonic() + o.duration
    recent = RecentKeys(LIVE_DEDUP_WINDOW)
    events: list[TcpEvent] = []
    batches: list[tuple[str, EventBatch]] = []
    try:
        ends = consumer.end_offsets(list(consumer.assignment())) if once else {}
        while deadline is None or time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                for r in recs:
                    try:
                        decoded = decode_records(r.headers, r.value)
                    except Exception:  # a foreign record must not stop the timeline
                        continue
                    for d in decoded:
                        if d.kind not in (RECORD_EVENT, RECORD_SUMMARY):
                            continue
                        seen = recent.see(dedup_key(d), fingerprint(d))
                        if seen == REPEAT:
                            continue
                        if seen == CONFLICT:  # kept: never drop a record as a "duplicate" of another
                            err.write(
                                f"# CONFLICT: agent {d.agent_id} batch {d.sequence} seen before with "
                                "different content (two producers under one agent id): both kept\n"
                            )
                        if d.event is not None:
                            events.append(d.event)
                        elif d.summary is not None:
                            batches.append((d.agent_id, d.summary))
            if once and all(consumer.position(tp) >= off for tp, off in ends.items()):
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    picked = timeline.select(spec, events)
    if not picked:
        err.write("# no events of that connection in what was read\n")
        return 1
    out.write(timeline.render_timeline(picked, events, batches))
    out.flush()
    return 0


def parse_args(argv: Sequence[str] | None, env: dict[str, str] | None = None) -> TailOptions:
    env = dict(os.environ) if env is None else env
    p = one_line_errors(argparse.ArgumentParser(prog="tcpscope-tail", description="Print tcpscope events from Kafka."))
    p.add_argument(
        "--kafka-bootstrap",
        default=env.get("TCPSCOPE_KAFKA_BOOTSTRAP"),
        help="HOST:PORT[,HOST:PORT] [TCPSCOPE_KAFKA_BOOTSTRAP]",
    )
    p.add_argument("--topic", default=env.get("TCPSCOPE_TOPIC", "tcpscope-events"), help="[TCPSCOPE_TOPIC]")
    p.add_argument(
        "--format",
        choices=("table", "json", "dot"),
        default="table",
        help="dot: with --summary, a Graphviz service map (render: dot -Tsvg)",
    )
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--duration", type=number(float, above=0), help="stop after this many seconds (> 0)")
    p.add_argument("--namespace", help="only events with an end in this namespace")
    p.add_argument("--pod", help="only events with an end in this pod (name)")
    p.add_argument(
        "--kind",
        default="",
        help="event kinds, comma separated, or 'all': "
        + ",".join(KINDS)
        + " (default: "
        + ",".join(live.DEFAULT_KINDS)
        + ", what an SRE watches)",
    )
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
    kafka_client.add_arguments(p, env)
    summary_mode.add_arguments(p)
    p.add_argument(
        "--connection",
        metavar="IP:PORT-IP:PORT|[NODE/]SOCKET_ID",
        help="print both ends' events of one connection, time-ordered, once read: with "
        "--from-beginning and no --duration, everything in the topic now",
    )
    a = p.parse_args(argv)
    if not a.kafka_bootstrap:
        p.error("--kafka-bootstrap is required")
    if a.format == "dot" and not a.summary:
        p.error("--format dot draws the service map of --summary")
    kinds = tuple(k.strip() for k in a.kind.split(",") if k.strip())
    try:
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
    from kafka.errors import KafkaError

    o = parse_args(argv)
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
    except (RuntimeError, KafkaError) as e:  # TailError (also when imported as tcpscope.tail from __main__)
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
