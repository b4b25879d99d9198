"""One row per connection: the live view's default rows (`--rows connection`; tail/live.py).

Each socket of a connection ends with a Lifecycle event from its own node's agent, and a reset adds
Reset and SocketError events on both ends: about six rows for one reset. `ConnectionRows` joins them
into one row per connection: client and server, how it ended, who sent the reset (tail/resetcause.py)
and why, duration and bytes.

- Two lifecycles are one connection when both carry the same non-zero `connection_id`, else when one
  is a client socket (role ACTIVE) and the other a server socket (PASSIVE) of the same 4-tuple whose
  start times are at most MATCH_TOLERANCE_NS apart (as the summary pairs them).
- A row goes out as soon as it is complete: both ends are there, or the client never connected (a
  refused or timed-out connect has no server socket), and who sent its reset is decided. Otherwise it
  waits `hold` seconds of the reader's clock for the other end, which may never come: no agent on
  that node, a client outside the cluster, or the other socket closed normally and its agent counted
  it in a flow. A received reset whose sender is not decided yet (`network` is decided only by the
  absence of a send) waits up to resetcause.HOLD_NS, as in the per-socket view.
- Reset and socket-error events are evidence: the row of their connection takes them (by either
  end's address pair, within resetcause.WINDOW_NS of the connection's life), also for a while after
  the row went out, and they print no row of their own. One that no connection takes within the hold
  (a RST sent from no socket to a client no agent watches, ...) prints as its per-socket row.
- State changes, retransmits, SYN-ACK retransmits and probes have no connection row (`--rows socket`
  shows them); a row carries its sockets' retransmit counts.
- Flows: both ends' agents report the same ordinary connections, each in its own flows. A pair
  prints one row per flow interval: the client's flow when the client's agent reports that (client
  address, server address, server port), else the server's, as the summary counts them. A server's
  flow waits `hold` for a client's flow of the same triple and is dropped (counted) if one comes.

Bounded: at most `max_pending` rows, evidence events and flows wait; past that the one due first
goes out as it is (counted `early`). `counts` says how every row came about.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from tail import resetcause
from tail.gaps import rfc3339
from tcpscope import render
from tcpscope.outcome import classify, is_duplicate_child
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    LISTEN,
    PASSIVE,
    RECEIVED,
    RESET_RECEIVED,
    RESET_SENT,
    SYN_SENT,
    Endpoint,
    EventBatch,
    TcpEvent,
)

DEFAULT_HOLD_S = 2.0
"""How long a socket's row waits for the other end's lifecycle: the other agent's batch age (0.5 s by
default) plus the collector's linger plus the time between the two sockets' ends (a FIN's round
trip), with a margin."""

MATCH_TOLERANCE_NS = 2_000_000_000
"""How far apart the two ends' start times may be and still be one connection (tail/summary.py)."""

RECENT_S = 30.0
"""How long a row that went out still takes late evidence of its connection (reader's clock)."""

Addr = tuple[str, int]
Triple = tuple[str, str, int]


def _addr(ep: Endpoint) -> Addr:
    return (ep.ip, ep.port)


def _start_ns(ev: TcpEvent) -> int:
    return ev.time.ToNanoseconds() - ev.lifecycle.duration_ns


@dataclass(frozen=True)
class ResetBy:
    """Who sent the RST that ended a connection: side `client`, `server` or `network` ('' unknown),
    and the verdict it rests on (tail/resetcause.py: cause app, peer_kernel, network, unknown)."""

    side: str
    verdict: resetcause.Verdict

    def text(self) -> str:
        v = self.verdict
        if v.cause == resetcause.NETWORK:
            return f"network ({v.detail})"
        if v.cause == resetcause.UNKNOWN or not self.side:
            return f"unknown ({v.detail})"
        what = "app" if v.cause == resetcause.APP else "kernel"
        return f"{self.side} {what} ({v.detail})" if v.detail else f"{self.side} {what}"


