"""tail.resetcause on hand-built events: who sent each received reset."""

from __future__ import annotations

from tail import resetcause as rc
from tcpscope.v1 import events_pb2 as pb

T0 = 1_700_000_000 * 10**9
MS = 1_000_000
C = ("198.18.1.2", 40000)  # client pod on node-1
S = ("198.18.2.2", 9000)  # server pod on node-2


def ev(
    node: str, local: tuple[str, int], remote: tuple[str, int], t: int, socket_id: int = 7, remote_node: str = ""
) -> pb.TcpEvent:
    e = pb.TcpEvent(node=node, socket_id=socket_id)
    e.local.ip, e.local.port = local
    e.remote.ip, e.remote.port = remote
    e.remote.node = remote_node
    e.time.FromNanoseconds(t)
    return e


def sent(
    node: str,
    local: tuple[str, int],
    remote: tuple[str, int],
    t: int,
    reason: str = "",
    state: pb.TcpState = pb.ESTABLISHED,
    socket_id: int = 8,
) -> pb.TcpEvent:
    e = ev(node, local, remote, t, socket_id)
    e.reset.direction, e.reset.state, e.reset.reason_name = pb.SENT, state, reason
    return e


def received(
    node: str,
    local: tuple[str, int],
    remote: tuple[str, int],
    t: int,
    state: pb.TcpState = pb.ESTABLISHED,
    socket_id: int = 7,
    remote_node: str = "",
) -> pb.TcpEvent:
    e = ev(node, local, remote, t, socket_id, remote_node)
    e.reset.direction, e.reset.state = pb.RECEIVED, state
    return e


def life(
    node: str,
    local: tuple[str, int],
    remote: tuple[str, int],
    start: int,
    end: int,
    ending: pb.Ending,
    role: pb.Role,
    socket_id: int = 7,
    reason: str = "",
    last_state: pb.TcpState = pb.ESTABLISHED,
) -> pb.TcpEvent:
    e = ev(node, local, remote, end, socket_id)
    lc = e.lifecycle
    lc.role, lc.duration_ns, lc.ending, lc.last_state, lc.reset_reason_name = (
        role,
        end - start,
        ending,
        last_state,
        reason,
    )
    return e


def handshake(node: str, local: tuple[str, int], remote: tuple[str, int], t: int) -> pb.TcpEvent:
    """A state change of the socket at its handshake: the agent saw this connection."""
    e = ev(node, local, remote, t, socket_id=8)
    e.state_change.old_state, e.state_change.new_state = pb.SYN_RECV, pb.ESTABLISHED
    return e


def batch(node: str, sent_ns: int, kernel: int = 0, skipped: int = 0) -> pb.EventBatch:
    b = pb.EventBatch(node=node, agent_id=f"{node}-a")
    b.sent_time.FromNanoseconds(sent_ns)
    b.lost.kernel, b.lost.kernel_skipped_runs = kernel, skipped
    return b


def watched(j: rc.ResetJoin, *nodes_ips: tuple[str, str]) -> None:
    """Both nodes' agents are publishing (a batch each), each seen owning its pod's address."""
    for node, ip in nodes_ips:
        j.add_batch(f"{node}-a", batch(node, T0 - 10 * 10**9))
        j.add(
            life(
                node, (ip, 1), ("198.18.9.9", 1), T0 - 60 * 10**9, T0 - 50 * 10**9, pb.NORMAL, pb.ACTIVE, socket_id=999
            )
        )


def one(j: rc.ResetJoin) -> rc.Verdict:
    got = j.classify_all()
    assert len(got) == 1, got
    return got[0][1]


def test_a_server_reset_is_app_with_its_reason() -> None:
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(sent("node-2", S, C, T0, "TCP_ABORT_ON_CLOSE"))
    j.add(received("node-1", C, S, T0 + 3 * MS))
    assert one(j) == rc.Verdict("app", "TCP_ABORT_ON_CLOSE", "node-2")


