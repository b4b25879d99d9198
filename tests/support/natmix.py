"""A mix of connections as the agents of both ends report them, pod to pod or through a Service's
ClusterIP (kube-proxy's DNAT), with each node's clock shifted as asked: hand-built events for the
readers' and the collector's joins (tail/summary.py, tail/resetcause.py, collector/pair_metrics.py).

Through a Service the client's events name the ClusterIP and the Service port as the remote end
(resolved as the Service, as the agents resolve it), the backend's events name the client pod; both
sockets of an established connection carry the same `connection_id`, as the agents set it. Refused
and timed-out connects never complete a handshake: client only, id 0.

With `errors`, every socket that sent or received a RST, was refused or timed out also reports the
SocketError the agents report before its lifecycle (ECONNRESET, ECONNREFUSED, ETIMEDOUT), as the
live view meets them. `flows` builds the aggregated flows of ordinary connections: the client's
names the ClusterIP and Service port, each backend's names the backend and target port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tcpscope.v1 import events_pb2 as pb

T0 = 1_700_000_000 * 10**9
MS = 1_000_000


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: str
    node: str
    workload: str


WEB = Pod("shop", "web-1", "198.18.1.2", "node-1", "web")
API1 = Pod("shop", "api-1", "198.18.2.2", "node-2", "api")
API2 = Pod("shop", "api-2", "198.18.3.2", "node-3", "api")
VIP = ("198.19.0.1", 80)
SERVICE = ("shop", "api-svc")
TARGET_PORT = 9000

KINDS = ("ok", "client_reset", "server_reset", "network_reset", "refused", "timeout")


def _pod_ep(ep: pb.Endpoint, pod: Pod, port: int) -> None:
    ep.ip, ep.port, ep.kind = pod.ip, port, pb.POD
    ep.namespace, ep.name, ep.node = pod.namespace, pod.name, pod.node
    ep.workload.kind, ep.workload.name = "Deployment", pod.workload


def _svc_ep(ep: pb.Endpoint) -> None:
    ep.ip, ep.port, ep.kind = VIP[0], VIP[1], pb.SERVICE
    ep.namespace, ep.name = SERVICE


@dataclass
class Mix:
    """Builds the events; `shift` moves one node's clock (its events' times) by that many ns."""

    via_service: bool
    shift: Mapping[str, int]
    events: list[pb.TcpEvent]
    errors: bool = False
    _sid: int = 100
    _cid: int = 0x5EED_0000_0000

    def _ev(self, pod: Pod, local_port: int, remote: Pod | None, remote_port: int, t: int, sid: int) -> pb.TcpEvent:
        e = pb.TcpEvent(node=pod.node, socket_id=sid)
        _pod_ep(e.local, pod, local_port)
        if remote is None:
            _svc_ep(e.remote)
        else:
            _pod_ep(e.remote, remote, remote_port)
        e.time.FromNanoseconds(t + self.shift.get(pod.node, 0))
        e.process.comm = "python3"
        return e

    def connection(self, kind: str, client: Pod, backend: Pod, cport: int, t: int) -> None:
        """One connection of `kind` from client (port cport) to backend, starting at t."""
        self._sid += 2
        csid, ssid = self._sid, self._sid + 1
        established = kind in ("ok", "client_reset", "server_reset", "network_reset")
        self._cid += 1
        cid = self._cid if established else 0
        via = self.via_service

        def client_ev(at: int) -> pb.TcpEvent:
            port = VIP[1] if via else TARGET_PORT
            e = self._ev(client, cport, None if via else backend, port, at, csid)
            e.connection_id = cid
            return e

        def server_ev(at: int) -> pb.TcpEvent:
            e = self._ev(backend, TARGET_PORT, client, cport, at, ssid)
            e.connection_id = cid
            return e

        c_end, s_end = t + 5 * MS, t + 4 * MS
        c = client_ev(c_end)
        c.lifecycle.role, c.lifecycle.duration_ns = pb.ACTIVE, 5 * MS
        if kind == "refused":
            c.lifecycle.ending, c.lifecycle.errno, c.lifecycle.last_state = pb.RESET_RECEIVED, 111, pb.SYN_SENT
            r = client_ev(c_end - 1000)
            r.reset.direction, r.reset.state = pb.RECEIVED, pb.SYN_SENT
            self.events += [r, *self._error(client_ev(c_end - 500), 111), c]
            return
        if kind == "timeout":
            c.lifecycle.ending, c.lifecycle.errno, c.lifecycle.last_state = pb.ERROR, 110, pb.SYN_SENT
            self.events += [*self._error(client_ev(c_end - 500), 110), c]
            return
        s = server_ev(s_end)
        s.lifecycle.role, s.lifecycle.duration_ns = pb.PASSIVE, 4 * MS - 100_000
        c.lifecycle.last_state, s.lifecycle.last_state = pb.FIN_WAIT1, pb.LAST_ACK
        c.lifecycle.tx_bytes, c.lifecycle.rx_bytes = 20, 5
        s.lifecycle.tx_bytes, s.lifecycle.rx_bytes = 5, 20
        extra: list[pb.TcpEvent] = []
        if kind == "client_reset":
            c.lifecycle.ending, c.lifecycle.reset_reason_name = pb.RESET_SENT, "TCP_STATE"
            s.lifecycle.ending, s.lifecycle.errno = pb.RESET_RECEIVED, 104
            extra += [self._reset(client_ev(c_end - 1000), pb.SENT, "TCP_STATE")]
            extra += [self._reset(server_ev(s_end - 1000), pb.RECEIVED)]
        elif kind == "server_reset":
            s.lifecycle.ending, s.lifecycle.reset_reason_name = pb.RESET_SENT, "TCP_STATE"
            c.lifecycle.ending, c.lifecycle.errno = pb.RESET_RECEIVED, 104
            extra += [self._reset(server_ev(s_end - 1000), pb.SENT, "TCP_STATE")]
            extra += [self._reset(client_ev(c_end - 1000), pb.RECEIVED)]
        elif kind == "network_reset":
            c.lifecycle.ending, c.lifecycle.errno = pb.RESET_RECEIVED, 104
            s.lifecycle.ending, s.lifecycle.errno = pb.RESET_RECEIVED, 104
            extra += [self._reset(client_ev(c_end - 1000), pb.RECEIVED)]
            extra += [self._reset(server_ev(s_end - 1000), pb.RECEIVED)]
        if kind != "ok":  # a RST sent or received: both sockets report ECONNRESET
            extra += [*self._error(client_ev(c_end - 500), 104), *self._error(server_ev(s_end - 500), 104)]
        self.events += [*extra, c, s]

    def _error(self, e: pb.TcpEvent, errno: int) -> list[pb.TcpEvent]:
        if not self.errors:
            return []
        e.socket_error.errno, e.socket_error.errno_name = (
            errno,
            {104: "ECONNRESET", 110: "ETIMEDOUT", 111: "ECONNREFUSED"}[errno],
        )
        e.socket_error.state = pb.CLOSE
        return [e]

    def flows(self, client: Pod, backends: Mapping[Pod, int], t: int) -> None:
        """One flow interval's ordinary connections from client: its agent's flow (to the Service, or
        to the backend), and each backend's flow with its share (`backends`: pod -> connections)."""
        total = sum(backends.values())
        if self.via_service:
            self.events.append(self._flow(client, None, 0, VIP[1], pb.ACTIVE, total, t))
        else:
            for b, n in backends.items():
                self.events.append(self._flow(client, b, 0, TARGET_PORT, pb.ACTIVE, n, t))
        for b, n in backends.items():
            self.events.append(self._flow(b, client, TARGET_PORT, 0, pb.PASSIVE, n, t + 1000))

    def _flow(
        self, pod: Pod, remote: Pod | None, local_port: int, remote_port: int, role: pb.Role, n: int, t: int
    ) -> pb.TcpEvent:
        e = self._ev(pod, local_port, remote, remote_port, t, 0)
        fl = e.flow
        fl.role, fl.connections, fl.interval_ns = role, n, 2 * 10**9
        fl.tx_bytes, fl.rx_bytes = (20 * n, 5 * n) if role == pb.ACTIVE else (5 * n, 20 * n)
        fl.duration_sum_ns = n * 3 * MS
        fl.duration_us_log2.extend([0] * 11 + [n])  # [2.048 ms, 4.096 ms)
        fl.first_close.FromNanoseconds(t - 10**9)
        fl.last_close.FromNanoseconds(t)
        return e

    @staticmethod
    def _reset(e: pb.TcpEvent, direction: pb.Direction, reason: str = "") -> pb.TcpEvent:
        e.reset.direction, e.reset.state, e.reset.reason_name = direction, pb.ESTABLISHED, reason
        return e