@dataclass
class ConnectionRow:
    """One connection: its client socket's and server socket's lifecycles (either may be missing)."""

    client: TcpEvent | None = None
    server: TcpEvent | None = None
    unoriented: TcpEvent | None = None  # a socket with no role (older than its agent): not joined
    ended: str = ""  # tcpscope/outcome.py's word, or network_reset
    reset_by: ResetBy | None = None
    evidence: int = 0  # reset and error events of this connection folded into the row

    @property
    def sockets(self) -> list[TcpEvent]:
        return [e for e in (self.client, self.server, self.unoriented) if e is not None]

    def time_ns(self) -> int:
        return max(e.time.ToNanoseconds() for e in self.sockets)

    def span_ns(self) -> tuple[int, int]:
        return min(_start_ns(e) for e in self.sockets), self.time_ns()

    def pairs(self) -> set[frozenset[Addr]]:
        """The address pairs its sockets' events carry (either end's view; NAT may make them differ)."""
        return {frozenset((_addr(e.local), _addr(e.remote))) for e in self.sockets}

    def complete(self) -> bool:
        """Nothing more to wait for: both ends, or a socket no other end can have."""
        c = self.client
        never_connected = c is not None and c.lifecycle.last_state == SYN_SENT
        return (self.client is not None and self.server is not None) or self.unoriented is not None or never_connected


@dataclass(frozen=True)
class FlowRow:
    """One flow of a pair: the client's (side 'client'), else the server's; `both`: the other end's
    agent reported the pair's flows too."""

    flow: TcpEvent
    side: str
    both: bool = False

    def time_ns(self) -> int:
        return self.flow.time.ToNanoseconds()


@dataclass(frozen=True)
class SocketRow:
    """A reset or error event that no connection took, or an anomaly aggregate, shown as the
    per-socket view shows it."""

    event: TcpEvent
    verdict: resetcause.Verdict | None = None

    def time_ns(self) -> int:
        return self.event.time.ToNanoseconds()


Row = ConnectionRow | FlowRow | SocketRow


@dataclass
class _Item:
    kind: str  # "conn", "evidence" or "flow" (a server's flow)
    due: float
    row: ConnectionRow | None = None
    event: TcpEvent | None = None  # evidence, or a server's flow
    received: resetcause.ReceivedReset | None = None  # evidence: the received reset it reports
    reset_due: float = 0.0  # conn: a received reset waits for its sender's evidence until then
    done: bool = False