def test_the_peers_lifecycle_alone_is_evidence_of_a_send() -> None:
    # agents that report only lifecycles: the server's socket ended RESET_SENT with its reason,
    # the client's ended RESET_RECEIVED
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(life("node-2", S, C, T0 - 50 * MS, T0, pb.RESET_SENT, pb.PASSIVE, 8, "TCP_STATE"))
    r = j.add(life("node-1", C, S, T0 - 51 * MS, T0 + MS, pb.RESET_RECEIVED, pb.ACTIVE))
    assert r is not None
    assert j.classify(r) == rc.Verdict("app", "TCP_STATE", "node-2")


def test_the_reset_event_and_the_lifecycle_are_one_received_reset() -> None:
    j = rc.ResetJoin()
    j.add(received("node-1", C, S, T0))
    j.add(life("node-1", C, S, T0 - 50 * MS, T0 + 1000, pb.RESET_RECEIVED, pb.ACTIVE))
    assert len(j.received()) == 1
    assert j.received()[0].time_ns == T0


def test_a_refused_connection_is_peer_kernel_refused() -> None:
    # the server's agent (filtering by cgroup) cannot see a RST sent with no socket: the RST that
    # answers a SYN is the peer's kernel, whatever the peer's agent saw
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(received("node-1", C, S, T0, state=pb.SYN_SENT))
    assert one(j) == rc.Verdict("peer_kernel", "refused", "node-2")
    j2 = rc.ResetJoin()
    watched(j2, ("node-1", C[0]), ("node-2", S[0]))
    j2.add(sent("node-2", S, C, T0, "NO_SOCKET", state=pb.TCP_STATE_UNSPECIFIED, socket_id=0))
    j2.add(received("node-1", C, S, T0 + MS, state=pb.SYN_SENT))
    assert one(j2).label == "peer_kernel/refused"


def test_a_send_without_a_socket_or_for_a_kernel_reason_is_peer_kernel() -> None:
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(sent("node-2", S, C, T0, "NO_SOCKET", state=pb.TCP_STATE_UNSPECIFIED, socket_id=0))
    j.add(received("node-1", C, S, T0 + MS))
    assert one(j).label == "peer_kernel/NO_SOCKET"
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(sent("node-2", S, C, T0, "TCP_INVALID_ACK_SEQUENCE"))
    j.add(received("node-1", C, S, T0 + MS))
    assert one(j).label == "peer_kernel/TCP_INVALID_ACK_SEQUENCE"


def test_no_send_from_a_watched_peer_is_network() -> None:
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(handshake("node-2", S, C, T0 - 50 * MS))
    j.add(received("node-1", C, S, T0))
    assert one(j) == rc.Verdict("network", "no_send_seen", "node-2")
    assert rc.metrics_sender(one(j)) == "network"


def test_a_peer_agent_that_never_saw_the_connection_says_unknown() -> None:
    # the peer's node has an agent, but it reported nothing of this connection (it started later,
    # or filtered the socket out): its silence is no evidence
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(received("node-1", C, S, T0))
    j.add(life("node-1", C, S, T0 - 50 * MS, T0 + 1000, pb.RESET_RECEIVED, pb.ACTIVE))
    assert one(j) == rc.Verdict("unknown", "peer_socket_unseen", "node-2")
    # an older socket of the same tuple (a reused port) is not this connection
    j.add(handshake("node-2", S, C, T0 - 60 * 10**9))
    assert one(j).label == "unknown/peer_socket_unseen"
    j.add(handshake("node-2", S, C, T0 - 49 * MS))
    assert one(j).label == "network/no_send_seen"


def test_a_send_outside_the_window_or_from_another_connection_does_not_match() -> None:
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(sent("node-2", S, C, T0 - rc.WINDOW_NS - 1, "TCP_STATE"))
    j.add(sent("node-2", S, ("198.18.1.2", 40001), T0, "TCP_STATE"))  # another client port
    j.add(handshake("node-2", S, C, T0 - 50 * MS))
    j.add(received("node-1", C, S, T0))
    assert one(j).cause == "network"


