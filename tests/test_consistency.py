"""One fact, one copy: the constants the kernel program and user space both hold agree.

bpf/events.h (and bpf/tcp_defs.h) are the source of truth for the kernel's numbers; decode.py,
flows.py, the protobuf enums and Plan.loss_reasons carry hand-written copies. Each copy is checked
here, every constant of each family, so a value added on one side only fails this test.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import config as agent_config
from agent.config import AgentConfig, ConfigError
from agent.export import exporter
from agent.kernel import anomalies, decode, flows
from agent.kernel.probe import Plan
from collector import config as collector_config
from collector.config import CollectorConfig
from collector.publisher import producer_kwargs
from tail import cli as tail
from tcpscope import kafka_layout, kinds
from tcpscope.kafka_client import KafkaSecurity
from tcpscope.settings import flag_name, help_text
from tcpscope.v1.events_pb2 import AnomalyKind, Ending, Role, TcpEvent, TcpState
from tcpscope_sim import __main__ as sim_main

ROOT = Path(__file__).resolve().parents[1]
BPF = ROOT / "bpf"


def _defines(header: str, prefix: str) -> dict[str, int]:
    """{NAME: value} of every `#define <prefix>NAME <integer>` in bpf/<header>."""
    text = (BPF / header).read_text()
    found = {m[1]: int(m[2]) for m in re.finditer(rf"^#define {prefix}(\w+)\s+(\d+)\b", text, re.M)}
    assert found, f"no #define {prefix}* in bpf/{header}"
    return found


def test_event_kinds_match_decode() -> None:
    kinds_h = _defines("events.h", "EV_")
    assert {name: getattr(decode, f"EV_{name}") for name in kinds_h} == kinds_h
    # every record kind the kernel emits becomes a kind of the one table, and every agent kind is one
    assert sorted(decode.KIND_OF) == sorted(kinds_h.values())
    assert {k.name for k in decode.KIND_OF.values()} == set(kinds.AGENT_KINDS)
    assert all(k in kinds.KINDS for k in decode.KIND_OF.values())


@pytest.mark.parametrize("code", sorted(decode.KIND_OF))
def test_decode_fills_the_field_the_kinds_table_names(code: int) -> None:
    """The decoder's dispatch on the record kind fills the oneof field tcpscope/kinds.py names."""
    values: dict[str, object] = {n: (b"" if c.endswith("s") else 0) for n, c in decode.EVENT_FIELDS}
    values.update(kind=code, family=socket.AF_INET)
    ev = decode.Decoder("n", 0, {}).decode(decode.EVENT.pack(*(values[n] for n, _ in decode.EVENT_FIELDS)))
    assert ev.WhichOneof("kind") == decode.KIND_OF[code].field


def test_the_kinds_table_is_the_protobuf_oneof() -> None:
    oneof = [f.name for f in TcpEvent.DESCRIPTOR.oneofs_by_name["kind"].fields]
    assert sorted(kinds.FIELDS.values()) == sorted(oneof)  # every event kind has a name, one each
    assert len(set(kinds.FIELDS)) == len(kinds.KINDS)
    # flows and anomaly aggregates are the kinds the kernel program does not report by --events: made by
    # --connections (bpf/flow.h) and by the anomaly budgets (bpf/anomaly.h)
    assert [k.name for k in kinds.KINDS if not k.agent] == ["flow", "anomalies"]


def _help(print_help: Callable[[], object], capsys: pytest.CaptureFixture[str]) -> str:
    """A command's --help on one line (COLUMNS is set wide: argparse breaks long words)."""
    with pytest.raises(SystemExit):
        print_help()
    return " ".join(capsys.readouterr().out.split())


