"""Who reset this connection: both ends' reset events joined per connection (docs/reset-cause.md).

Pure code: TcpEvents and batch loss counters in, one `Verdict` per received reset out. A reset
received on one node is matched with a reset *sent* by the peer's node for the same connection (the
sender's local/remote are the receiver's remote/local) within `window_ns` of it, in either
direction of time because the two stamps come from two nodes' clocks. Evidence of a send is a
`Reset` event with direction SENT, or the peer socket's `Lifecycle` ending RESET_SENT (agents that
report only lifecycles). Each received reset gets one cause:

- `app`: the peer sent it from its socket for an application reason (SO_LINGER 0 close, close with
  unread data, ...); detail = the kernel's reset reason name.
- `peer_kernel`: the peer's kernel sent it with no socket, or for a protocol reason; detail = the
  reason name, `refused` (a RST answering our SYN), or `peer_closed` (no send seen, but the peer's
  socket for this connection had already closed: its kernel answered from no socket or a time-wait
  one, which an agent filtering by cgroup or netns cannot see).
- `network`: the peer's agent saw this connection (some event of the peer's socket since it
  began), reported no loss in the window and sent nothing matching; detail
  `no_send_seen`, or `both_ends` when the peer's socket had itself just been closed by a reset that
  nobody sent (a middlebox that killed the connection in both directions).
- `unknown`: detail `unwatched_peer` (no agent reports the peer's node), `backend_unseen` (the
  receiver's peer is a Service address and no agent reported the backend's socket of this
  connection: the backend's node has no agent, filters it out, or its socket is still open),
  `peer_socket_unseen` (the
  peer's node has an agent but it reported nothing of this connection: started later, filtered
  the socket out, or lost its events), `peer_losses` (the peer's agent reported definite losses in
  the window) or `peer_possible_losses` (runs of its programs the kernel skipped, in the window).

One connection, one identity: an event with a non-zero `connection_id` (a keyed hash of the
connection's two initial sequence numbers, the same on both of its sockets whatever NAT did to
addresses and ports: docs/services.md) is joined with its peer socket by that id, not by tuple and
time. The peer is then the other socket reporting the id, on whichever node: a client of a Service's
ClusterIP (`C:e -> VIP:80`) and its backend (`S:9000 <- C:e`) join although their tuples differ, and
a send matches however far apart the two nodes' clocks are. The peer's times are read in the
receiver's clock by the offset between the two sockets' starts (`_Offset`), so "the peer had closed
before the RST came" holds under clock skew too. Events with id 0 (older agents, a socket that never
completed a handshake) keep the tuple-and-window join below.

The same `ResetJoin` serves the summary (everything added, then `classify`) and, wrapped in a
`LiveHold`, a live reader: every event goes to `LiveHold.add`, which holds received resets up to
`HOLD_NS` for the peer's evidence and hands them back with their verdict. A metrics stage counting
`tcpscope_resets_total{sender}` can do the same and label each with `metrics_sender(verdict)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tcpscope.losses import definite_total, possible_total
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    ANOMALY_LIFECYCLE,
    ANOMALY_RESET_RECEIVED,
    NEW_SYN_RECV,
    RECEIVED,
    RESET_RECEIVED,
    RESET_SENT,
    SENT,
    SERVICE,
    SYN_SENT,
    TIME_WAIT,
    EventBatch,
    TcpEvent,
)

WINDOW_NS = 2_000_000_000
"""How far apart (either way) a send on the peer's node and the receive may be stamped and still be
one reset. Covers clock skew between nodes (NTP keeps it to milliseconds) with a wide margin; a
connection does not send and receive two separate resets that close together (the first one ends it)."""

HOLD_NS = WINDOW_NS + 3_000_000_000
"""How long a live reader holds a received reset before deciding: the window, plus the time the
peer's agent takes to ship its events (batch age, collector, Kafka)."""

