"""tail.summary through a Service's ClusterIP (kube-proxy's DNAT): the two sockets of a connection
join by connection_id whatever their tuples and the nodes' clocks; figures equal pod to pod."""

from __future__ import annotations

from typing import Any

import pytest

from tail import summary
from tail.pairs import COUNTERS
from tcpscope.v1 import events_pb2 as pb
from tests.support.natmix import API1, API2, COUNTS, mix, watched_batches

NODES = ("node-1", "node-2", "node-3")


def _summarize(events: list[pb.TcpEvent]) -> summary.Summarizer:
    s = summary.Summarizer()
    for agent_id, b in watched_batches(NODES):
        s.add_batch(agent_id, b)
    s.add_all(events)
    return s


def _totals(s: summary.Summarizer) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    causes: dict[str, int] = {}
    for r in s.pairs():
        for c in COUNTERS:
            out[c] += getattr(r, c)
        for cause, details in r.reset_causes.items():
            causes[cause] = causes.get(cause, 0) + sum(details.values())
    out["causes"] = causes
    return out


EXPECTED = {
    "connections": 19,
    "client_resets": 3,
    "server_resets": 7,
    "network_resets": 4,
    "refused": 2,
    "timeouts": 1,
    "retransmits": 0,
    "failed": 0,
    # app: every client and server abort; the refusals: the backend's kernel; the forged ones: network
    "causes": {"app": 10, "peer_kernel": 2, "network": 4},
}


def test_the_mix_through_a_service_equals_the_mix_pod_to_pod() -> None:
    assert _totals(_summarize(mix(via_service=False))) == EXPECTED
    assert _totals(_summarize(mix(via_service=True))) == EXPECTED


def test_a_service_row_names_client_backend_and_service() -> None:
    rows = {
        (r.client.label(), r.server.label(), r.via.label() if r.via else ""): r for r in _summarize(mix(True)).pairs()
    }
    assert set(rows) == {
        ("shop/web-1", "shop/api-1", "shop/api-svc"),  # every established connection, joined
        ("shop/web-1", "shop/api-svc", "shop/api-svc"),  # refused and timed out: no backend socket
    }
    joined = rows[("shop/web-1", "shop/api-1", "shop/api-svc")]
    assert (joined.connections, joined.client_resets, joined.server_resets, joined.network_resets) == (19, 3, 7, 4)
    assert joined.server_ports == {9000}
    assert joined.via is not None and (joined.via.kind, joined.via.port) == ("SERVICE", 80)
    assert joined.reset_causes["app"] == {"TCP_STATE": 10}
    lone = rows[("shop/web-1", "shop/api-svc", "shop/api-svc")]
    assert (lone.connections, lone.refused, lone.timeouts) == (0, 2, 1)
    assert lone.reset_causes == {"peer_kernel": {"refused": 2}}
    assert joined.to_json()["via"] == {"namespace": "shop", "name": "api-svc", "kind": "SERVICE", "port": 80}
    table = summary.render_table(summary.select(list(rows.values()), sort="client"))
    assert "shop/api-1:9000 via shop/api-svc:80" in table
    assert "shop/api-svc:80 " in table and "shop/api-svc:80 via" not in table


def test_two_backends_on_two_nodes_each_get_their_exact_share() -> None:
    s = _summarize(mix(True, backends=(API1, API2)))
    by_backend = {r.server.label(): r for r in s.pairs() if r.server.kind == "POD"}
    # the connections alternate between the backends, kind by kind (mix() spreads them in turn)
    order = [k for k, n in COUNTS.items() for _ in range(n)]
    share: dict[str, dict[str, int]] = {"shop/api-1": {}, "shop/api-2": {}}
    for i, kind in enumerate(order):
        if kind in ("refused", "timeout"):
            continue
        b = share["shop/api-1" if i % 2 == 0 else "shop/api-2"]
        b[kind] = b.get(kind, 0) + 1
    for backend, kinds in share.items():
        r = by_backend[backend]
        assert r.connections == sum(kinds.values())
        assert (r.client_resets, r.server_resets, r.network_resets) == (
            kinds.get("client_reset", 0),
            kinds.get("server_reset", 0),
            kinds.get("network_reset", 0),
        )
    assert _totals(s) == EXPECTED


