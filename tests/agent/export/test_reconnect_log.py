"""Reconnect warnings are rate-limited: a collector down for a while is one line, not one per attempt."""

from __future__ import annotations

import logging
import time

import pytest

from tcpscope.ratelimit import Throttle, held_note
from tests.support.events import make_event
from tests.support.kafka import free_port
from tests.support.streaming import make_exporter, wait_until


def test_throttle_counts_what_it_holds_back() -> None:
    now = [0.0]
    t = Throttle(30.0, clock=lambda: now[0])
    assert t.ready("a") == 0
    assert [t.ready("a") for _ in range(5)] == [None] * 5
    assert t.ready("b") == 0  # keys are apart
    now[0] = 30.0
    assert t.ready("a") == 5 and held_note(5) == " (5 more like it since the last report)"
    t.reset()
    assert t.ready("a") == 0


def test_a_collector_down_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.export.transport")
    exp = make_exporter(f"127.0.0.1:{free_port()}", batch=10)  # nobody listens: every attempt fails
    exp.emit([make_event(i) for i in range(10)], {})
    wait_until(
        lambda: (
            sum(
                s.value
                for m in exp.metrics.registry.collect()
                if m.name == "tcpscope_agent_stream_reconnects"
                for s in m.samples
                if s.name.endswith("_total")
            )
            >= 8
        ),
        20,
        "8 failed attempts",
    )
    time.sleep(0.1)
    exp.close(0)
    lines = [r for r in caplog.records if "collector stream to" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