def test_clock_skew_within_the_window_either_way_still_matches() -> None:
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(sent("node-2", S, C, T0 + 1500 * MS, "TCP_ABORT_ON_CLOSE"))  # the sender's clock is ahead
    j.add(received("node-1", C, S, T0))
    assert one(j).label == "app/TCP_ABORT_ON_CLOSE"


def test_a_reset_from_an_unwatched_peer_is_unknown_never_network() -> None:
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]))
    j.add(received("node-1", C, S, T0))
    assert one(j) == rc.Verdict("unknown", "unwatched_peer", "")
    # the agent resolved the peer to a pod on node-3, which no agent reports
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", "198.18.2.77"))
    j.add(received("node-1", C, S, T0, remote_node="node-3"))
    assert one(j) == rc.Verdict("unknown", "unwatched_peer", "node-3")
    # resolved to a node whose agent does report, and saw the connection: watched
    j.add_batch("node-3-a", batch("node-3", T0 - 10**9))
    j.add(handshake("node-3", S, C, T0 - 50 * MS))
    assert one(j).cause == "network"


def test_peer_losses_in_the_window_make_it_unknown() -> None:
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add_batch("node-2-a", batch("node-2", T0 - 500 * MS))
    j.add_batch("node-2-a", batch("node-2", T0 + 500 * MS, kernel=3))  # lost 3 in (T0-0.5s, T0+0.5s]
    j.add(received("node-1", C, S, T0))
    assert one(j) == rc.Verdict("unknown", "peer_losses", "node-2")


def test_possible_losses_are_said_apart_and_losses_outside_the_window_do_not_count() -> None:
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add_batch("node-2-a", batch("node-2", T0 - 500 * MS))
    j.add_batch("node-2-a", batch("node-2", T0 + 500 * MS, skipped=1))
    j.add(received("node-1", C, S, T0))
    assert one(j).label == "unknown/peer_possible_losses"
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add_batch("node-2-a", batch("node-2", T0 - 9 * 10**9))
    j.add_batch("node-2-a", batch("node-2", T0 - 8 * 10**9, kernel=5))  # long before
    j.add_batch("node-1-a", batch("node-1", T0 + 10**8, kernel=5))  # the receiver's own node
    j.add(handshake("node-2", S, C, T0 - 50 * MS))
    j.add(received("node-1", C, S, T0))
    assert one(j).cause == "network"


def test_a_sent_reset_beats_losses() -> None:
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add_batch("node-2-a", batch("node-2", T0 + 500 * MS, kernel=3))
    j.add(sent("node-2", S, C, T0, "TCP_ABORT_ON_CLOSE"))
    j.add(received("node-1", C, S, T0))
    assert one(j).cause == "app"


def test_a_peer_socket_closed_before_the_reset_means_its_kernel_answered() -> None:
    # the server closed normally long before; the client wrote later and got a RST from the
    # server's kernel (time-wait or no socket), which the server's agent cannot see
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(life("node-2", S, C, T0 - 10 * 10**9, T0 - 5 * 10**9, pb.NORMAL, pb.PASSIVE, 8))
    j.add(received("node-1", C, S, T0))
    j.add(life("node-1", C, S, T0 - 10 * 10**9, T0 + 1000, pb.RESET_RECEIVED, pb.ACTIVE))
    assert one(j).label == "peer_kernel/peer_closed"


