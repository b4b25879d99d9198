"""Every bad input to `tcpscope-collector` is one line on stderr and exit 2, within seconds, and
never a traceback: each case runs the real command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kafka import Broker

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    module: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 20
) -> tuple[int, str, float]:
    """(exit code, stderr, seconds) of `python -m module args`."""
    started = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    return p.returncode, p.stderr, time.monotonic() - started


def assert_one_line(prog: str, rc: int, err: str, secs: float, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    assert lines[-1].startswith(f"{prog}: error: "), err
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]], err
    for w in words:
        assert w in lines[-1], (w, err)
    assert secs < 10, secs


@pytest.fixture
def busy_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


CASES: list[tuple[str, list[str], dict[str, str], tuple[str, ...]]] = [
    ("compression foo", ["--kafka-compression", "foo"], {}, ("--kafka-compression", "foo")),
    ("snappy without its codec", ["--kafka-compression", "snappy"], {}, ("snappy", "python-snappy")),
    ("kubeconfig missing", ["--resolve-remote", "--kubeconfig", "/nonexistent"], {}, ("--kubeconfig",)),
    ("int env not a number", [], {"TCPSCOPE_MAX_BATCH_EVENTS": "abc"}, ("TCPSCOPE_MAX_BATCH_EVENTS", "abc")),
    ("bool env", [], {"TCPSCOPE_RESOLVE_REMOTE": "maybe"}, ("TCPSCOPE_RESOLVE_REMOTE", "maybe")),
    ("float env", [], {"TCPSCOPE_SHUTDOWN_GRACE": "soon"}, ("TCPSCOPE_SHUTDOWN_GRACE",)),
    ("metrics port -1", ["--metrics-port", "-1"], {}, ("--metrics-port",)),
    ("metrics port not a number", ["--metrics-port", "x"], {}, ("--metrics-port",)),
    ("listen port out of range", ["--listen", "127.0.0.1:99999"], {}, ("--listen", "99999")),
    ("listen without port", ["--listen", "127.0.0.1"], {}, ("--listen",)),
    ("delivery timeout -1", ["--kafka-delivery-timeout-ms", "-1"], {}, ("--kafka-delivery-timeout-ms",)),
    ("linger -5", ["--kafka-linger-ms", "-5"], {}, ("--kafka-linger-ms",)),
    ("grace -1", ["--grace", "-1"], {}, ("--grace",)),
    ("grace nan", ["--grace", "nan"], {}, ("--grace",)),
    ("log level", ["--log-level", "loud"], {}, ("--log-level",)),
    ("handshake timeout 0", ["--handshake-timeout", "0"], {}, ("--handshake-timeout",)),
    ("record limit negative", ["--kafka-max-record-bytes", "-1"], {}, ("--kafka-max-record-bytes",)),
    ("token file missing", ["--token-file", "/nonexistent"], {}, ("--token-file",)),
]


@pytest.mark.parametrize(("args", "env", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_flag_or_variable(args: list[str], env: dict[str, str], words: tuple[str, ...]) -> None:
    # an unreachable broker: every one of these must fail before Kafka is dialled
    rc, err, secs = run_cli("collector", ["--kafka-bootstrap", "127.0.0.1:1", *args], env)
    assert_one_line("tcpscope-collector", rc, err, secs, *words)


def test_empty_token_file(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    rc, err, secs = run_cli("collector", ["--kafka-bootstrap", "127.0.0.1:1", "--token-file", str(empty)])
    assert_one_line("tcpscope-collector", rc, err, secs, "--token-file", "empty")


def test_busy_metrics_port(busy_port: int) -> None:
    rc, err, secs = run_cli("collector", ["--kafka-bootstrap", "127.0.0.1:1", "--metrics-port", str(busy_port)])
    assert_one_line("tcpscope-collector", rc, err, secs, f"--metrics-port {busy_port}", "in use")


def test_busy_listen_port(kafka_broker: Broker, busy_port: int) -> None:
    rc, err, secs = run_cli(
        "collector",
        ["--kafka-bootstrap", kafka_broker.bootstrap, "--listen", f"127.0.0.1:{busy_port}", "--log-level", "WARNING"],
    )
    assert_one_line("tcpscope-collector", rc, err, secs, f"127.0.0.1:{busy_port}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stops_at_once_while_kafka_cannot_be_reached(sig: signal.Signals) -> None:
    """A closed port as the broker: the collector says where it connects, and Ctrl-C (or SIGTERM)
    stops it then, not after kafka-python's 30 s bootstrap (which it would report as an error)."""
    from tests.support.kafka import free_port

    bootstrap = f"127.0.0.1:{free_port()}"  # nobody listens there
    with subprocess.Popen(
        [sys.executable, "-m", "collector", "--listen", "127.0.0.1:0", "--kafka-bootstrap", bootstrap],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as p:
        assert p.stderr is not None
        said = ""
        while "connecting to Kafka" not in said:
            said = p.stderr.readline()
            assert said, "the collector ended without saying where it connects"
        assert f"connecting to Kafka at {bootstrap} (topic tcpscope-events" in said
        p.send_signal(sig)
        rest = p.stderr.read()
        rc = p.wait(timeout=20)
    assert rc == 0, rest
    assert "stopped before the collector was up" in rest and "Unable to bootstrap" not in rest, rest


def test_a_start_up_error_names_its_type_once() -> None:
    from kafka.errors import KafkaTimeoutError

    from collector.__main__ import error_text
    from collector.config import CollectorConfig

    cfg = CollectorConfig.from_args(["--kafka-bootstrap", "127.0.0.1:1"])
    e = KafkaTimeoutError("Unable to bootstrap from ['127.0.0.1:1']")
    assert str(e).startswith("KafkaTimeoutError")  # kafka-python's own text names the type
    assert error_text(e, cfg) == "Kafka at 127.0.0.1:1: KafkaTimeoutError: Unable to bootstrap from ['127.0.0.1:1']"
    assert error_text(OSError("no such file"), cfg) == "OSError: no such file"