@dataclass
class ConnectionRows:
    """The join (module doc). `add`, `tick` and `close` return the rows now due; `now` is the
    reader's monotonic clock in seconds."""

    hold: float = DEFAULT_HOLD_S
    max_pending: int = 20_000
    memory_ns: int = 120_000_000_000
    """event time the reset join keeps behind the newest event (bounds its memory)"""
    join: resetcause.ResetJoin = field(default_factory=resetcause.ResetJoin)
    counts: dict[str, int] = field(default_factory=dict)
    _items: dict[int, _Item] = field(default_factory=dict, init=False)
    _due: list[tuple[float, int]] = field(default_factory=list, init=False)
    _seq: Iterator[int] = field(default_factory=itertools.count, init=False)
    _by_tuple: dict[tuple[Addr, Addr], list[int]] = field(default_factory=dict, init=False)
    _by_cid: dict[int, int] = field(default_factory=dict, init=False)
    _by_pair: dict[frozenset[Addr], list[int]] = field(default_factory=dict, init=False)
    _evidence_by_pair: dict[frozenset[Addr], list[int]] = field(default_factory=dict, init=False)
    _server_flows: dict[Triple, list[int]] = field(default_factory=dict, init=False)
    _recent: OrderedDict[int, tuple[float, set[frozenset[Addr]], int, int]] = field(
        default_factory=OrderedDict, init=False
    )
    _recent_by_pair: dict[frozenset[Addr], list[int]] = field(default_factory=dict, init=False)
    _client_triples: OrderedDict[Triple, float] = field(default_factory=OrderedDict, init=False)
    _server_triples: OrderedDict[Triple, float] = field(default_factory=OrderedDict, init=False)
    _newest_ns: int = field(default=0, init=False)
    _evicted_at_ns: int = field(default=0, init=False)

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    # --- input ----------------------------------------------------------------------------------

    def add(self, ev: TcpEvent, now: float) -> list[Row]:
        """One event (every event is evidence for the reset join); the rows now due."""
        received = self.join.add(ev)
        self._bound_join(ev)
        kind = ev.WhichOneof("kind")
        out: list[Row] = []
        if kind == "lifecycle":
            self._add_life(ev, now, out)
        elif kind == "flow":
            self._add_flow(ev, now, out)
        elif kind in ("reset", "socket_error"):
            self._add_evidence(ev, now, received)
        elif kind == "anomalies":  # past the agent's budget: a row of its own, with its exemplars' cause
            out.append(SocketRow(ev, self.join.aggregate_verdict(ev)))
        out += self._release_due(now)
        return out

    def add_batch(self, agent_id: str, batch: EventBatch) -> None:
        """A batch's summary record (the reset join uses its nodes and loss counters)."""
        self.join.add_batch(agent_id, batch)

    def tick(self, now: float) -> list[Row]:
        return self._release_due(now)

    def close(self, now: float) -> list[Row]:
        """Everything still waiting (the end of a run)."""
        out: list[Row] = []
        for seq in sorted(self._items, key=lambda s: self._items[s].due):
            item = self._items.get(seq)
            if item is not None and not item.done:
                out += self._release(seq, item, now)
        return out

    def __len__(self) -> int:
        return len(self._items)

    def _bound_join(self, ev: TcpEvent) -> None:
        self._newest_ns = max(self._newest_ns, ev.time.ToNanoseconds())
        if self._newest_ns - self._evicted_at_ns > self.memory_ns // 4:
            self._evicted_at_ns = self._newest_ns
            self.join.evict_before(self._newest_ns - self.memory_ns)

    def _push(self, item: _Item) -> int:
        seq = next(self._seq)
        self._items[seq] = item
        heapq.heappush(self._due, (item.due, seq))
        return seq

    # --- connections ----------------------------------------------------------------------------

    def _add_life(self, ev: TcpEvent, now: float, out: list[Row]) -> None:
        lc = ev.lifecycle
        if lc.last_state == LISTEN or ev.remote.port == 0:
            self._count("listeners_not_shown")
            return
        if is_duplicate_child(lc):  # not a connection (tcpscope/outcome.py)
            self._count("duplicate_children_not_shown")
            return
        if lc.role not in (ACTIVE, PASSIVE):
            self._new_conn(ConnectionRow(unoriented=ev), now, out)
            return
        seq = self._match(ev)
        if seq is None:
            row = ConnectionRow(client=ev) if lc.role == ACTIVE else ConnectionRow(server=ev)
            self._new_conn(row, now, out)
            return
        item = self._items[seq]
        assert item.row is not None
        if lc.role == ACTIVE:
            item.row.client = ev
        else:
            item.row.server = ev
        self._index(seq, ev)
        self._settle(seq, item, now, out)

    @staticmethod
    def _tuple(ev: TcpEvent) -> tuple[Addr, Addr]:
        """(client address, server address) as this socket sees them."""
        if ev.lifecycle.role == ACTIVE:
            return _addr(ev.local), _addr(ev.remote)
        return _addr(ev.remote), _addr(ev.local)

    def _match(self, ev: TcpEvent) -> int | None:
        """The waiting row of the other end of ev's connection, if one waits."""
        client_side = ev.lifecycle.role == ACTIVE
        cid = ev.connection_id
        if cid and cid in self._by_cid:
            seq = self._by_cid[cid]
            row = self._items[seq].row
            if row is not None and (row.client if client_side else row.server) is None:
                return seq
        start = _start_ns(ev)
        best: tuple[int, int] | None = None
        for seq in self._by_tuple.get(self._tuple(ev), []):
            row = self._items[seq].row
            if row is None or (row.client if client_side else row.server) is not None:
                continue
            other = row.server if client_side else row.client
            if other is None or (cid and other.connection_id and cid != other.connection_id):
                continue
            gap = abs(_start_ns(other) - start)
            if gap <= MATCH_TOLERANCE_NS and (best is None or gap < best[0]):
                best = (gap, seq)
        return None if best is None else best[1]

    def _index(self, seq: int, ev: TcpEvent) -> None:
        if ev.lifecycle.role in (ACTIVE, PASSIVE):
            self._by_tuple.setdefault(self._tuple(ev), []).append(seq)
        if ev.connection_id:
            self._by_cid[ev.connection_id] = seq
        self._by_pair.setdefault(frozenset((_addr(ev.local), _addr(ev.remote))), []).append(seq)

    def _new_conn(self, row: ConnectionRow, now: float, out: list[Row]) -> None:
        seq = self._push(_Item("conn", now + self.hold, row=row))
        for ev in row.sockets:
            self._index(seq, ev)
        self._settle(seq, self._items[seq], now, out)
        if len(self._items) > self.max_pending:
            out += self._release_first(now)

    def _settle(self, seq: int, item: _Item, now: float, out: list[Row]) -> None:
        """Fold in the evidence that waits for this row; release it if nothing more is to come."""
        row = item.row
        assert row is not None
        self._claim_evidence(row)
        if not row.complete():
            return
        verdicts = self._verdicts(row)
        if all(v.cause in (resetcause.APP, resetcause.PEER_KERNEL) for v in verdicts):
            out += self._release(seq, item, now)
        elif not item.reset_due:  # a reset whose sender is not known yet: wait for its evidence
            item.reset_due = now + resetcause.HOLD_NS / 1e9
            item.due = max(item.due, item.reset_due)
            heapq.heappush(self._due, (item.due, seq))

    def _verdicts(self, row: ConnectionRow) -> list[resetcause.Verdict]:
        """Who sent each RST the row's sockets received, earliest first."""
        got = [
            r
            for ev in row.sockets
            if ev.lifecycle.ending == RESET_RECEIVED
            for r in (self.join.received_by(ev),)
            if r is not None
        ]
        return [self.join.classify(r) for r in sorted(got, key=lambda r: r.time_ns)]

    def _finish(self, row: ConnectionRow) -> None:
        """How it ended and who sent its reset, from what is known now."""
        if row.client is not None:
            established, ended = classify(row.client.lifecycle, True, row.server is not None)
        else:
            one = row.server or row.unoriented
            assert one is not None
            established, ended = classify(one.lifecycle, False)
        verdicts = self._verdicts(row)
        v = next((x for x in verdicts if x.cause == resetcause.NETWORK), verdicts[0] if verdicts else None)
        if established and v is not None and v.cause == resetcause.NETWORK:
            row.ended, row.reset_by = "network_reset", ResetBy("network", v)
            return
        row.ended = ended
        side = {"client_reset": "client", "server_reset": "server", "refused": "server"}.get(ended, "")
        if v is None and side:
            sender = row.client if side == "client" else row.server
            if sender is not None and sender.lifecycle.ending == RESET_SENT:
                lc = sender.lifecycle
                v = resetcause.sent_verdict(lc.reset_reason_name, lc.reset_reason, sender.node)
        if v is not None:
            row.reset_by = ResetBy(side, v)

    # --- evidence -------------------------------------------------------------------------------

    def _add_evidence(self, ev: TcpEvent, now: float, received: resetcause.ReceivedReset | None) -> None:
        pair = frozenset((_addr(ev.local), _addr(ev.remote)))
        t = ev.time.ToNanoseconds()
        for seq in self._by_pair.get(pair, []):
            item = self._items.get(seq)
            if item is not None and item.row is not None and self._within(item.row.span_ns(), t):
                item.row.evidence += 1
                self._count("events_folded_into_rows")
                return
        for seq in self._recent_by_pair.get(pair, []):
            seen = self._recent.get(seq)
            if seen is not None and self._within((seen[2], seen[3]), t):
                self._count("events_folded_into_rows")
                return
        wait = self.hold
        if received is not None and ev.WhichOneof("kind") == "reset" and ev.reset.direction == RECEIVED:
            wait = max(wait, resetcause.HOLD_NS / 1e9)  # shown on its own: with its sender's verdict
        else:
            received = None
        seq = self._push(_Item("evidence", now + wait, event=ev, received=received))
        self._evidence_by_pair.setdefault(pair, []).append(seq)

    def _within(self, span: tuple[int, int], t: int) -> bool:
        w = self.join.window_ns
        return span[0] - w <= t <= span[1] + w

    def _claim_evidence(self, row: ConnectionRow) -> None:
        span = row.span_ns()
        for pair in row.pairs():
            for seq in self._evidence_by_pair.get(pair, []):
                item = self._items.get(seq)
                if item is not None and item.event is not None and self._within(span, item.event.time.ToNanoseconds()):
                    row.evidence += 1
                    self._count("events_folded_into_rows")
                    self._forget(seq, item)

    # --- flows ----------------------------------------------------------------------------------

    def _add_flow(self, ev: TcpEvent, now: float, out: list[Row]) -> None:
        fl = ev.flow
        if fl.role == ACTIVE:
            triple = (ev.local.ip, ev.remote.ip, ev.remote.port)
            self._remember(self._client_triples, triple, now)
            for seq in self._server_flows.pop(triple, []):  # the client's flow counts these connections
                item = self._items.get(seq)
                if item is not None:
                    self._forget(seq, item)
                    self._count("server_flows_covered_by_the_client")
            out.append(FlowRow(ev, "client", self._seen(self._server_triples, triple, now)))
        elif fl.role == PASSIVE:
            triple = (ev.remote.ip, ev.local.ip, ev.local.port)
            self._remember(self._server_triples, triple, now)
            if self._seen(self._client_triples, triple, now):
                self._count("server_flows_covered_by_the_client")
                return
            seq = self._push(_Item("flow", now + self.hold, event=ev))
            self._server_flows.setdefault(triple, []).append(seq)
            if len(self._items) > self.max_pending:
                out += self._release_first(now)
        else:
            out.append(FlowRow(ev, ""))

    def _remember(self, seen: OrderedDict[Triple, float], triple: Triple, now: float) -> None:
        seen[triple] = now + RECENT_S * 10
        seen.move_to_end(triple)
        while len(seen) > self.max_pending or (seen and next(iter(seen.values())) < now):
            seen.popitem(last=False)

    @staticmethod
    def _seen(seen: OrderedDict[Triple, float], triple: Triple, now: float) -> bool:
        until = seen.get(triple)
        return until is not None and until >= now

    # --- release --------------------------------------------------------------------------------

    def _release_due(self, now: float) -> list[Row]:
        out: list[Row] = []
        while self._due and self._due[0][0] <= now:
            due, seq = heapq.heappop(self._due)
            item = self._items.get(seq)
            if item is not None and not item.done and item.due <= due:
                out += self._release(seq, item, now)
        while self._recent and next(iter(self._recent.values()))[0] < now:
            self._forget_recent()
        return out

    def _release_first(self, now: float) -> list[Row]:
        """Over the bound: the row due first goes out now."""
        while self._due:
            _, seq = heapq.heappop(self._due)
            item = self._items.get(seq)
            if item is not None and not item.done:
                self._count("released_early_over_the_bound")
                return self._release(seq, item, now)
        return []

    def _release(self, seq: int, item: _Item, now: float) -> list[Row]:
        self._forget(seq, item)
        if item.kind == "flow":
            assert item.event is not None
            return [FlowRow(item.event, "server")]
        if item.kind == "evidence":
            assert item.event is not None
            self._count("events_shown_on_their_own")
            r = item.received
            return [SocketRow(item.event, self.join.classify(r) if r is not None else None)]
        row = item.row
        assert row is not None
        self._claim_evidence(row)
        self._finish(row)
        if row.client is not None and row.server is not None:
            self._count("rows_from_both_ends")
        else:
            self._count("rows_from_the_client_only" if row.client is not None else "rows_from_the_server_only")
        self._recent[seq] = (now + RECENT_S, row.pairs(), *row.span_ns())
        for pair in row.pairs():
            self._recent_by_pair.setdefault(pair, []).append(seq)
        while len(self._recent) > self.max_pending:
            self._forget_recent()
        return [row]

    def _forget(self, seq: int, item: _Item) -> None:
        item.done = True
        self._items.pop(seq, None)
        if item.row is not None:
            for ev in item.row.sockets:
                _drop(self._by_tuple, self._tuple(ev) if ev.lifecycle.role in (ACTIVE, PASSIVE) else None, seq)
                _drop(self._by_pair, frozenset((_addr(ev.local), _addr(ev.remote))), seq)
                if ev.connection_id and self._by_cid.get(ev.connection_id) == seq:
                    del self._by_cid[ev.connection_id]
        elif item.event is not None and item.kind == "evidence":
            _drop(self._evidence_by_pair, frozenset((_addr(item.event.local), _addr(item.event.remote))), seq)

    def _forget_recent(self) -> None:
        seq, (_, pairs, _, _) = self._recent.popitem(last=False)
        for pair in pairs:
            _drop(self._recent_by_pair, pair, seq)


