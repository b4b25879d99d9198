"""Per-(client, server) summaries of TCP connections, for `tcpscope-tail --summary`.

Pure aggregation: TcpEvents in, one row per pair out. Only lifecycle events (one per socket, at
CLOSE) are counted, and each *connection* is counted once although both ends' agents may have
reported it: the client's socket (role ACTIVE) and the server's (role PASSIVE) are matched by their
`connection_id` (the same on both sockets whatever NAT did to addresses and ports, whatever the
nodes' clocks say: docs/services.md), or, where an agent left it 0, by the connection's 4-tuple and
start time (ports are reused, so the tuple alone is not an identity). The client's view decides how
the connection ended; the server's view fills in when the client's agent did not see it (for example
a client outside the cluster).

Through a Service (kube-proxy's DNAT) the client's socket names the address it connected to (the
ClusterIP and Service port, resolved as the Service) and the server's names the backend pod and its
target port. A row is then (client, backend, Service): the backend from the server's view, the
Service from the client's (`PairSummary.via`), so a Service with two backends gives one row per
backend, each with its exact share. A connection whose backend no agent reported (refused, timed out,
a backend on an unwatched node) is a row whose server is the Service itself. NodePorts are alike:
`via` is the node and node port the client connected to.

Flows (TcpEvent.flow: ordinary connections the agent aggregated in the kernel) carry no client
port or connection id, so they cannot be matched one by one. They are counted per (client address,
server address, server port): from the client's flows when the client's agent reported flows of that
client address (so through a Service, where the client's flows name the ClusterIP and the backends'
name the backend, the backends' flows of a watched client are not counted again), else from the
server's. A server's individual lifecycle whose client counted the same connection in
a flow (the server retransmitted, the client saw nothing unusual) adds its problem counters but not
a second connection. Where the backends' flows say which Service ports they are endpoints of
(`Endpoint.services`, the collector's --resolve-backends), a client's flows to a Service are split by
backend (tail/backend_split.py): each backend's row (client, backend, via Service) gets its share,
and the Service row keeps only the connections whose backend is not known.

Anomalies past the agents' budget (TcpEvent.anomalies, AnomalyAggregate: lifecycles counted in the
kernel per key beside a few exemplars sent one by one) are counted like flows, per (client address,
server address, server port), `count` connections each with the outcome their key says: the
client's when the client's agent reported anything for that triple, else the server's. A server's
individual lifecycle whose client counted the triple in aggregates and that ended other than ok
is in those aggregates (the client saw the same end) and is not counted again. Their resets take
the cause of their exemplars' class (tail/resetcause.py, `aggregate_verdict`).

Counters, each counting connections:
- connections: established connections (handshake completed)
- client_resets: established, then aborted by the client (client sent the RST)
- server_resets: established, then aborted by the server
- network_resets: established, then aborted by a RST that neither end sent: the network between
  them injected it (tail/resetcause.py decides, docs/reset-cause.md); not in the two above
- refused: the server answered the SYN with a RST (nothing listening; errno ECONNREFUSED)
- timeouts: the client gave up (ETIMEDOUT), in the handshake or later
- retransmits: established connections where either end retransmitted at least one segment
- failed: connects that never established for another reason (EHOSTUNREACH, aborted, ...)

Latency and open connections, in the row the connection (or its flow) is counted in: connect
latency once per connection (a lifecycle's, a flow's histogram, or the first open report of a
connection still open), the smoothed RTT once per report (each open report, each flow's histogram,
each lifecycle at close); open reports of one connection from its client's agent when it reported
any, else from the server's. OPEN: the connections open at their agent's last pass (an open report,
or the open part of a flow source's latest flow, in that node's last pass, and no lifecycle since).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tail import clock, resetcause
from tail.backend_split import BackendSplit, FlowKey, ServiceRef, SplitCounts, split
from tail.gaps import Conflicts, Gaps, rfc3339
from tail.pairs import COUNTERS, LOG2_BUCKETS, PairSummary, Party
from tail.servicemap import render_dot
from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, Decoded
from tcpscope.losses import UNTRACKED_TOTAL, add_counts, definite_total, possible_text, possible_total, untracked_total
from tcpscope.outcome import aggregate_lifecycle, classify, is_duplicate_child, reset_reason
from tcpscope.settings import number
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    ANOMALY_LIFECYCLE,
    LISTEN,
    NODE,
    PASSIVE,
    SERVICE,
    Endpoint,
    EndpointKind,
    EventBatch,
    Lifecycle,
    TcpEvent,
)

SORT_KEYS: tuple[str, ...] = ("problems", *COUNTERS, "client", "server", "last_seen")
MATCH_TOLERANCE_NS = 2_000_000_000
"""How far apart the two ends' start times may be and still be one connection (both agents stamp
with their node's wall clock; 2 s covers handshake time plus modest clock skew, and a 4-tuple is
never reused that fast because the client's port stays in TIME_WAIT or is picked afresh)."""


@dataclass
class _View:
    """One socket's lifecycle, oriented as (client end, server end)."""

    event: TcpEvent
    client_end: Endpoint
    server_end: Endpoint
    start_ns: int
    end_ns: int


_ViewKey = tuple[str, int, str, int]


@dataclass
class _Open:
    """One connection's open reports (docs: module docstring), by side (client, server): the
    latest report as a view, the RTT samples of all its reports, the connect latency it reported
    first (ns, 0: none)."""

    views: list[_View | None] = field(default_factory=lambda: [None, None])
    rtt: list[list[int]] = field(default_factory=lambda: [[0] * LOG2_BUCKETS, [0] * LOG2_BUCKETS])
    connect_ns: list[int] = field(default_factory=lambda: [0, 0])
    closed: bool = False
    last_ns: int = 0


_OpenKey = tuple[object, ...]


def _log2(us: int) -> int:
    return min(max(us, 1).bit_length() - 1, LOG2_BUCKETS - 1)


def _add_buckets(into: list[int], buckets: Iterable[int]) -> None:
    for i, n in enumerate(list(buckets)[:LOG2_BUCKETS]):
        into[i] += n


