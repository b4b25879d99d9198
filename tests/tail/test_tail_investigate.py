"""tcpscope-tail's investigation flags: time ranges through Kafka's offsets for times, filters and
the Kafka security settings, against a real broker (and a consumer stand-in that answers offsets
for times as Apache Kafka does: the test broker, tansu, answers every time lookup with offset 0
and timestamp -1)."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tail import cli as tail
from tail import consume
from tcpscope import render
from tcpscope.kafka_client import KafkaSecurity
from tcpscope.v1 import events_pb2 as pb
from tests.support.events import make_event
from tests.support.kafka import Broker, publish_batches, run_tail

TOPIC = "investigate"


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass(frozen=True)
class OT:
    offset: int
    timestamp: int


@dataclass
class KafkaLike:
    """Per partition, the records' timestamps (ms) in offset order; answers like Apache Kafka."""

    stamps: dict[TP, list[int]]
    calls: list[tuple[str, Any, Any]] = field(default_factory=list)

    def offsets_for_times(self, want: dict[TP, int]) -> dict[TP, OT | None]:
        out: dict[TP, OT | None] = {}
        for tp, ms in want.items():
            hit = next(((i, t) for i, t in enumerate(self.stamps[tp]) if t >= ms), None)
            out[tp] = OT(*hit) if hit else None
        return out

    def end_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: len(self.stamps[tp]) for tp in tps}

    def seek(self, tp: TP, off: int) -> None:
        self.calls.append(("seek", tp.partition, off))

    def seek_to_end(self, tp: TP) -> None:
        self.calls.append(("end", tp.partition, None))

    def seek_to_beginning(self, tp: TP) -> None:
        self.calls.append(("beginning", tp.partition, None))


def test_since_seeks_each_partition_by_time_with_the_slack() -> None:
    base = 1_800_000_000_000
    p0, p1, p2 = TP("t", 0), TP("t", 1), TP("t", 2)
    k = KafkaLike({p0: [base + s * 1000 for s in (0, 30, 90, 200)], p1: [base + 10_000], p2: []})
    since_ns = (base + 150_000) * 1_000_000  # 150 s after base: with 60 s slack, records from 90 s on
    consume.seek_to_time(k, [p0, p1, p2], since_ns)
    assert k.calls == [("seek", 0, 2), ("end", 1, None), ("beginning", 2, None)]
    # until: the first record published after until + slack, else the end now
    stops = consume.stop_offsets(k, [p0, p1, p2], (base + 20_000) * 1_000_000)
    assert stops == {p0: 2, p1: 1, p2: 0}


def test_a_broker_that_cannot_look_times_up_is_read_from_the_beginning() -> None:
    class Tansu(KafkaLike):
        def offsets_for_times(self, want: dict[TP, int]) -> dict[TP, OT | None]:
            return dict.fromkeys(want, OT(0, -1))

    p0 = TP("t", 0)
    k = Tansu({p0: [1, 2, 3]})
    consume.seek_to_time(k, [p0], 10**18)
    assert k.calls == [("beginning", 0, None)]
    assert consume.stop_offsets(k, [p0], 10**18) == {p0: 3}


def _tail(b: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tail(b.bootstrap, TOPIC, "--format", "json", "--rows", "socket", *args)


def _at(i: int, seconds_ago: float) -> pb.TcpEvent:
    ev = make_event(i)
    ev.time.FromNanoseconds(time.time_ns() - int(seconds_ago * 1e9))
    return ev


def test_since_until_and_filters_against_a_broker(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC, partitions=1)
    old, mid, new = _at(0, 3600), _at(1, 600), _at(2, 30)
    refused = _at(3, 20)
    refused.lifecycle.errno, refused.lifecycle.errno_name = 111, "ECONNREFUSED"
    refused.remote.kind, refused.remote.namespace, refused.remote.name = pb.POD, "shop", "checkout-1"
    refused.remote.port = 5051
    batch = pb.EventBatch(schema_version=1, node="node-1", agent_id="a1", sequence=1, events=[old, mid, new, refused])
    publish_batches(kafka_broker.bootstrap, TOPIC, [batch])
    t0 = time.monotonic()
    since = _tail(kafka_broker, "--since", "15m", "--until", "10s")
    assert since.returncode == 0, since.stderr
    assert time.monotonic() - t0 < 15  # an --until in the past ends when the range is read
    assert since.stdout.splitlines() == [render.json_line(e) for e in (mid, new, refused)]
    rfc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1800))
    assert _tail(kafka_broker, "--since", rfc, "--until", "1s").stdout.splitlines() == [
        render.json_line(e) for e in (mid, new, refused)
    ]
    hit = _tail(
        kafka_broker,
        "--since",
        "2h",
        "--until",
        "0s",
        "--errno",
        "ECONNREFUSED",
        "--to-pod",
        "shop/checkout-1",
        "--port",
        "5051",
    )
    assert hit.stdout.splitlines() == [render.json_line(refused)]
    # --summary and --connection end at --until too (before, they read on until --duration or Ctrl-C)
    t0 = time.monotonic()
    summary = _tail(kafka_broker, "--summary", "--since", "15m", "--until", "10s")
    assert summary.returncode == 0, summary.stderr
    assert time.monotonic() - t0 < 15
    pairs = {p["server"]["name"]: p for p in json.loads(summary.stdout)["pairs"]}
    assert {name: p["connections"] for name, p in pairs.items()} == {"127.0.0.2": 2, "checkout-1": 1}  # not old
    spec = f"{mid.local.ip}:{mid.local.port}-{mid.remote.ip}:{mid.remote.port}"
    one = _tail(kafka_broker, "--connection", spec, "--since", "15m", "--until", "10s")
    assert one.returncode == 0, one.stderr
    assert time.monotonic() - t0 < 30
    assert f":{mid.local.port}" in one.stdout and f":{old.local.port}" not in one.stdout
    bad = _tail(kafka_broker, "--since", "yesterday")
    assert bad.returncode == 2 and "neither a duration" in bad.stderr


def test_security_settings_parse_as_the_collectors(tmp_path: Path) -> None:
    user, password = tmp_path / "username", tmp_path / "password"
    user.write_text("reader\n")
    password.write_text("s3cret\n")
    o = tail.parse_args(
        [
            "--kafka-bootstrap",
            "k:9093",
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-username-file",
            str(user),
            "--kafka-password-file",
            str(password),
            "--kafka-ssl-cafile",
            "/ca.crt",
        ],
        env={},
    )
    assert o.security.client_kwargs() == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": "/ca.crt",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "reader",
        "sasl_plain_password": "s3cret",
    }
    # the collector's environment variables work the same (the password never as a flag)
    env = {
        "TCPSCOPE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "TCPSCOPE_KAFKA_SASL_MECHANISM": "PLAIN",
        "TCPSCOPE_KAFKA_USERNAME": "u",
        "TCPSCOPE_KAFKA_PASSWORD": "p",
    }
    assert tail.parse_args(["--kafka-bootstrap", "k:9092"], env=env).security.client_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    secret = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", username="u", password="pw-from-the-environment")
    assert "pw-from-the-environment" not in repr(secret)  # a logged config or a traceback shows no password
    with pytest.raises(ValueError, match="need --kafka-sasl-mechanism"):
        KafkaSecurity("SASL_SSL")
    with pytest.raises(ValueError, match="needs a user name and a password"):
        KafkaSecurity("SASL_SSL", "PLAIN").client_kwargs()