APP, PEER_KERNEL, NETWORK, UNKNOWN = "app", "peer_kernel", "network", "unknown"
CAUSES: tuple[str, ...] = (APP, PEER_KERNEL, NETWORK, UNKNOWN)

KERNEL_REASONS = frozenset(
    {
        "NO_SOCKET",
        "TCP_INVALID_ACK_SEQUENCE",
        "TCP_RFC7323_PAWS",
        "TCP_TOO_OLD_ACK",
        "TCP_ACK_UNSENT_DATA",
        "TCP_FLAGS",
        "TCP_OLD_ACK",
        "TCP_TIMEWAIT_SOCKET",
        "INVALID_SYN",
        "TCP_ABORT_ON_MEMORY",
        "TCP_KEEPALIVE_TIMEOUT",
        "ERROR",
    }
)
"""`enum sk_rst_reason` names (6.10+) for resets the kernel sends on its own: protocol violations,
no socket, memory pressure, keepalive. The others (TCP_ABORT_ON_CLOSE, TCP_ABORT_ON_DATA,
TCP_ABORT_ON_LINGER, TCP_STATE, TCP_DISCONNECT_WITH_DATA, NOT_SPECIFIED) follow from what the
application did: close with unread data, SO_LINGER 0, shutdown then data, disconnect. MPTCP_*
reasons are protocol ones too."""

Addr = tuple[str, int]


@dataclass(frozen=True)
class Verdict:
    cause: str  # one of CAUSES
    detail: str
    peer_node: str = ""  # the node the reset claims to come from, when known

    @property
    def label(self) -> str:
        return f"{self.cause}/{self.detail}" if self.detail else self.cause

    def to_json(self) -> dict[str, str]:
        return {"cause": self.cause, "detail": self.detail, "peer_node": self.peer_node}


def connection_verdict(verdicts: Sequence[Verdict]) -> Verdict | None:
    """One connection's cause from the verdicts on the RSTs its ends received, earliest first:
    `network` if any is (a RST nobody sent proves the network interfered, whatever the other end's
    says), and then `network/both_ends` when both ends received one nobody sent, whichever came
    first by the two nodes' clocks (two forged RSTs microseconds apart: their order is a race, the
    figure must not be); else the earliest verdict."""
    network = [v for v in verdicts if v.cause == NETWORK]
    if len(network) > 1:
        return Verdict(NETWORK, "both_ends", network[0].peer_node)
    if network:
        return network[0]
    return verdicts[0] if verdicts else None


def metrics_sender(v: Verdict) -> str:
    """The `sender` label of tcpscope_resets_total for a received reset: `network` when the network
    injected it, `peer` when the peer sent it, `unknown` otherwise."""
    return {APP: "peer", PEER_KERNEL: "peer", NETWORK: "network"}.get(v.cause, "unknown")


@dataclass(frozen=True)
class ReceivedReset:
    """A RST one watched socket received."""

    node: str
    socket_id: int
    local: Addr
    remote: Addr
    time_ns: int
    state: int  # the socket's state when it came (SYN_SENT: a refused connect)
    remote_node: str = ""  # from the agent's enrichment of the remote end, when it resolved
    connection_id: int = 0  # the connection's identity on both of its sockets (0: unknown)
    remote_kind: int = 0  # the remote end's EndpointKind (SERVICE: a ClusterIP, the backend unknown)


@dataclass(frozen=True)
class _Send:
    node: str
    time_ns: int
    reason: int
    reason_name: str
    full_socket: bool  # sent from a full socket (not none, a time-wait or a request socket)
    socket_id: int = 0


@dataclass(frozen=True)
class _Life:
    node: str
    socket_id: int
    start_ns: int
    end_ns: int
    ending: int


Sock = tuple[str, int]
"""(node, socket id): one socket, as its agent names it"""


