"""TLS in one line (docs/deployment.md, "TLS"): each certificate, key or CA problem is named at start,
exit 2, by the side that has it; expired and expiring certificates are warned about; an agent that
mTLS refuses is told why, not "Socket closed". Real certificates, real collector processes."""

from __future__ import annotations

import datetime
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.collector.test_bad_input import ROOT, assert_one_line, run_cli
from tests.support.collector import wait_port
from tests.support.events import make_event
from tests.support.kafka import Broker, free_port
from tests.support.streaming import make_exporter, wait_until
from tests.support.tls import TestCA

GARBAGE = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


def _files(tmp_path: Path) -> dict[str, str]:
    ca, other = TestCA(tmp_path), TestCA(tmp_path, "other CA")
    srv, stranger = ca.server(), other.server("stranger")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(GARBAGE)
    text = tmp_path / "text.pem"
    text.write_text("hello\n")
    return {
        "cert": srv.cert,
        "key": srv.key,
        "other_key": stranger.key,
        "garbage": str(garbage),
        "text": str(text),
        "ca": ca.ca_file,
    }


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("garbage_cert", ("--tls-cert", "garbage.pem", "not an X.509 certificate")),
        ("text_cert", ("--tls-cert", "text.pem", "no PEM certificate")),
        ("garbage_key", ("--tls-key", "text.pem", "no PEM private key")),
        ("mismatched_key", ("--tls-key", "stranger.key", "is not the private key of --tls-cert")),
        ("garbage_client_ca", ("--tls-client-ca", "garbage.pem", "not an X.509 certificate")),
        ("text_client_ca", ("--tls-client-ca", "text.pem", "no PEM CA certificate")),
    ],
)
def test_the_collector_names_each_bad_file(tmp_path: Path, case: str, words: tuple[str, ...]) -> None:
    f = _files(tmp_path)
    cert, key, client_ca = f["cert"], f["key"], None
    if case == "garbage_cert":
        cert = f["garbage"]
    elif case == "text_cert":
        cert = f["text"]
    elif case == "garbage_key":
        key = f["text"]
    elif case == "mismatched_key":
        key = f["other_key"]
    elif case == "garbage_client_ca":
        client_ca = f["garbage"]
    else:
        client_ca = f["text"]
    args = ["--listen", f"127.0.0.1:{free_port()}", "--kafka-bootstrap", "127.0.0.1:1", "--tls-cert", cert]
    args += ["--tls-key", key, *(["--tls-client-ca", client_ca] if client_ca else [])]
    rc, err, secs = run_cli("collector", args)
    assert_one_line("tcpscope-collector", rc, err, secs, *words)
    assert "address in use" not in err


def test_the_agent_names_a_garbage_ca_at_start_instead_of_retrying(tmp_path: Path) -> None:
    f = _files(tmp_path)
    for args, words in (
        (["--tls-ca", f["garbage"]], ("--tls-ca", "garbage.pem", "not an X.509 certificate")),
        (["--tls-ca", f["ca"], "--tls-cert", f["cert"], "--tls-key", f["other_key"]], ("is not the private key of",)),
    ):
        rc, err, secs = run_cli("agent", ["--collector", f"127.0.0.1:{free_port()}", "--no-kubernetes", *args])
        assert_one_line("tcpscope-agent", rc, err, secs, *words)


def _command(port: int, broker: Broker, *flags: str) -> list[str]:
    listen = ["--listen", f"127.0.0.1:{port}"]
    return [sys.executable, "-m", "collector", *listen, "--kafka-bootstrap", broker.bootstrap, "--topic", "tls", *flags]


def _collector_stderr(broker: Broker, *tls: str) -> str:
    """Start a collector process with these TLS flags, wait until it listens, stop it: its stderr."""
    port = free_port()
    p = subprocess.Popen(
        _command(port, broker, "--log-level", "WARNING", *tls),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port)
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    return err


def test_expired_and_expiring_certificates_are_warned_about(kafka_broker: Broker, tmp_path: Path) -> None:
    kafka_broker.create_topic("tls")
    ca = TestCA(tmp_path)
    expired = ca.server("expired", valid_for=datetime.timedelta(days=-2))
    soon = ca.server("soon", valid_for=datetime.timedelta(days=3))
    fine = ca.server("fine", valid_for=datetime.timedelta(days=30))
    err = _collector_stderr(kafka_broker, "--tls-cert", expired.cert, "--tls-key", expired.key)
    assert f"--tls-cert {expired.cert} expired on" in err, err
    err = _collector_stderr(kafka_broker, "--tls-cert", soon.cert, "--tls-key", soon.key)
    assert f"--tls-cert {soon.cert} expires on" in err and "in less than 7 days: renew it" in err, err
    err = _collector_stderr(kafka_broker, "--tls-cert", fine.cert, "--tls-key", fine.key)
    assert "--tls-cert" not in err, err


def test_an_mtls_refusal_tells_the_agent_why(
    kafka_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kafka_broker.create_topic("tls")
    ca, other = TestCA(tmp_path), TestCA(tmp_path, "other CA")
    srv, stranger = ca.server(), other.client("node-a")
    port = free_port()
    p = subprocess.Popen(
        _command(port, kafka_broker, "--tls-cert", srv.cert, "--tls-key", srv.key, "--tls-client-ca", ca.ca_file),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    caplog.set_level(logging.WARNING, logger="agent.export.transport")
    try:
        wait_port(port)
        cases: tuple[tuple[dict[str, Any], str], ...] = (
            (
                {},
                "the collector requires a client certificate (mutual TLS: its --tls-client-ca) and this agent "
                "presents none (--tls-cert/--tls-key)",
            ),
            (
                {"tls_cert": stranger.cert, "tls_key": stranger.key},
                f"the collector refused this agent's client certificate --tls-cert {stranger.cert}",
            ),
        )
        for kw, want in cases:
            caplog.clear()
            exp = make_exporter(f"localhost:{port}", tls_ca=ca.ca_file, **kw)
            exp.emit([make_event(1)], {})
            wait_until(lambda: any("collector stream" in r.getMessage() for r in caplog.records), 10, "a warning")
            exp.close(0.2)
            (line,) = [r.getMessage() for r in caplog.records if "collector stream" in r.getMessage()]
            assert want in line, line
            assert "Socket closed" not in line
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(20)