def test_the_network_killing_both_directions_is_network_on_both_ends() -> None:
    # a middlebox forged a RST to each end within a millisecond: neither sent one
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    start = T0 - 50 * MS
    for e in (
        received("node-1", C, S, T0),
        life("node-1", C, S, start, T0 + 10, pb.RESET_RECEIVED, pb.ACTIVE),
        received("node-2", S, C, T0 + MS, socket_id=8),
        life("node-2", S, C, start + 100, T0 + MS + 10, pb.RESET_RECEIVED, pb.PASSIVE, 8),
    ):
        j.add(e)
    got = {r.node: v for r, v in j.classify_all()}
    assert got == {
        "node-1": rc.Verdict("network", "no_send_seen", "node-2"),
        "node-2": rc.Verdict("network", "both_ends", "node-1"),
    }
    # a later RST to the server, after the client's socket was gone longer than the window, is
    # the client's kernel answering (the first one was still the network)
    j2 = rc.ResetJoin()
    watched(j2, ("node-1", C[0]), ("node-2", S[0]))
    late = T0 + 30 * 10**9
    for e in (
        received("node-1", C, S, T0),
        life("node-1", C, S, start, T0 + 10, pb.RESET_RECEIVED, pb.ACTIVE),
        received("node-2", S, C, late, socket_id=8),
        life("node-2", S, C, start + 100, late + 10, pb.RESET_RECEIVED, pb.PASSIVE, 8),
    ):
        j2.add(e)
    labels = {r.node: v.label for r, v in j2.classify_all()}
    assert labels == {"node-1": "network/no_send_seen", "node-2": "peer_kernel/peer_closed"}


def test_a_connection_is_network_if_either_end_says_so_and_both_ends_if_both_do() -> None:
    nss, both_ = rc.Verdict("network", "no_send_seen", "n2"), rc.Verdict("network", "both_ends", "n1")
    app, closed = rc.Verdict("app", "TCP_STATE", "n2"), rc.Verdict("peer_kernel", "peer_closed", "n1")
    assert rc.connection_verdict([]) is None
    assert rc.connection_verdict([app]) == app
    assert rc.connection_verdict([app, closed]) == app  # the earliest
    assert rc.connection_verdict([closed, nss]) == nss  # one direction killed: its end's verdict
    # both ends' RSTs nobody sent: both_ends whichever came first, named by the earlier's peer
    assert rc.connection_verdict([nss, both_]) == rc.Verdict("network", "both_ends", "n2")
    assert rc.connection_verdict([both_, nss]) == rc.Verdict("network", "both_ends", "n1")


def test_received_by_finds_a_lifecycles_reset_and_eviction_forgets() -> None:
    j = rc.ResetJoin()
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    j.add(received("node-1", C, S, T0))
    lc = life("node-1", C, S, T0 - 50 * MS, T0 + 1000, pb.RESET_RECEIVED, pb.ACTIVE)
    j.add(lc)
    r = j.received_by(lc)
    assert r is not None and r.time_ns == T0
    j.evict_before(T0 + 10**9)
    assert j.received() == []
    assert j.received_by(lc) is None


def test_live_hold_waits_for_evidence_and_is_bounded() -> None:
    h = rc.LiveHold(max_held=2)
    for node, ip in (("node-1", C[0]), ("node-2", S[0])):
        h.join.add_batch(f"{node}-a", batch(node, T0 - 10**9))
        h.add(handshake(node, (ip, 1), ("198.18.9.9", 1), T0 - 10**9), 0, show=False)
    h.add(handshake("node-2", S, C, T0 - 50 * MS), 0)
    r = received("node-1", C, S, T0)
    assert h.add(r, now_ns=0) == (True, [])  # held: the peer's send may still be on its way
    assert h.release(rc.HOLD_NS - 1) == []
    # the send arrives within the hold: released at once, as app
    held, done = h.add(sent("node-2", S, C, T0 + MS, "TCP_STATE"), now_ns=10)
    assert (held, [(e.socket_id, v.label) for e, v in done]) == (False, [(7, "app/TCP_STATE")])
    # nothing arrives for this one: after the hold it is the network's
    r2 = received("node-1", ("198.18.1.2", 40001), S, T0 + 10 * MS, socket_id=11)
    h.add(handshake("node-2", S, ("198.18.1.2", 40001), T0 - 50 * MS), 20)
    assert h.add(r2, now_ns=20) == (True, [])
    assert [v.label for _, v in h.release(20 + rc.HOLD_NS)] == ["network/no_send_seen"]
    # a refusal needs no wait
    held, done = h.add(received("node-1", ("198.18.1.2", 40002), S, T0, pb.SYN_SENT, 12), now_ns=30)
    assert held and [v.label for _, v in done] == ["peer_kernel/refused"]
    # at most max_held wait: the oldest goes out with what is known so far
    for i in range(3):
        held, done = h.add(received("node-1", ("198.18.1.2", 41000 + i), S, T0, socket_id=20 + i), now_ns=40)
    assert len(h) == 2 and [v.label for _, v in done] == ["unknown/peer_socket_unseen"]
    assert len(h.release(41, everything=True)) == 2 and len(h) == 0