@pytest.mark.parametrize("via_service", [False, True])
@pytest.mark.parametrize("skew_s", [-5, -2.1, 2.1, 5, 30])
def test_a_node_whose_clock_is_off_changes_nothing(via_service: bool, skew_s: float) -> None:
    # node-2 (the backend's) stamps its events skew_s seconds off: no double count, and no
    # application reset judged network (tuple-and-time pairing did both beyond 2 s)
    shifted = mix(via_service, shift={"node-2": int(skew_s * 1e9)})
    assert _totals(_summarize(shifted)) == EXPECTED


def test_without_ids_pod_to_pod_still_pairs_by_tuple_and_time() -> None:
    evs = mix(False)
    for e in evs:
        e.connection_id = 0
    assert _totals(_summarize(evs)) == EXPECTED


def _flow(role: pb.Role, local: pb.Endpoint, remote: pb.Endpoint, n: int) -> pb.TcpEvent:
    from tests.support.natmix import T0

    ev = pb.TcpEvent(node="node-x", local=local, remote=remote)
    ev.time.FromNanoseconds(T0)
    ev.flow.role, ev.flow.connections = role, n
    ev.flow.first_close.FromNanoseconds(T0 - 10**6)
    ev.flow.last_close.FromNanoseconds(T0)
    return ev


def test_nodeport_flows_snated_to_the_node_count_once() -> None:
    # web-1's ordinary connections to node-1's NodePort, masqueraded to node-1's address: the client's
    # flow names the node port, the backend's names node-1 as its client; 2 more came from a process
    # on node-1 itself (no agent watches the host)
    web = pb.Endpoint(ip="198.18.1.2", kind=pb.POD, namespace="shop", name="web-1")
    node_port = pb.Endpoint(ip="198.19.255.1", port=30080, kind=pb.NODE, name="node-1")
    api = pb.Endpoint(ip="198.18.2.2", port=9000, kind=pb.POD, namespace="shop", name="api-1")
    node = pb.Endpoint(ip="198.19.255.1", kind=pb.NODE, name="node-1")
    s = summary.Summarizer()
    s.add_all([_flow(pb.ACTIVE, web, node_port, 4), _flow(pb.PASSIVE, api, node, 6)])
    rows = {(r.client.label(), r.server.label()): r.connections for r in s.pairs()}
    assert rows == {("shop/web-1", "node-1"): 4, ("node-1", "shop/api-1"): 2}


# --- aggregated ordinary connections through a Service: the split by backend -------------------

WEB_EP = pb.Endpoint(ip="198.18.1.2", kind=pb.POD, namespace="shop", name="web-1")
SVC_EP = pb.Endpoint(ip="198.19.0.1", port=80, kind=pb.SERVICE, namespace="shop", name="api-svc")
OTHER_SVC_EP = pb.Endpoint(ip="198.19.0.2", port=80, kind=pb.SERVICE, namespace="shop", name="api-canary")


def _backend(name: str, ip: str, *services: tuple[str, int], port: int = 9000) -> pb.Endpoint:
    """A backend's local end as the collector's --resolve-backends leaves it (Endpoint.services)."""
    ep = pb.Endpoint(ip=ip, port=port, kind=pb.POD, namespace="shop", name=name)
    for svc, sport in services:
        ep.services.add(namespace="shop", name=svc, port=sport)
    return ep


