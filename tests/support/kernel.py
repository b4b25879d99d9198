"""A loaded agent kernel source for tests: load once, poll, wait for events matching a predicate."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.kernel.connid import connection_ids
from agent.kernel.decode import Decoder
from agent.kernel.loader import load
from agent.kernel.probe import Plan, build_plan
from agent.kernel.source import KernelSource, boot_to_wall_offset_ns
from tcpscope.v1.events_pb2 import TcpEvent

ALL_BUT_PROBE = ("lifecycle", "state", "retransmit", "synack", "reset", "error")


def require_root() -> None:
    """Kernel tests FAIL (never skip) without root: CI must have BPF."""
    assert os.geteuid() == 0, "this test needs root, BPF and tracefs (run the suite as root)"


@dataclass
class Harness:
    """A KernelSource plus everything it delivered so far."""

    source: KernelSource
    plan: Plan
    seen: list[TcpEvent] = field(default_factory=list)

    def pump(self, timeout_ms: int = 50) -> None:
        self.seen.extend(self.source.poll(timeout_ms))

    def drain(self) -> None:
        """Detach, then poll until the buffer and both flow maps are empty (the agent's shutdown:
        the last open-connection pass and flush included)."""
        self.source.stop()
        empty = 0
        while empty < 2:
            got = self.source.poll(50)
            self.seen.extend(got)
            empty = 0 if got else empty + 1

    def wait(
        self,
        match: Callable[[TcpEvent], bool],
        count: int = 1,
        timeout: float = 5.0,
        settle: float = 0.2,
        since: int = 0,
    ) -> list[TcpEvent]:
        """Events matching `match` (among those delivered from index `since` of `seen` on), after at
        least `count` arrived (or timeout), plus `settle` seconds for stragglers (so tests can assert
        there is not one too many)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sum(1 for e in self.seen[since:] if match(e)) < count:
            self.pump()
        end = time.monotonic() + settle
        while time.monotonic() < end:
            self.pump()
        return [e for e in self.seen[since:] if match(e)]


@contextmanager
def kernel_harness(
    config: AgentConfig,
    clock: Callable[[], float] = time.monotonic,
    kernel: str | None = None,
    capabilities: int | None = None,
) -> Iterator[Harness]:
    """The agent's kernel source for `config`; `clock` decides when a flow interval is over (a
    ManualClock lets a test end each interval itself); `kernel` plans for another kernel release
    than the running one, and `capabilities` for another capability set, where the plan's choices
    depend on them alone."""
    require_root()
    plan = build_plan(config, kernel=kernel, capabilities=capabilities)
    source = KernelSource(
        load(plan),
        Decoder("test-node", boot_to_wall_offset_ns(), plan.rst_reasons, connection_ids(config)),
        flow_interval_s=config.flow_interval,
        clock=clock,
    )
    try:
        yield Harness(source=source, plan=plan)
    finally:
        source.close()


class ManualClock:
    """A monotonic clock that moves only when told: `interval()` ends the current flow interval at
    the source's next poll."""

    def __init__(self, step: float = 3600.0) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        return self.now

    def interval(self) -> None:
        self.now += self.step


def reports_recursion_misses() -> bool:
    """bpf_prog_info.recursion_misses exists from Linux 5.12; the agent reports it where present."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 12)


def traces_error_reports(h: Harness) -> bool:
    """Is sock:inet_sk_error_report attached? Older kernels (5.10 among them) lack it: no socket_error events
    there, and the lifecycle's errno comes from sk_err at CLOSE alone."""
    return any(tp == "sock:inet_sk_error_report" for _k, tp, _f in h.plan.attach)


def traces_socketless_resets(h: Harness) -> bool:
    """Does tcp:tcp_send_reset fire for a RST sent without a socket (a refused connect)? From 6.10
    (commit 19822a980e19), whose record carries sockaddr copies of the addresses instead of the
    sport/saddr_v6 fields; before it the tracepoint fired only for a RST sent from a full socket."""
    fmt = next(f for f in h.plan.formats if f.name == "tcp_send_reset")
    saddr = fmt.field("saddr")
    return saddr is not None and saddr.size >= 16


def on_port(port: int) -> Callable[[TcpEvent], bool]:
    """Events of sockets with this local or remote port."""
    return lambda e: e.local.port == port or e.remote.port == port


def lifecycle_on(port: int) -> Callable[[TcpEvent], bool]:
    """Lifecycles of connection sockets with this local or remote port. A duplicate handshake child
    (two ACKs of one request handled on two CPUs at once: the kernel makes two children and destroys
    the loser in SYN_RECV; tcpscope.outcome.is_duplicate_child) is a real socket but no connection,
    and is left out as the summary leaves it out. Slow guests (QEMU TCG) make it more likely."""
    from tcpscope.outcome import is_duplicate_child

    return lambda e: on_port(port)(e) and kind(e) == "lifecycle" and not is_duplicate_child(e.lifecycle)


def kind(ev: TcpEvent) -> str | None:
    return ev.WhichOneof("kind")
