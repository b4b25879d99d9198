"""The measurements: interleaved overhead rounds, zero-loss rate stepping (agent to stdout and to
Kafka), agent CPU/RSS, collector throughput and kernel-to-Kafka latency.

Every row is either measured or "n/a" with the reason; nothing is estimated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.load import ChurnResult, Topology
from bench.modes import ALL_KINDS, MODES, Running, each_args, start_agent, start_stack, start_stream_agent
from bench.procs import Unavailable, bpf_prog_stats, cpu_seconds, vm_hwm_kb

log = logging.getLogger("bench")


@dataclass
class RoundResult:
    round: int
    rate: float
    connections: int
    errors: int
    ratio: float | None = None  # rate / rate of "none" in the same round
    cpu_s: float | None = None  # CPU seconds of the mode's main process during the load
    hwm_kb: int | None = None
    attach_s: float | None = None
    kernel_ns: int | None = None  # run time of the tool's own BPF programs during the load (bpf_stats)
    bpf_runs: int | None = None
    # connections the tool reported (a socket = half a connection) / those it should have; None: no
    # exact expectation (then delivered_ratio comes from the tool's own loss report)
    delivered: int | None = None
    expected: int | None = None
    delivered_ratio: float | None = None


@dataclass
class OverheadRow:
    topology: str
    mode: str
    label: str
    status: str = "ok"  # ok | n/a
    reason: str = ""
    rounds: list[RoundResult] = field(default_factory=list)

    def ratios(self) -> list[float]:
        return [r.ratio for r in self.rounds if r.ratio is not None]

    def summary(self) -> dict[str, Any]:
        rs, rates = self.ratios(), [r.rate for r in self.rounds]
        cpu = [r.cpu_s * 1e6 / r.connections for r in self.rounds if r.cpu_s is not None and r.connections]
        hwm = [r.hwm_kb for r in self.rounds if r.hwm_kb]
        kns = [r.kernel_ns / r.connections for r in self.rounds if r.kernel_ns is not None and r.connections]
        dr = [r.delivered_ratio for r in self.rounds if r.delivered_ratio is not None]
        return {
            "kernel_ns_per_conn_median": statistics.median(kns) if kns else None,
            "delivered_ratio_min": min(dr) if dr else None,
            "rate_median": statistics.median(rates) if rates else None,
            "ratio_min": min(rs) if rs else None,
            "ratio_median": statistics.median(rs) if rs else None,
            "ratio_max": max(rs) if rs else None,
            "cpu_us_per_conn_median": statistics.median(cpu) if cpu else None,
            "hwm_mb_max": max(hwm) / 1024 if hwm else None,
        }


def run_overhead(
    topos: Sequence[Topology],
    modes: Sequence[str],
    rounds: int | dict[str, int],
    duration: float,
    threads: int,
    workdir: Path,
    warmup: float = 0.0,
) -> list[OverheadRow]:
    """For each topology: `rounds` rounds, each running every mode once for `duration` seconds under
    the full-speed churn (the order rotates per round, so no mode always follows another)."""
    rows: list[OverheadRow] = []
    for topo in topos:
        if warmup > 0:
            # fill the server's TIME_WAIT table to its steady state (tcp_max_tw_buckets, then new
            # TIME_WAITs are skipped), so the first mode measured does not pay for an empty table
            w = topo.churn(warmup, 0, threads)
            log.info("%s warm-up: %.0f conn/s", topo.name, w.rate)
        table = {m: OverheadRow(topo.name, m, MODES[m].label) for m in modes}
        for m, row in table.items():
            why = MODES[m].unavailable()
            if why:
                row.status, row.reason = "n/a", why
        n_rounds = rounds if isinstance(rounds, int) else rounds.get(topo.name, 1)
        for r in range(n_rounds):
            order = list(modes[r % len(modes) :]) + list(modes[: r % len(modes)])
            for m in order:
                row = table[m]
                if row.status != "ok":
                    continue
                res = measure_mode(m, topo, duration, threads, workdir, r)
                if isinstance(res, str):
                    row.status, row.reason = "n/a", res
                    row.rounds.clear()
                    continue
                row.rounds.append(res)
                log.info(
                    "%s round %d %-16s %8.0f conn/s%s",
                    topo.name,
                    r + 1,
                    m,
                    res.rate,
                    f" cpu {res.cpu_s:.2f}s" if res.cpu_s is not None else "",
                )
        base = {x.round: x.rate for x in table["none"].rounds} if "none" in table else {}
        for row in table.values():
            for x in row.rounds:
                if base.get(x.round):
                    x.ratio = x.rate / base[x.round]
            if row.status == "ok" and not row.rounds:
                row.status, row.reason = "n/a", "no rounds ran"
        rows.extend(table.values())
    return rows


def measure_mode(
    mode: str, topo: Topology, duration: float, threads: int, workdir: Path, rnd: int
) -> RoundResult | str:
    """One round of one mode; returns the reason string when the mode cannot run."""
    t0 = time.monotonic()
    try:
        # tools that print write to a tmpfs file, counted afterwards (delivered vs expected)
        out_file = None if mode in ("none", "tcpdump", "agent-stream") else workdir / f"{mode}-{rnd}.out"
        running = MODES[mode].start(workdir, topo, out_file)
    except Unavailable as e:
        return str(e)
    attach_s = time.monotonic() - t0
    try:
        pid = running.main.pid if running.main is not None else None
        c0 = cpu_seconds(pid) if pid else None
        k0 = bpf_prog_stats(pid) if pid else None
        res = topo.churn(duration, 0, threads)
        k1 = bpf_prog_stats(pid) if pid else None
        c1 = cpu_seconds(pid) if pid else None
        hwm = vm_hwm_kb(pid) if pid else None
        if running.main is not None and not running.main.alive():
            return f"{mode} died during the load: {running.main.stderr()[-300:]}"
    finally:
        running.stop()
    cpu = c1 - c0 if c0 is not None and c1 is not None else None
    out = RoundResult(
        rnd,
        res.rate,
        res.connections,
        res.errors,
        cpu_s=cpu,
        hwm_kb=hwm,
        attach_s=attach_s if running.main is not None else None,
    )
    if k0 is not None and k1 is not None and k1[1] > k0[1]:
        out.kernel_ns, out.bpf_runs = k1[0] - k0[0], k1[1] - k0[1]
    if running.main is not None:
        delivered(out, mode, running, topo.port, res.connections)
    return out


def delivered(out: RoundResult, mode: str, running: Running, port: int, connections: int) -> None:
    """What the tool reported of the round's connections. Agents and tcplife: every socket, exactly
    (flows count their connections); tcpstates and tcpdump: their own loss reports."""
    assert running.main is not None
    path = running.main.stdout_path
    text_err = running.main.stderr()
    try:
        if mode.startswith("agent") and mode != "agent-stream" and path is not None:
            out.delivered, out.expected = count_agent_sockets(path, port), 2 * connections
        elif mode == "tcplife" and path is not None:
            out.delivered, out.expected = count_tcplife(path, port), 2 * connections
        elif mode == "tcpstates" and path is not None:
            lines = _count_lines(path)
            lost = sum(int(m) for m in re.findall(r"[Pp]ossibly lost (\d+) samples", text_err))
            out.delivered_ratio = lines / (lines + lost) if lines + lost else None
        elif mode == "tcpdump":
            got = re.search(r"(\d+) packets captured", text_err)
            seen = re.search(r"(\d+) packets received by filter", text_err)
            if got and seen and int(seen.group(1)):
                out.delivered_ratio = int(got.group(1)) / int(seen.group(1))
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    if out.expected:
        out.delivered_ratio = (out.delivered or 0) / out.expected


def count_agent_sockets(path: Path, port: int) -> int:
    """Sockets on `port` in the agent's JSON lines: a lifecycle each, a flow its connections."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if b'"flow"' in line:
                ev = json.loads(line)
                if port in (ev.get("local", {}).get("port"), ev.get("remote", {}).get("port")):
                    n += int(ev["flow"].get("connections", 0))
            elif (
                b'"lifecycle"' in line
                and b'"last_state": "LISTEN"' not in line
                and any(f'"port": {port}{end}'.encode() in line for end in (",", "}"))
            ):
                n += 1
    return n


