"""tcpscope-agent's bad inputs are one line and exit 2; a --duration run that lost events
exits 3."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from io import StringIO

import pytest

import agent.__main__ as agent_main
from agent.config import AgentConfig
from agent.pipeline import Pipeline
from agent.stdout import StdoutSink
from tcpscope.v1.events_pb2 import TcpEvent
from tests.collector.test_bad_input import assert_one_line, run_cli


@pytest.fixture
def busy_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


CASES = [
    ("netns a regular file", ["--netns", "/etc/hostname"], ("--netns", "not a namespace file")),
    ("netns missing", ["--netns", "/nonexistent/ns"], ("--netns",)),
    ("netns another kind", ["--netns", "/proc/self/ns/uts"], ("not a network namespace",)),
    ("collector without port", ["--collector", "collector.svc"], ("--collector", "HOST:PORT")),
    ("collector port 0", ["--collector", "collector.svc:0"], ("--collector", "1-65535")),
    ("collector port too big", ["--collector", "10.0.0.1:70000"], ("--collector",)),
    ("collector bare IPv6", ["--collector", "::1:4317"], ("--collector", "brackets")),
    ("metrics port not a number", ["--metrics-port", "x"], ("--metrics-port",)),
]


@pytest.mark.parametrize(("args", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_flag(args: list[str], words: tuple[str, ...]) -> None:
    rc, err, secs = run_cli("agent", ["--stdout", "json", *args])
    assert_one_line("tcpscope-agent", rc, err, secs, *words)


def test_good_targets_and_namespaces_pass() -> None:
    for target in ("collector.ns.svc:4317", "[::1]:4317", "10.0.0.1:4317", "dns:///collector.ns.svc:4317"):
        assert AgentConfig.from_args(["--collector", target]).collector == target
    assert AgentConfig.from_args(["--stdout", "json", "--netns", "/proc/self/ns/net"]).netns == "/proc/self/ns/net"


def test_busy_metrics_port_is_one_line(busy_port: int) -> None:
    # the metrics server is bound after the kernel probe and before the programs are compiled; an
    # agent without BPF privileges stops earlier, with its own one line
    rc, err, secs = run_cli("agent", ["--stdout", "json", "--no-kubernetes", "--metrics-port", str(busy_port)])
    assert "Traceback" not in err and rc == 2, err
    assert_one_line("tcpscope-agent", rc, err, secs)
    if "not root" not in err and "capabilit" not in err:
        assert f"--metrics-port {busy_port}" in err and "in use" in err, err


class _LossySource:
    """An event source that lost 7 events in the kernel and delivers one."""

    def __init__(self) -> None:
        self.polls = 0

    def poll(self, timeout_ms: int) -> list[TcpEvent]:
        self.polls += 1
        return [TcpEvent(node="n", socket_id=1)] if self.polls == 1 else []

    def losses(self) -> dict[str, int]:
        return {"kernel.ringbuf_full": 7, "kernel.recursion_misses": 2}

    def stop(self) -> None:
        pass

    def flow_counters(self) -> dict[str, int]:
        return {}

    def anomaly_counters(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


class _Plan:
    attach = (("tp", "sock/inet_sock_set_state", None),)
    use_ringbuf = True


@pytest.mark.parametrize(
    ("losses", "code"),
    [({"kernel.ringbuf_full": 7, "kernel.recursion_misses": 2}, 3), ({"kernel.recursion_misses": 2}, 0)],
)
def test_duration_run_that_lost_events_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], losses: dict[str, int], code: int
) -> None:
    source = _LossySource()
    monkeypatch.setattr(source, "losses", lambda: losses)

    class _Agent:
        plan = _Plan()
        pipeline = Pipeline(source=source, enrichers=[], sink=StdoutSink("json", StringIO()))

    _Agent.source = source  # type: ignore[attr-defined]
    monkeypatch.setattr(agent_main, "missing_privilege", lambda: None)
    monkeypatch.setattr(agent_main, "build_agent", lambda config, out: _Agent())
    assert agent_main.main(["--stdout", "json", "--duration", "0.2", "--no-kubernetes"]) == code
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tcpscope-agent: 1 events out, lost ")
    if code:
        assert "lost 7 (kernel.recursion_misses=2, kernel.ringbuf_full=7)" in last
