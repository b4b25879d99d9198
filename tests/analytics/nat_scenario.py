"""A hand-built stream through kube-proxy's NAT for the analytics tests: the Services rules of the
summary (tail/summary.py, tail/resetcause.py, docs/services.md) one case at a time, as agent batches.

First the mix of tests/support/natmix.py through the Service `shop/api-svc` (ClusterIP 198.19.0.1:80)
with its two backends, `shop/api-1` on node-2 and `shop/api-2` on node-3: ok, client and server
resets, RSTs the network forged to both ends, refused and timed-out connects (no backend socket),
with the SocketErrors the sockets report.
Then one case per rule the mix does not take, 10 s apart so no case sees another's events within
the 2 s windows (`CASES` names them). Through a Service the client's events name the ClusterIP, the
backend's the client pod; both carry the connection's id. node-1 runs the client `shop/web-1` and a
backend of its own (`shop/api-0`); node-5 and node-6 each run a backend whose agent reported losses.
A NodePort is node-1's address 198.19.255.1:30080, masqueraded to that address.
"""

from __future__ import annotations

from tcpscope.v1 import events_pb2 as pb
from tests.analytics.scenario import Stream
from tests.support import natmix
from tests.support.natmix import API1, API2, WEB, Pod

MS = natmix.MS
S_NS = 10**9
API0 = Pod("shop", "api-0", "198.18.1.3", "node-1", "api")  # a backend on the client's own node
API5 = Pod("shop", "api-5", "198.18.5.2", "node-5", "api")  # its agent reported definite losses
API6 = Pod("shop", "api-6", "198.18.6.2", "node-6", "api")  # its agent reported skipped runs
NODE1_IP, NODE_PORT = "198.19.255.1", 30080
TARGET = natmix.TARGET_PORT

CASES = (
    "backend_unseen",  # a client's RST from the ClusterIP; no agent reported the backend's socket
    "peer_closed",  # the backend received a RST after the client's socket had closed
    "peer_losses",  # the backend's agent lost events around the client's RST
    "peer_possible_losses",  # its programs' runs were skipped around it
    "same_node",  # a client abort to a backend on the client's own node
    "peer_open",  # a forged RST to the client; the backend's socket reported only its handshake
    "lifecycle_send",  # the backend's abort known from its lifecycle alone (no reset event)
    "nodeport",  # a server abort through a NodePort with SNAT: joined by id, via the node port
    "service_flows",  # ordinary connections to the Service in flows: the client's and the backends'
    "absorbed",  # a backend's socket (it retransmitted) of a connection its client aggregated
    "nodeport_flows_before",  # flows through the NodePort before the window's start
    "nodeport_flows",  # flows through the NodePort: the backends' from node-1's address
    "mixed_ids_client",  # pod to pod, the client's agent sets ids, the server's does not
    "mixed_ids_server",  # the other way round
    "unseen_pod_peer",  # a RST with an id from a pod (no Service) whose agent reported nothing of it
)


def at(case: str) -> int:
    return natmix.T0 + (10 + 10 * CASES.index(case)) * S_NS


def pod(p: Pod, port: int) -> pb.Endpoint:
    ep = pb.Endpoint(ip=p.ip, port=port, kind=pb.POD, namespace=p.namespace, name=p.name, node=p.node)
    ep.workload.kind, ep.workload.name = "Deployment", p.workload
    return ep


def service() -> pb.Endpoint:
    ns, name = natmix.SERVICE
    return pb.Endpoint(ip=natmix.VIP[0], port=natmix.VIP[1], kind=pb.SERVICE, namespace=ns, name=name)


def node1(port: int) -> pb.Endpoint:
    return pb.Endpoint(ip=NODE1_IP, port=port, kind=pb.NODE, name="node-1")


def _cid(case: str) -> int:
    return 0xC1D0_0000_0000 + CASES.index(case)


def build() -> Stream:
    s = Stream(_sid=1000)  # clear of the mix's socket ids
    for ev in natmix.mix(via_service=True, backends=(API1, API2), errors=True):
        s.events.setdefault(ev.node, []).append(ev)
    _resets(s)
    _flows(s)
    _without_ids(s)
    return s


def _client(
    s: Stream, case: str, port: int, remote: pb.Endpoint, ending: pb.Ending = pb.NORMAL, reason: str = ""
) -> int:
    """The client's socket of a case: web-1 from `port`, 5 ms, with the case's connection id."""
    t, errno = at(case), 104 if ending == pb.RESET_RECEIVED else 0
    state = pb.ESTABLISHED if ending != pb.NORMAL else pb.FIN_WAIT2
    return s.socket(
        WEB.node, pod(WEB, port), remote, t, t + 5 * MS, pb.ACTIVE, ending, state, errno, reason, cid=_cid(case)
    )


def _backend(
    s: Stream,
    case: str,
    p: Pod,
    client: pb.Endpoint,
    end_ms: int,
    ending: pb.Ending = pb.NORMAL,
    reason: str = "",
    retransmits: int = 0,
) -> int:
    """The backend's socket of a case: p on its target port, from 1 ms to end_ms, the case's id."""
    t, errno = at(case), 104 if ending == pb.RESET_RECEIVED else 0
    state = pb.ESTABLISHED if ending != pb.NORMAL else pb.LAST_ACK
    return s.socket(
        p.node,
        pod(p, TARGET),
        client,
        t + MS,
        t + end_ms * MS,
        pb.PASSIVE,
        ending,
        state,
        errno,
        reason,
        retransmits=retransmits,
        cid=_cid(case),
    )