def count_tcplife(path: Path, port: int) -> int:
    """tcplife's lines (one per socket) with `port` as LPORT or RPORT."""
    n = 0
    p = str(port)
    with open(path, "rb") as f:
        for raw in f:
            cols = raw.decode(errors="replace").split()
            if len(cols) >= 6 and p in (cols[3], cols[5]):
                n += 1
    return n


# --- losses ---------------------------------------------------------------------------------

_LOSS_LINE = re.compile(r"(?i)\b(lost|loss(?:es)?)\b")
_AGENT_SUMMARY = re.compile(r"(\d+) events out, lost (\d+)(?: \((.*)\))?")
_KV = re.compile(r"([A-Za-z_][\w.\-]*)\s*[=:]\s*(\d+)")


def parse_loss_summary(stderr: str) -> dict[str, int] | None:
    """The agent's loss summary from its stderr at exit: the last JSON object mentioning losses, or
    the last line mentioning losses as key=value / key: value pairs. None when there is none."""
    for line in reversed(stderr.strip().splitlines()):
        s = line.strip()
        i = s.find("{")
        if i >= 0 and _LOSS_LINE.search(s):
            with contextlib.suppress(ValueError):
                obj = json.loads(s[i:])
                if isinstance(obj, dict):
                    return _flatten_counts(obj)
        m = _AGENT_SUMMARY.search(s)
        if m:
            # tcpscope-agent's own line: "tcpscope-agent: N events out, lost T (reason=n, ...)"
            return {
                "events_out": int(m.group(1)),
                "total": int(m.group(2)),
                **{k: int(v) for k, v in _KV.findall(m.group(3) or "")},
            }
        if _LOSS_LINE.search(s):
            kv = {k: int(v) for k, v in _KV.findall(s)}
            if kv:
                return kv
            if re.search(r"(?i)\bno (events )?lost\b|\blost[: ]+0\b|\bnothing lost\b", s):
                return {}
    return None


