"""`tcpscope-sim`: a simulated multi-node cluster on one machine, running the real tcpscope.

    tcpscope-sim [--duration SECONDS] [--plan PLAN.json] [--kafka-bootstrap HOST:PORT --topic NAME]

Brings up nodes (cgroup subtrees), pods (worker processes, each in its own netns and kubelet-style
cgroup), the API stand-in, a Kafka-protocol broker (unless --kafka-bootstrap), the collector and one
agent per node; then runs traffic. With --plan: runs exactly that plan, waits until the agents have
shipped every connection's events to Kafka, prints the summary and exits 0 (1 if anything is
missing or lost, or the summary differs from the plan). Without: the built-in mix, showing live
events, until Ctrl-C or --duration.
Everything it created is removed on exit; `--cleanup` removes what a crashed run left behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from tail import live, resetcause, summary
from tail.live import LiveView, OrderedPrinter
from tail.pairs import PairSummary
from tcpscope.kinds import VIEW_HELP, parse_view
from tcpscope.losses import definite, possible
from tcpscope.v1.events_pb2 import EventBatch, TcpEvent
from tcpscope_sim.cluster import PodCluster, cleanup_leftovers
from tcpscope_sim.driver import Driver, TrafficError, run_mix
from tcpscope_sim.plan import (
    SUMMARY_COUNTERS,
    Plan,
    PlanError,
    TrafficSpec,
    builtin_plan,
    expected_backend_shares,
    expected_summary,
    load_plan,
)
from tcpscope_sim.services import AGENT_BATCH_AGE_S, AGENT_FLOW_INTERVAL_S, Services
from tcpscope_sim.watch import TopicWatch, pool_count, synack_retransmits

log = logging.getLogger("tcpscope_sim")

# the built-in mix's extras: lossy bulk transfers and a server that stops accepting
MIX_BULK = TrafficSpec("batch/reports-1", "data/redis-1", 6379, "ok", 2)
MIX_STALL = TrafficSpec("shop/cart-1", "batch/reports-1", 9100, "ok", 4)
MIX_BACKLOGS = {"batch/reports-1": 1}
# long-lived traffic: a connection pool open for the whole run, each connection streaming 2 kB a second
MIX_POOL = TrafficSpec("shop/checkout-1", "data/redis-1", 6379, "pooled", 4, rate=2000, seconds=86_400)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tcpscope-sim",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1].strip("\n"),
    )
    p.add_argument("--plan", help="run exactly this traffic plan (JSON, see docs/sim.md), then exit")
    p.add_argument("--duration", type=float, help="without --plan: run the built-in mix this many seconds")
    p.add_argument("--kafka-bootstrap", help="publish to this Kafka (default: start a local broker)")
    p.add_argument("--topic", default="tcpscope-events", help="Kafka topic (default tcpscope-events)")
    p.add_argument(
        "--summary-format", choices=("table", "json"), default="table", help="how to print the summary at the end"
    )
    p.add_argument("--quiet", action="store_true", help="no live event table")
    p.add_argument(
        "--show",
        default="",
        metavar="KINDS",
        help="the live table's " + VIEW_HELP,
    )
    p.add_argument("--rows", choices=live.ROWS, help="the live table's rows: " + live.ROWS_HELP)
    p.add_argument(
        "--ship-timeout",
        type=float,
        default=60.0,
        help="with --plan: seconds to wait for the agents to ship every event",
    )
    p.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        help="extra flag for every agent, e.g. --agent-arg=--events=lifecycle,reset",
    )
    p.add_argument(
        "--unwatched-node",
        action="append",
        default=[],
        metavar="NODE",
        help="run no agent on this node (like a node without the DaemonSet); repeatable",
    )
    p.add_argument(
        "--kube-proxy",
        choices=("nftables", "iptables"),
        default="nftables",
        help="the form of the simulated kube-proxy's NAT for the plan's Services (docs/services.md)",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the run's log directory")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve the collectors' metrics (traffic per pair: docs/metrics.md) on PORT.. and the "
        "agents' on the ports after them",
    )
    p.add_argument(
        "--collectors", type=int, default=1, help="collector replicas; node i's agent streams to replica (i-1) mod N"
    )
    p.add_argument(
        "--service-map",
        metavar="PATH",
        help="write the run's service map here as SVG (Graphviz), beside the summary; without "
        "--plan by default ./tcpscope-sim-<run>-map.svg ('' for none)",
    )
    p.add_argument(
        "--hold",
        action="store_true",
        help="with --plan: after the summary keep the collector (and its metrics) up until Ctrl-C",
    )
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="remove namespaces, cgroups and processes left by crashed runs, then exit",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def _live_printer(out: Callable[[str], None], kinds: frozenset[str], rows: str = "connection") -> OrderedPrinter:
    """The live view over events read back from Kafka, as `tcpscope-tail` prints it (tail/live.py),
    so it shows both ends' pod names as any Kafka consumer sees them. Connection rows (the default):
    one per connection, both ends joined, with who sent its reset (tail/connections.py); socket rows
    (--rows socket): the agent's table lines, received resets marked with who sent them once the
    join knows (resetcause). The kinds an SRE watches unless --show says otherwise, in time order.
    Through a Service a connection row names the backend and says `via ns/svc:port` (DETAILS), and
    the backends' flows from a client whose agent reports flows are not shown again."""
    from tail import connections
    from tcpscope import render

    def line(ev: TcpEvent, v: resetcause.Verdict | None) -> str:
        return render.event_line(ev, "table", v)

    def row_line(row: connections.Row) -> str:
        if isinstance(row, connections.SocketRow):
            return connections.socket_table_row(row)
        return connections.table_row(row)

    # held as long as a row can trail newer ones: a flow its last connection by a flow interval, a
    # received reset by the reset-cause hold (when no send turns up), plus a batch; so every row,
    # flows and judged resets included, prints in time order (the view lags by that much)
    hold = max(AGENT_FLOW_INTERVAL_S, resetcause.HOLD_NS / 1e9) + AGENT_BATCH_AGE_S + 0.3
    if rows == "socket":
        out(render.TABLE_HEADER)
        return OrderedPrinter(out, LiveView(line, kinds=kinds, hold=hold))
    out(connections.TABLE_HEADER)
    return OrderedPrinter(out, LiveView(line, kinds=kinds, hold=hold, render_row=row_line))


