"""The pipeline loop with fake stages: ordering, held events, loss propagation, shutdown flush."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from agent.pipeline import Pipeline
from tcpscope.v1.events_pb2 import TcpEvent


def ev(sock: int) -> TcpEvent:
    e = TcpEvent(socket_id=sock)
    e.lifecycle.tx_bytes = sock
    return e


class FakeSource:
    def __init__(self, batches: list[list[TcpEvent]], lost: dict[str, int]) -> None:
        self.batches = batches
        self.lost = lost
        self.closed = False
        self.stopped = False

    def poll(self, timeout_ms: int) -> list[TcpEvent]:
        return self.batches.pop(0) if self.batches else []

    def losses(self) -> dict[str, int]:
        return dict(self.lost)

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


class HoldOdd:
    """Holds odd socket ids until flush; tags everything it passes."""

    def __init__(self) -> None:
        self.held: list[TcpEvent] = []
        self.closed = False

    def process(self, events: list[TcpEvent], now: float) -> list[TcpEvent]:
        out: list[TcpEvent] = []
        for e in events:
            e.node = "tagged"
            (self.held if e.socket_id % 2 else out).append(e)
        return out

    def flush(self) -> list[TcpEvent]:
        out, self.held = self.held, []
        return out

    def losses(self) -> dict[str, int]:
        return {"kernel.ringbuf_full": 1, "enrich.x": 2}

    def stats(self) -> dict[str, int]:
        return {"held": len(self.held)}

    def close(self) -> None:
        self.closed = True


class Upper:
    def process(self, events: list[TcpEvent], now: float) -> list[TcpEvent]:
        for e in events:
            e.node = e.node.upper()
        return events

    def flush(self) -> list[TcpEvent]:
        return []

    def losses(self) -> dict[str, int]:
        return {}

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


class ListSink:
    def __init__(self) -> None:
        self.got: list[int] = []
        self.nodes: list[str] = []
        self.upstream: list[dict[str, int]] = []
        self.closed_with: float | None = None

    def emit(self, events: Sequence[TcpEvent], upstream_losses: dict[str, int]) -> None:
        self.got += [e.socket_id for e in events]
        self.nodes += [e.node for e in events]
        self.upstream.append(upstream_losses)

    def close(self, grace_s: float) -> None:
        self.closed_with = grace_s

    def losses(self) -> dict[str, int]:
        return {"agent.buffer_full": 3}


def test_events_flow_through_enrichers_in_order_and_losses_add_up() -> None:
    src = FakeSource([[ev(1), ev(2)], [ev(3), ev(4)]], {"kernel.ringbuf_full": 5})
    hold, sink = HoldOdd(), ListSink()
    p = Pipeline(src, [hold, Upper()], sink, clock=lambda: 0.0)
    assert p.step() == 1 and p.step() == 1
    assert sink.got == [2, 4]
    assert sink.nodes == ["TAGGED", "TAGGED"]
    assert sink.upstream[-1] == {"kernel.ringbuf_full": 6, "enrich.x": 2}
    assert p.all_losses() == {"kernel.ringbuf_full": 6, "enrich.x": 2, "agent.buffer_full": 3}

    p.shutdown(grace_s=1.5)
    # held events are released at shutdown and still pass through the later enrichers
    assert sink.got == [2, 4, 1, 3]
    assert sink.nodes[-2:] == ["TAGGED", "TAGGED"]
    assert sink.closed_with == 1.5 and src.closed and hold.closed
    assert p.events_out == 4


def test_run_stops_on_event_and_deadline() -> None:
    t = [0.0]

    def clock() -> float:
        t[0] += 1.0
        return t[0]

    sink = ListSink()
    p = Pipeline(FakeSource([[ev(2)]] * 100, {}), [], sink, clock=clock)
    p.run(threading.Event(), deadline=5.0)
    assert 1 <= len(sink.got) <= 5
    stop = threading.Event()
    stop.set()
    before = len(sink.got)
    p.run(stop)
    assert len(sink.got) == before


def test_fanout_gives_every_sink_every_event_and_sums_losses() -> None:
    from agent.pipeline import FanOut

    a, b = ListSink(), ListSink()
    fan = FanOut([a, b])
    fan.emit([ev(7), ev(8)], {"kernel.x": 1})
    fan.close(2.0)
    assert a.got == b.got == [7, 8]
    assert a.upstream == b.upstream == [{"kernel.x": 1}]
    assert a.closed_with == b.closed_with == 2.0
    assert fan.losses() == {"agent.buffer_full": 6}


def test_losses_are_read_at_most_every_refresh_interval_and_fresh_at_shutdown() -> None:
    t = [0.0]
    src = FakeSource([[ev(2)], [ev(4)], [ev(6)]], {"kernel.ringbuf_full": 1})
    sink = ListSink()
    p = Pipeline(src, [], sink, clock=lambda: t[0], loss_refresh_s=1.0)
    p.step()
    src.lost["kernel.ringbuf_full"] = 5
    t[0] = 0.5
    p.step()  # within the interval: the reading from t=0
    t[0] = 1.0
    p.step()  # interval over: read again
    src.lost["kernel.ringbuf_full"] = 9
    p.shutdown(grace_s=0)
    assert [u["kernel.ringbuf_full"] for u in sink.upstream] == [1, 1, 5, 9]


def test_shutdown_drains_every_bounded_batch_the_source_still_has() -> None:
    src = FakeSource([[ev(2), ev(4)], [ev(6)], [ev(8)]], {})
    sink = ListSink()
    Pipeline(src, [Upper()], sink, clock=lambda: 0.0).shutdown(grace_s=0)
    assert sink.got == [2, 4, 6, 8]
