"""The live view (tail/live.py): default kinds, time order through the reorder buffer, and the
`namespace/pod:port` ends; tail's table against a real broker with events spread over partitions."""

from __future__ import annotations

import subprocess
import threading

from tail import live
from tcpscope import render
from tcpscope.kinds import parse_view
from tcpscope.v1 import events_pb2 as pb
from tcpscope.v1.events_pb2 import EventBatch, TcpEvent
from tests.support.events import make_event
from tests.support.kafka import Broker, publish_batches, run_tail

TOPIC = "live-events"


def _at(i: int, ms: int) -> TcpEvent:
    ev = make_event(i)
    ev.time.FromNanoseconds(1_700_000_000_000_000_000 + ms * 1_000_000)
    return ev


def _push(r: live.Reorder[TcpEvent], ev: TcpEvent, now: float) -> None:
    r.push(live.event_ns(ev), now, ev)


def test_reorder_releases_in_event_time_after_the_hold() -> None:
    r: live.Reorder[TcpEvent] = live.Reorder(hold=1.0)
    _push(r, _at(0, 12_701), now=10.0)
    _push(r, _at(1, 12_667), now=10.2)
    _push(r, _at(2, 12_690), now=10.5)
    assert list(r.ready(10.9)) == []  # nothing held a full second yet
    # 12.701 arrived first and is due at 11.0, but 12.667 is older and due only at 11.2: it waits
    assert list(r.ready(11.0)) == []
    assert [e.socket_id for e in r.ready(11.2)] == [2]
    assert [e.socket_id for e in r.ready(11.5)] == [3, 1]
    assert len(r) == 0


def test_reorder_is_bounded_and_late_events_still_print() -> None:
    r: live.Reorder[TcpEvent] = live.Reorder(hold=10.0, max_held=2)
    for i, ms in enumerate((30, 10, 20)):
        _push(r, _at(i, ms), now=0.0)
    assert [e.socket_id for e in r.ready(0.0)] == [2]  # over the bound: the oldest event goes out
    _push(r, _at(3, 5), now=0.0)  # older than one already printed: printed, not dropped
    assert [e.socket_id for e in r.flush()] == [4, 3, 1]


def test_ordered_printer_filters_kinds_and_ticks_without_new_events() -> None:
    lines: list[str] = []
    done = threading.Event()
    now = [0.0]

    def show(text: str) -> None:
        lines.append(text)
        done.set()

    view = live.LiveView(lambda ev, v: str(ev.socket_id), kinds=parse_view(""), hold=1.0)
    p = live.OrderedPrinter(show, view, clock=lambda: now[0], tick=0.01)
    state = make_event(7)
    state.ClearField("lifecycle")
    state.state_change.old_state, state.state_change.new_state = pb.SYN_SENT, pb.ESTABLISHED
    p(_at(0, 20))
    p(state)  # a state change: not in the default view
    p(_at(1, 10))
    now[0] = 1.0  # no new event: the ticker releases them
    assert done.wait(5)
    p.close()
    assert lines == ["2", "1"]


def test_a_received_reset_waits_for_its_cause_and_keeps_its_place() -> None:
    view = live.LiveView(lambda ev, v: f"{ev.socket_id}" + ("" if v is None else " cause"), hold=1.0)
    rst = _at(1, 20)
    rst.ClearField("lifecycle")
    rst.reset.direction = pb.RECEIVED
    assert view.add(_at(0, 10), 0.0) == []
    assert view.add(rst, 0.0) == []
    assert view.add(_at(2, 30), 0.0) == []
    assert view.tick(1.0) == ["1", "3"]  # the reset is still waiting for the peer's evidence
    # with nothing more, the reset comes out (marked with the verdict so far) at the end
    assert view.close(1.5) == ["2 cause"]


def test_resolved_ends_keep_their_port() -> None:
    ev = make_event(0, port=5051)
    ev.local.namespace, ev.local.name = "shop", "frontend-2"
    ev.remote.namespace, ev.remote.name = "shop", "checkout-1"
    cols = render.table_line(ev).split()
    assert cols[3:5] == ["shop/frontend-2:40000", "shop/checkout-1:5051"]


def _tail(b: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tail(b.bootstrap, TOPIC, "--from-beginning", "--duration", "3", "--rows", "socket", *args)


def test_tail_table_is_in_time_order_across_partitions_and_hides_state_changes(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC, partitions=2)
    # two agents' batches, each on its own partition, interleaved in time
    a = [_at(i, 100 + 20 * i) for i in range(5)]  # 100, 120, ..., 180 ms
    b = [_at(10 + i, 110 + 20 * i) for i in range(5)]  # 110, 130, ..., 190 ms
    b[2].ClearField("lifecycle")
    b[2].state_change.old_state, b[2].state_change.new_state = pb.SYN_SENT, pb.ESTABLISHED
    for part, (agent, evs) in enumerate((("a1", a), ("b1", b))):
        batch = EventBatch(schema_version=1, node=agent, agent_id=agent, sequence=1, events=evs)
        publish_batches(kafka_broker.bootstrap, TOPIC, [batch], partition=part)
    out = _tail(kafka_broker)
    assert out.returncode == 0, out.stderr
    want = sorted((e for e in (*a, *b) if e is not b[2]), key=lambda e: e.time.ToNanoseconds())
    assert out.stdout.splitlines() == [render.TABLE_HEADER, *(render.table_line(e) for e in want)]
    every = _tail(kafka_broker, "--kind", "all", "--format", "json")
    assert every.stdout.splitlines() == [
        render.json_line(e) for e in sorted((*a, *b), key=lambda e: e.time.ToNanoseconds())
    ]