def _flatten_counts(obj: dict[str, Any], prefix: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_counts(v, key + "."))
        elif isinstance(v, int) and not isinstance(v, bool):
            out[key] = v
    return out


def loss_total(counts: dict[str, int]) -> int:
    """Sum of the loss counters; keys naming a total are used alone to avoid double counting."""
    totals = [v for k, v in counts.items() if k.split(".")[-1] in ("total", "lost", "lost_total")]
    if totals:
        return max(totals)
    return sum(v for k, v in counts.items() if not k.endswith(("events_out", "events", "delivered")))


# --- zero loss stepping ---------------------------------------------------------------------


@dataclass
class Step:
    target_rate: float  # 0 = as fast as the load goes
    rate: float
    connections: int
    errors: int
    expected_events: int
    delivered_events: int
    reported_losses: dict[str, int] | None
    zero_loss: bool
    agent_cpu_s: float
    agent_hwm_kb: int
    collector_cpu_s: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    kafka_lost_total: int | None = None

    @property
    def cpu_us_per_conn(self) -> float | None:
        return self.agent_cpu_s * 1e6 / self.connections if self.connections else None

    @property
    def cpu_us_per_event(self) -> float | None:
        return self.agent_cpu_s * 1e6 / self.delivered_events if self.delivered_events else None


@dataclass
class ZeroLossRow:
    sink: str  # stdout | kafka
    label: str
    events: str
    status: str = "ok"
    reason: str = ""
    steps: list[Step] = field(default_factory=list)

    def best(self) -> Step | None:
        ok = [s for s in self.steps if s.zero_loss]
        return max(ok, key=lambda s: s.rate) if ok else None


