"""tcpscope-tail's bad inputs: one line, exit 2, within seconds, no traceback."""

from __future__ import annotations

import pytest

from tests.collector.test_bad_input import assert_one_line, run_cli
from tests.support.kafka import Broker, free_port


@pytest.mark.parametrize("summary", [[], ["--summary"]], ids=["events", "summary"])
@pytest.mark.slow  # kafka-python gives up on an unreachable bootstrap after about 5 s
def test_unreachable_broker(summary: list[str]) -> None:
    port = free_port()  # nobody listens there
    rc, err, secs = run_cli("tail.cli", ["--kafka-bootstrap", f"127.0.0.1:{port}", *summary])
    assert_one_line("tcpscope-tail", rc, err, secs, f"127.0.0.1:{port}", "Unable to bootstrap")


@pytest.mark.parametrize("summary", [[], ["--summary"], ["--group", "g"]], ids=["events", "summary", "group"])
def test_missing_topic(kafka_broker: Broker, summary: list[str]) -> None:
    kafka_broker.create_topic("present")
    rc, err, secs = run_cli("tail.cli", ["--kafka-bootstrap", kafka_broker.bootstrap, "--topic", "absent", *summary])
    assert_one_line("tcpscope-tail", rc, err, secs, "'absent' not found")


@pytest.mark.parametrize(
    "args",
    [
        ["--duration", "-1"],
        ["--duration", "0"],
        ["--summary", "--window", "-5"],
        ["--summary", "--every", "0"],
        ["--duration", "inf"],
    ],
)
def test_bad_numbers(args: list[str]) -> None:
    rc, err, secs = run_cli("tail.cli", ["--kafka-bootstrap", "127.0.0.1:1", *args])
    assert_one_line("tcpscope-tail", rc, err, secs, args[-2])