COUNTS: dict[str, int] = {
    "ok": 5,
    "client_reset": 3,
    "server_reset": 7,
    "network_reset": 4,
    "refused": 2,
    "timeout": 1,
}
"""connections per kind in `mix` (different numbers, so a mix-up between counters shows)"""


def mix(
    via_service: bool,
    shift: Mapping[str, int] | None = None,
    backends: Sequence[Pod] = (API1,),
    counts: Mapping[str, int] = COUNTS,
    errors: bool = False,
) -> list[pb.TcpEvent]:
    """The connections of `counts` from WEB, spread over the backends in turn (as `numgen inc mod
    N` spreads them), 50 ms apart, ordered by each node's own (shifted) time as a reader meets them
    per partition; with `errors`, the sockets' SocketErrors too."""
    m = Mix(via_service, shift or {}, [], errors)
    t, port, n = T0, 40000, 0
    for kind, count in counts.items():
        for _ in range(count):
            m.connection(kind, WEB, backends[n % len(backends)], port, t)
            t, port, n = t + 50 * MS, port + 1, n + 1
    return sorted(m.events, key=lambda e: (e.node, e.time.ToNanoseconds()))


def watched_batches(nodes: Sequence[str]) -> list[tuple[str, pb.EventBatch]]:
    """One loss-free batch summary per node's agent: the node is watched."""
    out = []
    for node in nodes:
        b = pb.EventBatch(node=node, agent_id=f"{node}-a", sequence=1)
        b.sent_time.FromNanoseconds(T0 - 10 * 10**9)
        out.append((f"{node}-a", b))
    return out
