"""tail.timeline: naming one connection, picking both ends' events, one time-ordered view."""

from __future__ import annotations

import pytest

from tail import timeline
from tail.timeline import ConnectionSpec, render_timeline, select
from tcpscope import render
from tcpscope.v1 import events_pb2 as pb
from tests.tail.test_resetcause import MS, T0, C, S, handshake, life, received, sent


def test_parse_tuples_either_order_v6_and_socket_ids() -> None:
    a = ConnectionSpec.parse("198.18.1.2:40000-198.18.2.2:9000")
    assert a == ConnectionSpec.parse("198.18.2.2:9000,198.18.1.2:40000")
    assert a.ends == frozenset({C, S})
    assert ConnectionSpec.parse("[2001:db8::1]:80-[2001:db8::2]:40000").ends == frozenset(
        {("2001:db8::1", 80), ("2001:db8::2", 40000)}
    )
    assert ConnectionSpec.parse("1234") == ConnectionSpec(None, 1234, "")
    assert ConnectionSpec.parse("node-1/1234") == ConnectionSpec(None, 1234, "node-1")
    for bad in ("198.18.1.2", "198.18.1.2:0-198.18.2.2:9000", "a:1-a:1", "x"):
        with pytest.raises(ValueError):
            ConnectionSpec.parse(bad)


def test_both_ends_in_time_order_with_the_reset_cause() -> None:
    other = handshake("node-1", ("198.18.1.2", 40001), S, T0 - 10 * MS)
    evs = [
        received("node-1", C, S, T0),
        handshake("node-2", S, C, T0 - 50 * MS),
        life("node-1", C, S, T0 - 60 * MS, T0 + 1000, pb.RESET_RECEIVED, pb.ACTIVE),
        handshake("node-1", C, S, T0 - 60 * MS),
        other,
    ]
    by_tuple = select(ConnectionSpec.parse("198.18.2.2:9000-198.18.1.2:40000"), evs)
    assert [(e.node, e.time.ToNanoseconds()) for e in by_tuple] == [
        ("node-1", T0 - 60 * MS),
        ("node-2", T0 - 50 * MS),
        ("node-1", T0),
        ("node-1", T0 + 1000),
    ]
    # a socket id names the tuple; the peer's events come with it
    assert select(ConnectionSpec.parse("node-1/7"), evs) == by_tuple
    assert select(ConnectionSpec.parse("node-3/7"), evs) == []
    text = render_timeline(by_tuple, evs).splitlines()
    assert text[0].split()[:2] == ["NODE", "TIME"]
    assert text[3] == "node-1 " + render.table_line(by_tuple[2]) + " cause=network/no_send_seen"
    assert text[2] == "node-2 " + render.table_line(by_tuple[1])
    # with the peer's send in what was read, the same RST is the peer's application's
    evs.append(sent("node-2", S, C, T0 - MS, "TCP_STATE"))
    by_tuple = select(ConnectionSpec.parse("198.18.2.2:9000-198.18.1.2:40000"), evs)
    assert "cause=app/TCP_STATE" in render_timeline(by_tuple, evs)


def test_through_a_service_the_backend_socket_joins_by_connection_id() -> None:
    from tests.support.natmix import WEB, mix

    evs = mix(True, {"node-2": 5 * 10**9}, counts={"ok": 1, "server_reset": 1})
    # the second connection, named as the client sees it: web-1:40001 -> ClusterIP:80
    spec = timeline.ConnectionSpec.parse(f"{WEB.ip}:40001-198.19.0.1:80")
    got = timeline.select(spec, evs)
    assert sorted({(e.node, e.local.port) for e in got}) == [("node-1", 40001), ("node-2", 9000)]
    assert len({e.connection_id for e in got}) == 1
    text = timeline.render_timeline(got, evs)
    assert text.count("cause=app/TCP_STATE") == 2, text
    # by the backend's socket id, the client's events come too
    backend_sid = next(e.socket_id for e in got if e.node == "node-2")
    assert {e.node for e in timeline.select(timeline.ConnectionSpec.parse(f"node-2/{backend_sid}"), evs)} == {
        "node-1",
        "node-2",
    }