def test_every_kinds_list_is_the_one_table(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's --events, tcpscope-tail --kind and tcpscope-sim --show take the table's names, with
    its defaults; no module keeps a list of its own."""
    monkeypatch.setenv("COLUMNS", "1000")
    agent_help = _help(lambda: agent_config.build_parser().parse_args(["--help"]), capsys)
    assert "event kinds to report, comma separated: " + ",".join(kinds.AGENT_KINDS) in agent_help
    assert AgentConfig(collector="c:1").events == kinds.AGENT_DEFAULTS
    with pytest.raises(ConfigError, match="unknown event kinds \\['flow'\\]"):
        AgentConfig(collector="c:1", events=("lifecycle", "flow"))  # a kind of the view, not of the kernel
    view_help = " ".join(kinds.VIEW_HELP.split())
    assert view_help in _help(lambda: tail.parse_args(["--help"], env={}), capsys)
    assert view_help in _help(lambda: sim_main.build_parser().parse_args(["--help"]), capsys)
    o = tail.parse_args(["--kafka-bootstrap", "k:9092"], env={})
    assert tail.EventFilter.from_options(o).kinds == frozenset(kinds.FIELDS[k] for k in kinds.VIEW_DEFAULTS)
    # no second table: a module that spells out two kinds' names or fields holds a list of its own
    names = "|".join(sorted({*kinds.FIELDS, *kinds.FIELDS.values()}))
    for path in ("agent/config.py", "agent/kernel/decode.py", "tail/live.py", "tail/cli.py", "bench/modes.py"):
        spelled = set(re.findall(rf'"({names})"', (ROOT / path).read_text()))
        assert len(spelled) <= 1, (path, spelled)


def test_roles_are_the_protobuf_role() -> None:
    roles = _defines("events.h", "ROLE_")
    assert roles == {"UNKNOWN": Role.ROLE_UNSPECIFIED, "ACTIVE": Role.ACTIVE, "PASSIVE": Role.PASSIVE}
    assert set(roles.values()) == set(Role.values())


def test_endings_are_the_protobuf_ending() -> None:
    endings = _defines("events.h", "ENDING_")
    assert endings == {name: Ending.Value(name) for name in endings}
    assert set(endings.values()) == set(Ending.values()) - {Ending.ENDING_UNSPECIFIED}


def test_tcp_states_are_the_protobuf_tcp_state() -> None:
    states = _defines("tcp_defs.h", "TS_")
    assert states == {name: TcpState.Value(name) for name in states}


def test_address_families_are_the_hosts() -> None:
    assert _defines("tcp_defs.h", "T_AF_") == {"INET": socket.AF_INET, "INET6": socket.AF_INET6}


@pytest.mark.parametrize("use_ringbuf", [True, False], ids=["ringbuf", "perfbuf"])
def test_loss_reasons_are_indexed_as_the_kernel_counts_them(use_ringbuf: bool) -> None:
    losses = _defines("events.h", "LOSS_")
    count = losses.pop("NREASONS")
    assert sorted(losses.values()) == list(range(count))
    # loss_reasons reads only use_ringbuf: the rest of a Plan needs a kernel to build
    names = Plan.loss_reasons.fget(SimpleNamespace(use_ringbuf=use_ringbuf))  # type: ignore[attr-defined]
    assert len(names) == count
    output = "ringbuf_full" if use_ringbuf else "perfbuf_full"
    assert {name: names[i] for name, i in losses.items()} == {
        name: output if name == "OUTPUT_FULL" else name.lower() for name in losses
    }


def test_flow_counters_and_buckets_match_flows() -> None:
    counters = _defines("events.h", "FLOWC_")
    count = counters.pop("NCOUNTS")
    assert len(flows.FLOW_COUNTERS) == count
    assert {name: flows.FLOW_COUNTERS[i] for name, i in counters.items()} == {n: n.lower() for n in counters}
    assert _defines("events.h", "FLOW_") == {"BUCKETS": decode.FLOW_BUCKETS}


def test_schema_version_is_defined_once() -> None:
    """The exporter stamps the batches with the contract's version; it does not keep its own."""
    assert vars(exporter)["SCHEMA_VERSION"] == kafka_layout.SCHEMA_VERSION
    source = Path(exporter.__file__).read_text()
    assert not re.search(r"^SCHEMA_VERSION\s*=", source, re.M)


def test_anomaly_kinds_are_the_event_kinds_a_budget_applies_to() -> None:
    """Every kind the kernel aggregates past a budget (bpf/anomaly.h) has its AnomalyKind, named as its
    event kind; state changes and probes are never anomalies, lifecycles only when not ordinary."""
    evs = _defines("events.h", "EV_")
    names = {"LIFECYCLE": "LIFECYCLE", "RETRANSMIT": "RETRANSMIT", "SYNACK": "SYNACK_RETRANSMIT"}
    names |= {"RESET_SENT": "RESET_SENT", "RESET_RECEIVED": "RESET_RECEIVED", "SOCKET_ERROR": "SOCKET_ERROR"}
    assert {evs[k]: AnomalyKind.Value(f"ANOMALY_{v}") for k, v in names.items()} == decode.KIND_OF_EVENT
    assert set(AnomalyKind.values()) == {0, *decode.KIND_OF_EVENT.values()}


def test_anomaly_counters_match_anomalies() -> None:
    counters = _defines("events.h", "ANOMC_")
    count = counters.pop("NCOUNTS")
    assert len(anomalies.ANOMALY_COUNTERS) == count
    assert {name: anomalies.ANOMALY_COUNTERS[i] for name, i in counters.items()} == {n: n.lower() for n in counters}


def test_kafka_security_is_one_definition_for_the_collector_and_the_readers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """tcpscope/kafka_client.py's KafkaSecurity is the only statement of the Kafka security settings:
    the collector's and tcpscope-tail's flags come from its fields (same help, choices and variables),
    both build the same settings from the same environment, and the producer connects as a reader does."""
    monkeypatch.setenv("COLUMNS", "1000")
    collector_help = _help(lambda: collector_config.build_parser().parse_args(["--help"]), capsys)
    tail_help = _help(lambda: tail.parse_args(["--help"], env={}), capsys)
    flagged = [f for f in dataclasses.fields(KafkaSecurity) if f.metadata["flag"] is not False]
    assert [flag_name(f) for f in flagged] == [
        "--kafka-security-protocol",
        "--kafka-sasl-mechanism",
        "--kafka-username-file",
        "--kafka-password-file",
        "--kafka-ssl-cafile",
    ]
    for f in flagged:
        choices = f.metadata["choices"]
        metavar = "{" + ",".join(choices) + "}" if choices else flag_name(f)[2:].replace("-", "_").upper()
        line = f"{flag_name(f)} {metavar} {help_text(KafkaSecurity, f.name)}"
        assert line in collector_help and line in tail_help, line
    # the secrets are never flags, in either
    assert "--kafka-password " not in collector_help + tail_help and "--kafka-username " not in collector_help
    user, password = tmp_path / "user", tmp_path / "password"
    user.write_text("reader\n")
    password.write_text("s3cret\n")
    env = {
        "TCPSCOPE_KAFKA_BOOTSTRAP": "k:9093",
        "TCPSCOPE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "TCPSCOPE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "TCPSCOPE_KAFKA_USERNAME_FILE": str(user),
        "TCPSCOPE_KAFKA_PASSWORD_FILE": str(password),
        "TCPSCOPE_KAFKA_SSL_CAFILE": str(password),  # any readable file: the collector checks at start-up
    }
    cfg = CollectorConfig.from_args([], env)
    assert cfg.kafka_security == tail.parse_args([], env=env).security
    kw = producer_kwargs(cfg)
    assert (
        {k: kw[k] for k in cfg.kafka_security.client_kwargs()}
        == cfg.kafka_security.client_kwargs()
        == {
            "security_protocol": "SASL_SSL",
            "ssl_cafile": str(password),
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "reader",
            "sasl_plain_password": "s3cret",
        }
    )
    # no second list of the protocols or mechanisms anywhere in the product
    for path in ("collector/config.py", "collector/publisher.py", "tail/cli.py", "tail/kubectl_plugin.py"):
        assert not re.search(r'"SASL_PLAINTEXT"|"SCRAM-SHA-256"', (ROOT / path).read_text()), path