def test_memory_is_bounded_by_forgetting_the_older_half() -> None:
    j = rc.ResetJoin(max_entries=100)
    watched(j, ("node-1", C[0]), ("node-2", S[0]))
    for i in range(1000):  # a second apart, each on its own client port
        j.add(handshake("node-2", S, ("198.18.1.2", 20000 + i), T0 + i * 10**9))
    assert j.forgotten_before_ns > T0
    assert len(j._spans) <= 100
    j.add(handshake("node-2", S, C, T0 + 1000 * 10**9))
    j.add(received("node-1", C, S, T0 + 1000 * 10**9 + MS))
    assert one(j).label == "network/no_send_seen"


# --- the join by connection_id (through a Service's ClusterIP, clocks apart) ---------------------


def _by_kind(events: list[pb.TcpEvent]) -> dict[str, list[str]]:
    """Each received reset's verdict label, by the node that received it."""
    from tests.support.natmix import watched_batches

    j = rc.ResetJoin()
    for agent_id, b in watched_batches(("node-1", "node-2", "node-3")):
        j.add_batch(agent_id, b)
    j.add_all(events)
    out: dict[str, list[str]] = {}
    for r, v in j.classify_all():
        out.setdefault(r.node, []).append(v.label)
    return {k: sorted(v) for k, v in out.items()}


def test_through_a_service_the_backend_socket_is_the_peer_whatever_the_clocks() -> None:
    from tests.support.natmix import mix

    counts = {"client_reset": 1, "server_reset": 2, "network_reset": 1, "refused": 1}
    want = {
        # the backend's socket closed first (natmix): the client's RST came after, to a connection
        # the network had killed in both directions; read in one clock whatever node-2's says
        "node-1": ["app/TCP_STATE", "app/TCP_STATE", "network/both_ends", "peer_kernel/refused"],
        "node-2": ["app/TCP_STATE", "network/no_send_seen"],
    }
    for shift in (0, 5 * 10**9, -5 * 10**9, 60 * 10**9):
        assert _by_kind(mix(True, {"node-2": shift}, counts=counts)) == want, shift
        assert _by_kind(mix(False, {"node-2": shift}, counts=counts)) == want, shift


def test_a_service_whose_backend_socket_nobody_reported_is_backend_unseen() -> None:
    from tests.support.natmix import mix

    evs = [e for e in mix(True, counts={"server_reset": 1}) if e.node == "node-1"]
    assert _by_kind(evs) == {"node-1": ["unknown/backend_unseen"]}
    # without an id (an older agent) the ClusterIP belongs to no node: unwatched, as before
    for e in evs:
        e.connection_id = 0
    assert _by_kind(evs) == {"node-1": ["unknown/unwatched_peer"]}


def test_the_live_hold_releases_a_reset_when_the_backend_send_arrives_by_id() -> None:
    from tests.support.natmix import mix

    evs = mix(True, {"node-2": 5 * 10**9}, counts={"server_reset": 1})
    client_side = [e for e in evs if e.node == "node-1"]
    server_side = [e for e in evs if e.node == "node-2"]
    hold = rc.LiveHold()
    out: list[tuple[pb.TcpEvent, rc.Verdict]] = []
    for e in client_side:  # the client's RST arrives first: held, its peer is not known yet
        _, done = hold.add(e, now_ns=0)
        out += done
    assert out == [] and len(hold) == 2
    for e in server_side:
        _, done = hold.add(e, now_ns=10**6)
        out += done
    assert [v.label for _, v in out] == ["app/TCP_STATE", "app/TCP_STATE"]
    assert len(hold) == 0
