"""The agent's /healthz and /readyz: what they say, over real HTTP, and with a real
collector going away."""

from __future__ import annotations

import urllib.error
import urllib.request

from agent.health import AgentHealth, HeartbeatSource
from agent.metrics import AgentMetrics
from tcpscope.v1.events_pb2 import TcpEvent
from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, free_port, kafka_broker
from tests.support.streaming import collector_cfg, make_exporter, wait_until

__all__ = ["kafka_broker"]  # the fixture


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    def poll(self, timeout_ms: int) -> list[TcpEvent]:
        return []

    def losses(self) -> dict[str, int]:
        return {"kernel.ringbuf_full": 1}

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_live_and_ready_follow_attach_the_loop_and_the_buffer() -> None:
    clock, m = Clock(), AgentMetrics()
    h = AgentHealth(m, exporting=True, stall_s=30, clock=clock)
    assert h.live() == (True, "starting") and not h.ready()[0]  # compiling BPF: live, not ready
    h.attached = True
    src = HeartbeatSource(Source(), h)
    src.poll(0)
    assert src.losses() == {"kernel.ringbuf_full": 1}
    m.buffer_capacity.set(1000)
    m.buffer_events.set(500)  # not connected, half full: still ready (buffering within bounds)
    assert h.ready()[0] and "buffering 500/1000" in h.ready()[1]
    m.buffer_events.set(900)
    assert h.ready() == (False, "collector not connected and the export buffer is 900/1000 events")
    m.stream_connected.set(1)
    assert h.ready()[0]
    clock.now += 31  # the loop stopped turning
    assert not h.live()[0] and not h.ready()[0]
    src.poll(0)
    assert h.live()[0] and h.ready()[0]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_served_on_the_metrics_port_with_metrics(kafka_broker: Broker) -> None:
    kafka_broker.create_topic("events")
    with collector(collector_cfg(kafka_broker.bootstrap, "events")) as col:
        exp = make_exporter(col.target, batch=10, buffer=100)
        h = AgentHealth(exp.metrics, exporting=True)
        port = free_port()
        exp.metrics.serve(port, "127.0.0.1", h)
        base = f"http://127.0.0.1:{port}"
        assert _get(base + "/healthz") == (200, "ok: starting\n")
        assert _get(base + "/readyz") == (503, "not ok: not attached to the kernel yet\n")
        h.attached = True
        h.turn()
        exp.emit([make_event(i) for i in range(10)], {})
        wait_until(lambda: exp.metrics.value("tcpscope_agent_events_acked_total") == 10, 10, "acks")
        assert _get(base + "/readyz")[1] == "ok: attached, pipeline moving, collector connected\n"
        code, text = _get(base + "/metrics")
        assert code == 200 and "tcpscope_agent_events_in_total 10.0" in text
    # the collector is gone: the agent buffers; past 90% of its buffer it is no longer ready
    wait_until(lambda: exp.metrics.value("tcpscope_agent_stream_connected") == 0, 10, "disconnected")
    exp.emit([make_event(i) for i in range(10, 90)], {})
    assert _get(base + "/readyz")[0] == 200
    exp.emit([make_event(i) for i in range(90, 105)], {})  # 95 held: the first 10 were acked
    assert _get(base + "/readyz") == (503, "not ok: collector not connected and the export buffer is 95/100 events\n")
    exp.close(0)
