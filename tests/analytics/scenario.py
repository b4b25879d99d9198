"""A hand-built stream for the analytics tests: one connection per case of the summary's rules
(tail/summary.py, tail/resetcause.py, tcpscope/outcome.py), as agent batches.

Every case is on its own ports and 10 s from the next, so the cases do not see each other's events
within the 2 s windows. Nodes: node-1 runs the clients (198.18.1.2), node-2 the servers
(198.18.2.2), node-3 and node-4 one server each that reported losses; node-9 (198.18.9.x) runs no
agent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tcpscope.v1 import events_pb2 as pb

T0 = 1_800_000_000 * 10**9
S_NS = 10**9
MS = 10**6

PODS = {
    "198.18.1.2": ("shop", "web-1", "node-1"),
    "198.18.2.2": ("shop", "api-1", "node-2"),
    "198.18.3.2": ("data", "db-1", "node-3"),
    "198.18.4.2": ("data", "cache-1", "node-4"),
    "198.18.9.2": ("edge", "proxy-1", "node-9"),  # its node runs no agent
}
C, S, S3, S4, X = "198.18.1.2", "198.18.2.2", "198.18.3.2", "198.18.4.2", "198.18.9.2"
HOST_IP = "198.18.1.1"  # a process on node-1 outside any pod


def endpoint(ip: str, port: int, resolved: bool = True) -> pb.Endpoint:
    ep = pb.Endpoint(ip=ip, port=port)
    if resolved and ip in PODS:
        ep.kind = pb.POD
        ep.namespace, ep.name, ep.node = PODS[ip]
        ep.workload.kind, ep.workload.name = "Deployment", ep.name.rsplit("-", 1)[0]
    return ep


@dataclass
class Stream:
    """Events per node, in time order, cut into agent batches by `batches`."""

    events: dict[str, list[pb.TcpEvent]] = field(default_factory=dict)
    losses: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> by_reason
    _sid: int = 100

    def _ev(self, node: str, local: pb.Endpoint, remote: pb.Endpoint, t: int, sid: int, comm: str) -> pb.TcpEvent:
        e = pb.TcpEvent(node=node, socket_id=sid)
        e.local.CopyFrom(local)
        e.remote.CopyFrom(remote)
        e.process.pid, e.process.comm, e.process.cgroup_id = 4000 + sid % 1000, comm, 77
        e.time.FromNanoseconds(t)
        self.events.setdefault(node, []).append(e)
        return e

    def socket(
        self,
        node: str,
        local: pb.Endpoint,
        remote: pb.Endpoint,
        start: int,
        end: int,
        role: pb.Role,
        ending: pb.Ending = pb.NORMAL,
        last_state: pb.TcpState = pb.FIN_WAIT2,
        errno: int = 0,
        reason: str = "",
        reason_code: int = 0,
        retransmits: int = 0,
        tx: int = 100,
        rx: int = 50,
        comm: str = "app",
        sid: int | None = None,
        cid: int = 0,
    ) -> int:
        """One socket's lifecycle (and its state change at the handshake); returns its socket id.
        cid: the connection id its agent gave it (docs/services.md; 0: none)."""
        if sid is None:
            self._sid += 1
            sid = self._sid
        if last_state not in (pb.SYN_SENT, pb.LISTEN):
            hs = self._ev(node, local, remote, start + MS // 2, sid, comm)
            hs.state_change.old_state, hs.state_change.new_state = pb.SYN_SENT, pb.ESTABLISHED
            hs.connection_id = cid
        e = self._ev(node, local, remote, end, sid, comm)
        e.connection_id = cid
        lc = e.lifecycle
        lc.role, lc.duration_ns, lc.ending, lc.last_state = role, end - start, ending, last_state
        lc.errno, lc.retransmits, lc.tx_bytes, lc.rx_bytes = errno, retransmits, tx, rx
        lc.errno_name = {111: "ECONNREFUSED", 110: "ETIMEDOUT", 104: "ECONNRESET", 113: "EHOSTUNREACH"}.get(errno, "")
        lc.reset_reason_name, lc.reset_reason = reason, reason_code
        return sid

    def reset(
        self,
        node: str,
        local: pb.Endpoint,
        remote: pb.Endpoint,
        t: int,
        direction: pb.Direction,
        sid: int,
        state: pb.TcpState = pb.ESTABLISHED,
        reason: str = "",
        cid: int = 0,
    ) -> None:
        e = self._ev(node, local, remote, t, sid, "app")
        e.reset.direction, e.reset.state, e.reset.reason_name = direction, state, reason
        e.connection_id = cid

    def flow(
        self,
        node: str,
        local: pb.Endpoint,
        remote: pb.Endpoint,
        t: int,
        role: pb.Role,
        n: int,
        buckets: list[int],
        comm: str = "app",
    ) -> None:
        e = self._ev(node, local, remote, t, 0, comm)
        f = e.flow
        f.role, f.connections, f.tx_bytes, f.rx_bytes = role, n, 11 * n, 7 * n
        f.duration_us_log2.extend(buckets)
        f.duration_sum_ns = n * 3 * MS
        f.first_close.FromNanoseconds(t - S_NS)
        f.last_close.FromNanoseconds(t)
        f.interval_ns, f.source = 2 * S_NS, pb.AGGREGATE

    def batches(self, per_batch: int = 4) -> list[pb.EventBatch]:
        """Each node's events in time order, `per_batch` a batch; a node's losses on its last batch."""
        out: list[pb.EventBatch] = []
        for node, evs in sorted(self.events.items()):
            evs = sorted(evs, key=lambda e: e.time.ToNanoseconds())
            chunks = [evs[i : i + per_batch] for i in range(0, len(evs), per_batch)]
            for seq, chunk in enumerate(chunks, start=1):
                b = pb.EventBatch(schema_version=1, node=node, agent_id=f"{node}/a1", sequence=seq)
                b.events.extend(chunk)
                b.sent_time.FromNanoseconds(chunk[-1].time.ToNanoseconds() + 100 * MS)
                if seq == len(chunks):
                    for reason, n in self.losses.get(node, {}).items():
                        b.lost.by_reason[reason] = n
                        if reason == "kernel.recursion_misses":
                            b.lost.kernel_skipped_runs += n
                        else:
                            b.lost.kernel += n
                out.append(b)
        return out


def at(i: int) -> int:
    return T0 + i * 10 * S_NS


def build() -> Stream:
    s = Stream()
    srv = endpoint(S, 9000)

    def client(port: int, resolved: bool = True) -> pb.Endpoint:
        return endpoint(C, port, resolved)

    # 1. ordinary, both ends seen; 2. ordinary with a retransmit
    for i, port, rt in ((1, 40001, 0), (2, 40002, 2)):
        s.socket("node-1", client(port), srv, at(i), at(i) + 5 * MS, pb.ACTIVE, retransmits=rt)
        s.socket("node-2", srv, client(port), at(i) + MS, at(i) + 6 * MS, pb.PASSIVE, last_state=pb.LAST_ACK)
    # 3. the client aborts (SO_LINGER 0): app, client_reset, its reason
    c = s.socket(
        "node-1", client(40003), srv, at(3), at(3) + 5 * MS, pb.ACTIVE, pb.RESET_SENT, pb.ESTABLISHED, 104, "TCP_STATE"
    )
    s.reset("node-1", client(40003), srv, at(3) + 5 * MS - 10, pb.SENT, c, reason="TCP_STATE")
    v = s.socket(
        "node-2",
        srv,
        client(40003),
        at(3) + MS,
        at(3) + 5 * MS + 200,
        pb.PASSIVE,
        pb.RESET_RECEIVED,
        pb.ESTABLISHED,
        104,
    )
    s.reset("node-2", srv, client(40003), at(3) + 5 * MS + 100, pb.RECEIVED, v)
    # 4. the server aborts, a reason code with no name (an older kernel's): app/reason_5
    s.socket(
        "node-2", srv, client(40004), at(4) + MS, at(4) + 5 * MS, pb.PASSIVE, pb.RESET_SENT, pb.ESTABLISHED, 104, "", 5
    )
    s.socket(
        "node-1", client(40004), srv, at(4), at(4) + 5 * MS + 300, pb.ACTIVE, pb.RESET_RECEIVED, pb.ESTABLISHED, 104
    )
    # 5. the network kills both directions: network (no_send_seen first, both_ends on the other end)
    s.socket("node-1", client(40005), srv, at(5), at(5) + 5 * MS, pb.ACTIVE, pb.RESET_RECEIVED, pb.ESTABLISHED, 104)
    s.socket(
        "node-2", srv, client(40005), at(5) + MS, at(5) + 6 * MS, pb.PASSIVE, pb.RESET_RECEIVED, pb.ESTABLISHED, 104
    )
    # 6. a RST after the peer's socket closed normally: peer_kernel/peer_closed (the client's view: ok)
    s.socket("node-1", client(40006), srv, at(6), at(6) + 5 * MS, pb.ACTIVE)
    s.socket(
        "node-2", srv, client(40006), at(6) + MS, at(6) + 105 * MS, pb.PASSIVE, pb.RESET_RECEIVED, pb.ESTABLISHED, 104
    )
    # 7. / 8. the peer's agent lost events around the RST: unknown/peer_losses, peer_possible_losses
    for i, ip, node, reason in ((7, S3, "node-3", "kernel.ringbuf_full"), (8, S4, "node-4", "kernel.recursion_misses")):
        peer = endpoint(ip, 5432)
        s.socket(
            "node-1", client(40000 + i), peer, at(i), at(i) + 5 * MS, pb.ACTIVE, pb.RESET_RECEIVED, pb.ESTABLISHED, 104
        )
        s.socket(node, peer, client(40000 + i), at(i) + MS, at(i) + 9 * MS, pb.PASSIVE)
        s.losses[node] = {reason: 2 if i == 7 else 1}
    # 9. a RST from a pod on a node without an agent: unknown/unwatched_peer
    s.socket(
        "node-1",
        client(40009),
        endpoint(X, 8443),
        at(9),
        at(9) + 5 * MS,
        pb.ACTIVE,
        pb.RESET_RECEIVED,
        pb.ESTABLISHED,
        104,
    )
    # 10. a watched node that reported nothing of the connection: unknown/peer_socket_unseen
    s.socket(
        "node-1",
        client(40010),
        endpoint(S, 9100),
        at(10),
        at(10) + 5 * MS,
        pb.ACTIVE,
        pb.RESET_RECEIVED,
        pb.ESTABLISHED,
        104,
    )
    # 11. refused (peer_kernel/refused); 12. handshake timeout; 13. failed (EHOSTUNREACH)
    c = s.socket(
        "node-1", client(40011), endpoint(S, 9009), at(11), at(11) + MS, pb.ACTIVE, pb.RESET_RECEIVED, pb.SYN_SENT, 111
    )
    s.reset("node-1", client(40011), endpoint(S, 9009), at(11) + MS - 50, pb.RECEIVED, c, pb.SYN_SENT)
    s.socket(
        "node-1", client(40012), endpoint(S3, 5432), at(12), at(12) + 3 * S_NS, pb.ACTIVE, pb.ERROR, pb.SYN_SENT, 110
    )
    s.socket("node-1", client(40013), endpoint(S3, 5432), at(13), at(13) + MS, pb.ACTIVE, pb.ERROR, pb.SYN_SENT, 113)
    # 14. an established connection that timed out (retransmissions gave up)
    s.socket(
        "node-1", client(40014), srv, at(14), at(14) + S_NS, pb.ACTIVE, pb.ERROR, pb.ESTABLISHED, 110, retransmits=6
    )
    s.socket("node-2", srv, client(40014), at(14) + MS, at(14) + 2 * S_NS, pb.PASSIVE)
    # 15. a RST sent with no socket (socket id 0): peer_kernel/no_socket; 16. a kernel reason: peer_kernel
    for i, sid, reason in ((15, 0, ""), (16, 555, "TCP_KEEPALIVE_TIMEOUT")):
        s.socket(
            "node-1", client(40000 + i), srv, at(i), at(i) + 5 * MS, pb.ACTIVE, pb.RESET_RECEIVED, pb.ESTABLISHED, 104
        )
        s.socket("node-2", srv, client(40000 + i), at(i) + MS, at(i) + 3 * MS, pb.PASSIVE)
        s.reset("node-2", srv, client(40000 + i), at(i) + 5 * MS - 20, pb.SENT, sid, pb.CLOSE, reason)
    # 17. a client no agent watches: the server's view alone (its client named from the server's side)
    s.socket("node-2", srv, endpoint(X, 50017), at(17) + MS, at(17) + 6 * MS, pb.PASSIVE)
    # 18. flows: the client's and the server's flow of one triple (the client's counts), a triple only
    # the server reported (its client unwatched), and a server socket whose client counted it in a flow
    s.flow("node-1", client(0), srv, at(18), pb.ACTIVE, 5, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 2])
    s.flow("node-2", srv, client(0), at(18) + MS, pb.PASSIVE, 5, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1])
    s.flow("node-2", srv, endpoint(X, 0), at(18) + 2 * MS, pb.PASSIVE, 3, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3])
    s.socket("node-2", srv, client(40018), at(18) - MS, at(18) - 500_000, pb.PASSIVE, retransmits=1)
    # 19. a host process (no pod) to an address nobody resolved: named by process, one row per port
    host = pb.Endpoint(ip=HOST_IP, port=40019, kind=pb.HOST)
    for port, i in ((8443, 19), (9443, 20)):
        far = pb.Endpoint(ip="203.0.113.7", port=port)
        host.port = 40000 + i
        s.socket("node-1", host, far, at(i), at(i) + 7 * MS, pb.ACTIVE, comm="curl")
    # 21. what the summary leaves out: a listener, the kernel's duplicate child, a socket older than
    # the agent (no role), a self-connect
    s.socket("node-2", endpoint(S, 9000), pb.Endpoint(), at(21), at(21) + MS, pb.ROLE_UNSPECIFIED, last_state=pb.LISTEN)
    s.socket("node-2", srv, client(40021), at(21), at(21) + MS, pb.PASSIVE, last_state=pb.SYN_RECV, tx=0, rx=0)
    s.socket("node-1", client(40022), srv, at(22), at(22) + MS, pb.ROLE_UNSPECIFIED)
    s.socket("node-1", client(40023), client(40023), at(23), at(23) + MS, pb.ACTIVE)
    return s


def all_events(batches: Iterable[pb.EventBatch]) -> list[pb.TcpEvent]:
    return [e for b in batches for e in b.events]
