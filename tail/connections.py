"""One row per connection: the live view's default rows (`--rows connection`; tail/live.py).

Each socket of a connection ends with a Lifecycle event from its own node's agent, and a reset adds
Reset and SocketError events on both ends: about six rows for one reset. `ConnectionRows` joins them
into one row per connection: client and server, the Service (or node port) the client connected to
when kube-proxy's NAT sent it elsewhere, how it ended, who sent the reset (tail/resetcause.py) and
why, duration and bytes.

- Two lifecycles are one connection when both carry the same non-zero `connection_id` (whatever NAT
  did to their addresses: docs/services.md), else when one is a client socket (role ACTIVE) and the
  other a server socket (PASSIVE) of the same 4-tuple whose start times are at most
  MATCH_TOLERANCE_NS apart (as the summary pairs them).
- Through a Service the client's socket names the ClusterIP and Service port (its remote end is
  resolved as the Service), the server's names the backend: the row's server is the backend and
  `via` the Service (`ConnectionRow.via`), as the summary's rows say it. A row with no backend
  socket (refused, timed out, a backend no agent watches) has the Service as its server.
- A row goes out as soon as it is complete: both ends are there, or the client never connected (a
  refused or timed-out connect has no server socket), and who sent its reset is decided. Otherwise it
  waits `hold` seconds of the reader's clock for the other end, which may never come: no agent on
  that node, a client outside the cluster, or the other socket closed normally and its agent counted
  it in a flow (said on the row). A received reset whose sender is not decided yet (`network` is
  decided only by the absence of a send) waits up to resetcause.HOLD_NS, as in the per-socket view,
  and goes out as soon as the sender's evidence arrives.
- Reset and socket-error events are evidence: the row of their connection takes them, also for a
  while after the row went out, and they print no row of their own. An event belongs to a row when
  it carries the connection_id of one of the row's sockets, or comes from one of its sockets (the
  same node and socket_id), or has the address pair of one of its sockets (either end's view: NAT
  may make them differ), or is a RST sent from no socket to the client's address of a row through a
  Service (a backend refusing a DNATed SYN); the last three only within resetcause.WINDOW_NS of the
  connection's life (socket ids and ports are reused). One that no connection takes within the hold
  (a RST sent from no socket to a client no agent watches, ...) prints as its per-socket row.
- State changes, retransmits, SYN-ACK retransmits and probes have no connection row (`--rows socket`
  shows them); a row carries its sockets' retransmit counts.
- Flows carry no client port and no connection_id, so they are counted as the summary counts them
  (docs/kafka.md): both ends' agents report the same ordinary connections, each in its own flows,
  and a pair prints one row per flow interval, the client's flow whenever the client's agent reports
  flows of that client address. Through a Service the client's flow names the Service (`C ->
  VIP:80`) and the backend's names the backend (`C -> S:9000`): the backend's flows from a client
  address whose agent reports flows are covered by that client's flows, whichever address the
  client used, and are not shown (counted). A server's flow waits `hold` plus its flow interval for
  such a client flow, then prints as the server's. Under a NodePort's SNAT the backend's flows name
  the node as their client: they are covered, connection for connection, by the flows watched
  clients sent to that node's address.

Bounded: at most `max_pending` rows, evidence events and flows wait; past that the one due first
goes out as it is (counted `early`). `counts` says how every row came about; `tally()` says it in a
line.
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
    NODE,
    PASSIVE,
    RECEIVED,
    RESET_RECEIVED,
    RESET_SENT,
    SENT,
    SERVICE,
    SYN_SENT,
    Endpoint,
    EndpointKind,
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

FLOW_MEMORY_S = RECENT_S * 10
"""How long a client address whose agent reported flows is remembered as one (reader's clock)."""

MAX_FLOW_WAIT_S = 60.0
"""A server's flow waits `hold` plus its flow interval for its client's flow, at most this long."""

K = TypeVar("K")
Addr = tuple[str, int]
Triple = tuple[str, str, int]
Key = tuple[str, object]
"""What ties an event to a connection's row: ("id", connection_id), ("sock", (node, socket_id)),
("pair", frozenset of its two addresses), ("nat_client", the client's address of a row through a
Service or node port). Only "id" holds without a time window."""


def _addr(ep: Endpoint) -> Addr:
    return (ep.ip, ep.port)


def _start_ns(ev: TcpEvent) -> int:
    return ev.time.ToNanoseconds() - ev.lifecycle.duration_ns


def _nat_kind(ep: Endpoint) -> bool:
    """An address kube-proxy rewrites: a Service's ClusterIP, a node's address (a NodePort)."""
    return ep.kind in (SERVICE, NODE)


def _socket_keys(ev: TcpEvent) -> list[Key]:
    """The keys of a row's socket (its lifecycle), "id" first."""
    keys: list[Key] = [("id", ev.connection_id)] if ev.connection_id else []
    if ev.socket_id:
        keys.append(("sock", (ev.node, ev.socket_id)))
    keys.append(("pair", frozenset((_addr(ev.local), _addr(ev.remote)))))
    if ev.lifecycle.role == ACTIVE and _nat_kind(ev.remote):
        keys.append(("nat_client", _addr(ev.local)))
    return keys


def _event_keys(ev: TcpEvent) -> list[Key]:
    """The keys of a reset or error event, in the order they are tried."""
    keys: list[Key] = [("id", ev.connection_id)] if ev.connection_id else []
    if ev.socket_id:
        keys.append(("sock", (ev.node, ev.socket_id)))
    keys.append(("pair", frozenset((_addr(ev.local), _addr(ev.remote)))))
    if not ev.socket_id and ev.WhichOneof("kind") == "reset" and ev.reset.direction == SENT:
        keys.append(("nat_client", _addr(ev.remote)))  # from no socket: maybe a backend refusing a DNATed SYN
    return keys


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
    in_client_flow: bool = False  # the server's socket only: its client's agent counted it in a flow

    @property
    def sockets(self) -> list[TcpEvent]:
        return [e for e in (self.client, self.server, self.unoriented) if e is not None]

    def time_ns(self) -> int:
        return max(e.time.ToNanoseconds() for e in self.sockets)

    def span_ns(self) -> tuple[int, int]:
        return min(_start_ns(e) for e in self.sockets), self.time_ns()

    def evidence_keys(self) -> set[Key]:
        """What ties an event to this row (`Key`): its sockets' ids, sockets, address pairs."""
        return {k for e in self.sockets for k in _socket_keys(e)}

    def via(self) -> Endpoint | None:
        """The address the client connected to when it is not the server's own, as the summary names
        it: a Service (the client's socket's remote end resolved as one, backend known or not), or a
        node port whose NAT sent the connection to the backend."""
        c = self.client
        if c is None:
            return None
        s = self.server
        if c.remote.kind == SERVICE or (s is not None and _addr(c.remote) != _addr(s.local)):
            return c.remote
        return None

    def complete(self) -> bool:
        """Nothing more to wait for: both ends, or a socket no other end can have."""
        c = self.client
        never_connected = c is not None and c.lifecycle.last_state == SYN_SENT
        return (self.client is not None and self.server is not None) or self.unoriented is not None or never_connected


@dataclass(frozen=True)
class FlowRow:
    """One flow of a pair: the client's (side 'client'), else the server's; `both`: a server's agent
    reported flows of these connections too (not shown); `covered`: a server's flow from a node's
    address (a NodePort's SNAT), this many of whose connections clients' flows to that address count
    too."""

    flow: TcpEvent
    side: str
    both: bool = False
    covered: int = 0

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
class _NodeFlows:
    """Connections clients' flows sent to a node's address, not yet matched with the backend's flows
    from it (a NodePort's SNAT), until `until` (reader's clock)."""

    until: float
    left: int


@dataclass(frozen=True)
class _Recent:
    """A row that went out: it still takes late evidence until `until` (reader's clock)."""

    until: float
    keys: frozenset[Key]
    start_ns: int
    end_ns: int


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
    _row_keys: dict[Key, list[int]] = field(default_factory=dict, init=False)
    """waiting rows by their keys"""
    _evidence_keys: dict[Key, list[int]] = field(default_factory=dict, init=False)
    """waiting evidence events by their keys"""
    _recent: OrderedDict[int, _Recent] = field(default_factory=OrderedDict, init=False)
    _recent_keys: dict[Key, list[int]] = field(default_factory=dict, init=False)
    _server_flows: dict[str, list[int]] = field(default_factory=dict, init=False)
    """waiting server flows by their client address"""
    _flow_clients: OrderedDict[str, float] = field(default_factory=OrderedDict, init=False)
    """client addresses whose agent reported flows, until when (reader's clock)"""
    _client_triples: OrderedDict[Triple, float] = field(default_factory=OrderedDict, init=False)
    _server_triples: OrderedDict[Triple, float] = field(default_factory=OrderedDict, init=False)
    _server_clients: OrderedDict[str, float] = field(default_factory=OrderedDict, init=False)
    _to_node: dict[str, list[_NodeFlows]] = field(default_factory=dict, init=False)
    """node address -> the clients' flows to it (a NodePort) whose connections no server flow took yet"""
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
            self._add_evidence(ev, now, received, out)
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
        for key in _socket_keys(ev):
            seqs = self._row_keys.setdefault(key, [])
            if seq not in seqs:
                seqs.append(seq)

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

    def _finish(self, row: ConnectionRow, now: float) -> None:
        """How it ended and who sent its reset, from what is known now."""
        if row.client is not None:
            established, ended = classify(row.client.lifecycle, True, row.server is not None)
        else:
            one = row.server or row.unoriented
            assert one is not None
            established, ended = classify(one.lifecycle, False)
        if row.server is not None and row.client is None:
            row.in_client_flow = self._in_client_flow(row.server, now)
        verdicts = self._verdicts(row)
        v = resetcause.connection_verdict(verdicts)
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

    def _in_client_flow(self, server: TcpEvent, now: float) -> bool:
        """A server's socket no client socket joined, whose client's agent counted the connection in a
        flow (the server retransmitted, say; the client saw an ordinary connection): as the summary
        tells them, by its connection id (the client's socket would have joined it) or its triple."""
        client = server.remote.ip
        triple = (client, server.local.ip, server.local.port)
        return (server.connection_id != 0 and _seen(self._flow_clients, client, now)) or _seen(
            self._client_triples, triple, now
        )

    # --- evidence -------------------------------------------------------------------------------

    def _add_evidence(
        self, ev: TcpEvent, now: float, received: resetcause.ReceivedReset | None, out: list[Row]
    ) -> None:
        t = ev.time.ToNanoseconds()
        keys = _event_keys(ev)
        for key in keys:
            for seq in self._row_keys.get(key, []):
                item = self._items.get(seq)
                if item is not None and item.row is not None and self._takes(key, item.row.span_ns(), t):
                    item.row.evidence += 1
                    self._count("events_folded_into_rows")
                    if item.reset_due:  # its reset's sender may be known now
                        self._settle(seq, item, now, out)
                    return
        for key in keys:
            for seq in self._recent_keys.get(key, []):
                seen = self._recent.get(seq)
                if seen is not None and self._takes(key, (seen.start_ns, seen.end_ns), t):
                    self._count("events_folded_into_rows")
                    return
        wait = self.hold
        if received is not None and ev.WhichOneof("kind") == "reset" and ev.reset.direction == RECEIVED:
            wait = max(wait, resetcause.HOLD_NS / 1e9)  # shown on its own: with its sender's verdict
        else:
            received = None
        seq = self._push(_Item("evidence", now + wait, event=ev, received=received))
        for key in keys:
            self._evidence_keys.setdefault(key, []).append(seq)
        if len(self._items) > self.max_pending:
            out += self._release_first(now)

    def _takes(self, key: Key, span: tuple[int, int], t: int) -> bool:
        """Does a row of that life take an event at t, met by that key? An id holds at any time;
        socket ids and addresses are reused, so they hold within the reset window of its life."""
        w = self.join.window_ns
        return key[0] == "id" or span[0] - w <= t <= span[1] + w

    def _claim_evidence(self, row: ConnectionRow) -> None:
        span = row.span_ns()
        for key in row.evidence_keys():
            for seq in list(self._evidence_keys.get(key, [])):  # a copy: _forget edits the list
                item = self._items.get(seq)
                if (
                    item is not None
                    and item.event is not None
                    and self._takes(key, span, item.event.time.ToNanoseconds())
                ):
                    row.evidence += 1
                    self._count("events_folded_into_rows")
                    self._forget(seq, item)

    # --- flows ----------------------------------------------------------------------------------

    def _add_flow(self, ev: TcpEvent, now: float, out: list[Row]) -> None:
        fl = ev.flow
        if fl.role == ACTIVE:
            client = ev.local.ip
            triple = (client, ev.remote.ip, ev.remote.port)
            self._remember(self._flow_clients, client, now)
            self._remember(self._client_triples, triple, now)
            for seq in self._server_flows.pop(client, []):  # the client's flows count these connections
                item = self._items.get(seq)
                if item is not None:
                    self._forget(seq, item)
                    self._count("server_flows_covered_by_the_client")
            if ev.remote.kind == NODE and fl.connections:  # a NodePort: the backend's flows name the node
                self._add_to_node(ev, now)
            nat = _nat_kind(ev.remote)
            both = _seen(self._server_clients, client, now) if nat else _seen(self._server_triples, triple, now)
            out.append(FlowRow(ev, "client", both))
        elif fl.role == PASSIVE:
            client = ev.remote.ip
            self._remember(self._server_triples, (client, ev.local.ip, ev.local.port), now)
            self._remember(self._server_clients, client, now)
            if _seen(self._flow_clients, client, now):
                self._count("server_flows_covered_by_the_client")
                return
            seq = self._push(_Item("flow", now + self._flow_wait(ev), event=ev))
            self._server_flows.setdefault(client, []).append(seq)
            if len(self._items) > self.max_pending:
                out += self._release_first(now)
        else:
            out.append(FlowRow(ev, ""))

    def _add_to_node(self, ev: TcpEvent, now: float) -> None:
        """A client's flow to a node's address: its connections may come back as the backend's flows
        from that address (SNAT), within the time a server's flow waits, twice over."""
        sent = [s for s in self._to_node.get(ev.remote.ip, []) if s.until >= now]
        sent.append(_NodeFlows(now + 2 * self._flow_wait(ev), ev.flow.connections))
        self._to_node[ev.remote.ip] = sent[-self.max_pending :]
        if len(self._to_node) > self.max_pending:  # bounded: forget the addresses with nothing left
            for ip in [ip for ip, s in self._to_node.items() if all(x.until < now for x in s)]:
                del self._to_node[ip]

    def _flow_wait(self, ev: TcpEvent) -> float:
        """How long a server's flow waits for its client's: the client's agent flushes its flows once
        per flow interval (the server's own, assumed alike), then ships them within `hold`."""
        return self.hold + min(ev.flow.interval_ns / 1e9, MAX_FLOW_WAIT_S)

    def _release_server_flow(self, ev: TcpEvent, arrived: float) -> list[Row]:
        """A server's flow no client flow from its client's address covered: shown, unless it comes
        from a node's address (a NodePort's SNAT) whose clients' flows (sent around the time it
        arrived) count its connections."""
        n = ev.flow.connections
        covered = 0
        if ev.remote.kind == NODE:
            sent = [s for s in self._to_node.get(ev.remote.ip, []) if s.until >= arrived and s.left > 0]
            for s in sent:
                take = min(n - covered, s.left)
                s.left -= take
                covered += take
            self._to_node[ev.remote.ip] = [s for s in sent if s.left > 0]
            if not self._to_node[ev.remote.ip]:
                del self._to_node[ev.remote.ip]
        if n and covered == n:
            self._count("server_flows_covered_by_the_client")
            return []
        if covered:
            self._count("server_flow_connections_covered_by_clients", covered)
        return [FlowRow(ev, "server", covered=covered)]

    def _remember(self, seen: OrderedDict[K, float], key: K, now: float) -> None:
        seen[key] = now + FLOW_MEMORY_S
        seen.move_to_end(key)
        while len(seen) > self.max_pending or (seen and next(iter(seen.values())) < now):
            seen.popitem(last=False)

    # --- release --------------------------------------------------------------------------------

    def _release_due(self, now: float) -> list[Row]:
        out: list[Row] = []
        while self._due and self._due[0][0] <= now:
            due, seq = heapq.heappop(self._due)
            item = self._items.get(seq)
            if item is not None and not item.done and item.due <= due:
                out += self._release(seq, item, now)
        while self._recent and next(iter(self._recent.values())).until < now:
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
            return self._release_server_flow(item.event, item.due - self._flow_wait(item.event))
        if item.kind == "evidence":
            assert item.event is not None
            self._count("events_shown_on_their_own")
            r = item.received
            return [SocketRow(item.event, self.join.classify(r) if r is not None else None)]
        row = item.row
        assert row is not None
        self._claim_evidence(row)
        self._finish(row, now)
        if row.client is not None and row.server is not None:
            self._count("rows_from_both_ends")
        else:
            self._count("rows_from_the_client_only" if row.client is not None else "rows_from_the_server_only")
        if row.in_client_flow:
            self._count("server_rows_in_client_flows")
        if row.via() is not None:
            self._count("rows_through_a_service_or_node_port")
        keys = frozenset(row.evidence_keys())
        self._recent[seq] = _Recent(now + RECENT_S, keys, *row.span_ns())
        for key in keys:
            self._recent_keys.setdefault(key, []).append(seq)
        while len(self._recent) > self.max_pending:
            self._forget_recent()
        return [row]

    def _forget(self, seq: int, item: _Item) -> None:
        item.done = True
        self._items.pop(seq, None)
        if item.row is not None:
            for ev in item.row.sockets:
                _drop(self._by_tuple, self._tuple(ev) if ev.lifecycle.role in (ACTIVE, PASSIVE) else None, seq)
                if ev.connection_id and self._by_cid.get(ev.connection_id) == seq:
                    del self._by_cid[ev.connection_id]
            for key in item.row.evidence_keys():
                _drop(self._row_keys, key, seq)
        elif item.event is not None and item.kind == "evidence":
            for key in _event_keys(item.event):
                _drop(self._evidence_keys, key, seq)
        elif item.event is not None and item.kind == "flow":
            _drop(self._server_flows, item.event.remote.ip, seq)

    def _forget_recent(self) -> None:
        seq, seen = self._recent.popitem(last=False)
        for key in seen.keys:
            _drop(self._recent_keys, key, seq)

    # --- the tally ------------------------------------------------------------------------------

    def tally(self) -> str:
        """How every row came about, in one line for the end of a run ('' with nothing to say)."""
        c = self.counts
        if not c:
            return ""
        both, client, server = (
            c.get(k, 0) for k in ("rows_from_both_ends", "rows_from_the_client_only", "rows_from_the_server_only")
        )
        parts = [
            f"# {both + client + server} connection rows: {both} joined from both ends, {client} from the client's "
            f"agent only, {server} from the server's agent only"
        ]
        if c.get("rows_through_a_service_or_node_port"):
            parts.append(f"{c['rows_through_a_service_or_node_port']} of them through a Service or node port")
        if c.get("server_rows_in_client_flows"):
            parts.append(
                f"{c['server_rows_in_client_flows']} of the server-only ones counted in their clients' flows too"
            )
        parts.append(
            f"{c.get('events_folded_into_rows', 0)} reset and error events folded into them, "
            f"{c.get('events_shown_on_their_own', 0)} shown on their own"
        )
        if c.get("server_flows_covered_by_the_client"):
            parts.append(
                f"{c['server_flows_covered_by_the_client']} server flows not shown (their clients' flows count "
                "them, to the server or through a Service or node port)"
            )
        if c.get("server_flow_connections_covered_by_clients"):
            parts.append(
                f"{c['server_flow_connections_covered_by_clients']} connections of shown server flows from node "
                "addresses also in clients' flows to them"
            )
        if c.get("released_early_over_the_bound"):
            parts.append(
                f"{c['released_early_over_the_bound']} rows printed before their other end came "
                f"(more than {self.max_pending} waiting)"
            )
        return "; ".join(parts) + "\n"


def _seen(seen: OrderedDict[K, float], key: K, now: float) -> bool:
    until = seen.get(key)
    return until is not None and until >= now


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


def via_text(row: ConnectionRow) -> str:
    """`via shop/api-svc:80` when the client connected to a Service (or a node port) whose NAT sent
    it to the backend shown as the server; '' otherwise (no NAT, or the server shown is the Service
    itself: no backend socket joined)."""
    v = row.via()
    return f"via {render.endpoint_text(v)}" if v is not None and row.server is not None else ""


def _details(row: ConnectionRow) -> list[str]:
    out = [via_text(row)] if via_text(row) else []
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
    if row.in_client_flow:
        out.append("(the client's agent counted it in a flow)")
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


def _flow_ends(row: FlowRow) -> tuple[tuple[Endpoint, str], tuple[Endpoint, str]]:
    """(client, server) of a flow with the reporting end's comm: its client has no port."""
    ev = row.flow
    if row.side == "server":
        return (ev.remote, ""), (ev.local, ev.process.comm)
    return (ev.local, ev.process.comm), (ev.remote, "")


def _flow_table_row(row: FlowRow) -> str:
    ev, fl = row.flow, row.flow.flow
    (c, c_comm), (s, s_comm) = _flow_ends(row)
    client, server = end_text(c, c_comm), end_text(s, s_comm)
    up, down = (fl.rx_bytes, fl.tx_bytes) if row.side == "server" else (fl.tx_bytes, fl.rx_bytes)
    latency = render.flow_latency_text(fl).split()
    p50 = next((x for x in latency if x.startswith("p50")), "-")
    rest = [x for x in latency if not x.startswith("p50")]
    who = {"client": "the client's agent", "server": "the server's agent"}.get(row.side, "an agent")
    details = [*rest, f"in {render.duration_text(fl.interval_ns)}", f"reported by {who}"]
    if row.covered:
        details.append(f"({row.covered} of them also in clients' flows to {end_text(ev.remote)})")
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


def _end_json(ep: Endpoint, comm: str = "", kind: bool = False) -> dict[str, object]:
    out: dict[str, object] = {"ip": ep.ip}
    if ep.port:
        out["port"] = ep.port
    for k in ("namespace", "name", "node"):
        if getattr(ep, k):
            out[k] = getattr(ep, k)
    if kind and ep.kind:
        out["kind"] = EndpointKind.Name(ep.kind)
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
            "client": _end_json(*_flow_ends(row)[0]),
            "server": _end_json(*_flow_ends(row)[1]),
            "reported_by": row.side,
            "both_ends_report": row.both,
            "connections": fl.connections,
            "duration_mean_ns": fl.duration_sum_ns // fl.connections if fl.connections else 0,
            "duration_p50_below_ns": int(render.duration_quantile_us(fl, 0.5) * 1000),
            "duration_p99_below_ns": int(render.duration_quantile_us(fl, 0.99) * 1000),
        }
        if row.side == "client" and ev.remote.kind == SERVICE:  # the backends are not known from flows
            doc["via"] = _end_json(ev.remote, kind=True)
        if row.covered:
            doc["also_in_client_flows"] = row.covered
        doc["flow"] = json.loads(render.json_line(ev))
        return json.dumps(doc)
    c, s = row.client, row.server
    up, down = _bytes(row)
    client, server = _row_ends(row)
    doc = {
        "time": rfc3339(row.time_ns()),
        "row": "connection",
        "client": _end_json(*client),
        "server": _end_json(*server),
    }
    via = row.via()
    if via is not None:  # as the summary's rows: only through a Service or a node port
        doc["via"] = _end_json(via, kind=True)
    doc |= {
        "ended": row.ended,
        "duration_ns": _duration_ns(row),
        "client_to_server_bytes": up,
        "server_to_client_bytes": down,
        "retransmits": sum(e.lifecycle.retransmits for e in row.sockets),
    }
    if row.reset_by is not None:
        doc["reset_by"] = {"side": row.reset_by.side, **row.reset_by.verdict.to_json()}
    if row.in_client_flow:
        doc["in_client_flow"] = True
    doc["sockets"] = {
        k: json.loads(render.json_line(e))
        for k, e in (("client", c), ("server", s), ("unknown_role", row.unoriented))
        if e is not None
    }
    return json.dumps(doc)