def made_text(outcomes: Mapping[str, int]) -> str:
    """The driver's outcome counts ({"timeout:ok": 13, ...}) in words: `timeout 13 as planned`, and
    what went otherwise by the worker's word for it (`ok 40 as planned, 1 eof`)."""
    by_kind: dict[str, dict[str, int]] = {}
    for key, n in outcomes.items():
        kind, _, outcome = key.partition(":")
        by_kind.setdefault(kind, {})[outcome] = n
    parts = []
    for kind, got in sorted(by_kind.items()):
        words = [f"{got['ok']} as planned"] if got.get("ok") else []
        words += [f"{n} {what}" for what, n in sorted(got.items()) if what != "ok"]
        parts.append(f"{kind} {', '.join(words)}")
    return "; ".join(parts)


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """SIGINT/SIGTERM handler during a run: unwinds to the step that stops cleanly (or to the teardown)."""
    raise _Interrupted(signal.Signals(signum).name)


def _say(msg: str) -> None:
    print(msg, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python logs every connection at INFO
    if os.geteuid() != 0:
        print("tcpscope-sim: needs root (network namespaces, cgroups, BPF)", file=sys.stderr)
        return 2
    if args.cleanup:
        cleaned = cleanup_leftovers()
        print(f"tcpscope-sim: cleaned {len(cleaned)} run(s) {' '.join(cleaned)}".rstrip())
        return 0
    try:
        args.rows = live.parse_rows(args.rows, args.show)
        show = parse_view(args.show)
        plan = load_plan(args.plan) if args.plan else builtin_plan()
        watched = _watched_nodes(plan, args.unwatched_node)
    except (PlanError, OSError, ValueError) as e:
        print(f"tcpscope-sim: {e}", file=sys.stderr)
        return 2
    return _run(args, plan, show, watched)


def _watched_nodes(plan: Plan, unwatched: Sequence[str]) -> tuple[str, ...]:
    """The plan's nodes that get an agent; ValueError if --unwatched-node names no node of the plan, or all."""
    unknown_nodes = sorted(set(unwatched) - set(plan.nodes))
    watched = tuple(n for n in plan.nodes if n not in unwatched)
    if unknown_nodes or not watched:
        why = f"no such node {', '.join(unknown_nodes)}" if unknown_nodes else "no node left with an agent"
        raise ValueError(f"--unwatched-node: {why}")
    return watched


def _run(args: argparse.Namespace, plan: Plan, show: frozenset[str], watched: tuple[str, ...]) -> int:
    """Build, run, report; exit 0, or 1 (a plan not shipped exactly, a failure), 130 (interrupted). Whatever
    was started is stopped on every path, with SIGINT/SIGTERM ignored meanwhile."""
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        run = _SimRun(args, plan, watched)
    except BaseException:  # nothing started yet: only the handlers to put back
        for s, h in old.items():
            signal.signal(s, h)
        raise
    try:
        bootstrap = run.start()
        watch = run.watch_topic(bootstrap, show)
        rc = run.traffic(watch)
        if not run.report(watch) and rc == 0:
            rc = 1
        if args.hold and args.plan:
            _hold()
        return rc
    except _Interrupted as e:
        _say(f"tcpscope-sim: interrupted ({e}), stopping")
        return 130
    except (TrafficError, RuntimeError, OSError) as e:
        run.print_failure(e)
        return 1
    finally:
        for s in old:
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        run.stop()
        for s, h in old.items():
            signal.signal(s, h)


class _SimRun:
    """One run's cluster, services and topic watch, with main's steps in order; stop() takes down
    whatever was started."""

    def __init__(self, args: argparse.Namespace, plan: Plan, watched: tuple[str, ...]) -> None:
        self.args = args
        self.plan = plan
        self.watched = watched
        self.cluster = PodCluster(plan, backlogs={} if args.plan else MIX_BACKLOGS, proxy_mode=args.kube_proxy)
        self.workdir = tempfile.mkdtemp(prefix=f"tcpscope-sim-{self.cluster.run_id}-")
        if not args.keep_logs:
            self.cluster.state.paths.append(self.workdir)
        self.services = Services(
            plan,
            self.cluster.run_id,
            self.cluster.state,
            self.workdir,
            args.kafka_bootstrap,
            args.topic,
            args.agent_arg,
            collectors=max(1, args.collectors),
            metrics_port=args.metrics_port,
        )
        self.watch: TopicWatch | None = None
        self.printer: OrderedPrinter | None = None

    def start(self) -> str:
        """Kafka (and its topic), the API stand-in, the collectors, the cluster, the agents; says where each
        is and lists the pods. Returns the Kafka bootstrap address."""
        args, plan, services, run_id = self.args, self.plan, self.services, self.cluster.run_id
        _say(f"tcpscope-sim: run {run_id}, {len(plan.nodes)} nodes, {len(plan.pods)} pods, logs {self.workdir}")
        bootstrap = services.start_broker()
        services.create_topic()
        _say(
            f"tcpscope-sim: Kafka at {bootstrap}, topic {args.topic}"
            + ("" if args.kafka_bootstrap else " (local broker started for this run)")
        )
        kubeconfig = services.start_api()
        _say(f"tcpscope-sim: API server stand-in at {services.api.url if services.api else '?'}")
        services.start_collector(kubeconfig)
        self.cluster.start()
        services.start_agents({n: self.cluster.node_cgroup(n) for n in self.watched}, kubeconfig)
        services.wait_agents_ready()
        replicas = [services.collector_addr, *(a for _, a in services.more_collectors)]
        _say(
            f"tcpscope-sim: agents ready on {', '.join(self.watched)}; collector {', '.join(replicas)}"
            + (f"; no agent on {', '.join(args.unwatched_node)}" if args.unwatched_node else "")
        )
        if args.metrics_port:
            self._say_metrics(len(replicas))
        for p in plan.pods:
            _say(f"  {p.node:<8} {p.ref:<28} {p.ip:<14} listen {','.join(map(str, p.listen)) or '-'}")
        for s in plan.services:
            backends = ", ".join(f"{b}:{s.target_port}" for b in s.backends) or "no endpoints: rejected"
            _say(f"  {'service':<8} {s.ref:<28} {s.ip + ':' + str(s.port):<14} -> {backends} ({args.kube_proxy})")
        return bootstrap

    def _say_metrics(self, replicas: int) -> None:
        port = self.args.metrics_port
        last = self.services.agent_metrics_port(len(self.plan.nodes))
        _say(
            f"tcpscope-sim: metrics at http://127.0.0.1:{port}/metrics (collector"
            f"{'s: ports up to ' + str(port + replicas - 1) if replicas > 1 else ''}), "
            f"ports {self.services.agent_metrics_port(1)}-{last} (agents)"
        )

    def watch_topic(self, bootstrap: str, show: frozenset[str]) -> TopicWatch:
        """Start reading the topic back (the watched nodes' agents), with the live view unless --quiet or --plan."""
        self.printer = None if (self.args.quiet or self.args.plan) else _live_printer(_say, show, self.args.rows)
        self.watch = TopicWatch(
            bootstrap, self.args.topic, {self.services.agent_id(n) for n in self.watched}, self.printer
        )
        self.watch.start()
        return self.watch

    def traffic(self, watch: TopicWatch) -> int:
        """--plan: run it, and 0 if it shipped exactly, else 1; without: the built-in mix (0)."""
        driver = Driver(self.cluster)
        if self.args.plan:
            rc = _run_plan(
                driver,
                self.services,
                watch,
                self.plan.expected_lifecycles(self.watched),
                self.args.ship_timeout,
                _say,
            )
            pools_ok = check_pools(self.plan, self.watched, watch.snapshot()[0], _say)
            return rc if pools_ok else 1
        return self._run_mix(driver, watch)

    def _run_mix(self, driver: Driver, watch: TopicWatch) -> int:
        """The built-in mix until --duration or Ctrl-C, then drain the agents and the live view."""
        stop = threading.Event()
        deadline = time.monotonic() + self.args.duration if self.args.duration else None
        pool = driver.start_pool(MIX_POOL)
        started = time.monotonic()
        try:
            run_mix(driver, stop, deadline, MIX_BULK, MIX_STALL)
        except _Interrupted:
            _say("tcpscope-sim: interrupted, stopping")
        # the pool is still open when the agents stop: their last pass reports it, and the summary's
        # OPEN column shows its connections
        self.services.stop_agents()
        sent = driver.stop_pool(MIX_POOL, pool)
        _say(
            f"tcpscope-sim: pooled {MIX_POOL.src} -> {MIX_POOL.dst}:{MIX_POOL.port}: {MIX_POOL.count} connections open "
            f"for the whole run ({time.monotonic() - started:.0f} s), {MIX_POOL.rate} B/s each, "
            f"{sent.get('chunks', 0) * MIX_POOL.rate} bytes sent"
        )
        watch.catch_up(10)
        if self.printer is not None:
            self.printer.close()  # the rows still held (for their reset's cause, for time order)
            joined = self.printer.view.connections
            if joined is not None and joined.tally():  # how the rows came about: joined, folded, flows covered
                _say(joined.tally().rstrip("\n"))
        _say(f"tcpscope-sim: connections made, by traffic kind: {made_text(driver.outcomes) or 'none'}")
        return 0

    def report(self, watch: TopicWatch) -> bool:
        """The summary of what was read back, and the service map beside it; with --plan, whether
        the summary equals the plan (each client's counters, each connection once)."""
        events, losses, batches = watch.snapshot()
        rows = _print_summary(events, losses, batches, self.args.summary_format, _say, list(watch.summaries))
        exact = _check_summary(rows, self.plan, self.watched, _say) if self.args.plan else True
        if watch.skipped:
            _say(f"tcpscope-sim: records skipped while reading Kafka: {_skipped_text(watch.skipped)}")
        map_path = self.args.service_map
        if map_path is None and not self.args.plan:  # `make run`: the picture beside the summary
            map_path = f"tcpscope-sim-{self.cluster.run_id}-map.svg"
        if map_path:
            _write_service_map(events, map_path, _say)
        return exact

    def print_failure(self, e: BaseException) -> None:
        """The error and the end of every log of the run, on stderr."""
        print(f"tcpscope-sim: {e}", file=sys.stderr)
        for name in self.services.logs:
            print(f"--- {name} (last lines) ---\n{self.services.tail_log(name, 1500)}", file=sys.stderr)

    def stop(self) -> None:
        """Stop the watch, flush the live view, stop the services, remove the cluster."""
        if self.watch is not None:
            self.watch.stop()
        if self.printer is not None:
            self.printer.close()
        self.services.stop()
        self.cluster.stop()


def _synack_check(driver: Driver, watch: TopicWatch, say: Callable[[str], None]) -> bool:
    """syn_flood entries: the SYN-ACK retransmits the agents reported for each flooded listener (events
    and aggregates) against what its kernel counted (TcpExt TCPSynRetrans in its netns)."""
    events, _, _ = watch.snapshot()
    ok = True
    for (pod, port), want in sorted(driver.synack_retransmits.items()):
        ip = driver.cluster.pods[pod].spec.ip
        got = sum(synack_retransmits(e) for e in events if e.local.ip == ip and e.local.port in (port, 0))
        say(f"tcpscope-sim: {pod}:{port} SYN-ACK retransmits reported {got}, its kernel counted {want}")
        ok = ok and got == want
    return ok


def _hold() -> None:
    """--hold: keep the collector (and its metrics) up until Ctrl-C."""
    _say("tcpscope-sim: holding (collector up) until Ctrl-C")
    try:
        threading.Event().wait()
    except _Interrupted:
        _say("tcpscope-sim: stopping")


def _run_plan(
    driver: Driver, services: Services, watch: TopicWatch, expected: int, timeout: float, say: Callable[[str], None]
) -> int:
    """Run the plan once, wait for every connection's events in Kafka, drain the agents, check."""
    t0 = time.monotonic()
    driver.run_plan(strict=True)
    say(f"tcpscope-sim: plan done in {time.monotonic() - t0:.1f}s; waiting for {expected} lifecycle events")
    got = watch.wait_for(expected, timeout)
    codes = services.stop_agents()
    watch.catch_up(15)
    got = watch.connection_ends()
    _, losses, _ = watch.snapshot()
    lost = {k: v for k, v in definite(losses).items() if v}
    maybe = {k: v for k, v in possible(losses).items() if v}
    # a possible loss (a program run the kernel skipped) that cost no planned connection is reported,
    # not failed: every lifecycle arrived, so the summary is exact
    ok = got == expected and not lost and all(c == 0 for c in codes.values()) and not watch.error
    synacks = _synack_check(driver, watch, say)
    ok = ok and synacks
    say(
        f"tcpscope-sim: shipped {got}/{expected} lifecycle events in {time.monotonic() - t0:.1f}s, "
        f"losses {lost or 'none'}{f' (possible: {maybe})' if maybe else ''}, agents exited {codes}"
    )
    if watch.error:
        say(f"tcpscope-sim: reading Kafka failed: {watch.error}")
    if watch.skipped:
        say(f"tcpscope-sim: records skipped while reading Kafka: {_skipped_text(watch.skipped)}")
    return 0 if ok else 1


def check_pools(plan: Plan, watched: Sequence[str], events: list[TcpEvent], say: Callable[[str], None]) -> bool:
    """Each pooled entry (whose client's node has an agent, and the only entry of its pair and port):
    the bytes the agents reported while its connections were open and at their close are exactly
    the bytes written, both ways; every pass saw all of them open; no pass had counted more than was
    written by the end. One line per entry; False if one is not exact."""
    ok = True
    for t in plan.traffic:
        if t.kind != "pooled":
            continue
        client, server = plan.pod(t.src), plan.pod(t.dst)
        same = [u for u in plan.traffic if (u.src, u.dst, u.port) == (t.src, t.dst, t.port)]
        if client.node not in watched or len(same) > 1 or t.service:
            say(
                f"tcpscope-sim: pooled {t.src} -> {t.service or t.dst}:{t.port}: not checked (no agent on its "
                "client's node, another entry shares its pair and port, or it goes through a Service)"
            )
            continue
        want = t.pooled_bytes()
        got = pool_count(events, client.ip, server.ip, t.port)
        full = [n for _t, n, _c in got.passes if n == t.count]
        over = [c for _t, _n, c in got.passes if c > want[0]]
        exact = (got.c2s, got.s2c) == want and not over and len(full) >= max(1, t.seconds // 3)
        ok = ok and exact
        say(
            f"tcpscope-sim: pooled {t.src} -> {t.dst}:{t.port}: {t.count} connections open {t.seconds} s, "
            f"reported open in {len(got.passes)} passes ({len(full)} with all {t.count}), by the pass: "
            f"{', '.join(str(c) for _t, _n, c in got.passes) or 'none'} bytes; in all {got.c2s} bytes to the server "
            f"and {got.s2c} back, {'exact' if exact else f'NOT the {want[0]} and {want[1]} written'}"
        )
    return ok


def _skipped_text(skipped: dict[str, int]) -> str:
    names = {"foreign": "not tcpscope records", "bounds": "outside the bounds (docs/kafka.md, Bounds)"}
    return ", ".join(f"{n} {names.get(k, k)}" for k, n in sorted(skipped.items()))


def _print_summary(
    events: list[TcpEvent],
    losses: dict[str, int],
    batches: int,
    fmt: str,
    say: Callable[[str], None],
    batch_summaries: Sequence[tuple[str, EventBatch]] = (),
) -> list[PairSummary]:
    """The same summary `tcpscope-tail --summary` prints, over the events this run read back; its rows."""
    report = summary.Report(summary.Summarizer(), losses=losses, batches=batches, events=len(events))
    for agent_id, b in batch_summaries:  # nodes and loss spans, for who sent each reset
        report.summarizer.add_batch(agent_id, b)
    report.summarizer.add_all(events)
    say(("" if fmt == "json" else "\n") + report.render(fmt, summary.SummaryOptions()).rstrip("\n"))
    return report.summarizer.pairs()


def _check_summary(rows: Sequence[PairSummary], plan: Plan, watched: Sequence[str], say: Callable[[str], None]) -> bool:
    """Each watched client's counters, summed over its rows (pod to pod, through Services), against
    the plan (`expected_summary`): every counter exact, each connection once. Says what differs."""
    want = expected_summary(plan, watched)
    got = {ref: dict.fromkeys(SUMMARY_COUNTERS, 0) for ref in want}
    for r in rows:
        if r.client.label() in got:
            for c in SUMMARY_COUNTERS:
                got[r.client.label()][c] += getattr(r, c)
    if set(watched) == set(plan.nodes):
        # every node watched: no row beyond the clients' may hold a connection (each counted once,
        # whatever address the server saw it from: a NodePort's SNAT names the node as its client)
        want["(all rows)"] = {c: sum(w[c] for w in want.values()) for c in SUMMARY_COUNTERS}
        got["(all rows)"] = {c: sum(getattr(r, c) for r in rows) for c in SUMMARY_COUNTERS}
    wrong = {ref: (got[ref], w) for ref, w in want.items() if got[ref] != w}
    for ref, (g, w) in sorted(wrong.items()):
        diff = ", ".join(f"{c} {g[c]} (plan: {w[c]})" for c in SUMMARY_COUNTERS if g[c] != w[c])
        say(f"tcpscope-sim: the summary of {ref} differs from the plan: {diff}")
    return not wrong and (set(watched) != set(plan.nodes) or _check_backend_shares(rows, plan, say))


def _check_backend_shares(rows: Sequence[PairSummary], plan: Plan, say: Callable[[str], None]) -> bool:
    """With every node watched: each backend's share of each client's connections through each
    ClusterIP, flows included (`expected_backend_shares`), in the row (client, backend, via Service)."""
    want = expected_backend_shares(plan)
    got: dict[tuple[str, str, str], int] = {}
    for r in rows:
        if r.via is not None and r.via.kind == "SERVICE" and r.server.kind != "SERVICE":
            key = (r.client.label(), r.server.label(), r.via.label())
            got[key] = got.get(key, 0) + r.connections
    wrong = {k: (got.get(k, 0), want.get(k, 0)) for k in set(want) | set(got) if got.get(k, 0) != want.get(k, 0)}
    for (client, backend, service), (g, w) in sorted(wrong.items()):
        say(f"tcpscope-sim: {client} -> {backend} via {service}: {g} connections in the summary (plan: {w})")
    return not wrong


def _write_service_map(events: list[TcpEvent], path: str, say: Callable[[str], None]) -> None:
    """The summary's pairs as a Graphviz SVG (tail/servicemap.py); the DOT text if `dot` is missing."""
    from tail.servicemap import render_dot, render_svg

    summarizer = summary.Summarizer()
    summarizer.add_all(events)
    dot = render_dot(summary.select(summarizer.pairs()), "tcpscope-sim service map")
    try:
        svg = render_svg(dot)
    except RuntimeError as e:
        path = os.path.splitext(path)[0] + ".dot"
        with open(path, "w", encoding="utf-8") as f:
            f.write(dot)
        say(f"tcpscope-sim: {e}; service map written as DOT to {os.path.abspath(path)}")
        return
    with open(path, "wb") as f:
        f.write(svg)
    say(f"tcpscope-sim: service map (SVG) written to {os.path.abspath(path)}")


if __name__ == "__main__":
    sys.exit(main())
