"""Liveness and readiness of the agent, served as /healthz and /readyz on its metrics server.

- live: the pipeline loop is turning (it polls the kernel source at least every poll timeout, events
  or not), or the agent is still starting (BPF compile: tens of seconds). A loop stuck
  for `stall_s` is not live: the kubelet restarts the container.
- ready: attached to the kernel, live, and, when streaming to a collector, either connected or
  buffering within bounds (under `buffer_ready_fraction` of --buffer-max-events, so nothing is being
  dropped yet). A DaemonSet rollout waits for it before taking down the next node's agent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.metrics import AgentMetrics
from agent.pipeline import EventSource
from tcpscope.v1.events_pb2 import TcpEvent


class AgentHealth:
    def __init__(
        self,
        metrics: AgentMetrics,
        exporting: bool,
        stall_s: float = 30.0,
        buffer_ready_fraction: float = 0.9,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._exporting = exporting
        self._stall_s = stall_s
        self._fraction = buffer_ready_fraction
        self._clock = clock
        self.attached = False
        self._last_turn: float | None = None

    def turn(self) -> None:
        """The pipeline loop went round once (called by HeartbeatSource on every poll)."""
        self._last_turn = self._clock()

    def live(self) -> tuple[bool, str]:
        if self._last_turn is None:
            return True, "starting" if not self.attached else "attached, pipeline not started yet"
        idle = self._clock() - self._last_turn
        if idle > self._stall_s:
            return False, f"pipeline stalled: no turn for {idle:.0f}s"
        return True, "pipeline moving"

    def ready(self) -> tuple[bool, str]:
        if not self.attached:
            return False, "not attached to the kernel yet"
        ok, why = self.live()
        if not ok or self._last_turn is None:
            return False, why
        if not self._exporting:
            return True, "attached, pipeline moving"
        m = self._metrics
        if m.value("tcpscope_agent_stream_connected") >= 1:
            return True, "attached, pipeline moving, collector connected"
        held, cap = m.value("tcpscope_agent_buffer_events"), m.value("tcpscope_agent_buffer_capacity_events")
        if cap and held >= self._fraction * cap:
            return False, f"collector not connected and the export buffer is {held:.0f}/{cap:.0f} events"
        return True, f"attached, pipeline moving, collector not connected: buffering {held:.0f}/{cap:.0f} events"


class HeartbeatSource:
    """An EventSource that tells AgentHealth each time the pipeline polls it (it delegates the rest)."""

    def __init__(self, source: EventSource, health: AgentHealth) -> None:
        self._source = source
        self._health = health

    def poll(self, timeout_ms: int) -> list[TcpEvent]:
        self._health.turn()
        return self._source.poll(timeout_ms)

    def losses(self) -> dict[str, int]:
        return self._source.losses()

    def stop(self) -> None:
        self._source.stop()

    def close(self) -> None:
        self._source.close()
