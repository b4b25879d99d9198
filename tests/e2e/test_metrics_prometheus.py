"""End to end: the traffic plan of test_sim_plan.py on the simulated cluster, scraped by a real
Prometheus server, then every panel of the chart's dashboard queried through Prometheus's HTTP API.

Real everything: the simulator's pods, BPF agents and two collector replicas (with --metrics-port;
the two ends of most connections stream to different replicas), a Kafka-protocol broker, Debian's
`prometheus` scraping both collectors and the three agents every second,
and the dashboard as the real Helm engine renders it. The connection counts per workload pair and
outcome must equal the plan exactly: each connection once although both of its ends are watched.

Rates cannot be checked exactly here: the plan is one burst, and a counter series is born with its
first value (Prometheus sees no increase before its first sample). So each panel's expression is
run twice: as it is (it must evaluate), and with every `rate(x[w])`/`increase(x[w])` read as the
counter `x` itself, which the plan determines exactly: same selectors, grouping, topk, ratios and
label_joins, totals instead of rates. Needs root and BPF: fails (never skips) without them. ~30 s.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcpscope.kafka_layout import RECORD_EVENT, decode_records
from tcpscope.v1.events_pb2 import Role
from tests.e2e.test_sim_plan import PLAN as SIM_PLAN
from tests.helm.test_metrics_chart import METRICS_ON, dashboard
from tests.support.kafka import Broker, consume_all, kafka_broker
from tests.support.sim import plan_argv, stop_sim

__all__ = ["kafka_broker"]

NODES = 3
REPLICAS = 2  # node-1's and node-3's agents stream to the first collector, node-2's to the second

# test_sim_plan's plan without its network resets: a forged RST is counted by the metrics as the
# outcome the client saw (telling it from the server's needs both ends joined: tcpscope-tail
# --summary's network_resets, docs/reset-cause.md), so it is left out of these exact figures
PLAN: dict[str, Any] = {**SIM_PLAN, "traffic": [t for t in SIM_PLAN["traffic"] if t["kind"] != "network_reset"]}

# Written out by hand from PLAN, by workload (web-1 and web-2 are both Deployment "web"):
# (client ns, client workload, server ns, server workload, server port) -> outcome -> connections
CONNECTIONS = {
    ("shop", "web", "shop", "api", "9000"): {"ok": 5, "client_reset": 3},
    ("shop", "web", "shop", "api", "9009"): {"refused": 2},
    ("shop", "api", "data", "db", "5432"): {"ok": 4, "server_reset": 2},
    ("shop", "web", "data", "db", "5432"): {"timeout": 1},
    ("shop", "web", "shop", "web", "8080"): {"ok": 6, "server_reset": 1},
}
# which end sent the RST of each reset connection
RESETS = {
    ("shop", "web", "shop", "api", "client"): 3,
    ("shop", "api", "data", "db", "server"): 2,
    ("shop", "web", "shop", "web", "server"): 1,
}
# application bytes per connection by kind: the client sends "REQ <kind> 0\n", the server "RESP\n"
# (sim/tcpscope_sim/worker.py); a server_reset server aborts before answering
BYTES = {
    "ok": len("REQ ok 0\n") + len("RESP\n"),
    "client_reset": len("REQ client_reset 0\n") + len("RESP\n"),
    "server_reset": len("REQ server_reset 0\n"),
    "refused": 0,
    "timeout": 0,
}


def _free_base(n: int) -> int:
    """A port P with P..P+n-1 all free (collector, then one per agent)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


class Prom:
    """A Prometheus server of our own and its HTTP API."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        exe = shutil.which("prometheus")
        assert exe, "prometheus is missing: apt-get install prometheus (scripts/setup.sh installs it)"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        cfg = tmp / "prometheus.yml"
        cfg.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [{"job_name": "tcpscope", "static_configs": [{"targets": targets}]}],
                }
            )
        )
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.load(r)
        assert doc["status"] == "success", (expr, doc)
        assert doc["data"]["resultType"] == "vector", (expr, doc["data"]["resultType"])
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _by(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for r in result:
        key = tuple(r["metric"].get(k, "") for k in labels)
        assert key not in out, f"{key} twice in {result}"
        out[key] = float(r["value"][1])
    return out


def as_totals(expr: str) -> str:
    """The panel's expression with rate(x[w]) and increase(x[w]) read as the counter x."""
    return re.sub(r"\b(?:rate|increase)\(([^()]+?)\[\$__(?:rate_interval|range)\]\)", r"\1", expr)