@dataclass(frozen=True)
class _LossSpan:
    from_ns: int  # the previous batch's send time (0: unknown, so since ever)
    to_ns: int
    definite: int
    possible: int


def _addr(ep: object) -> Addr:
    return (getattr(ep, "ip", ""), int(getattr(ep, "port", 0)))


@dataclass
class ResetJoin:
    """Reset sends, receives, socket lifetimes and loss spans, indexed for the join."""

    window_ns: int = WINDOW_NS
    max_entries: int = 2_000_000
    """memory bound: past it, the older half (by event time) of what is held is forgotten"""
    forgotten_before_ns: int = field(default=0, init=False)
    """0, or the event time before which the bound made it forget (verdicts there may be unknown)"""
    _entries: int = field(default=0, init=False)
    _oldest_ns: int = field(default=0, init=False)
    _newest_ns: int = field(default=0, init=False)
    _sends: dict[tuple[Addr, Addr], list[_Send]] = field(default_factory=dict, init=False)
    _received: dict[tuple[str, int, Addr, Addr], list[ReceivedReset]] = field(default_factory=dict, init=False)
    _lives: dict[tuple[Addr, Addr], list[_Life]] = field(default_factory=dict, init=False)
    _node_of_ip: dict[str, str] = field(default_factory=dict, init=False)
    _spans: dict[tuple[Addr, Addr, str], tuple[int, int]] = field(default_factory=dict, init=False)
    """(local, remote, node) -> first and last time that node's agent reported a socket of that tuple"""
    _watched: set[str] = field(default_factory=set, init=False)
    # by connection id (non-zero): the sends, lifetimes and sockets of each connection, whatever
    # their tuples (NAT) and clocks
    _conn_sends: dict[int, list[_Send]] = field(default_factory=dict, init=False)
    _conn_lives: dict[int, list[_Life]] = field(default_factory=dict, init=False)
    _conn_socks: dict[int, dict[Sock, tuple[int, int]]] = field(default_factory=dict, init=False)
    """connection id -> {(node, socket id): first and last event time that socket reported}"""
    _node_offsets: dict[tuple[str, str], int] = field(default_factory=dict, init=False)
    """(node a, node b) -> b's clock minus a's, learnt from joined connections (`_learn_offset`)"""
    _losses: dict[str, list[_LossSpan]] = field(default_factory=dict, init=False)
    _last_batch_ns: dict[str, int] = field(default_factory=dict, init=False)

    # --- input ----------------------------------------------------------------------------------

    def add(self, ev: TcpEvent) -> ReceivedReset | None:
        """Take one event; returns the received reset it reports, if it reports one."""
        if ev.node:
            self._watched.add(ev.node)
            if ev.local.ip:
                self._node_of_ip[ev.local.ip] = ev.node
        kind = ev.WhichOneof("kind")
        local, remote, t = _addr(ev.local), _addr(ev.remote), ev.time.ToNanoseconds()
        if kind is None or kind == "flow":
            return None
        self._oldest_ns = min(self._oldest_ns, t) if self._oldest_ns else t
        self._newest_ns = max(self._newest_ns, t)
        self._entries += 1
        if self._entries > self.max_entries:
            self._forget_older_half()
        cid = ev.connection_id
        if remote[1] and local[1]:
            sk = (local, remote, ev.node)
            lo, hi = self._spans.get(sk, (t, t))
            self._spans[sk] = (min(lo, t), max(hi, t))
            if cid:
                socks = self._conn_socks.setdefault(cid, {})
                lo, hi = socks.get((ev.node, ev.socket_id), (t, t))
                socks[(ev.node, ev.socket_id)] = (min(lo, t), max(hi, t))
        if kind == "reset":
            r = ev.reset
            if r.direction == SENT:
                # no socket (a closed port): socket_id 0; a time-wait or request socket: by state
                full = ev.socket_id != 0 and r.state not in (TIME_WAIT, NEW_SYN_RECV)
                self._add_send(local, remote, cid, _Send(ev.node, t, r.reason, r.reason_name, full, ev.socket_id))
            elif r.direction == RECEIVED:
                return self._receive(self._received_of(ev, t, r.state))
        elif kind == "lifecycle":
            lc = ev.lifecycle
            if remote[1] == 0:
                return None  # a listener
            life = _Life(ev.node, ev.socket_id, t - lc.duration_ns, t, lc.ending)
            self._lives.setdefault((local, remote), []).append(life)
            if cid:
                self._conn_lives.setdefault(cid, []).append(life)
                self._learn_offset(cid)
            if lc.ending == RESET_SENT:
                send = _Send(ev.node, t, lc.reset_reason, lc.reset_reason_name, True, ev.socket_id)
                self._add_send(local, remote, cid, send)
            elif lc.ending == RESET_RECEIVED:
                return self._receive(self._received_of(ev, t, lc.last_state))
        return None

    def _add_send(self, local: Addr, remote: Addr, cid: int, send: _Send) -> None:
        self._sends.setdefault((local, remote), []).append(send)
        if cid:
            self._conn_sends.setdefault(cid, []).append(send)

    @staticmethod
    def _received_of(ev: TcpEvent, t: int, state: int) -> ReceivedReset:
        return ReceivedReset(
            ev.node,
            ev.socket_id,
            _addr(ev.local),
            _addr(ev.remote),
            t,
            state,
            ev.remote.node,
            ev.connection_id,
            ev.remote.kind,
        )

    def _receive(self, r: ReceivedReset) -> ReceivedReset:
        """Record r once per socket: the Reset event and the socket's lifecycle report the same RST
        (a socket receives one: tcp_reset() ends it); the event's stamp is kept, it is the exact one."""
        key = (r.node, r.socket_id, r.local, r.remote)
        same = self._received.setdefault(key, [])
        for i, o in enumerate(same):
            if abs(o.time_ns - r.time_ns) <= self.window_ns:
                if r.time_ns < o.time_ns:
                    same[i] = r
                return same[i]
        same.append(r)
        return r

    def add_batch(self, agent_id: str, batch: EventBatch) -> None:
        """A batch summary: its node is watched; its losses (since that agent's previous batch)
        cover the span from the previous batch's send time to this one's."""
        if batch.node:
            self._watched.add(batch.node)
        sent = batch.sent_time.ToNanoseconds()
        prev = self._last_batch_ns.get(agent_id, 0)
        self._last_batch_ns[agent_id] = max(prev, sent)
        definite, possible = definite_total(batch.lost), possible_total(batch.lost)
        if (definite or possible) and batch.node:
            self._losses.setdefault(batch.node, []).append(_LossSpan(prev, sent, definite, possible))

    def add_all(self, events: Iterable[TcpEvent]) -> None:
        for ev in events:
            self.add(ev)

    def _forget_older_half(self) -> None:
        cutoff = self._oldest_ns + (self._newest_ns - self._oldest_ns) // 2 + 1
        self.forgotten_before_ns = max(self.forgotten_before_ns, cutoff)
        self.evict_before(cutoff)

    def evict_before(self, cutoff_ns: int) -> None:
        """Forget what happened before cutoff_ns (a live reader's memory bound)."""
        for sk, sends in list(self._sends.items()):
            self._sends[sk] = [x for x in sends if x.time_ns >= cutoff_ns]
            if not self._sends[sk]:
                del self._sends[sk]
        for rk, recv in list(self._received.items()):
            self._received[rk] = [x for x in recv if x.time_ns >= cutoff_ns]
            if not self._received[rk]:
                del self._received[rk]
        for lk, lives in list(self._lives.items()):
            self._lives[lk] = [x for x in lives if x.end_ns >= cutoff_ns]
            if not self._lives[lk]:
                del self._lives[lk]
        for k in [k for k, (_, hi) in self._spans.items() if hi < cutoff_ns]:
            del self._spans[k]
        for cid, csends in list(self._conn_sends.items()):
            self._conn_sends[cid] = [x for x in csends if x.time_ns >= cutoff_ns]
            if not self._conn_sends[cid]:
                del self._conn_sends[cid]
        for cid, clives in list(self._conn_lives.items()):
            self._conn_lives[cid] = [x for x in clives if x.end_ns >= cutoff_ns]
            if not self._conn_lives[cid]:
                del self._conn_lives[cid]
        for cid, socks in list(self._conn_socks.items()):
            kept = {k: v for k, v in socks.items() if v[1] >= cutoff_ns}
            if kept:
                self._conn_socks[cid] = kept
            else:
                del self._conn_socks[cid]
        for node in list(self._losses):
            self._losses[node] = [s for s in self._losses[node] if s.to_ns >= cutoff_ns]
        self._oldest_ns = max(self._oldest_ns, cutoff_ns)
        self._entries = (
            sum(map(len, self._sends.values()))
            + sum(map(len, self._received.values()))
            + sum(map(len, self._lives.values()))
            + len(self._spans)
            + sum(map(len, self._conn_sends.values()))
            + sum(map(len, self._conn_lives.values()))
            + sum(map(len, self._conn_socks.values()))
        )

    # --- the join -------------------------------------------------------------------------------

    def received(self) -> list[ReceivedReset]:
        return [r for rs in self._received.values() for r in rs]

    def received_by(self, ev: TcpEvent) -> ReceivedReset | None:
        """The reset a socket's lifecycle (ending RESET_RECEIVED) received."""
        if ev.WhichOneof("kind") != "lifecycle" or ev.lifecycle.ending != RESET_RECEIVED:
            return None
        key = (ev.node, ev.socket_id, _addr(ev.local), _addr(ev.remote))
        end = ev.time.ToNanoseconds()
        start = end - ev.lifecycle.duration_ns
        for r in self._received.get(key, []):
            if start - self.window_ns <= r.time_ns <= end + self.window_ns:
                return r
        return None

    def peer_node(self, r: ReceivedReset) -> str:
        return self._node_of_ip.get(r.remote[0]) or r.remote_node

    def classify(self, r: ReceivedReset) -> Verdict:
        if r.state == SYN_SENT:
            return Verdict(PEER_KERNEL, "refused", self.peer_node(r))
        if r.connection_id:
            by_id = self._classify_by_id(r)
            if by_id is not None:
                return by_id
        peer = self.peer_node(r)
        if not peer or peer not in self._watched:
            return Verdict(UNKNOWN, "unwatched_peer", peer)
        send = self._nearest_send(r.remote, r.local, r.time_ns, peer)
        if send is not None:
            return _sender_verdict(send, peer)
        lo, hi = r.time_ns - self.window_ns, r.time_ns + self.window_ns
        spans = [s for s in self._losses.get(peer, []) if s.from_ns <= hi and s.to_ns >= lo]
        if any(s.definite for s in spans):
            return Verdict(UNKNOWN, "peer_losses", peer)
        if any(s.possible for s in spans):
            return Verdict(UNKNOWN, "peer_possible_losses", peer)
        seen = self._spans.get((r.remote, r.local, peer))
        start = self._own_start(r)
        if seen is None or (start is not None and seen[1] < start - self.window_ns):
            return Verdict(UNKNOWN, "peer_socket_unseen", peer)
        life = self._peer_life(r, peer)
        if life is not None and life.end_ns < r.time_ns:
            # the peer's socket was gone when this RST came: its kernel answered from no socket or
            # a time-wait one (invisible to a filtered agent) unless the peer's socket had itself
            # just received a RST that nobody sent (the network killed both directions)
            if (
                life.ending == RESET_RECEIVED
                and r.time_ns - life.end_ns <= self.window_ns
                and self._nearest_send(r.local, r.remote, life.end_ns, r.node) is None
            ):
                return Verdict(NETWORK, "both_ends", peer)
            return Verdict(PEER_KERNEL, "peer_closed", peer)
        return Verdict(NETWORK, "no_send_seen", peer)

    # --- the join by connection id ------------------------------------------------------------------

    def _classify_by_id(self, r: ReceivedReset) -> Verdict | None:
        """The verdict from the peer socket that reported the same connection id, or None when no
        other socket reported it and the tuple join can still tell (a pod or node address)."""
        own: Sock = (r.node, r.socket_id)
        peers = [k for k in self._conn_socks.get(r.connection_id, {}) if k != own]
        if not peers:
            if r.remote_kind == SERVICE:
                # the client's remote is a ClusterIP: which backend (and so which node) it reached is
                # known only from the backend's socket, which no agent reported
                return Verdict(UNKNOWN, "backend_unseen", "")
            return None
        peer_sock = self._peer_socket(r, peers)
        peer = peer_sock[0]
        sends = [s for s in self._conn_sends.get(r.connection_id, []) if (s.node, s.socket_id) == peer_sock]
        if sends:
            return _sender_verdict(min(sends, key=lambda s: s.time_ns), peer)
        offset = self._offset(r.connection_id, own, peer_sock)
        t_peer = r.time_ns + offset  # the receive, in the peer's clock
        lo, hi = t_peer - self.window_ns, t_peer + self.window_ns
        spans = [s for s in self._losses.get(peer, []) if s.from_ns <= hi and s.to_ns >= lo]
        if any(s.definite for s in spans):
            return Verdict(UNKNOWN, "peer_losses", peer)
        if any(s.possible for s in spans):
            return Verdict(UNKNOWN, "peer_possible_losses", peer)
        life = next((x for x in self._conn_lives.get(r.connection_id, []) if (x.node, x.socket_id) == peer_sock), None)
        if life is not None and life.end_ns - offset < r.time_ns:
            own_sent = any((s.node, s.socket_id) == own for s in self._conn_sends.get(r.connection_id, []))
            if life.ending == RESET_RECEIVED and not own_sent:
                return Verdict(NETWORK, "both_ends", peer)
            return Verdict(PEER_KERNEL, "peer_closed", peer)
        return Verdict(NETWORK, "no_send_seen", peer)

    def _peer_socket(self, r: ReceivedReset, peers: list[Sock]) -> Sock:
        """The peer among the other sockets of the id: on another node first (a connection's two
        sockets; on one node, both are seen by one agent), then the one that reported last."""
        socks = self._conn_socks[r.connection_id]
        return max(peers, key=lambda k: (k[0] != r.node, socks[k][1]))

    def _offset(self, cid: int, own: Sock, peer: Sock) -> int:
        """The peer's clock minus the receiver's, from the two sockets' starts (a connection's two
        sockets start within a round trip of each other), else from their first events; 0 when
        one of them reported nothing yet."""
        lives = {(x.node, x.socket_id): x for x in self._conn_lives.get(cid, [])}
        if own in lives and peer in lives:
            return lives[peer].start_ns - lives[own].start_ns
        if own[0] == peer[0]:
            return 0
        if (own[0], peer[0]) in self._node_offsets:
            return self._node_offsets[(own[0], peer[0])]
        return -self._node_offsets.get((peer[0], own[0]), 0)

    def _learn_offset(self, cid: int) -> None:
        """Two nodes' clock offset, from the latest connection whose sockets on both reported their
        lifecycles: for a receiver whose own lifecycle is not known yet (the live view)."""
        lives = self._conn_lives.get(cid, [])
        if len(lives) == 2 and lives[0].node != lives[1].node:
            a, b = lives
            self._node_offsets[(a.node, b.node)] = b.start_ns - a.start_ns
            self._node_offsets.pop((b.node, a.node), None)

    def _nearest_send(self, src: Addr, dst: Addr, t: int, node: str) -> _Send | None:
        best: _Send | None = None
        for s in self._sends.get((src, dst), []):
            if (
                s.node == node
                and abs(s.time_ns - t) <= self.window_ns
                and (best is None or abs(s.time_ns - t) < abs(best.time_ns - t))
            ):
                best = s
        return best

    def _own_start(self, r: ReceivedReset) -> int | None:
        for life in self._lives.get((r.local, r.remote), []):
            if (
                life.node == r.node
                and life.socket_id == r.socket_id
                and life.start_ns - self.window_ns <= r.time_ns <= life.end_ns + self.window_ns
            ):
                return life.start_ns
        return None

    def _peer_life(self, r: ReceivedReset, peer: str) -> _Life | None:
        """The peer's socket of this connection: by start time when the receiver's own lifecycle
        is known (as the summary matches them), else the latest one that started before the RST."""
        lives = [x for x in self._lives.get((r.remote, r.local), []) if x.node == peer]
        start = self._own_start(r)
        if start is not None:
            near = [x for x in lives if abs(x.start_ns - start) <= self.window_ns]
            return min(near, key=lambda x: abs(x.start_ns - start), default=None)
        before = [x for x in lives if x.start_ns <= r.time_ns + self.window_ns]
        return max(before, key=lambda x: x.start_ns, default=None)

    def aggregate_verdict(self, ev: TcpEvent, now_ns: int | None = None) -> Verdict | None:
        """Who sent the RSTs an AnomalyAggregate counts past the budget (received RSTs, or lifecycles
        that ended RESET_RECEIVED): they have no socket or time of their own to join on, so they take
        the cause of their exemplars' class: the most common verdict among the received RSTs of the
        same key (the same local and remote address and server port) reported one by one in the
        aggregate's interval. `unknown/no_exemplar` when none was; None for other events."""
        if ev.WhichOneof("kind") != "anomalies":
            return None
        a = ev.anomalies
        if not (a.kind == ANOMALY_RESET_RECEIVED or (a.kind == ANOMALY_LIFECYCLE and a.ending == RESET_RECEIVED)):
            return None
        if a.state == SYN_SENT:
            return Verdict(PEER_KERNEL, "refused")
        active = a.role == ACTIVE
        port = ev.remote.port if active else ev.local.port
        last = a.last.ToNanoseconds()
        lo = last - a.interval_ns - self.window_ns if a.interval_ns else 0
        votes: dict[Verdict, int] = {}
        for rs in self._received.values():
            for r in rs:
                if r.local[0] != ev.local.ip or r.remote[0] != ev.remote.ip or not lo <= r.time_ns <= last:
                    continue
                if (r.remote[1] if active else r.local[1]) != port:
                    continue
                v = self.classify(r)
                votes[v] = votes.get(v, 0) + 1
        if not votes:
            return Verdict(UNKNOWN, "no_exemplar")
        return max(votes, key=lambda v: (votes[v], v.label))

    def classify_all(self) -> list[tuple[ReceivedReset, Verdict]]:
        return [(r, self.classify(r)) for r in self.received()]