def _wait_quiet(size: Callable[[], int], quiet_s: float = 1.0, limit_s: float = 15.0) -> None:
    """Wait until size() stops changing for quiet_s (the sink has drained), at most limit_s."""
    deadline = time.monotonic() + limit_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = size()
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def events_per_connection(events: str) -> int | None:
    """Events the agent must deliver per loadgen connection, when that is exact: one lifecycle event
    per socket (client and server). Other kinds depend on timing (None: loss counters decide)."""
    return 2 if events == "lifecycle" else None


def step_stdout(
    topo: Topology,
    rate: float,
    duration: float,
    threads: int,
    workdir: Path,
    events: str = "lifecycle",
    tree: Path | None = None,
) -> Step:
    """Agent with --port <server> writing JSON lines to a tmpfs file, counted afterwards."""
    out = workdir / f"agent-{time.monotonic_ns()}.jsonl"
    agent = start_agent(workdir, ["--events", events, "--port", str(topo.port), *each_args(tree)], out, tree=tree)
    try:
        c0 = cpu_seconds(agent.pid)
        res = topo.churn(duration, rate, threads)
        _wait_quiet(lambda: out.stat().st_size)
        cpu = cpu_seconds(agent.pid) - c0
        hwm = vm_hwm_kb(agent.pid)
    finally:
        agent.stop()
    delivered = _count_lines(out)
    out.unlink(missing_ok=True)
    return _step(res, rate, events, delivered, parse_loss_summary(agent.stderr()), cpu, hwm)


def _step(
    res: ChurnResult, rate: float, events: str, delivered: int, losses: dict[str, int] | None, cpu: float, hwm: int
) -> Step:
    per = events_per_connection(events)
    expected = per * res.connections if per else 0
    zero = (losses is not None and loss_total(losses) == 0) and (not per or delivered >= expected)
    if per and losses is None:
        zero = delivered >= expected
    return Step(rate, res.rate, res.connections, res.errors, expected, delivered, losses, zero, cpu, hwm)


def step_kafka(topo: Topology, rate: float, duration: float, threads: int, workdir: Path) -> Step:
    """Agent -> collector -> tansu for one rate; counts the event records that reached Kafka,
    sums the batch-summary loss counters, and measures kernel-to-Kafka latency."""
    stack = start_stack(workdir, f"bench-{time.monotonic_ns()}")
    try:
        agent = start_stream_agent(workdir, stack, ["--port", str(topo.port)])
        try:
            a0, k0 = cpu_seconds(agent.pid), cpu_seconds(stack.collector.pid)
            res = topo.churn(duration, rate, threads)
            a1 = cpu_seconds(agent.pid)
            hwm = vm_hwm_kb(agent.pid)
        finally:
            agent.stop(timeout=30)
        k1 = cpu_seconds(stack.collector.pid)
        kafka = read_topic(stack.bootstrap, stack.topic, 2 * res.connections)
    finally:
        stack.stop()
    step = _step(res, rate, "lifecycle", kafka["events"], parse_loss_summary(agent.stderr()), a1 - a0, hwm)
    step.collector_cpu_s = k1 - k0
    step.kafka_lost_total = kafka["lost_total"]
    step.latency_p50_ms, step.latency_p99_ms = kafka["p50_ms"], kafka["p99_ms"]
    step.zero_loss = step.zero_loss and kafka["lost_total"] == 0 and kafka["events"] >= step.expected_events
    return step


