"""Traffic metrics per (client, server) pair, computed in the collector after remote-end resolution
and served on its --metrics-port beside its own metrics (docs/metrics.md).

Input: the lifecycle events (one per socket, at CLOSE), the flows (aggregated ordinary
connections), the open-connection reports (`open` events, and the open part of flows) and the
lifecycles aggregated past the agents' anomaly budget (AnomalyAggregate of kind ANOMALY_LIFECYCLE:
`count` connections with their key's outcome, bytes and retransmits summed; no durations, no
latency) of every batch the collector published. Other event kinds are not counted here: a
lifecycle already carries its socket's retransmits and how it ended (the storm signals of
collector/storm_metrics.py count SYN-ACK retransmits and refusals).

Open connections: bytes and retransmits grow while a connection is open. Each flow interval the
agent reports an open connection's progress since its previous report (in its flow, or as an open
event); its lifecycle at close adds only what the reports had not taken (`tx_bytes -
reported_tx_bytes`, ...; an anomaly aggregate's sums are of those parts already), so the counters
end exact. `tcpscope_open_connections` is a gauge: the open connections of a pair reported in the
last two and a half flow intervals (each report names the interval; a connection that closed
leaves it at its lifecycle, or, in a flow or an anomaly aggregate, when its reports stop).

Latency: `tcpscope_connect_latency_seconds` observes each connection's connect latency once (in its
first report, or at close when it was never reported open), `tcpscope_rtt_seconds` its smoothed RTT
once per report (every open report and at close); both in the log2 bounds of LATENCY_EXPONENTS, into
which a flow's srtt_us_log2 / connect_latency_us_log2 buckets fall whole.

Counting rule (each connection once, with no state shared between collector replicas): a socket's
event counts its connection when it is the client's (role ACTIVE), or when it is the server's and
the client is not watched by an agent. "Watched" is decided from the event alone: its remote end
resolved to a pod or to a Service (a ClusterIP's peer is the backend pod kube-proxy chose;
`--metrics-watched-peers pod`: an agent runs on every node), or to a node when agents also watch
host processes (`node`; both are the default, as agents watch every cgroup unless --cgroup-root
limits them), or to this very node's host when the socket itself is a host process's, or it is a
loopback address or the socket's own (the same agent reports both sockets: host loopback without
Kubernetes). A node as the peer is also what a backend sees of a NodePort's client under SNAT
(externalTrafficPolicy: Cluster): with `node` watched, the client's socket counts that connection
and the backend's does not, across replicas too; without it both would (docs/services.md). A
connection whose two sockets both reach this replica is counted once by its `connection_id`
(`same_connection`), whatever the rule said of each. Each replica
counts the batches it receives; a connection's two sockets may reach different replicas and still
only one of them counts it, so `sum without (instance)` over replicas is exact.

Retransmits and resets are counted per segment and per RST by the socket that sent them (each has
exactly one sender); a reset the receiving socket saw is counted by it only when the sender is not
watched (reason UNKNOWN then). A RST the network forged has no sender: nobody counts it. Through a
Service, the client's socket names the Service (server_workload = the Service's name, server_port =
the Service's port) and the backend's RSTs are counted under the backend (docs/services.md).
Resets count RSTs that ended established connections: a refused connect is
`tcpscope_connections_total{outcome="refused"}`.

Durations: `tcpscope_connection_duration_seconds` observes established connections, in buckets
whose upper bounds are powers of two microseconds (`DURATION_EXPONENTS`), so each log2 bucket of a
Flow (`duration_us_log2[i]`: [2^i, 2^(i+1)) us) falls whole into one of them. Lifecycle durations
are bucketed the same way (truncated to microseconds, then by log2), so a connection lands in the
same bucket whether it came one by one or aggregated. (A duration of exactly 2^k us counts in the
next bucket up, not in le=2^k: the price of mapping flows exactly.)
"""

from __future__ import annotations

