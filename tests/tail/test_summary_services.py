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