def read_topic(bootstrap: str, topic: str, want: int, idle_s: float = 3.0) -> dict[str, Any]:
    """Read a topic from the start: distinct event records (deduplicated by agent, batch, index),
    the summed `lost` of the batch summaries, and latency = record timestamp - event time."""
    from kafka import KafkaConsumer, TopicPartition

    from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, decode_records
    from tcpscope.losses import definite_total

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    seen: set[tuple[str, int, int]] = set()
    lat: list[float] = []
    lost = 0
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        last_new = time.monotonic()
        while time.monotonic() - last_new < idle_s and (len(seen) < want or time.monotonic() - last_new < 0.5):
            for recs in c.poll(timeout_ms=300, max_records=50000).values():
                for rec in recs:
                    last_new = time.monotonic()
                    for d in decode_records(rec.headers, rec.value):
                        if d.kind == RECORD_EVENT and d.event is not None:
                            key = (d.agent_id, d.sequence, d.index)
                            if key not in seen:
                                seen.add(key)
                                ev_ms = d.event.time.seconds * 1e3 + d.event.time.nanos / 1e6
                                lat.append(rec.timestamp - ev_ms)
                        elif d.kind == RECORD_SUMMARY and d.summary is not None:
                            lost += definite_total(d.summary.lost)
    finally:
        c.close()
    lat.sort()
    return {"events": len(seen), "lost_total": lost, "p50_ms": _pct(lat, 0.50), "p99_ms": _pct(lat, 0.99)}


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_zero_loss(
    topo: Topology, sinks: Sequence[str], rates: Sequence[float], duration: float, threads: int, workdir: Path
) -> list[ZeroLossRow]:
    """Step the target rate up per sink; stop stepping after the first step with a loss."""
    rows = []
    for sink in sinks:
        row = ZeroLossRow(
            sink,
            "agent -> stdout JSON (tmpfs file, lines counted)"
            if sink == "stdout"
            else "agent -> collector -> Kafka (tansu), records counted",
            "lifecycle",
        )
        rows.append(row)
        for rate in rates:
            try:
                step = (
                    step_stdout(topo, rate, duration, threads, workdir)
                    if sink == "stdout"
                    else step_kafka(topo, rate, duration, threads, workdir)
                )
            except Unavailable as e:
                row.status, row.reason = "n/a", str(e)
                break
            row.steps.append(step)
            log.info(
                "zero-loss %s target %s: %.0f conn/s, %d/%d events, losses %s",
                sink,
                rate or "max",
                step.rate,
                step.delivered_events,
                step.expected_events,
                step.reported_losses,
            )
            if not step.zero_loss:
                break
    return rows


def run_all_kinds_cpu(topo: Topology, rate: float, duration: float, threads: int, workdir: Path) -> Step | str:
    """Agent CPU per event with every event kind on, at a fixed rate (events counted from stdout)."""
    try:
        return step_stdout(topo, rate, duration, threads, workdir, events=ALL_KINDS)
    except Unavailable as e:
        return str(e)


def step_dict(s: Step) -> dict[str, Any]:
    d = asdict(s)
    d["cpu_us_per_conn"] = s.cpu_us_per_conn
    d["cpu_us_per_event"] = s.cpu_us_per_event
    return d


@dataclass
class CpuCompareRow:
    """One agent version's CPU at a fixed, port-filtered lifecycle rate, over interleaved rounds."""

    variant: str
    status: str = "ok"
    reason: str = ""
    steps: list[Step] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        conn = [s.cpu_us_per_conn for s in self.steps if s.cpu_us_per_conn is not None]
        ev = [s.cpu_us_per_event for s in self.steps if s.cpu_us_per_event is not None]
        return {
            "cpu_us_per_conn_median": statistics.median(conn) if conn else None,
            "cpu_us_per_event_median": statistics.median(ev) if ev else None,
            "all_zero_loss": all(s.zero_loss for s in self.steps) if self.steps else None,
            "hwm_mb_max": max(s.agent_hwm_kb for s in self.steps) / 1024 if self.steps else None,
        }


def run_cpu_compare(
    topo: Topology,
    variants: dict[str, Path | None],
    rate: float,
    duration: float,
    rounds: int,
    threads: int,
    workdir: Path,
) -> list[CpuCompareRow]:
    """Agent versions side by side: each round runs every variant once at `rate` (order rotating)."""
    rows = {name: CpuCompareRow(name) for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            row = rows[name]
            if row.status != "ok":
                continue
            try:
                st = step_stdout(topo, rate, duration, threads, workdir, tree=variants[name])
            except Unavailable as e:
                row.status, row.reason = "n/a", str(e)
                continue
            row.steps.append(st)
            log.info(
                "cpu-compare round %d %-24s %.1f µs/conn %.1f µs/event",
                r + 1,
                name,
                st.cpu_us_per_conn or 0,
                st.cpu_us_per_event or 0,
            )
    return list(rows.values())