import bisect
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.config import CollectorConfig
from tcpscope.kafka_layout import RecentKeys
from tcpscope.outcome import aggregate_lifecycle, classify, reset_reason
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    ANOMALY_LIFECYCLE,
    EXTERNAL,
    HOST,
    LISTEN,
    NODE,
    PASSIVE,
    POD,
    RESET_RECEIVED,
    RESET_SENT,
    SERVICE,
    Endpoint,
    EventBatch,
    Lifecycle,
    TcpEvent,
)

PAIR_LABELS = ("client_namespace", "client_workload", "server_namespace", "server_workload", "server_port")
OTHER = "other"
OTHER_KEY: tuple[str, str, str, str, str] = (OTHER,) * 5
DURATION_EXPONENTS: tuple[int, ...] = tuple(range(8, 31, 2))
"""Histogram bounds le = 2^k microseconds: 256 us, 1.024 ms, 4.1 ms, ... 17.9 min (then +Inf)."""
DURATION_BOUNDS_S: tuple[float, ...] = tuple(2**k / 1e6 for k in DURATION_EXPONENTS)
FLOW_BUCKETS = 32  # Flow.duration_us_log2 has at most 32 buckets; the last is open-ended
# Flow bucket i ([2^i, 2^(i+1)) us) -> our bucket: the first bound 2^k with k >= i+1 (len = +Inf)
_FLOW_TO_BUCKET: tuple[int, ...] = tuple(
    bisect.bisect_left(DURATION_EXPONENTS, i + 1) if i < FLOW_BUCKETS - 1 else len(DURATION_EXPONENTS)
    for i in range(FLOW_BUCKETS)
)
LATENCY_EXPONENTS: tuple[int, ...] = tuple(range(4, 25, 2))
"""Latency histogram bounds le = 2^k microseconds: 16 us, 64 us, 256 us, ... 16.8 s (then +Inf)."""
LATENCY_BOUNDS_S: tuple[float, ...] = tuple(2**k / 1e6 for k in LATENCY_EXPONENTS)
_FLOW_TO_LATENCY: tuple[int, ...] = tuple(
    bisect.bisect_left(LATENCY_EXPONENTS, i + 1) if i < FLOW_BUCKETS - 1 else len(LATENCY_EXPONENTS)
    for i in range(FLOW_BUCKETS)
)
OPEN_WINDOW_INTERVALS = 2.5  # an open connection counts in the gauge this many flow intervals after a report
DEFAULT_INTERVAL_S = 10.0  # when a report does not say its interval
PAIR_BASE_SERIES = 3  # retransmits, bytes in both directions
HISTOGRAM_SERIES = len(DURATION_BOUNDS_S) + 3  # the bounds, +Inf, _sum, _count
LATENCY_SERIES = len(LATENCY_BOUNDS_S) + 3
NEW_PAIR_SERIES = PAIR_BASE_SERIES + HISTOGRAM_SERIES + 1  # with its first outcome; more outcomes,
# reset reasons, the latency histograms and the open gauge may follow, so a full table can pass the
# bound by those (at most 6 outcomes + reasons + 2 latency histograms + 1)
RECENT_BATCHES = 4096  # (agent_id, sequence) remembered to count a same-replica resend once
RECENT_CONNECTIONS = 65536  # connection ids this replica counted, to count a connection once


def log2_bucket(duration_us: int) -> int:
    """The Flow histogram's bucket for a duration in microseconds (bucket 0 also holds < 1 us)."""
    return min(max(duration_us, 1).bit_length() - 1, FLOW_BUCKETS - 1)


class BatchObserver(Protocol):
    """What the collector's service hands each batch once Kafka acknowledged it (one thread)."""

    def observe(self, batch: EventBatch) -> None: ...


class _Latency:
    """One latency histogram of a pair: per bucket (not cumulative; the last is +Inf) and the sum."""

    __slots__ = ("buckets", "sum_s")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.sum_s = 0.0

    def observe_us(self, us: int) -> None:
        self.buckets[_FLOW_TO_LATENCY[log2_bucket(us)]] += 1
        self.sum_s += us / 1e6

    def add_log2(self, buckets: Iterable[int], sum_s: float) -> None:
        """A flow's log2 histogram (bucket i: [2^i, 2^(i+1)) us) and its sum."""
        for i, n in enumerate(list(buckets)[:FLOW_BUCKETS]):
            if n:
                self.buckets[_FLOW_TO_LATENCY[i]] += n
        self.sum_s += sum_s