def _resets(s: Stream) -> None:
    # a RST received from the ClusterIP, nothing of the backend: unknown/backend_unseen
    c = _client(s, "backend_unseen", 41001, service(), pb.RESET_RECEIVED)
    s.reset(
        WEB.node, pod(WEB, 41001), service(), at("backend_unseen") + 4 * MS, pb.RECEIVED, c, cid=_cid("backend_unseen")
    )
    # the client closed first; 100 ms later the backend's socket got a RST: peer_kernel/peer_closed
    _client(s, "peer_closed", 41002, service())
    _backend(s, "peer_closed", API1, pod(WEB, 41002), 105, pb.RESET_RECEIVED)
    # the backend's agent reported losses (on its last batch, which covers the case): unknown
    for case, p, reason in (
        ("peer_losses", API5, "kernel.ringbuf_full"),
        ("peer_possible_losses", API6, "kernel.recursion_misses"),
    ):
        port = 41000 + CASES.index(case) + 1
        _client(s, case, port, service(), pb.RESET_RECEIVED)
        _backend(s, case, p, pod(WEB, port), 9)
        s.losses[p.node] = {reason: 2}
    # a client abort to a backend on its own node: app, joined by id on one node
    case = "same_node"
    c = _client(s, case, 41005, service(), pb.RESET_SENT, reason="TCP_STATE")
    s.reset(
        WEB.node, pod(WEB, 41005), service(), at(case) + 5 * MS - 10, pb.SENT, c, reason="TCP_STATE", cid=_cid(case)
    )
    _backend(s, case, API0, pod(WEB, 41005), 6, pb.RESET_RECEIVED)
    # a forged RST to the client; the backend's socket is still open, reported only by its
    # handshake: network/no_send_seen (its times read through node-1/node-2's learnt offset)
    _client(s, "peer_open", 41006, service(), pb.RESET_RECEIVED)
    hs = pb.TcpEvent(node=API1.node, socket_id=9006, connection_id=_cid("peer_open"))
    hs.local.CopyFrom(pod(API1, TARGET))
    hs.remote.CopyFrom(pod(WEB, 41006))
    hs.time.FromNanoseconds(at("peer_open") + MS)
    hs.state_change.old_state, hs.state_change.new_state = pb.SYN_RECV, pb.ESTABLISHED
    s.events[API1.node].append(hs)
    # the backend aborted; only its lifecycle says so: app/TCP_ABORT_ON_CLOSE
    _client(s, "lifecycle_send", 41007, service(), pb.RESET_RECEIVED)
    _backend(s, "lifecycle_send", API2, pod(WEB, 41007), 4, pb.RESET_SENT, "TCP_ABORT_ON_CLOSE")
    # through node-1's NodePort, SNATed: the backend's socket names node-1 as its client
    case = "nodeport"
    _client(s, case, 41008, node1(NODE_PORT), pb.RESET_RECEIVED)
    b = _backend(s, case, API1, node1(50008), 4, pb.RESET_SENT, "TCP_STATE")
    s.reset(
        API1.node,
        pod(API1, TARGET),
        node1(50008),
        at(case) + 4 * MS - 10,
        pb.SENT,
        b,
        reason="TCP_STATE",
        cid=_cid(case),
    )


def _flows(s: Stream) -> None:
    t = at("service_flows")
    hist = [0] * 11 + [4, 2]
    s.flow(WEB.node, pod(WEB, 0), service(), t, pb.ACTIVE, 6, hist)
    s.flow(API1.node, pod(API1, TARGET), pod(WEB, 0), t + MS, pb.PASSIVE, 4, [0] * 11 + [3, 1])
    s.flow(API2.node, pod(API2, TARGET), pod(WEB, 0), t + MS, pb.PASSIVE, 2, [0] * 11 + [1, 1])
    # a backend's socket of a connection its client aggregated (it retransmitted): no second connection
    _backend(s, "absorbed", API1, pod(WEB, 41010), 6, retransmits=1)
    # through node-1's NodePort: 2 before the window's start, 4 after; the backends' flows from
    # node-1's address hold those 6 and 3 more (a process on node-1 itself)
    s.flow(WEB.node, pod(WEB, 0), node1(NODE_PORT), at("nodeport_flows_before"), pb.ACTIVE, 2, [0] * 12 + [2])
    t = at("nodeport_flows")
    s.flow(WEB.node, pod(WEB, 0), node1(NODE_PORT), t, pb.ACTIVE, 4, [0] * 12 + [4])
    s.flow(API1.node, pod(API1, TARGET), node1(0), t + MS, pb.PASSIVE, 6, [0] * 10 + [1, 2, 3])
    s.flow(API2.node, pod(API2, TARGET), node1(0), t + MS, pb.PASSIVE, 3, [0] * 12 + [3])


def _without_ids(s: Stream) -> None:
    # an upgrade: one end's agent sets ids, the other's does not; pod to pod they still pair by
    # 4-tuple and start time (the server on node-3, whose clock the skew tests leave alone)
    for case, cport, client_cid, server_cid in (
        ("mixed_ids_client", 41012, _cid("mixed_ids_client"), 0),
        ("mixed_ids_server", 41013, 0, _cid("mixed_ids_server")),
    ):
        t = at(case)
        s.socket(WEB.node, pod(WEB, cport), pod(API2, TARGET), t, t + 5 * MS, pb.ACTIVE, cid=client_cid)
        s.socket(API2.node, pod(API2, TARGET), pod(WEB, cport), t + MS, t + 6 * MS, pb.PASSIVE, cid=server_cid)
    # an id, a pod's address, and nothing of its socket from the pod's watched node: by tuple
    case = "unseen_pod_peer"
    t = at(case)
    s.socket(
        WEB.node,
        pod(WEB, 41014),
        pod(API1, 9100),
        t,
        t + 5 * MS,
        pb.ACTIVE,
        pb.RESET_RECEIVED,
        pb.ESTABLISHED,
        104,
        cid=_cid(case),
    )