K = TypeVar("K")


def _drop(index: dict[K, list[int]], key: K | None, seq: int) -> None:
    if key is None:
        return
    seqs = index.get(key)
    if seqs is not None:
        if seq in seqs:
            seqs.remove(seq)
        if not seqs:
            del index[key]


# --- rendering ------------------------------------------------------------------------------------

TABLE_HEADER = (
    f"{'TIME':<12} {'CLIENT':<32} {'SERVER':<32} {'ENDED':<13} {'RESET BY':<27} {'DURATION':>8} "
    f"{'C->S':>9} {'S->C':>9} DETAILS"
)
"""The connection view's columns: C->S and S->C are application bytes each way (the client's count,
else the server's), DURATION from the first state change to close."""


def _clock(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns // 1_000_000_000)) + f".{ns // 1_000_000 % 1000:03d}"


def end_text(ep: Endpoint, comm: str = "") -> str:
    """`ns/pod:port`; an end no pod owns, named by its process where its own socket's is known
    (`curl@127.0.0.1:40000`): on one host every address is 127.0.0.1. A flow's client has no port."""
    text = render.endpoint_text(ep) if ep.port or ep.name else (ep.ip or "-")
    return f"{comm}@{text}" if comm and not ep.name else text


def _row_ends(row: ConnectionRow) -> tuple[tuple[Endpoint, str], tuple[Endpoint, str]]:
    """(client, server) endpoints with their process's comm, as their own sockets' agents saw them,
    else as the peer's agent did (no comm then)."""
    c, s = row.client, row.server
    if c is None and s is None:
        u = row.unoriented
        assert u is not None
        return (u.local, u.process.comm), (u.remote, "")
    client = (c.local, c.process.comm) if c is not None else (s.remote, "")  # type: ignore[union-attr]
    server = (s.local, s.process.comm) if s is not None else (c.remote, "")  # type: ignore[union-attr]
    return client, server


def row_ends(row: ConnectionRow) -> tuple[str, str]:
    """(client, server) as the table shows them."""
    client, server = _row_ends(row)
    return end_text(*client), end_text(*server)


def _bytes(row: ConnectionRow) -> tuple[int, int]:
    """Application bytes (client to server, server to client): the client's counts, else the server's."""
    if row.client is not None:
        return row.client.lifecycle.tx_bytes, row.client.lifecycle.rx_bytes
    one = row.server or row.unoriented
    assert one is not None
    return one.lifecycle.rx_bytes, one.lifecycle.tx_bytes


def _duration_ns(row: ConnectionRow) -> int:
    return max(e.lifecycle.duration_ns for e in row.sockets)


def _details(row: ConnectionRow) -> list[str]:
    out = []
    errno = next((e.lifecycle.errno_name or str(e.lifecycle.errno) for e in row.sockets if e.lifecycle.errno), "")
    if errno:
        out.append(f"errno={errno}")
    retrans = sum(e.lifecycle.retransmits for e in row.sockets)
    if retrans:
        out.append(f"retransmits={retrans}")
    if row.unoriented is not None:
        out.append("role unknown (the socket is older than its agent)")
    elif row.client is None or row.server is None:
        out.append(f"only the {'client' if row.client is not None else 'server'}'s agent reported it")
    return out


def table_row(row: ConnectionRow | FlowRow) -> str:
    """One line under TABLE_HEADER."""
    if isinstance(row, FlowRow):
        return _flow_table_row(row)
    client, server = row_ends(row)
    up, down = _bytes(row)
    reset = row.reset_by.text() if row.reset_by is not None else "-"
    return (
        f"{_clock(row.time_ns()):<12} {client:<32} {server:<32} {row.ended:<13} {reset:<27} "
        f"{render.duration_text(_duration_ns(row)):>8} {up:>9} {down:>9} {' '.join(_details(row))}"
    ).rstrip()


def _flow_table_row(row: FlowRow) -> str:
    ev, fl = row.flow, row.flow.flow
    if row.side == "server":
        client, server, up, down = end_text(ev.remote), end_text(ev.local, ev.process.comm), fl.rx_bytes, fl.tx_bytes
    else:
        client, server, up, down = end_text(ev.local, ev.process.comm), end_text(ev.remote), fl.tx_bytes, fl.rx_bytes
    latency = render.flow_latency_text(fl).split()
    p50 = next((x for x in latency if x.startswith("p50")), "-")
    rest = [x for x in latency if not x.startswith("p50")]
    who = {"client": "the client's agent", "server": "the server's agent"}.get(row.side, "an agent")
    details = [*rest, f"in {render.duration_text(fl.interval_ns)}", f"reported by {who}"]
    return (
        f"{_clock(ev.time.ToNanoseconds()):<12} {client:<32} {server:<32} {f'{fl.connections} ok':<13} "
        f"{'(flow)':<27} {p50:>8} {up:>9} {down:>9} {' '.join(details)}"
    ).rstrip()


def socket_table_row(row: SocketRow) -> str:
    """An event no connection took, in the connection table's columns (its own end as CLIENT)."""
    ev = row.event
    name, details = render.event_details(ev)
    cause = f" cause={row.verdict.label}" if row.verdict is not None else ""
    return (
        f"{_clock(ev.time.ToNanoseconds()):<12} {end_text(ev.local, ev.process.comm):<32} {end_text(ev.remote):<32} "
        f"{name:<13} {'-':<27} {'-':>8} {'-':>9} {'-':>9} {details}{cause} (node {ev.node}: no connection row took it)"
    )


def _end_json(ep: Endpoint, comm: str = "") -> dict[str, object]:
    out: dict[str, object] = {"ip": ep.ip}
    if ep.port:
        out["port"] = ep.port
    for k in ("namespace", "name", "node"):
        if getattr(ep, k):
            out[k] = getattr(ep, k)
    if comm:
        out["comm"] = comm
    return out


def json_row(row: ConnectionRow | FlowRow) -> str:
    """One JSON object: `row` says which ("connection" or "flow"); the sockets' own events inside, as
    the per-socket view prints them."""
    if isinstance(row, FlowRow):
        ev, fl = row.flow, row.flow.flow
        doc: dict[str, object] = {
            "time": rfc3339(ev.time.ToNanoseconds()),
            "row": "flow",
            "reported_by": row.side,
            "both_ends_report": row.both,
            "connections": fl.connections,
            "duration_mean_ns": fl.duration_sum_ns // fl.connections if fl.connections else 0,
            "duration_p50_below_ns": int(render.duration_quantile_us(fl, 0.5) * 1000),
            "duration_p99_below_ns": int(render.duration_quantile_us(fl, 0.99) * 1000),
            "flow": json.loads(render.json_line(ev)),
        }
        return json.dumps(doc)
    c, s = row.client, row.server
    up, down = _bytes(row)
    client, server = _row_ends(row)
    doc = {
        "time": rfc3339(row.time_ns()),
        "row": "connection",
        "client": _end_json(*client),
        "server": _end_json(*server),
        "ended": row.ended,
        "duration_ns": _duration_ns(row),
        "client_to_server_bytes": up,
        "server_to_client_bytes": down,
        "retransmits": sum(e.lifecycle.retransmits for e in row.sockets),
    }
    if row.reset_by is not None:
        doc["reset_by"] = {"side": row.reset_by.side, **row.reset_by.verdict.to_json()}
    doc["sockets"] = {
        k: json.loads(render.json_line(e))
        for k, e in (("client", c), ("server", s), ("unknown_role", row.unoriented))
        if e is not None
    }
    return json.dumps(doc)