class _Pair:
    """The counters of one (client, server, server port) key."""

    __slots__ = (
        "buckets",
        "bytes_c2s",
        "bytes_s2c",
        "connect",
        "duration_sum_s",
        "open",
        "outcomes",
        "resets",
        "retransmits",
        "rtt",
        "updated",
    )

    def __init__(self, now: float) -> None:
        self.outcomes: dict[str, int] = {}
        self.resets: dict[tuple[str, str], int] = {}  # (sender, reason)
        self.retransmits = 0
        self.bytes_c2s = 0
        self.bytes_s2c = 0
        self.buckets: list[int] | None = None  # per bucket (not cumulative), the last is +Inf
        self.duration_sum_s = 0.0
        self.updated = now
        self.connect: _Latency | None = None
        self.rtt: _Latency | None = None
        # open connections reported: (node, flow key or socket id) -> (count, seen at, window)
        self.open: dict[tuple[object, ...], tuple[int, float, float]] | None = None

    def series(self) -> int:
        latency = sum(LATENCY_SERIES for h in (self.connect, self.rtt) if h is not None)
        return (
            len(self.outcomes)
            + len(self.resets)
            + PAIR_BASE_SERIES
            + (HISTOGRAM_SERIES if self.buckets is not None else 0)
            + latency
            + (1 if self.open is not None else 0)
        )

    def latency(self, which: str) -> _Latency:
        h: _Latency | None = getattr(self, which)
        if h is None:
            h = _Latency()
            setattr(self, which, h)
        return h

    def report_open(self, source: tuple[object, ...], count: int, now: float, window_s: float) -> None:
        if self.open is None:
            self.open = {}
        self.open[source] = (count, now, window_s)

    def open_now(self, now: float) -> int:
        """The open connections reported within their window; older reports are dropped."""
        if not self.open:
            return 0
        stale = [k for k, (_n, seen, window) in self.open.items() if now - seen > window]
        for k in stale:
            del self.open[k]
        return sum(n for n, _seen, _w in self.open.values())

    def observe_duration(self, bucket: int, n: int, sum_s: float) -> None:
        if self.buckets is None:
            self.buckets = [0] * (len(DURATION_BOUNDS_S) + 1)
        self.buckets[bucket] += n
        self.duration_sum_s += sum_s


