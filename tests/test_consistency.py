"""One fact, one copy: the constants the kernel program and user space both hold agree.

bpf/events.h (and bpf/tcp_defs.h) are the source of truth for the kernel's numbers; decode.py,
flows.py, the protobuf enums and Plan.loss_reasons carry hand-written copies. Each copy is checked
here, every constant of each family, so a value added on one side only fails this test.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.config import EVENT_KINDS
from agent.export import exporter
from agent.kernel import anomalies, decode, flows
from agent.kernel.probe import Plan
from tcpscope import kafka_layout
from tcpscope.v1.events_pb2 import AnomalyKind, Ending, Role, TcpEvent, TcpState

BPF = Path(__file__).resolve().parents[1] / "bpf"


def _defines(header: str, prefix: str) -> dict[str, int]:
    """{NAME: value} of every `#define <prefix>NAME <integer>` in bpf/<header>."""
    text = (BPF / header).read_text()
    found = {m[1]: int(m[2]) for m in re.finditer(rf"^#define {prefix}(\w+)\s+(\d+)\b", text, re.M)}
    assert found, f"no #define {prefix}* in bpf/{header}"
    return found


def test_event_kinds_match_decode() -> None:
    kinds = _defines("events.h", "EV_")
    assert {name: getattr(decode, f"EV_{name}") for name in kinds} == kinds
    # every kind the kernel emits has a name, and only those
    assert sorted(decode.KIND_NAMES) == sorted(kinds.values())
    assert set(decode.KIND_NAMES.values()) == set(EVENT_KINDS)


def test_event_kind_names_are_event_kinds_of_the_protobuf_event() -> None:
    oneof = {f.name for f in TcpEvent.DESCRIPTOR.oneofs_by_name["kind"].fields}
    # the --events name of each kind, and the TcpEvent field it fills
    fields = {
        "lifecycle": "lifecycle",
        "state": "state_change",
        "retransmit": "retransmit",
        "synack": "synack_retransmit",
        "reset": "reset",
        "error": "socket_error",
        "probe": "probe",
    }
    assert set(fields) == set(decode.KIND_NAMES.values())
    assert set(fields.values()) <= oneof


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
    assert _defines("events.h", "FLOW_") == {"BUCKETS": flows.FLOW_BUCKETS}


def test_schema_version_is_defined_once() -> None:
    """The exporter stamps the batches with the contract's version; it does not keep its own."""
    assert vars(exporter)["SCHEMA_VERSION"] == kafka_layout.SCHEMA_VERSION
    source = Path(exporter.__file__).read_text()
    assert not re.search(r"^SCHEMA_VERSION\s*=", source, re.M)


def test_anomaly_kinds_are_the_event_kinds_a_budget_applies_to() -> None:
    """Every kind the kernel aggregates past a budget (bpf/anomaly.h) has its AnomalyKind, named as its
    event kind; state changes and probes are never anomalies, lifecycles only when not ordinary."""
    kinds = _defines("events.h", "EV_")
    names = {"LIFECYCLE": "LIFECYCLE", "RETRANSMIT": "RETRANSMIT", "SYNACK": "SYNACK_RETRANSMIT"}
    names |= {"RESET_SENT": "RESET_SENT", "RESET_RECEIVED": "RESET_RECEIVED", "SOCKET_ERROR": "SOCKET_ERROR"}
    assert {kinds[k]: AnomalyKind.Value(f"ANOMALY_{v}") for k, v in names.items()} == anomalies.KIND_OF_EVENT
    assert set(AnomalyKind.values()) == {0, *anomalies.KIND_OF_EVENT.values()}


def test_anomaly_counters_match_anomalies() -> None:
    counters = _defines("events.h", "ANOMC_")
    count = counters.pop("NCOUNTS")
    assert len(anomalies.ANOMALY_COUNTERS) == count
    assert {name: anomalies.ANOMALY_COUNTERS[i] for name, i in counters.items()} == {n: n.lower() for n in counters}