def as_is(expr: str) -> str:
    return expr.replace("$__rate_interval", "4s").replace("$__range", "5m")


def _pair_sums(
    select: Callable[[str], bool],
    per: Callable[[str, int], int] = lambda kind, n: n,
) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for (cns, cwl, sns, swl, _), outcomes in CONNECTIONS.items():
        for outcome, n in outcomes.items():
            if select(outcome):
                key = (cns, cwl, sns, swl)
                out[key] = out.get(key, 0) + per(outcome, n)
    return out


class Reader:
    """The sim's stdout, line by line, on a thread; wait() for a line matching a pattern."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._cv = threading.Condition()
        self._proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._cv:
                self.lines.append((time.time(), line.rstrip("\n")))
                self._cv.notify_all()
        with self._cv:
            self.lines.append((time.time(), "<eof>"))
            self._cv.notify_all()

    def wait(self, pattern: str, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for t, line in self.lines:
                    if re.search(pattern, line):
                        return t, line
                    assert line != "<eof>", "\n".join(x for _, x in self.lines)
                left = deadline - time.monotonic()
                assert left > 0, f"no line matching {pattern!r}:\n" + "\n".join(x for _, x in self.lines)
                self._cv.wait(left)


def test_dashboard_panels_through_prometheus_match_the_plan(kafka_broker: Broker, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the end-to-end test needs root (BPF, netns, cgroups)"
    base = _free_base(REPLICAS + NODES)
    prom = Prom(tmp_path, [f"127.0.0.1:{p}" for p in range(base, base + REPLICAS + NODES)])
    topic = f"e2e-metrics-{os.getpid()}"
    sim = subprocess.Popen(
        plan_argv(
            PLAN,
            tmp_path,
            kafka_broker.bootstrap,
            topic,
            "--metrics-port",
            str(base),
            "--collectors",
            str(REPLICAS),
            "--hold",
            "--service-map",
            str(tmp_path / "map.svg"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        out = Reader(sim)
        t_plan_done, _ = out.wait(r"plan done", 120)
        _, shipped = out.wait(r"shipped \d+/\d+", 90)
        _, said = out.wait(r"service map \(SVG\) written to", 60)
        assert said.endswith(str(tmp_path / "map.svg"))
        svg = (tmp_path / "map.svg").read_text()
        for pod_pair in ("shop/web-1->shop/api-1", "shop/api-1->data/db-1", "shop/web-2->shop/web-1"):
            assert f"<title>{pod_pair.replace('-', '&#45;').replace('>', '&gt;')}</title>" in svg, pod_pair
        out.wait(r"holding", 60)
        assert re.search(r"shipped (\d+)/\1 ", shipped), shipped
        total = sum(n for outcomes in CONNECTIONS.values() for n in outcomes.values())
        deadline = time.monotonic() + 30
        while _by(prom.query("sum(tcpscope_connections_total)")).get((), 0) != total:
            assert time.monotonic() < deadline, prom.query("tcpscope_connections_total")
            time.sleep(0.5)
        now = time.time()
        _check_panels(prom, now, t_plan_done)
        # each replica counted the connections whose client's agent streamed to it: web-1, web-2 and
        # db-1's node to the first, api-1's to the second; their sum is each connection once
        assert _by(prom.query("sum by (instance) (tcpscope_connections_total)", now), "instance") == {
            (f"127.0.0.1:{base}",): 18.0,
            (f"127.0.0.1:{base + 1}",): 6.0,
        }
        # the ok connections reached the metrics as flows (the sim's agents aggregate, as deployed)
        assert _flow_connections(kafka_broker.bootstrap, topic) == {
            "ACTIVE": sum(o.get("ok", 0) for o in CONNECTIONS.values()),
            "PASSIVE": sum(o.get("ok", 0) for o in CONNECTIONS.values()),
        }
    finally:
        _stop(sim, prom)


def _stop(sim: subprocess.Popen[str], prom: Prom) -> None:
    """Ctrl-C the simulator (it takes down what it built), then Prometheus."""
    stop_sim(sim)
    if sim.stdout is not None:
        sim.stdout.close()
    prom.stop()


def _check_panels(prom: Prom, now: float, running: float) -> None:
    doc = dashboard(METRICS_ON)
    pair = ("client_namespace", "client_workload", "server_namespace", "server_workload")
    ok = {k: float(v) for k, v in _pair_sums(lambda o: True).items()}
    checked: set[str] = set()
    for panel in doc["panels"]:
        title = panel["title"]
        for target in panel["targets"]:
            expr, ref = target["expr"], target["refId"]
            # as it is: Prometheus evaluates it, values are numbers (a 0/0 ratio is NaN)
            for r in prom.query(as_is(expr), now):
                v = float(r["value"][1])
                assert math.isnan(v) or v >= 0, (title, r)
            at = running if title.startswith("Agents") else now  # the agents stop before the hold
            got = prom.query(as_totals(expr), at)
            _expect(title, ref, got, pair, ok)
        checked.add(title)
    assert len(checked) == len(doc["panels"])


def _expect(
    title: str, ref: str, got: list[dict[str, Any]], pair: tuple[str, ...], connections: dict[tuple[str, ...], float]
) -> None:
    """The counter reading of one panel query against the plan."""
    if title.startswith("Connections by pair and outcome"):
        want = {(*k[:4], o): float(n) for k, outcomes in CONNECTIONS.items() for o, n in outcomes.items()}
        merged: dict[tuple[str, ...], float] = {}
        for k, v in want.items():
            merged[k] = merged.get(k, 0) + v
        assert _by(got, *pair, "outcome") == merged
    elif title == "Reset rate by pair":
        assert _by(got, *pair, "sender") == {k: float(v) for k, v in RESETS.items()}
    elif title == "Refused rate by pair":
        assert _by(got, *pair) == {("shop", "web", "shop", "api"): 2.0}
    elif title == "Timeout rate by pair":
        assert _by(got, *pair) == {("shop", "web", "data", "db"): 1.0}
    elif title == "Top talkers (bytes/s)":
        want_bytes = _pair_sums(lambda o: True, lambda o, n: n * BYTES[o])
        assert _by(got, *pair) == {k: float(v) for k, v in want_bytes.items()}
    elif title == "Retransmitted segments per connection":
        # no data is lost in the plan: no pair retransmits, except the timed-out connect's SYNs
        # (tcp_retransmit_skb fires for them too; how many is the kernel's SYN timer's business)
        ratio = _by(got, *pair)
        syns = ratio.pop(("shop", "web", "data", "db"))
        assert ratio == {k: 0.0 for k in connections if k != ("shop", "web", "data", "db")}, got
        assert syns >= 1, got
    elif title.startswith("Connection duration p50"):
        (q,) = got
        # established connections on veths between namespaces: well under a second, above 0
        assert 0 < float(q["value"][1]) < 1.05, (ref, got)
    elif title == "Connection duration p99 by pair":
        established = set(_pair_sums(lambda o: o in ("ok", "client_reset", "server_reset")))
        assert set(_by(got, *pair)) == established
    elif title == "Open connections by pair":
        # the plan's connections last milliseconds: a pass may have caught one open, never more than a
        # pair made, and a gauge, not a count of connections
        for key, v in _by(got, *pair).items():
            assert v == int(v) and 0 <= v <= connections.get(key, 0), (key, v)
    elif title in ("Connect latency p50 / p99 by pair", "RTT p50 / p99 by pair"):
        # every pair that established a connection (a refused or timed-out connect has no latency);
        # on veths between namespaces: under a second
        established = set(_pair_sums(lambda o: o in ("ok", "client_reset", "server_reset")))
        values = _by(got, *pair)
        assert set(values) == established, (title, ref, got)
        assert all(0 < v < 1.05 for v in values.values()), (title, ref, got)
    elif title == "Service map":
        if ref == "nodes":  # a node's count: as a client where it is one (`or` keeps the left side)
            assert _by(got, "id") == {("shop/web",): 18.0, ("shop/api",): 6.0, ("data/db",): 7.0}
        elif ref == "edges":
            assert _by(got, "source", "target", "id") == {
                (f"{k[0]}/{k[1]}", f"{k[2]}/{k[3]}", f"{k[0]}/{k[1]} -> {k[2]}/{k[3]}"): v
                for k, v in connections.items()
            }
        else:
            problems = _pair_sums(lambda o: o != "ok")
            assert _by(got, "source", "target") == {
                (f"{k[0]}/{k[1]}", f"{k[2]}/{k[3]}"): float(v) for k, v in problems.items()
            }
    elif title == "Agents: events lost per second":
        # nothing lost: no series at all, or zeros (possible losses, program runs the kernel skipped,
        # are not events lost)
        assert all(float(r["value"][1]) == 0 or "recursion" in r["metric"].get("reason", "") for r in got), got
    elif title == "Agents connected to a collector":
        assert _by(got) == {(): float(NODES)}, (ref, got)
    elif title == "Collectors: Kafka errors per second":
        assert got == []
    elif title == "Collectors: traffic metric series":
        values = _by(got, "instance")
        assert len(values) == REPLICAS, got
        for (instance,), v in values.items():
            if ref == "A":  # each collector's own count equals the series it serves
                assert v == _series_served(instance)
            else:  # B: the bound, C: nothing folded
                assert v == (20_000.0 if ref == "B" else 0.0)
    elif title.startswith("Storms:"):
        _expect_storms(title, ref, got, pair)
    else:
        raise AssertionError(f"no expectation for panel {title!r}: add one")


def _expect_storms(title: str, ref: str, got: list[dict[str, Any]], pair: tuple[str, ...]) -> None:
    """The storm panels against a plan without storms."""
    if title.startswith("Storms: half-open"):
        # the plan's timeout drops the SYN-ACKs in the server's output hook: failed sends, no retransmits
        assert all(float(r["value"][1]) == 0 for r in got), got
    elif title.startswith("Storms: refused ports"):
        # the plan's refusals: web -> api on one port of one host (the gauges forget after the scan window)
        labels = pair if ref == "A" else ("client_namespace", "client_workload", "server_port")
        want = {("shop", "web", "shop", "api"): 1.0} if ref == "A" else {("shop", "web", "9009"): 1.0}
        assert _by(got, *labels) in (want, {}), got
    elif ref == "A":  # resets now: as the reset panel, both senders together
        now: dict[tuple[str, ...], float] = {}
        for k, n in RESETS.items():
            now[k[:4]] = now.get(k[:4], 0) + n
        assert _by(got, *pair) == now
    else:  # the baseline: nothing that long ago
        assert got == []


def _flow_connections(bootstrap: str, topic: str) -> dict[str, int]:
    """Connections the agents aggregated into flows, by the flow's role, read back from Kafka."""
    seen: set[tuple[str, int, int]] = set()
    out = {"ACTIVE": 0, "PASSIVE": 0}
    for d in (
        d for r in consume_all(bootstrap, topic, want=10**9, timeout=5) for d in decode_records(r.headers, r.value)
    ):
        if d.kind != RECORD_EVENT or d.event is None or d.event.WhichOneof("kind") != "flow":
            continue
        if (d.agent_id, d.sequence, d.index) in seen:  # an at-least-once resend
            continue
        seen.add((d.agent_id, d.sequence, d.index))
        out[Role.Name(d.event.flow.role)] += d.event.flow.connections
    return out