def _is_send(ev: TcpEvent) -> bool:
    kind = ev.WhichOneof("kind")
    if kind == "reset":
        return ev.reset.direction == SENT
    return kind == "lifecycle" and ev.lifecycle.ending == RESET_SENT


def sent_verdict(reason_name: str, reason: int, node: str = "") -> Verdict:
    """What a reset a socket *sent* says of its sender (app or kernel, by its reason), for a
    connection whose receiving end no agent reported (tail/connections.py)."""
    return _sender_verdict(_Send(node, 0, reason, reason_name, True), node)


def _sender_verdict(s: _Send, peer: str) -> Verdict:
    name = s.reason_name or (f"reason_{s.reason}" if s.reason else "")
    if not s.full_socket:
        return Verdict(PEER_KERNEL, name or "no_socket", peer)
    if name in KERNEL_REASONS or name.startswith("MPTCP_"):
        return Verdict(PEER_KERNEL, name, peer)
    return Verdict(APP, name or "NOT_SPECIFIED", peer)


@dataclass
class LiveHold:
    """The live view's bounded hold: received resets wait up to hold_ns (by the reader's monotonic
    clock, passed in) for the peer's evidence, then come out with their verdict. A matching send
    (app, peer_kernel) or a refusal releases one at once. At most max_held wait; beyond that the
    oldest is released with the verdict the evidence so far supports."""

    join: ResetJoin = field(default_factory=ResetJoin)
    hold_ns: int = HOLD_NS
    max_held: int = 10_000
    memory_ns: int = 120_000_000_000
    """event time kept in the join behind the newest event seen (bounds its memory)"""
    _held: list[tuple[int, ReceivedReset, TcpEvent]] = field(default_factory=list, init=False)
    _newest_ns: int = field(default=0, init=False)
    _evicted_at_ns: int = field(default=0, init=False)

    def add(self, ev: TcpEvent, now_ns: int, show: bool = True) -> tuple[bool, list[tuple[TcpEvent, Verdict]]]:
        """Take one event (every event is evidence; `show` says whether the reader prints it).
        Returns (held, released): whether ev is held back, and held events now decided."""
        r = self.join.add(ev)
        t = ev.time.ToNanoseconds()
        self._newest_ns = max(self._newest_ns, t)
        held = False
        out: list[tuple[TcpEvent, Verdict]] = []
        if show and r is not None and self._is_received_reset(ev):
            v = self.join.classify(r)
            if v.cause in (APP, PEER_KERNEL):  # the send (or a refusal) is already known
                out.append((ev, v))
            else:
                self._held.append((now_ns + self.hold_ns, r, ev))
            held = True
        elif self._held and _is_send(ev):
            out += self._release_where(
                lambda r: (
                    (r.remote, r.local) == (_addr(ev.local), _addr(ev.remote))
                    or (ev.connection_id != 0 and r.connection_id == ev.connection_id)
                )
            )
        out += self.release(now_ns)
        if len(self._held) > self.max_held:
            _, r0, e0 = self._held.pop(0)
            out.append((e0, self.join.classify(r0)))
        if self._newest_ns - self._evicted_at_ns > self.memory_ns // 4:
            self._evicted_at_ns = self._newest_ns
            self.join.evict_before(self._newest_ns - self.memory_ns)
        return held, out

    @staticmethod
    def _is_received_reset(ev: TcpEvent) -> bool:
        kind = ev.WhichOneof("kind")
        if kind == "reset":
            return ev.reset.direction == RECEIVED
        return kind == "lifecycle" and ev.lifecycle.ending == RESET_RECEIVED

    def _release_where(self, match: Callable[[ReceivedReset], bool]) -> list[tuple[TcpEvent, Verdict]]:
        """Held resets of a tuple a send just arrived for, if that send decides them."""
        out: list[tuple[TcpEvent, Verdict]] = []
        keep: list[tuple[int, ReceivedReset, TcpEvent]] = []
        for item in self._held:
            v = self.join.classify(item[1]) if match(item[1]) else None
            if v is not None and v.cause in (APP, PEER_KERNEL):
                out.append((item[2], v))
            else:
                keep.append(item)
        self._held = keep
        return out

    def release(self, now_ns: int, everything: bool = False) -> list[tuple[TcpEvent, Verdict]]:
        """Held events whose hold ended (all of them with everything), oldest first."""
        n = 0
        while n < len(self._held) and (everything or self._held[n][0] <= now_ns):
            n += 1
        done, self._held = self._held[:n], self._held[n:]
        return [(ev, self.join.classify(r)) for _, r, ev in done]

    def __len__(self) -> int:
        return len(self._held)