class TrafficMetrics(Collector):
    """The traffic counters, registered into the collector's registry; `observe` on the collector's
    prepare thread, `collect` on the metrics server's thread (one lock between them)."""

    def __init__(
        self,
        by: str = "workload",
        namespaces: Iterable[str] = (),
        exclude_namespaces: Iterable[str] = (),
        max_series: int = 20_000,
        ttl_s: float = 900.0,
        watched_peers: Iterable[str] = ("pod", "node"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if by not in ("workload", "pod", "namespace"):
            raise ValueError("by must be workload, pod or namespace")
        self.by = by
        self._include = frozenset(namespaces)
        self._exclude = frozenset(exclude_namespaces)
        self.max_series = max_series
        self.ttl_s = ttl_s
        self._watched = frozenset(watched_peers)
        self._clock = clock
        self._lock = threading.Lock()
        self._pairs: dict[tuple[str, str, str, str, str], _Pair] = {}
        self._series = 0
        self._recent = RecentKeys(RECENT_BATCHES)
        self._counted = RecentKeys(RECENT_CONNECTIONS)
        self._next_sweep = clock() + self._sweep_every()
        self.folded = 0  # events/flows counted into the `other` pair because of the bound
        self.expired = 0  # pairs removed after --metrics-ttl without an update
        self.duplicates = 0
        self.skipped: dict[str, int] = {}

    def _sweep_every(self) -> float:
        return min(self.ttl_s / 4, 10.0)

    @property
    def series(self) -> int:
        """Traffic series exported now (the bound's measure)."""
        return self._series

    @property
    def pairs(self) -> int:
        return len(self._pairs)

    # --- input -----------------------------------------------------------------------------------

    def observe(self, batch: EventBatch) -> None:
        """Count one published batch (a repeat of a recent batch of the same agent is not counted)."""
        with self._lock:
            if not self._recent.add((batch.agent_id, batch.sequence)):
                self.duplicates += 1
                return
            now = self._clock()
            if now >= self._next_sweep:  # before counting: stale pairs make room for new ones
                self._expire(now)
            for ev in batch.events:
                self._observe_event(ev, now)

    def expire(self) -> int:
        """Remove pairs not updated for ttl_s; returns how many were removed."""
        with self._lock:
            return self._expire(self._clock())

    def _expire(self, now: float) -> int:
        cutoff = now - self.ttl_s
        stale = [k for k, p in self._pairs.items() if p.updated < cutoff]
        for k in stale:
            self._series -= self._pairs.pop(k).series()
        self.expired += len(stale)
        self._next_sweep = now + self._sweep_every()
        return len(stale)

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def peer_watched(self, ev: TcpEvent) -> bool:
        """Whether the other end of this socket's connection is watched by an agent (its own agent
        then reports it): decided from the event alone (module docstring)."""
        kind = ev.remote.kind
        if kind in (POD, SERVICE):
            # a ClusterIP's peer is the backend pod kube-proxy picked: a pod like any other
            return "pod" in self._watched
        if _same_host(ev):
            return True  # loopback or the socket's own address: this very agent reports the peer
        if kind == NODE:
            return "node" in self._watched or (ev.local.kind == HOST and bool(ev.node) and ev.remote.name == ev.node)
        return False

    def party(self, ep: Endpoint) -> tuple[str, str]:
        """(namespace, workload) labels of one end; stable names for ends that are not pods."""
        kind = ep.kind
        if kind == POD:
            if not ep.name:
                return ep.namespace, "unknown"  # in a node's pod range, pod not (yet) known
            if self.by == "namespace":
                return ep.namespace, ""
            if self.by == "pod":
                return ep.namespace, ep.name
            return ep.namespace, ep.workload.name or ep.name
        if kind == SERVICE:
            return ep.namespace, ("" if self.by == "namespace" else ep.name)
        if kind == NODE:
            return "", f"node/{ep.name}"
        if kind == HOST:
            return "", "host"
        if kind == EXTERNAL:
            return "", "external"
        return "", "unresolved"

    def _admitted(self, client_ns: str, server_ns: str) -> bool:
        if client_ns in self._exclude or server_ns in self._exclude:
            return False
        return not self._include or client_ns in self._include or server_ns in self._include

    def _pair_for(self, key: tuple[str, str, str, str, str], now: float) -> _Pair:
        pair = self._pairs.get(key)
        if pair is None:
            # room for the new pair, and for `other` while it does not exist yet (it never folds)
            room = NEW_PAIR_SERIES * (1 if OTHER_KEY in self._pairs else 2)
            if key != OTHER_KEY and self._series + room > self.max_series:
                self.folded += 1
                return self._pair_for(OTHER_KEY, now)
            pair = self._pairs[key] = _Pair(now)
            self._series += pair.series()
        pair.updated = now
        return pair

    def _observe_event(self, ev: TcpEvent, now: float) -> None:
        which = ev.WhichOneof("kind")
        if which == "lifecycle":
            role = ev.lifecycle.role
            if ev.lifecycle.last_state == LISTEN or ev.remote.port == 0:
                self._skip("listener")
                return
        elif which == "flow":
            role = ev.flow.role
        elif which == "open":
            role = ev.open.role
        elif which == "anomalies" and ev.anomalies.kind == ANOMALY_LIFECYCLE:
            role = ev.anomalies.role  # lifecycles past the agent's anomaly budget, `count` of them
        else:
            return
        if role not in (ACTIVE, PASSIVE):
            self._skip("no_role")  # a socket older than its agent: which end is the client is unknown
            return
        client_view = role == ACTIVE
        client_end, server_end = (ev.local, ev.remote) if client_view else (ev.remote, ev.local)
        (cns, cwl), (sns, swl) = self.party(client_end), self.party(server_end)
        if not self._admitted(cns, sns):
            self._skip("namespace_filter")
            return
        peer_watched = self.peer_watched(ev)
        counts = client_view or not peer_watched
        if counts and ev.connection_id and not self._counted.add(ev.connection_id):
            # the connection's other socket was counted here already (both ends reached this replica
            # and the rule let both count: a peer it could not tell was watched)
            self._skip("same_connection")
            counts = False
        if not counts and not _adds_for_peer(ev):
            return  # the client's own agent counts this connection: nothing here (no empty series)
        pair = self._pair_for((cns, cwl, sns, swl, str(server_end.port)), now)
        before = pair.series()
        if which == "flow":
            self._add_flow(pair, ev, client_view, counts, now)
        elif which == "open":
            self._add_open(pair, ev, client_view, counts, now)
        elif which == "anomalies":
            a = ev.anomalies
            lc = aggregate_lifecycle(a)
            pair.retransmits += a.retransmits
            self._add_outcome(pair, lc, a.count, a.tx_bytes, a.rx_bytes, client_view, counts, peer_watched)
            # no durations: an aggregate carries only their sum, so the histogram holds the
            # connections reported one by one and in flows (docs/metrics.md)
        else:
            self._add_lifecycle(pair, ev, client_view, counts, peer_watched)
        self._series += pair.series() - before

    def _add_lifecycle(self, pair: _Pair, ev: TcpEvent, client_view: bool, counts: bool, peer_watched: bool) -> None:
        lc = ev.lifecycle
        # this socket's own segments, never the peer's; those its open reports counted already left out
        pair.retransmits += max(lc.retransmits - lc.reported_retransmits, 0)
        # what the open reports (or, seeded, the time before the agent found it) had not counted
        sent = max(lc.tx_bytes - lc.reported_tx_bytes, 0)
        received = max(lc.rx_bytes - lc.reported_rx_bytes, 0)
        established = self._add_outcome(pair, lc, 1, sent, received, client_view, counts, peer_watched)
        if pair.open:
            pair.open.pop((ev.node, ev.socket_id), None)  # closed: no longer open
        if not counts:
            return
        if established:
            bucket = _FLOW_TO_BUCKET[log2_bucket(lc.duration_ns // 1000)]
            pair.observe_duration(bucket, 1, lc.duration_ns / 1e9)
        if lc.connect_latency_ns and not lc.connect_latency_reported:
            pair.latency("connect").observe_us(lc.connect_latency_ns // 1000)
        if lc.srtt_us:
            pair.latency("rtt").observe_us(lc.srtt_us)

    def _add_outcome(
        self,
        pair: _Pair,
        lc: Lifecycle,
        n: int,
        sent: int,
        received: int,
        client_view: bool,
        counts: bool,
        peer_watched: bool,
    ) -> bool:
        """n connections that ended as lc says (one socket's lifecycle, or an aggregate's key) with these
        bytes in all: their resets, and (when this socket counts the connection) outcome and bytes.
        Returns whether they were established."""
        established, outcome = classify(lc, client_view)
        if established and lc.ending == RESET_SENT:
            sender = "client" if client_view else "server"
            k = (sender, reset_reason(lc))
            pair.resets[k] = pair.resets.get(k, 0) + n
        elif established and lc.ending == RESET_RECEIVED and not peer_watched:
            k = ("server" if client_view else "client", "UNKNOWN")  # the sender's agent would know
            pair.resets[k] = pair.resets.get(k, 0) + n
        if counts:
            pair.outcomes[outcome] = pair.outcomes.get(outcome, 0) + n
            pair.bytes_c2s += sent if client_view else received
            pair.bytes_s2c += received if client_view else sent
        return established

    def _add_open(self, pair: _Pair, ev: TcpEvent, client_view: bool, counts: bool, now: float) -> None:
        o = ev.open
        pair.retransmits += o.retransmits  # this socket's own segments since its last report
        if not counts:
            return
        pair.bytes_c2s += o.tx_bytes if client_view else o.rx_bytes
        pair.bytes_s2c += o.rx_bytes if client_view else o.tx_bytes
        if o.connect_latency_ns:
            pair.latency("connect").observe_us(o.connect_latency_ns // 1000)
        if o.srtt_us:
            pair.latency("rtt").observe_us(o.srtt_us)
        pair.report_open((ev.node, ev.socket_id), 1, now, _window_s(o.interval_ns))

    def _add_flow(self, pair: _Pair, ev: TcpEvent, client_view: bool, counts: bool, now: float) -> None:
        f = ev.flow
        if not counts:
            return
        # closed connections' last part and open connections' progress since their previous report
        pair.bytes_c2s += f.tx_bytes if client_view else f.rx_bytes
        pair.bytes_s2c += f.rx_bytes if client_view else f.tx_bytes
        if sum(f.connect_latency_us_log2):
            pair.latency("connect").add_log2(f.connect_latency_us_log2, f.connect_latency_sum_ns / 1e9)
        if sum(f.srtt_us_log2):
            pair.latency("rtt").add_log2(f.srtt_us_log2, f.srtt_sum_us / 1e6)
        source = (ev.node, f.role, ev.local.ip, ev.remote.ip, ev.local.port or ev.remote.port, ev.process.cgroup_id)
        if f.open_connections or (pair.open and source in pair.open):
            pair.report_open(source, f.open_connections, now, _window_s(f.interval_ns))
        if not f.connections:
            return
        pair.outcomes["ok"] = pair.outcomes.get("ok", 0) + f.connections  # flows hold only ordinary ones
        for i, n in enumerate(f.duration_us_log2[:FLOW_BUCKETS]):
            if n:
                pair.observe_duration(_FLOW_TO_BUCKET[i], n, 0.0)
        pair.observe_duration(len(DURATION_BOUNDS_S), 0, f.duration_sum_ns / 1e9)

    # --- output ----------------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are only known at collect time; nothing to check at register

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self._clock()
            if now >= self._next_sweep:
                self._expire(now)
            families = self._families()
        yield from families

    def _families(self) -> list[Metric]:
        conns = CounterMetricFamily(
            "tcpscope_connections",
            "connections by pair and outcome (counting rule: docs/metrics.md)",
            labels=[*PAIR_LABELS, "outcome"],
        )
        resets = CounterMetricFamily(
            "tcpscope_resets",
            "RSTs that ended established connections, by sender and the kernel's reason",
            labels=[*PAIR_LABELS, "sender", "reason"],
        )
        retrans = CounterMetricFamily(
            "tcpscope_retransmits", "data segments retransmitted, by either end", labels=list(PAIR_LABELS)
        )
        data = CounterMetricFamily(
            "tcpscope_connection_bytes",
            "application bytes acknowledged, by direction",
            labels=[*PAIR_LABELS, "direction"],
        )
        dur = HistogramMetricFamily(
            "tcpscope_connection_duration_seconds",
            "durations of established connections (first state change to close)",
            labels=list(PAIR_LABELS),
        )
        connect = HistogramMetricFamily(
            "tcpscope_connect_latency_seconds",
            "connect latency, once per connection (client: connect() to established; server: the handshake's "
            "SYN-ACK round trip plus its time in SYN_RECV)",
            labels=list(PAIR_LABELS),
        )
        rtt = HistogramMetricFamily(
            "tcpscope_rtt_seconds",
            "smoothed RTT (srtt), one sample per connection per report: every flow interval while open, and at close",
            labels=list(PAIR_LABELS),
        )
        opened = GaugeMetricFamily(
            "tcpscope_open_connections",
            "connections open at their last report (within 2.5 flow intervals)",
            labels=list(PAIR_LABELS),
        )
        les = [_le(b) for b in DURATION_BOUNDS_S] + ["+Inf"]
        latency_les = [_le(b) for b in LATENCY_BOUNDS_S] + ["+Inf"]
        now = self._clock()
        for key, p in self._pairs.items():
            labels = list(key)
            for outcome, n in p.outcomes.items():
                conns.add_metric([*labels, outcome], n)
            for (sender, reason), n in p.resets.items():
                resets.add_metric([*labels, sender, reason], n)
            retrans.add_metric(labels, p.retransmits)
            data.add_metric([*labels, "client_to_server"], p.bytes_c2s)
            data.add_metric([*labels, "server_to_client"], p.bytes_s2c)
            if p.buckets is not None:
                cumulative, acc = [], 0
                for le, n in zip(les, p.buckets, strict=True):
                    acc += n
                    cumulative.append((le, float(acc)))
                dur.add_metric(labels, cumulative, p.duration_sum_s)
            for family, h in ((connect, p.connect), (rtt, p.rtt)):
                if h is not None:
                    family.add_metric(labels, _cumulative(latency_les, h.buckets), h.sum_s)
            if p.open is not None:
                opened.add_metric(labels, p.open_now(now))
        series = GaugeMetricFamily("tcpscope_traffic_series", "traffic series exported now")
        series.add_metric([], self._series)
        limit = GaugeMetricFamily("tcpscope_traffic_series_limit", "--metrics-max-series")
        limit.add_metric([], self.max_series)
        pairs = GaugeMetricFamily("tcpscope_traffic_pairs", "pairs (label sets before outcome etc.) held now")
        pairs.add_metric([], len(self._pairs))
        folded = CounterMetricFamily(
            "tcpscope_traffic_folded_events",
            "events and flows counted into the 'other' pair: the series bound was reached",
        )
        folded.add_metric([], self.folded)
        expired = CounterMetricFamily(
            "tcpscope_traffic_expired_pairs", "pairs removed after --metrics-ttl without an update"
        )
        expired.add_metric([], self.expired)
        skipped = CounterMetricFamily(
            "tcpscope_traffic_skipped_events",
            "lifecycle events and flows not counted, by reason (listener, no_role, namespace_filter)",
            labels=["reason"],
        )
        for reason, n in sorted(self.skipped.items()):
            skipped.add_metric([reason], n)
        dups = CounterMetricFamily(
            "tcpscope_traffic_duplicate_batches", "batches not counted again (a resend this replica had counted)"
        )
        dups.add_metric([], self.duplicates)
        return [
            conns,
            resets,
            retrans,
            data,
            dur,
            connect,
            rtt,
            opened,
            series,
            limit,
            pairs,
            folded,
            expired,
            skipped,
            dups,
        ]


def _same_host(ev: TcpEvent) -> bool:
    """The peer is on this socket's own host or pod: a loopback address, or the socket's own one."""
    ip = ev.remote.ip
    if not ip:
        return False
    if ip == ev.local.ip:
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _adds_for_peer(ev: TcpEvent) -> bool:
    """Whether a server's event whose client is watched still adds something: its own retransmitted
    segments or a RST it sent (a flow never has either)."""
    which = ev.WhichOneof("kind")
    if which == "open":
        return ev.open.retransmits > 0
    if which == "anomalies":
        return ev.anomalies.retransmits > 0 or ev.anomalies.ending == RESET_SENT
    if which != "lifecycle":
        return False
    lc = ev.lifecycle
    return lc.retransmits > lc.reported_retransmits or lc.ending == RESET_SENT


def _window_s(interval_ns: int) -> float:
    """How long a report keeps a connection in the open gauge: OPEN_WINDOW_INTERVALS of its interval."""
    return OPEN_WINDOW_INTERVALS * (interval_ns / 1e9 if interval_ns else DEFAULT_INTERVAL_S)


def _cumulative(les: list[str], buckets: list[int]) -> list[tuple[str, float]]:
    out, acc = [], 0
    for le, n in zip(les, buckets, strict=True):
        acc += n
        out.append((le, float(acc)))
    return out


def _le(bound_s: float) -> str:
    return repr(bound_s)


def build_traffic_metrics(cfg: CollectorConfig) -> TrafficMetrics:
    """The collector's traffic metrics from its config (collector/__main__.py registers them)."""
    return TrafficMetrics(
        cfg.metrics_by,
        cfg.metrics_namespaces,
        cfg.metrics_exclude_namespaces,
        cfg.metrics_max_series,
        cfg.metrics_ttl,
        cfg.metrics_watched_peers,
    )