def _series_served(instance: str) -> float:
    """Traffic series in the collector's /metrics text, counted by hand."""
    with urllib.request.urlopen(f"http://{instance}/metrics", timeout=10) as r:
        text = r.read().decode()
    names = (
        "tcpscope_connections_total{",
        "tcpscope_resets_total{",
        "tcpscope_retransmits_total{",
        "tcpscope_connection_bytes_total{",
        "tcpscope_connection_duration_seconds_",
        "tcpscope_connect_latency_seconds_",
        "tcpscope_rtt_seconds_",
        "tcpscope_open_connections{",
    )
    return float(sum(1 for line in text.splitlines() if line.startswith(names)))


# A pool of long-lived connections (sim kind "pooled"): three connections from shop/api-1 to
# data/db-1:5432, each sending 4000 bytes a second for 14 s; the server acks each chunk
POOL_COUNT, POOL_RATE, POOL_SECONDS = 3, 4000, 14
POOL = {
    "from": "shop/api-1",
    "to": "data/db-1",
    "port": 5432,
    "kind": "pooled",
    "count": POOL_COUNT,
    "rate": POOL_RATE,
    "seconds": POOL_SECONDS,
}
POOL_PLAN: dict[str, Any] = {
    "pods": [
        {"namespace": "shop", "name": "api-1", "node": "node-1", "listen": [9000]},
        {"namespace": "data", "name": "db-1", "node": "node-2", "listen": [5432]},
    ],
    "traffic": [POOL],
}
POOL_PAIR = (
    'client_namespace="shop",client_workload="api",server_namespace="data",server_workload="db",server_port="5432"'
)