def _rows(s: summary.Summarizer) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(client, server, via) -> (connections, of them from flows)."""
    return {
        (r.client.label(), r.server.label(), r.via.label() if r.via else ""): (r.connections, r.flow_connections)
        for r in s.pairs()
    }


def test_a_clients_flows_to_a_service_split_exactly_by_its_backends_flows() -> None:
    # web-1 made 9 ordinary connections to api-svc (its flows, over two flush intervals); api-1 took 5
    # of them and api-2 took 4 (their flows, each naming api-svc:80 as a Service of their endpoint)
    api1 = _backend("api-1", "198.18.2.2", ("api-svc", 80))
    api2 = _backend("api-2", "198.18.3.2", ("api-svc", 80))
    s = summary.Summarizer()
    s.add_all(
        [
            _flow(pb.ACTIVE, WEB_EP, SVC_EP, 6),
            _flow(pb.ACTIVE, WEB_EP, SVC_EP, 3),
            _flow(pb.PASSIVE, api1, WEB_EP, 5),
            _flow(pb.PASSIVE, api2, WEB_EP, 4),
        ]
    )
    # each connection once, in the row (client, backend, via the Service) a joined one counts in;
    # no Service row is left: every connection's backend is known
    assert _rows(s) == {
        ("shop/web-1", "shop/api-1", "shop/api-svc"): (5, 5),
        ("shop/web-1", "shop/api-2", "shop/api-svc"): (4, 4),
    }
    row = next(r for r in s.pairs() if r.server.name == "api-1")
    assert row.server_ports == {9000} and row.via is not None and row.via.port == 80


def test_the_split_adds_to_the_joined_rows_and_leaves_the_unknown_under_the_service() -> None:
    # the whole mix through the Service with two backends (joined lifecycles: resets, refusals), plus
    # aggregated ordinary connections: 7 to api-1, 3 to api-2, and 2 to a third backend on a node no
    # agent watches (no flow of its own: its share stays under the Service row)
    base = mix(True, backends=(API1, API2))
    api1 = _backend("api-1", API1.ip, ("api-svc", 80))
    api2 = _backend("api-2", API2.ip, ("api-svc", 80))
    web = pb.Endpoint(ip="198.18.1.2", kind=pb.POD, namespace="shop", name="web-1")
    flows = [_flow(pb.ACTIVE, web, SVC_EP, 12), _flow(pb.PASSIVE, api1, web, 7), _flow(pb.PASSIVE, api2, web, 3)]
    s = _summarize(base + flows)
    joined = _rows(_summarize(base))
    rows = _rows(s)
    via = "shop/api-svc"
    for backend, n in (("shop/api-1", 7), ("shop/api-2", 3)):
        before = joined[("shop/web-1", backend, via)]
        assert rows[("shop/web-1", backend, via)] == (before[0] + n, n)
    assert rows[("shop/web-1", via, via)] == (2, 2)  # the unwatched backend's: which one is not known
    assert _totals(s)["connections"] == int(EXPECTED["connections"]) + 12  # type: ignore[call-overload]


def test_what_cannot_be_told_apart_is_not_split() -> None:
    api1_both = _backend("api-1", "198.18.2.2", ("api-svc", 80), ("api-canary", 80))
    api2 = _backend("api-2", "198.18.3.2", ("api-svc", 80))
    s = summary.Summarizer()
    s.add_all(
        [
            # web-1 used two Services that share api-1: api-1's 5 could be either's
            _flow(pb.ACTIVE, WEB_EP, SVC_EP, 6),
            _flow(pb.ACTIVE, WEB_EP, OTHER_SVC_EP, 2),
            _flow(pb.PASSIVE, api1_both, WEB_EP, 5),
            # api-2 serves api-svc alone: its 3 are api-svc's
            _flow(pb.PASSIVE, api2, WEB_EP, 3),
        ]
    )
    assert _rows(s) == {
        ("shop/web-1", "shop/api-svc", "shop/api-svc"): (3, 3),
        ("shop/web-1", "shop/api-2", "shop/api-svc"): (3, 3),
        ("shop/web-1", "shop/api-canary", "shop/api-canary"): (2, 2),
    }


def test_connections_straight_to_a_backend_are_not_taken_for_the_services() -> None:
    # web-1 also connects to api-1:9000 straight (4, its own flow with the same key as api-1's): api-1's
    # flow holds 6 = 2 through the Service + 4 straight
    api1 = _backend("api-1", "198.18.2.2", ("api-svc", 80))
    straight = pb.Endpoint(ip="198.18.2.2", port=9000, kind=pb.POD, namespace="shop", name="api-1")
    s = summary.Summarizer()
    s.add_all(
        [
            _flow(pb.ACTIVE, WEB_EP, SVC_EP, 2),
            _flow(pb.ACTIVE, WEB_EP, straight, 4),
            _flow(pb.PASSIVE, api1, WEB_EP, 6),
        ]
    )
    assert _rows(s) == {
        ("shop/web-1", "shop/api-1", ""): (4, 4),
        ("shop/web-1", "shop/api-1", "shop/api-svc"): (2, 2),
    }


def test_without_backend_names_the_flows_stay_under_the_service() -> None:
    bare = pb.Endpoint(ip="198.18.2.2", port=9000, kind=pb.POD, namespace="shop", name="api-1")
    s = summary.Summarizer()
    s.add_all([_flow(pb.ACTIVE, WEB_EP, SVC_EP, 6), _flow(pb.PASSIVE, bare, WEB_EP, 6)])
    assert _rows(s) == {("shop/web-1", "shop/api-svc", "shop/api-svc"): (6, 6)}


def _lone(role: pb.Role, local: pb.Endpoint, remote: pb.Endpoint, cid: int, retransmits: int) -> pb.TcpEvent:
    """One socket's lifecycle whose peer aggregated the connection into a flow (ordinary there)."""
    from tests.support.natmix import T0

    ev = pb.TcpEvent(node="node-x", local=local, remote=remote, connection_id=cid, socket_id=cid)
    ev.time.FromNanoseconds(T0)
    ev.lifecycle.role, ev.lifecycle.ending, ev.lifecycle.retransmits = role, pb.NORMAL, retransmits
    ev.lifecycle.last_state = pb.FIN_WAIT1 if role == pb.ACTIVE else pb.LAST_ACK
    ev.lifecycle.duration_ns = 10**6
    return ev