@dataclass
class _Rows:
    """The rows of one `pairs()` answer, by (client, server, via). A row's span (first and last
    seen) is over its closed connections; a row of open connections only shows its reports' span."""

    rows: dict[tuple[Party, Party, Party | None], PairSummary] = field(default_factory=dict)
    spans: dict[int, tuple[PairSummary, int, int]] = field(default_factory=dict)

    def row_for(self, client: Party, server: Party, via: Party | None) -> PairSummary:
        row = self.rows.get((client, server, via))
        if row is None:
            row = self.rows[(client, server, via)] = PairSummary(client, server, via=via)
        return row

    def reported(self, row: PairSummary, first_ns: int, last_ns: int) -> None:
        """Open reports from first_ns to last_ns in this row."""
        _, f, l_ = self.spans.get(id(row), (row, first_ns, last_ns))
        self.spans[id(row)] = (row, min(f, first_ns), max(l_, last_ns))

    def finish(self) -> list[PairSummary]:
        for row, first, last in self.spans.values():
            if not row.first_seen_ns:
                row.first_seen_ns, row.last_seen_ns = first, last
        return list(self.rows.values())


@dataclass
class Summarizer:
    """Collects lifecycle events and answers with per-pair counters (bounded by max_sockets)."""

    by: str = "pod"
    max_sockets: int = 1_000_000
    _views: dict[_ViewKey, tuple[list[_View], list[_View]]] = field(default_factory=dict, init=False)
    """views with connection_id 0, by (client ip, client port, server ip, server port)"""
    _by_id: dict[int, tuple[list[_View], list[_View]]] = field(default_factory=dict, init=False)
    """views with a connection_id: the two sockets of one connection, whatever their tuples"""
    _held: int = field(default=0, init=False)
    # flows by (client ip, server ip, server port): (the client's flows, the server's flows)
    _flows: dict[tuple[str, str, int], tuple[list[TcpEvent], list[TcpEvent]]] = field(default_factory=dict, init=False)
    # open reports of connections reported one by one: by connection id, else by 4-tuple
    _open: dict[_OpenKey, _Open] = field(default_factory=dict, init=False)
    _last_pass_ns: dict[str, int] = field(default_factory=dict, init=False)  # node -> its latest open report
    # aggregated anomalous lifecycles (TcpEvent.anomalies), keyed as the flows
    _aggs: dict[tuple[str, str, int], tuple[list[TcpEvent], list[TcpEvent]]] = field(default_factory=dict, init=False)
    resets: resetcause.ResetJoin = field(default_factory=resetcause.ResetJoin, init=False)
    """Who sent each received reset: fed every event (and batch losses, `add_batch`)."""
    skipped: dict[str, int] = field(default_factory=dict, init=False)
    """Lifecycle events not counted, by reason: no_role (socket older than the agent), listener,
    self (local end == remote end), duplicate_child (is_duplicate_child), over_capacity. Other event
    kinds are simply ignored."""

    def __post_init__(self) -> None:
        if self.by not in ("pod", "workload"):
            raise ValueError("by must be 'pod' or 'workload'")

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def add(self, ev: TcpEvent) -> None:
        """Take one event; everything but lifecycle and flow events is ignored (and resets, which
        only feed the reset join)."""
        self.resets.add(ev)
        kind = ev.WhichOneof("kind")
        if kind == "open":
            self._add_open(ev)
            return
        if kind == "flow":
            self._add_flow(ev)
            return
        if kind == "anomalies":
            if ev.anomalies.kind == ANOMALY_LIFECYCLE:
                self._add_aggregate(ev)
            return
        if kind != "lifecycle":
            return
        lc = ev.lifecycle
        if lc.last_state == LISTEN or ev.remote.port == 0:
            self._skip("listener")
            return
        if (ev.local.ip, ev.local.port) == (ev.remote.ip, ev.remote.port):
            # a TCP self-connect, or an event whose remote end was not captured: no pair to name
            self._skip("self")
            return
        if lc.role == ACTIVE:
            client_end, server_end, side = ev.local, ev.remote, 0
        elif lc.role == PASSIVE:
            if is_duplicate_child(lc):
                self._skip("duplicate_child")
                return
            client_end, server_end, side = ev.remote, ev.local, 1
        else:
            self._skip("no_role")
            return
        if self._held >= self.max_sockets:
            self._skip("over_capacity")
            return
        end_ns = ev.time.ToNanoseconds()
        view = _View(ev, client_end, server_end, end_ns - lc.duration_ns, end_ns)
        if ev.connection_id:
            self._by_id.setdefault(ev.connection_id, ([], []))[side].append(view)
        else:
            key = (client_end.ip, client_end.port, server_end.ip, server_end.port)
            self._views.setdefault(key, ([], []))[side].append(view)
        self._held += 1
        reports = self._open.get(_open_key(ev, client_end, server_end))
        if reports is not None:  # reported open before: its lifecycle counts it now
            reports.closed, reports.last_ns = True, max(reports.last_ns, end_ns)

    def _add_flow(self, ev: TcpEvent) -> None:
        fl = ev.flow
        if fl.role == ACTIVE:
            key, side = (ev.local.ip, ev.remote.ip, ev.remote.port), 0
        elif fl.role == PASSIVE:
            key, side = (ev.remote.ip, ev.local.ip, ev.local.port), 1
        else:
            self._skip("no_role")
            return
        if fl.open_connections:
            self._mark_pass(ev.node, fl.report_time.ToNanoseconds())
        if self._held >= self.max_sockets:
            self._skip("over_capacity")
            return
        self._flows.setdefault(key, ([], []))[side].append(ev)
        self._held += 1

    def _add_open(self, ev: TcpEvent) -> None:
        """An open report of one connection: its RTT sample, its first connect latency, and when
        its agent last saw it open."""
        op = ev.open
        if op.role == ACTIVE:
            client_end, server_end, side = ev.local, ev.remote, 0
        elif op.role == PASSIVE:
            client_end, server_end, side = ev.remote, ev.local, 1
        else:
            self._skip("no_role")
            return
        t = ev.time.ToNanoseconds()
        self._mark_pass(ev.node, t)
        key = _open_key(ev, client_end, server_end)
        reports = self._open.get(key)
        if reports is None:
            if self._held >= self.max_sockets:
                self._skip("over_capacity")
                return
            reports = self._open[key] = _Open()
            self._held += 1
        latest = reports.views[side]
        if latest is None or t >= latest.end_ns:
            reports.views[side] = _View(ev, client_end, server_end, t, t)
        reports.last_ns = max(reports.last_ns, t)
        if op.srtt_us:
            reports.rtt[side][_log2(op.srtt_us)] += 1
        if op.connect_latency_ns and not reports.connect_ns[side]:
            reports.connect_ns[side] = op.connect_latency_ns

    def _mark_pass(self, node: str, t: int) -> None:
        self._last_pass_ns[node] = max(self._last_pass_ns.get(node, 0), t)

    def _in_last_pass(self, node: str, t: int, interval_ns: int) -> bool:
        """Whether a report at t was in its node's last pass (within half an interval of it)."""
        return t >= self._last_pass_ns.get(node, 0) - (interval_ns or 10_000_000_000) // 2

    def _add_aggregate(self, ev: TcpEvent) -> None:
        a = ev.anomalies
        if a.role == ACTIVE:
            key, side = (ev.local.ip, ev.remote.ip, ev.remote.port), 0
        elif a.role == PASSIVE:
            key, side = (ev.remote.ip, ev.local.ip, ev.local.port), 1
        else:
            self._skip("no_role")
            return
        if self._held >= self.max_sockets:
            self._skip("over_capacity")
            return
        self._aggs.setdefault(key, ([], []))[side].append(ev)
        self._held += 1

    def add_all(self, events: Iterable[TcpEvent]) -> None:
        for ev in events:
            self.add(ev)

    def add_batch(self, agent_id: str, batch: EventBatch) -> None:
        """A batch summary: its node is watched, and its losses make the peer's resets unknown."""
        self.resets.add_batch(agent_id, batch)

    def reset_cause(self, cv: _View | None, sv: _View | None) -> resetcause.Verdict | None:
        """Who sent the RST that ended this connection (resetcause.connection_verdict)."""
        got = sorted(
            (r for v in (cv, sv) if v is not None for r in (self.resets.received_by(v.event),) if r is not None),
            key=lambda r: r.time_ns,
        )
        return resetcause.connection_verdict([self.resets.classify(r) for r in got])

    def evict_before(self, cutoff_ns: int) -> None:
        """Forget sockets that closed before cutoff_ns (a sliding window for long-running tails)."""
        for views in (self._views, self._by_id):
            for key in list(views):
                clients, servers = views[key]  # type: ignore[index]
                clients[:] = [v for v in clients if v.end_ns >= cutoff_ns]
                servers[:] = [v for v in servers if v.end_ns >= cutoff_ns]
                if not clients and not servers:
                    del views[key]  # type: ignore[arg-type]
        for fkey in list(self._flows):
            cflows, sflows = self._flows[fkey]
            cflows[:] = [f for f in cflows if f.time.ToNanoseconds() >= cutoff_ns]
            sflows[:] = [f for f in sflows if f.time.ToNanoseconds() >= cutoff_ns]
            if not cflows and not sflows:
                del self._flows[fkey]
        for okey in [k for k, o in self._open.items() if o.last_ns < cutoff_ns]:
            del self._open[okey]
        for akey in list(self._aggs):
            caggs, saggs = self._aggs[akey]
            caggs[:] = [x for x in caggs if x.anomalies.last.ToNanoseconds() >= cutoff_ns]
            saggs[:] = [x for x in saggs if x.anomalies.last.ToNanoseconds() >= cutoff_ns]
            if not caggs and not saggs:
                del self._aggs[akey]
        self._held = (
            sum(len(c) + len(s) for c, s in self._views.values())
            + sum(len(c) + len(s) for c, s in self._by_id.values())
            + sum(len(c) + len(s) for c, s in self._flows.values())
            + len(self._open)
            + sum(len(c) + len(s) for c, s in self._aggs.values())
        )
        self.resets.evict_before(cutoff_ns - self.resets.window_ns)

    def connections(self) -> list[tuple[_View | None, _View | None]]:
        """Each connection once: (client view, server view), either possibly None. Views with a
        connection id pair by it; a view left alone by its id (its peer's agent set none: an older
        agent) may still pair with an id-less view of its tuple by start time."""
        out: list[tuple[_View | None, _View | None]] = []
        lone: dict[_ViewKey, tuple[list[_View], list[_View]]] = {
            k: (list(c), list(s)) for k, (c, s) in self._views.items()
        }
        for clients, servers in self._by_id.values():
            for i in range(max(len(clients), len(servers))):
                cv = clients[i] if i < len(clients) else None
                sv = servers[i] if i < len(servers) else None
                if cv is not None and sv is not None:
                    out.append((cv, sv))
                    continue
                v = cv or sv
                assert v is not None
                key = (v.client_end.ip, v.client_end.port, v.server_end.ip, v.server_end.port)
                if key in lone:
                    lone[key][0 if cv is not None else 1].append(v)
                else:
                    out.append((cv, sv))
        for clients, servers in lone.values():
            out.extend(_match(clients, servers))
        return out

    def pairs(self, window_s: float | None = None, now_ns: int | None = None) -> list[PairSummary]:
        """Per-pair counters over connections that closed within the last window_s seconds."""
        cutoff = None
        if window_s is not None:
            now = now_ns if now_ns is not None else int(dt.datetime.now(dt.UTC).timestamp() * 1e9)
            cutoff = int(now - window_s * 1e9)
        rows = _Rows()
        row_for = rows.row_for
        client_flows = {k for k, (cf, _sf) in self._flows.items() if cf}
        flow_clients = {k[0] for k in client_flows}  # client addresses whose agent reported flows
        client_aggs = {k for k, (ca, _sa) in self._aggs.items() if ca}
        conns: list[tuple[_View | None, _View | None, bool]] = []
        for cv, sv in self.connections():
            end_ns = max(v.end_ns for v in (cv, sv) if v is not None)
            if cutoff is not None and end_ns < cutoff:
                continue
            triple = (sv.client_end.ip, sv.server_end.ip, sv.server_end.port) if sv is not None else None
            absorbed = (
                cv is None
                and sv is not None
                and (
                    triple in client_flows
                    or triple in client_aggs
                    # with an id, the client's own socket would have joined it: the client's agent
                    # (which reports flows) aggregated it, maybe under a Service's address
                    or (sv.event.connection_id != 0 and sv.client_end.ip in flow_clients)
                )
            )
            if absorbed and triple in client_aggs and sv is not None and not _ok(sv.event.lifecycle):
                continue  # in the client's aggregates: the client saw this end too
            conns.append((cv, sv, absorbed))
        by_backend = split(self._split_counts(conns, cutoff, client_aggs))
        for cv, sv, absorbed in conns:
            client, server, via = self._connection_parties(cv, sv)
            if absorbed and sv is not None and via is None and _key(sv) in by_backend.via:
                via = _via_party(by_backend.via[_key(sv)])  # its client's flow went through that Service
            _count(row_for(client, server, via), cv, sv, absorbed, self.reset_cause(cv, sv))
        moved_from = self._count_flows(rows, cutoff, flow_clients, by_backend, conns)
        client_seen = client_flows | client_aggs
        client_seen |= {(v.client_end.ip, v.server_end.ip, v.server_end.port) for v, _ in self.connections() if v}
        self._add_aggregates(row_for, client_seen, cutoff)
        self._count_open(rows, cutoff)
        # a Service row the split left with nothing (and no open connections): every connection's
        # backend is known
        return [
            r
            for r in rows.finish()
            if id(r) not in moved_from or r.open_connections or any(getattr(r, c) for c in COUNTERS)
        ]

    def _split_counts(
        self,
        conns: list[tuple[_View | None, _View | None, bool]],
        cutoff: int | None,
        client_aggs: set[tuple[str, str, int]],
    ) -> SplitCounts:
        """What tail/backend_split.py needs: the clients' flows to Services and straight to backends,
        the backends' flows and the lone views their clients counted in flows, in the window; and
        the clients' anomaly aggregates through a Service, whose backends' ends may be in the
        backends' flows or lone lifecycles."""
        counts = SplitCounts()
        for key, (cflows, sflows) in self._flows.items():
            for f in (f for f in cflows if _in_window(f, cutoff)):
                if f.remote.kind == SERVICE:
                    counts.add_service_flow(key[0], _ref(f.remote), f.flow.connections)
                else:
                    counts.add_direct(key, f.flow.connections)
            for f in (f for f in sflows if _in_window(f, cutoff)):
                counts.add_backend(key, f.flow.connections, _refs(f.local))
        for key, (caggs, _saggs) in self._aggs.items():
            for ev in caggs:
                if ev.remote.kind == SERVICE and (cutoff is None or ev.anomalies.last.ToNanoseconds() >= cutoff):
                    counts.add_unjoined(key[0], _ref(ev.remote), ev.anomalies.count)
        for cv, sv, absorbed in conns:
            if cv is not None:
                lone_established = sv is None and classify(cv.event.lifecycle, True)[0]
                if cv.event.remote.kind == SERVICE:
                    counts.add_client_socket(cv.client_end.ip, _ref(cv.event.remote), lone_established)
                elif lone_established:
                    counts.add_direct(_key(cv), 1)
            elif absorbed and sv is not None and _key(sv) not in client_aggs:
                counts.add_backend(_key(sv), 1, _refs(sv.event.local))
        return counts

    def _count_flows(
        self,
        rows: _Rows,
        cutoff: int | None,
        flow_clients: set[str],
        by_backend: BackendSplit,
        conns: list[tuple[_View | None, _View | None, bool]],
    ) -> set[int]:
        """Each flow's connections and latency samples into its row: the client's flows whenever the
        client's agent reported flows of that client address, else the server's. A server's flows
        from a node's address (a NodePort's SNAT, or a process on that node) are first matched
        against the flows watched clients sent to that node's address: those connections are
        counted already. Then the clients' flows to Services move to their backends' rows as
        `by_backend` splits them (their latency samples and open connections stay in the Service's
        row). OPEN: the open connections of each flow source's latest flow, if that was in its
        node's last pass. Returns the ids of the Service rows the split moved connections from."""
        service_rows: dict[tuple[str, ServiceRef], PairSummary] = {}

        def closed_in(f: TcpEvent) -> bool:
            return cutoff is None or f.flow.last_close.ToNanoseconds() >= cutoff

        snat: dict[str, int] = {}
        for cflows, _ in self._flows.values():
            for f in cflows:
                if f.remote.kind == NODE:
                    snat[f.remote.ip] = snat.get(f.remote.ip, 0) + (f.flow.connections if closed_in(f) else 0)
        latest: dict[tuple[object, ...], tuple[int, TcpEvent, PairSummary]] = {}
        for (cip, _sip, port), (cflows, sflows) in sorted(self._flows.items()):
            for f in cflows or ([] if cip in flow_clients else sflows):
                t = f.time.ToNanoseconds()
                if cutoff is not None and t < cutoff:
                    continue
                n = f.flow.connections if closed_in(f) else 0
                if f.flow.role == PASSIVE and f.remote.kind == NODE and f.remote.ip in snat:
                    taken = min(n, snat[f.remote.ip])
                    snat[f.remote.ip] -= taken
                    n -= taken
                    if not n:  # (and its open connections: the watched clients report those)
                        continue
                row = rows.row_for(*self._flow_parties(f, port))
                _count_flow(row, f, n, port)
                if f.flow.role == ACTIVE and f.remote.kind == SERVICE:
                    service_rows[(cip, _ref(f.remote))] = row
                if not n:
                    rows.reported(row, f.flow.report_time.ToNanoseconds(), t)
                source: tuple[object, ...] = (f.node, f.flow.role, f.local.ip, f.local.port, f.remote.ip)
                source += (f.remote.port, f.process.cgroup_id)
                if source not in latest or t >= latest[source][0]:
                    latest[source] = (t, f, row)
        for _t, f, row in latest.values():
            fl = f.flow
            if fl.open_connections and self._in_last_pass(f.node, fl.report_time.ToNanoseconds(), fl.interval_ns):
                row.open_connections += fl.open_connections
        return self._move_to_backends(rows.row_for, cutoff, by_backend, service_rows, conns)

    def _count_open(self, rows: _Rows, cutoff: int | None) -> None:
        """Connections reported open one by one, from the client's reports when there are any, else
        the server's: the RTT sample of each report into the row of the connection; and for those
        still open (no lifecycle yet, and in their node's last pass) one OPEN and their connect
        latency (a lifecycle counts a closed one's)."""
        for reports in self._open.values():
            if cutoff is not None and reports.last_ns < cutoff:
                continue
            cv, sv = reports.views
            side = 0 if cv is not None else 1
            latest = reports.views[side]
            assert latest is not None
            row = rows.row_for(*self._connection_parties(cv, sv))
            row.server_ports.add((sv or latest).server_end.port)  # the server's own port if it reported
            _add_buckets(row.rtt_us_log2, reports.rtt[side])
            rows.reported(row, min(v.start_ns for v in (cv, sv) if v is not None), reports.last_ns)
            interval_ns = latest.event.open.interval_ns
            if reports.closed or not self._in_last_pass(latest.event.node, latest.end_ns, interval_ns):
                continue
            row.open_connections += 1
            if reports.connect_ns[side]:
                row.connect_us_log2[_log2(reports.connect_ns[side] // 1000)] += 1

    def _move_to_backends(
        self,
        row_for: Callable[[Party, Party, Party | None], PairSummary],
        cutoff: int | None,
        by_backend: BackendSplit,
        service_rows: dict[tuple[str, ServiceRef], PairSummary],
        conns: list[tuple[_View | None, _View | None, bool]],
    ) -> set[int]:
        """Move each backend's share of a client's flows to a Service from the Service's row to the
        row (client, backend, via the Service): the rows a joined connection of theirs counts in.
        Returns the ids of the Service rows it moved connections from."""
        moved_from: set[int] = set()
        for cs, n in by_backend.moved.items():
            row = service_rows[cs]
            row.connections -= n
            row.flow_connections -= n
            moved_from.add(id(row))
        lone_servers = {_key(sv): sv for cv, sv, absorbed in conns if absorbed and sv is not None}
        for key, (ref, n) in sorted(by_backend.shares.items()):
            svc_row = service_rows[(key[0], ref)]
            flows = [f for f in self._flows.get(key, ([], []))[1] if _in_window(f, cutoff)]
            if flows:
                f = flows[0]
                server = self._party(f.local, None, f.process.comm, server=True)
            else:  # only lone lifecycles of the backend's (their client aggregated them)
                sv = lone_servers[key]
                server = self._party(sv.event.local, None, sv.event.process.comm, server=True)
            row = row_for(svc_row.client, server, svc_row.via)
            row.connections += n
            row.flow_connections += n
            row.server_ports.add(key[2])
            for f in flows:
                _seen(row, f.flow.first_close.ToNanoseconds(), f.flow.last_close.ToNanoseconds())
            if not flows:
                _seen(row, svc_row.first_seen_ns, svc_row.last_seen_ns)
        return moved_from

    def _add_aggregates(
        self,
        row_for: Callable[[Party, Party, Party | None], PairSummary],
        client_seen: set[tuple[str, str, int]],
        cutoff: int | None,
    ) -> None:
        """The anomaly aggregates of each triple: the client's when its agent reported anything for the
        triple, else the server's; and the server's retransmits its client could not see."""
        for akey, (caggs, saggs) in self._aggs.items():
            client_view = akey in client_seen
            for ev in caggs if client_view else saggs:
                if cutoff is None or ev.anomalies.last.ToNanoseconds() >= cutoff:
                    self._count_aggregate(row_for, ev, client_view, akey[2])
            if not client_view:
                continue
            for ev in saggs:  # an ordinary-looking end on the server that retransmitted
                a = ev.anomalies
                if (
                    a.retransmitted
                    and _ok(aggregate_lifecycle(a))
                    and (cutoff is None or a.last.ToNanoseconds() >= cutoff)
                ):
                    self._count_aggregate(row_for, ev, False, akey[2], only_retransmits=True)

    def _count_aggregate(
        self,
        row_for: Callable[[Party, Party, Party | None], PairSummary],
        ev: TcpEvent,
        client_view: bool,
        port: int,
        only_retransmits: bool = False,
    ) -> None:
        """Add an AnomalyAggregate of lifecycles: `count` connections with its key's outcome."""
        a = ev.anomalies
        row = row_for(*self._aggregate_parties(ev, port))
        if only_retransmits:
            row.retransmits += a.count
            return
        row.aggregated_connections += a.count
        row.server_ports.add(port)
        first, last = a.first.ToNanoseconds(), a.last.ToNanoseconds()
        row.first_seen_ns = first if not row.first_seen_ns else min(row.first_seen_ns, first)
        row.last_seen_ns = max(row.last_seen_ns, last)
        lc = aggregate_lifecycle(a)
        established, outcome = classify(lc, client_view)
        cause = self.resets.aggregate_verdict(ev)
        if cause is not None:
            by = row.reset_causes.setdefault(cause.cause, {})
            by[cause.detail] = by.get(cause.detail, 0) + a.count
        if not established:
            field_name = {"refused": "refused", "timeout": "timeouts"}.get(outcome, "failed")
            setattr(row, field_name, getattr(row, field_name) + a.count)
            return
        row.connections += a.count
        if cause is not None and cause.cause == resetcause.NETWORK:
            row.network_resets += a.count
        elif outcome in ("client_reset", "server_reset"):
            setattr(row, outcome + "s", getattr(row, outcome + "s") + a.count)
            reasons = row.client_reset_reasons if outcome == "client_reset" else row.server_reset_reasons
            sender_view = client_view == (outcome == "client_reset")  # the aggregate is the sender's own
            key = reset_reason(lc) if sender_view else "UNKNOWN"
            reasons[key] = reasons.get(key, 0) + a.count
        elif outcome == "timeout":
            row.timeouts += a.count
        if a.retransmitted:
            row.retransmits += a.count

    def _aggregate_parties(self, ev: TcpEvent, port: int) -> tuple[Party, Party, Party | None]:
        """(client, server, via) of an AnomalyAggregate's connections, as a flow's."""
        return self._event_parties(ev, ev.anomalies.role, port)

    def _connection_parties(self, cv: _View | None, sv: _View | None) -> tuple[Party, Party, Party | None]:
        """(client, server, via) of one connection: via is the Service (or node port) the client
        connected to when that is not the server's own address (kube-proxy's NAT)."""
        client = self._party(
            cv.event.local if cv else None, sv.event.remote if sv else None, cv.event.process.comm if cv else ""
        )
        server = self._party(
            sv.event.local if sv else None,
            cv.event.remote if cv else None,
            sv.event.process.comm if sv else "",
            server=True,
        )
        if client.kind == "PROCESS" and server.kind == "UNRESOLVED" and not server.port:
            # a host's client to an address no agent named (a refused port, a socket older than
            # the agent): still one row per server port, as for the servers it did name
            server = dataclasses.replace(server, port=(cv or sv).server_end.port)  # type: ignore[union-attr]
        via = None
        if cv is not None:
            target = cv.event.remote
            nat = sv is not None and (target.ip, target.port) != (sv.event.local.ip, sv.event.local.port)
            if nat or target.kind == SERVICE:
                via = dataclasses.replace(self._party(None, target), port=target.port)
        return client, server, via

    def _flow_parties(self, f: TcpEvent, port: int) -> tuple[Party, Party, Party | None]:
        return self._event_parties(f, f.flow.role, port)

    def _event_parties(self, f: TcpEvent, role: int, port: int) -> tuple[Party, Party, Party | None]:
        """(client, server, via) from one end's event of a connection or of a flow: its own end by
        its own agent, the other by that agent's remote resolution."""
        if role == ACTIVE:
            client, server = self._party(f.local, None, f.process.comm), self._party(None, f.remote)
        else:
            client = self._party(None, f.remote)
            server = self._party(f.local, None, f.process.comm, server=True)
        if client.kind == "PROCESS" and server.kind == "UNRESOLVED" and not server.port:
            server = dataclasses.replace(server, port=port)
        via = None
        if role == ACTIVE and f.remote.kind == SERVICE:
            via = dataclasses.replace(self._party(None, f.remote), port=f.remote.port)
        return client, server, via

    def _party(self, best: Endpoint | None, fallback: Endpoint | None, comm: str = "", server: bool = False) -> Party:
        """Name an end from the socket's own agent (local end, resolved from its cgroup) when that
        agent saw it, else from the peer's agent (remote end, resolved by IP). An end no pod owns
        (a host without Kubernetes, a host-network process) whose own agent saw it is named by its
        process, and a server by its process and port: on one host every end is 127.0.0.1, and one
        row for all of them says nothing."""
        ep = best if best is not None and best.kind != 0 else fallback
        if ep is None:
            ep = best
        assert ep is not None
        if ep.kind == 0 or not ep.name:
            if best is not None and not best.name:  # its own agent saw it: a host end (kind HOST or unset)
                port = best.port if server else 0
                return Party("", best.ip, "PROCESS" if comm else "UNRESOLVED", comm, port)
            return Party("", ep.ip, "UNRESOLVED")
        if self.by == "workload" and ep.workload.name:
            return Party(ep.namespace, ep.workload.name, ep.workload.kind or "Workload")
        return Party(ep.namespace, ep.name, EndpointKind.Name(ep.kind))


def _ok(lc: Lifecycle) -> bool:
    """Ended normally (no reset, no error): an end whose peer may have seen nothing unusual."""
    return lc.ending == 1 and lc.errno == 0


def _key(v: _View) -> FlowKey:
    """A view's (client address, server address, server port), as flows are keyed."""
    return (v.client_end.ip, v.server_end.ip, v.server_end.port)


def _ref(ep: Endpoint) -> ServiceRef:
    """A Service end's (namespace, name, port)."""
    return (ep.namespace, ep.name, ep.port)


def _refs(ep: Endpoint) -> list[ServiceRef]:
    """The Service ports a server's local end is an endpoint of (Endpoint.services)."""
    return [(s.namespace, s.name, s.port) for s in ep.services]


def _via_party(ref: ServiceRef) -> Party:
    return Party(ref[0], ref[1], "SERVICE", port=ref[2])


def _in_window(f: TcpEvent, cutoff: int | None) -> bool:
    return cutoff is None or f.flow.last_close.ToNanoseconds() >= cutoff


def _seen(row: PairSummary, first: int, last: int) -> None:
    row.first_seen_ns = first if not row.first_seen_ns else min(row.first_seen_ns, first)
    row.last_seen_ns = max(row.last_seen_ns, last)


def _match(clients: list[_View], servers: list[_View]) -> list[tuple[_View | None, _View | None]]:
    """Pair client and server views of one 4-tuple by nearest start time, within the tolerance."""
    if not servers:
        return [(c, None) for c in clients]
    if not clients:
        return [(None, s) for s in servers]
    candidates = sorted(
        (abs(c.start_ns - s.start_ns), ci, si)
        for ci, c in enumerate(clients)
        for si, s in enumerate(servers)
        if abs(c.start_ns - s.start_ns) <= MATCH_TOLERANCE_NS
        and not (c.event.connection_id and s.event.connection_id)  # two ids: two connections
    )
    used_c: set[int] = set()
    used_s: set[int] = set()
    out: list[tuple[_View | None, _View | None]] = []
    for _, ci, si in candidates:
        if ci in used_c or si in used_s:
            continue
        used_c.add(ci)
        used_s.add(si)
        out.append((clients[ci], servers[si]))
    out.extend((c, None) for i, c in enumerate(clients) if i not in used_c)
    out.extend((None, s) for i, s in enumerate(servers) if i not in used_s)
    return out


def _count(
    row: PairSummary,
    cv: _View | None,
    sv: _View | None,
    absorbed: bool = False,
    cause: resetcause.Verdict | None = None,
) -> None:
    """Add one connection to its row, deciding its outcome from the client's view if there is one.
    absorbed: a server's view whose client counted the connection in a flow (not counted again).
    cause: who sent the RST that ended it, if one did (resetcause)."""
    views = [v for v in (cv, sv) if v is not None]
    start = min(v.start_ns for v in views)
    end = max(v.end_ns for v in views)
    row.first_seen_ns = start if not row.first_seen_ns else min(row.first_seen_ns, start)
    row.last_seen_ns = max(row.last_seen_ns, end)
    row.server_ports.add(views[-1].server_end.port)  # the server's own port (a backend's target port)
    if cause is not None:
        by = row.reset_causes.setdefault(cause.cause, {})
        by[cause.detail] = by.get(cause.detail, 0) + 1
    if cv is not None:
        established, outcome = classify(cv.event.lifecycle, True, sv is not None)
    else:
        assert sv is not None
        established, outcome = classify(sv.event.lifecycle, False)
    if not established:
        if outcome == "refused":
            row.refused += 1
        elif outcome == "timeout":
            row.timeouts += 1
        else:
            row.failed += 1
        return
    if not absorbed:
        row.connections += 1
        _count_latency(row, (cv or sv).event.lifecycle)  # type: ignore[union-attr]
    if cause is not None and cause.cause == resetcause.NETWORK:
        row.network_resets += 1  # neither end sent it: not a client's or a server's reset
    elif outcome == "client_reset":
        row.client_resets += 1
        key = reset_reason(cv.event.lifecycle) if cv is not None else "UNKNOWN"
        row.client_reset_reasons[key] = row.client_reset_reasons.get(key, 0) + 1
    elif outcome == "server_reset":
        row.server_resets += 1
        key = reset_reason(sv.event.lifecycle) if sv is not None else "UNKNOWN"
        row.server_reset_reasons[key] = row.server_reset_reasons.get(key, 0) + 1
    elif outcome == "timeout":
        row.timeouts += 1
    if any(v.event.lifecycle.retransmits > 0 for v in views):
        row.retransmits += 1


def _count_latency(row: PairSummary, lc: Lifecycle) -> None:
    """A closed connection's connect latency and its close-time RTT sample."""
    if lc.connect_latency_ns:
        row.connect_us_log2[_log2(lc.connect_latency_ns // 1000)] += 1
    if lc.srtt_us:
        row.rtt_us_log2[_log2(lc.srtt_us)] += 1


def _count_flow(row: PairSummary, f: TcpEvent, n: int, port: int) -> None:
    """n of a flow's connections (closed ones: their close times are the row's span) and its latency
    samples into a row."""
    fl = f.flow
    row.connections += n
    row.flow_connections += n
    row.server_ports.add(port)
    _add_buckets(row.connect_us_log2, fl.connect_latency_us_log2)
    _add_buckets(row.rtt_us_log2, fl.srtt_us_log2)
    if n:
        _seen(row, fl.first_close.ToNanoseconds(), fl.last_close.ToNanoseconds())


def _open_key(ev: TcpEvent, client_end: Endpoint, server_end: Endpoint) -> _OpenKey:
    """A connection's key among open reports: its id (the same on both ends), else its 4-tuple."""
    if ev.connection_id:
        return ("id", ev.connection_id)
    return ("tuple", client_end.ip, client_end.port, server_end.ip, server_end.port)


def select(
    rows: Sequence[PairSummary], namespace: str | None = None, pod: str | None = None, sort: str = "problems"
) -> list[PairSummary]:
    """Filter rows to those with either end in namespace / named pod ("name" or "ns/name"), sorted
    descending by a counter (names and last_seen ascending/descending as natural)."""
    out = list(rows)
    if namespace:
        out = [r for r in out if namespace in (r.client.namespace, r.server.namespace)]
    if pod:
        out = [r for r in out if any(pod in (p.name, p.label()) for p in (r.client, r.server))]
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}")

    def names(r: PairSummary) -> tuple[str, str]:
        return (r.client.label(), r.server.label())

    if sort == "client":
        out.sort(key=names)
    elif sort == "server":
        out.sort(key=lambda r: (r.server.label(), r.client.label()))
    elif sort == "last_seen":
        out.sort(key=names)
        out.sort(key=lambda r: r.last_seen_ns, reverse=True)
    else:
        out.sort(key=names)
        out.sort(key=lambda r: (getattr(r, sort), r.connections), reverse=True)
    return out


def render_json_lines(rows: Sequence[PairSummary]) -> str:
    """One JSON object per pair per line (for scripts: `jq`, `json.loads` per line)."""
    return "".join(json.dumps(r.to_json(), sort_keys=False) + "\n" for r in rows)


_COLUMNS: tuple[tuple[str, str], ...] = (
    ("CONNS", "connections"),
    ("C-RST", "client_resets"),
    ("S-RST", "server_resets"),
    ("N-RST", "network_resets"),
    ("REFUSED", "refused"),
    ("TIMEOUT", "timeouts"),
    ("RETRANS", "retransmits"),
    ("FAILED", "failed"),
)


CAUSE_WORDS = {resetcause.PEER_KERNEL: "peer kernel"}

RESET_LEGEND = (
    "# RESET REASONS: connections a client or server aborted, by the kernel's reason on the socket that sent the "
    "RST (docs/resets.md). SENT BY: connections that ended with a RST received, by who sent it: app (the peer's "
    "application, e.g. a close with SO_LINGER 0), peer kernel (no socket: a refused connect; or a protocol "
    "reason), network (neither end sent it), unknown (docs/reset-cause.md)"
)


def render_table(rows: Sequence[PairSummary]) -> str:
    """A fixed-width table for people, with the reset reasons and the time span of each pair."""
    head = [
        "CLIENT",
        "SERVER",
        *(c for c, _ in _COLUMNS),
        "OPEN",
        "CONNECT p50/p99",
        "RTT p50/p99",
        "SINCE",
        "LAST",
        "RESET REASONS",
        "SENT BY",
    ]
    body: list[list[str]] = []
    for r in rows:
        reasons = [f"{v} client ({k})" for k, v in sorted(r.client_reset_reasons.items())]
        reasons += [f"{v} server ({k})" for k, v in sorted(r.server_reset_reasons.items())]
        causes = [
            f"{n} {CAUSE_WORDS.get(c, c)} ({d})"
            for c, ds in sorted(r.reset_causes.items())
            for d, n in sorted(ds.items())
        ]
        server = r.server.label() + (":" + ",".join(map(str, sorted(r.server_ports))) if r.server_ports else "")
        if r.via is not None and dataclasses.replace(r.via, port=0) != r.server:
            server += f" via {r.via.label()}:{r.via.port}"
        body.append(
            [
                r.client.label(),
                server,
                *(str(getattr(r, a)) for _, a in _COLUMNS),
                str(r.open_connections),
                r.latency_text("connect"),
                r.latency_text("rtt"),
                rfc3339(r.first_seen_ns)[11:19],
                rfc3339(r.last_seen_ns)[11:19],
                ", ".join(reasons),
                ", ".join(causes),
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (head, *body)]
    return "\n".join(lines) + "\n"


# --- tcpscope-tail --summary ------------------------------------------------------------------
# Its flags and the report it prints; tail.run_summary reads the topic into a Report.


@dataclass(frozen=True)
class SummaryOptions:
    by: str = "pod"
    window_s: float | None = None
    sort: str = "problems"
    every_s: float = 10.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The summary flags, added to tcpscope-tail's parser."""
    g = p.add_argument_group("summary (--summary)")
    g.add_argument(
        "--summary",
        action="store_true",
        help="print per-(client, server) counters instead of events: with --from-beginning "
        "and no --duration, of everything in the topic now, then exit; otherwise "
        "every --every seconds until --duration or Ctrl-C",
    )
    g.add_argument("--by", choices=("pod", "workload"), default="pod", help="group ends by pod or workload")
    g.add_argument(
        "--window", type=number(float, above=0), help="only connections that ended in the last S seconds (> 0)"
    )
    g.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default="problems",
        help="sort by this counter, descending (client/server: by name)",
    )
    g.add_argument("--every", type=number(float, above=0), default=10.0, help="seconds between live summaries")


def options_from(a: argparse.Namespace) -> SummaryOptions | None:
    if not getattr(a, "summary", False):
        return None
    return SummaryOptions(a.by, a.window, a.sort, a.every)


@dataclass
class Report:
    """What one summary print shows: the pairs and the loss counters of the batches read.

    It takes records as the reader deduplicated them (tail/consume.py `Dedup`): `duplicates` is the
    reader's count of repeats it dropped, and `conflicts` is fed by the reader's `on_conflict`."""

    summarizer: Summarizer
    losses: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    events: int = 0
    duplicates: int = 0  # records the reader dropped as at-least-once repeats
    undecodable: int = 0
    out_of_bounds: int = 0  # decodable records outside the bounds (tcpscope/bounds.py): skipped
    gaps: Gaps = field(default_factory=Gaps)  # windows nobody observed (tail/gaps.py)
    conflicts: Conflicts = field(default_factory=Conflicts)  # one dedup key, different content: all kept

    def take(self, d: Decoded, keep: Callable[[TcpEvent], bool] | None = None) -> None:
        """One decoded record, deduplicated by the reader; other producers' records are counted as
        undecodable."""
        if d.kind not in (RECORD_EVENT, RECORD_SUMMARY):
            self.undecodable += 1
            return
        clock.correct(d)  # times on one clock (tail/clock.py); the reader dropped the repeats
        self.gaps.take(d)
        if d.kind == RECORD_EVENT and d.event is not None:
            self.events += 1
            if keep is None or keep(d.event):
                self.summarizer.add(d.event)
            else:
                self.summarizer.resets.add(d.event)  # filtered-out kinds are still evidence of who reset
        elif d.kind == RECORD_SUMMARY and d.summary is not None:
            self.batches += 1
            self.summarizer.add_batch(d.agent_id, d.summary)
            add_counts(self.losses, d.summary.lost)

    def render(
        self,
        fmt: str,
        o: SummaryOptions,
        namespace: str | None = None,
        pod: str | None = None,
        now_ns: int | None = None,
    ) -> str:
        rows = select(self.summarizer.pairs(o.window_s, now_ns), namespace, pod, o.sort)
        if fmt == "dot":  # a Graphviz service map (tail/servicemap.py)
            return render_dot(rows)
        if fmt == "json":
            doc = {
                "by": self.summarizer.by,
                "window_s": o.window_s,
                "pairs": [r.to_json() for r in rows],
                "losses": dict(sorted(self.losses.items())),
                "batches": self.batches,
                "events": self.events,
                "duplicates": self.duplicates,
                "undecodable_records": self.undecodable,
                "out_of_bounds_records": self.out_of_bounds,
                "skipped": dict(sorted(self.summarizer.skipped.items())),
                "gaps": self.gaps.json_list(),
                "conflicts": self.conflicts.count,
                "conflict_examples": self.conflicts.examples,
            }
            return json.dumps(doc) + "\n"
        lost, maybe = definite_total(self.losses), possible_total(self.losses)
        shown = {k: v for k, v in self.losses.items() if v and k != UNTRACKED_TOTAL}
        gap_lines = self.gaps.footer_lines()
        conflict = self.conflicts.line()
        untracked = untracked_total(self.losses)
        complete = (
            "events missing in windows nobody observed (below)"
            if gap_lines
            else "events in skipped records (below)"
            if self.out_of_bounds
            else "events of untracked sockets missing"
            if untracked
            else "no events lost"
        )
        foot = (
            f"# {len(rows)} pairs from {self.events} events in {self.batches} batches; "
            + (complete if not lost else f"LOST {lost} events: {shown}")
            + (f"; {possible_text(maybe)}" if maybe else "")
            + (
                f"; {untracked} sockets not tracked (the agent's socket map was full: their events are missing)"
                if untracked
                else ""
            )
            + (f"; {self.undecodable} records that are not tcpscope records skipped" if self.undecodable else "")
            + (
                f"; {self.out_of_bounds} records outside the bounds skipped (docs/kafka.md, Bounds)"
                if self.out_of_bounds
                else ""
            )
            + "\n"
            + "".join(line + "\n" for line in [*gap_lines, conflict] if line)
        )
        legend = (
            RESET_LEGEND + "\n"
            if any(r.reset_causes or r.client_reset_reasons or r.server_reset_reasons for r in rows)
            else ""
        )
        return render_table(rows) + foot + legend
