"""Wiring for streaming tests: an Exporter + GrpcTransport with test-sized settings, and readers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.export import Exporter, ExporterSettings, GrpcTransport, TransportSettings
from agent.metrics import AgentMetrics
from collector.config import CollectorConfig
from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, Decoded, decode_records


def make_exporter(
    target: str,
    node: str = "node-a",
    agent_id: str = "agent-1",
    batch: int = 10,
    buffer: int = 10_000,
    age: float = 0.05,
    **transport: Any,
) -> Exporter:
    metrics = AgentMetrics()
    t = GrpcTransport(TransportSettings(target=target, backoff_initial_s=0.05, backoff_max_s=0.5, **transport), metrics)
    return Exporter(
        ExporterSettings(
            node=node,
            agent_id=agent_id,
            batch_max_events=batch,
            batch_max_age=age,
            buffer_max_events=buffer,
            heartbeat_s=3600,
        ),
        t,
        metrics,
    )


def collector_cfg(bootstrap: str, topic: str, **kw: Any) -> CollectorConfig:
    return CollectorConfig(listen="127.0.0.1:0", kafka_bootstrap=(bootstrap,), topic=topic, kafka_linger_ms=5, **kw)


def decode_all(records: list[Any]) -> tuple[list[Decoded], list[Decoded]]:
    """(event records, summary records) in consumption order."""
    decoded = [d for r in records for d in decode_records(r.headers, r.value)]
    return ([d for d in decoded if d.kind == RECORD_EVENT], [d for d in decoded if d.kind == RECORD_SUMMARY])


def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