def test_a_connection_ordinary_at_the_client_only_joins_its_backends_share() -> None:
    # api-1 retransmitted on one connection (its lifecycle), web-1 saw nothing unusual (its flow): the
    # backend's row gets that connection and its retransmit, each once
    api1 = _backend("api-1", "198.18.2.2", ("api-svc", 80))
    web = pb.Endpoint(ip="198.18.1.2", port=41000, kind=pb.POD, namespace="shop", name="web-1")
    s = summary.Summarizer()
    s.add_all([_flow(pb.ACTIVE, WEB_EP, SVC_EP, 3), _flow(pb.PASSIVE, api1, WEB_EP, 2)])
    s.add(_lone(pb.PASSIVE, api1, web, 0x77, retransmits=1))
    (row,) = s.pairs()
    assert (row.client.name, row.server.name, row.via and row.via.name) == ("web-1", "api-1", "api-svc")
    assert (row.connections, row.flow_connections, row.retransmits) == (3, 3, 1)


def test_a_connection_ordinary_at_the_backend_only_makes_the_shares_lower_bounds() -> None:
    # web-1 retransmitted on one connection through the Service (its lone lifecycle, counted under the
    # Service row), which api-1 aggregated: api-1's flow holds 2 of web-1's flows and that one; which
    # backend took the lone one is not known, so each backend's share is at least its flow minus 1
    api1 = _backend("api-1", "198.18.2.2", ("api-svc", 80))
    api2 = _backend("api-2", "198.18.3.2", ("api-svc", 80))
    mine = pb.Endpoint(ip="198.18.1.2", port=41001, kind=pb.POD, namespace="shop", name="web-1")
    s = summary.Summarizer()
    s.add_all(
        [_flow(pb.ACTIVE, WEB_EP, SVC_EP, 4), _flow(pb.PASSIVE, api1, WEB_EP, 3), _flow(pb.PASSIVE, api2, WEB_EP, 2)]
    )
    s.add(_lone(pb.ACTIVE, mine, SVC_EP, 0x78, retransmits=1))
    assert _rows(s) == {
        ("shop/web-1", "shop/api-1", "shop/api-svc"): (2, 2),  # exactly its share of the flows
        ("shop/web-1", "shop/api-2", "shop/api-svc"): (1, 1),  # at least 1 of its 2
        ("shop/web-1", "shop/api-svc", "shop/api-svc"): (2, 1),  # the rest: 1 flow and the lone one
    }
    assert sum(r.connections for r in s.pairs()) == 5  # each connection once