def _one(prom: Prom, expr: str) -> float:
    got = _by(prom.query(expr))
    return got.get((), 0.0)


def test_bytes_grow_while_connections_are_open_and_end_exact(kafka_broker: Broker, tmp_path: Path) -> None:
    """tcpscope_connection_bytes_total rises while the pool is open (read twice through Prometheus
    before any of its connections closed) and ends at exactly the bytes written; the pool shows in
    tcpscope_open_connections while open and leaves it after; each connection's connect latency is
    observed once, its RTT every report."""
    assert os.geteuid() == 0, "the end-to-end test needs root (BPF, netns, cgroups)"
    nodes = 2
    base = _free_base(1 + nodes)
    prom = Prom(tmp_path, [f"127.0.0.1:{p}" for p in range(base, base + 1 + nodes)])
    topic = f"e2e-pool-{os.getpid()}"
    sim = subprocess.Popen(
        plan_argv(POOL_PLAN, tmp_path, kafka_broker.bootstrap, topic, "--metrics-port", str(base), "--hold"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    c2s = f'sum(tcpscope_connection_bytes_total{{{POOL_PAIR},direction="client_to_server"}})'
    s2c = f'sum(tcpscope_connection_bytes_total{{{POOL_PAIR},direction="server_to_client"}})'
    opened = f"sum(tcpscope_open_connections{{{POOL_PAIR}}})"
    want_c2s = POOL_COUNT * (len(f"REQ pooled {POOL_RATE}\n") + POOL_RATE * POOL_SECONDS)
    want_s2c = POOL_COUNT * len(b"OK\n") * POOL_SECONDS
    try:
        out = Reader(sim)
        out.wait(r"agents ready", 120)
        deadline = time.monotonic() + 60
        while _one(prom, opened) != 3:  # the pool is open and reported
            assert time.monotonic() < deadline, prom.query("tcpscope_open_connections")
            time.sleep(0.5)
        first = _one(prom, c2s)
        deadline = time.monotonic() + 30
        while (second := _one(prom, c2s)) <= first:  # a later flow interval's reports
            assert time.monotonic() < deadline, (first, second)
            time.sleep(0.5)
        still_open = _one(prom, opened)
        # both readings before any connection closed: more than at the first, less than in all
        assert 0 < first < second < want_c2s and still_open == 3, (first, second, still_open)
        assert not any("plan done" in line for _, line in out.lines)
        _, pooled = out.wait(r"tcpscope-sim: pooled ", 120)
        assert pooled.endswith("exact"), pooled
        out.wait(r"holding", 60)
        deadline = time.monotonic() + 30
        while (_one(prom, c2s), _one(prom, s2c), _one(prom, opened)) != (want_c2s, want_s2c, 0):
            assert time.monotonic() < deadline, (_one(prom, c2s), want_c2s, _one(prom, s2c), want_s2c)
            time.sleep(0.5)
        assert _one(prom, f"sum(tcpscope_connect_latency_seconds_count{{{POOL_PAIR}}})") == 3
        rtt_samples = _one(prom, f"sum(tcpscope_rtt_seconds_count{{{POOL_PAIR}}})")
        assert rtt_samples >= POOL_COUNT * (POOL_SECONDS // 3), rtt_samples  # every 2 s report, and the closes
    finally:
        _stop(sim, prom)
