"""tail/query.py: time ranges, and each investigation filter on hand-built events."""

from __future__ import annotations

import pytest

from tail import query
from tail.query import Query
from tcpscope.v1 import events_pb2 as pb
from tests.support.events import make_event

NOW = 1_800_000_000 * 10**9


def test_parse_time() -> None:
    assert query.parse_time("90s", NOW) == NOW - 90 * 10**9
    assert query.parse_time("1h30m", NOW) == NOW - 5400 * 10**9
    assert query.parse_time("2d", NOW) == NOW - 2 * 86400 * 10**9
    assert query.parse_time("500ms", NOW) == NOW - 500_000_000
    assert query.parse_time("2026-11-30T10:00:00Z", NOW) == 1_796_032_800 * 10**9
    assert query.parse_time("2026-11-30T11:00:00.250+01:00", NOW) == 1_796_032_800 * 10**9 + 250_000_000
    for bad in ("yesterday", "10", "2026-11-30T10:00:00", "5 m"):
        with pytest.raises(ValueError):
            query.parse_time(bad, NOW)


def test_parse_errno_reason_label() -> None:
    assert query.parse_errno("ECONNREFUSED") == query.parse_errno("econnrefused") == query.parse_errno("111") == 111
    with pytest.raises(ValueError, match="unknown errno"):
        query.parse_errno("EBOGUS")
    assert query.parse_reason("sk_rst_reason_no_socket") == query.parse_reason("NO_SOCKET") == "NO_SOCKET"
    assert query.parse_label("app = cart") == ("app", "cart")
    with pytest.raises(ValueError):
        query.parse_label("app")


def _pods(ev: pb.TcpEvent, local: str, remote: str) -> pb.TcpEvent:
    for ep, ref in ((ev.local, local), (ev.remote, remote)):
        ep.kind = pb.POD
        ep.namespace, ep.name = ref.split("/")
        ep.workload.kind, ep.workload.name = "Deployment", ep.name.rsplit("-", 1)[0]
        ep.node = "node-" + ep.name[-1]
        ep.labels["app"] = ep.workload.name
    return ev


def test_each_filter() -> None:
    client = _pods(make_event(0), "shop/frontend-2", "shop/checkout-1")  # ACTIVE lifecycle, ports 40000 -> 8080
    server = _pods(make_event(1, node="node-1"), "shop/checkout-1", "shop/frontend-2")
    server.lifecycle.role = pb.PASSIVE
    svc = make_event(2)
    svc.remote.kind, svc.remote.namespace, svc.remote.name = pb.SERVICE, "shop", "checkout"
    rst = make_event(3)
    rst.ClearField("lifecycle")
    rst.reset.direction, rst.reset.reason_name = pb.SENT, "NO_SOCKET"
    err = make_event(4)
    err.ClearField("lifecycle")
    err.socket_error.errno, err.socket_error.errno_name = 111, "ECONNREFUSED"
    evs = [client, server, svc, rst, err]

    def ids(q: Query) -> list[int]:
        return [e.socket_id for e in evs if q(e)]

    assert ids(Query()) == [1, 2, 3, 4, 5]
    assert ids(Query(labels=(("app", "checkout"),))) == [1, 2]
    assert ids(Query(labels=(("app", "checkout"), ("app", "frontend")))) == []  # both on one end
    assert ids(Query(service="checkout")) == ids(Query(service="shop/checkout")) == [3]
    assert ids(Query(service="other/checkout")) == []
    assert ids(Query(workload="shop/frontend")) == [1, 2]
    assert ids(Query(node="node-1")) == [1, 2]  # checkout-1 runs on node-1; event 2 was reported there
    assert ids(Query(ports=frozenset({40001}))) == [2]
    assert ids(Query(reasons=frozenset({"NO_SOCKET"}))) == [4]
    assert ids(Query(errnos=frozenset({111}))) == [5]
    # direction: the client is frontend-2 in both views of the connection
    assert ids(Query(from_pod="frontend-2")) == [1, 2]
    assert ids(Query(from_pod="shop/frontend-2", to_pod="checkout-1")) == [1, 2]
    assert ids(Query(from_pod="checkout-1")) == []
    t1 = client.time.ToNanoseconds()
    assert ids(Query(since_ns=t1 + 2000)) == [3, 4, 5]  # make_event(i) is i microseconds apart
    assert ids(Query(since_ns=t1 + 1000, until_ns=t1 + 3000)) == [2, 3, 4]


def test_a_roleless_row_is_read_from_the_reporting_socket() -> None:
    rst = _pods(make_event(0), "shop/checkout-1", "shop/frontend-2")  # the server's RST_SENT
    rst.ClearField("lifecycle")
    rst.reset.direction = pb.SENT
    assert Query(from_pod="checkout-1", to_pod="frontend-2")(rst)
    assert not Query(from_pod="frontend-2")(rst)
