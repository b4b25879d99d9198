"""Rendering: the hand-written JSON equals json_format's output exactly, for every event kind and
for enriched endpoints; the table line has the tcplife-like columns."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

import pytest
from google.protobuf import json_format

from agent.kernel import decode
from agent.kernel.decode import EVENT, EVENT_FIELDS, Decoder
from tcpscope.render import TABLE_HEADER, event_line, json_line, table_line, timestamp_json
from tcpscope.v1.events_pb2 import POD, SERVICE, TcpEvent
from tests.support.events import flow_val


def _ev(**kw: object) -> TcpEvent:
    values: dict[str, object] = {n: (b"" if code.endswith("s") else 0) for n, code in EVENT_FIELDS}
    values.update(
        family=socket.AF_INET,
        saddr=socket.inet_aton("127.0.0.1"),
        daddr=socket.inet_aton("127.0.0.2"),
        sport=40000,
        dport=8080,
        pid=42,
        comm=b"curl",
        cgroup_id=2**63 + 5,
        socket_id=2**64 - 1,
        ts_ns=1_700_000_000_123_456_789,
    )
    values.update(kw)
    return Decoder("node-a", 0, {1: "NO_SOCKET"}).decode(EVENT.pack(*(values[n] for n, _ in EVENT_FIELDS)))


KINDS = [
    dict(kind=decode.EV_LIFECYCLE, role=1, duration_ns=5, tx_bytes=300_000, rx_bytes=777, ending=1, new_state=5),
    dict(kind=decode.EV_LIFECYCLE, role=1, ending=1, new_state=5, isn_client=2**32 - 1, isn_server=7),
    dict(kind=decode.EV_LIFECYCLE, role=2, ending=2, reason=1, err=104, retransmits=2, new_state=1),
    dict(kind=decode.EV_STATE, state=2, new_state=1, duration_ns=12345),
    dict(kind=decode.EV_STATE, state=7, new_state=2),
    dict(kind=decode.EV_RETRANSMIT, state=1),
    dict(kind=decode.EV_SYNACK),
    dict(kind=decode.EV_RESET_SENT, reason=1),
    dict(kind=decode.EV_RESET_SENT, reason=1, isn_client=1, isn_server=0),
    dict(kind=decode.EV_RESET_RECEIVED, state=2),
    dict(kind=decode.EV_SOCKET_ERROR, err=111, state=7),
    dict(kind=decode.EV_PROBE, snd_cwnd=10, srtt_us=33, snd_wnd=1000, data_len=0),
    dict(
        kind=decode.EV_LIFECYCLE,
        role=2,
        ending=1,
        tx_bytes=9,
        reported_tx=5,
        reported_rx=3,
        reported_retrans=1,
        connect_ns=310_000,
        srtt_us=120,
        min_rtt_us=90,
        open_flags=decode.OPEN_SEEDED | decode.OPEN_REPORTED_BEFORE,
    ),
    dict(
        kind=decode.EV_OPEN,
        role=1,
        tx_bytes=100,
        rx_bytes=7,
        retransmits=2,
        duration_ns=65_000_000_000,
        reported_tx=1100,
        connect_ns=250_000,
        srtt_us=40,
        min_rtt_us=30,
        state=1,
        open_flags=decode.OPEN_SEEDED,
    ),
    dict(kind=decode.EV_STATE, state=99, new_state=1),  # an enum value this schema does not name
]


def _reference(ev: TcpEvent) -> str:
    return json_format.MessageToJson(ev, preserving_proto_field_name=True, indent=None)


@pytest.mark.parametrize("fields", KINDS)
def test_json_line_equals_json_format(fields: dict[str, int]) -> None:
    ev = _ev(**fields)
    assert json_line(ev) == _reference(ev)


@pytest.mark.parametrize("nanos", [0, 5_000_000, 123_000, 1, 999_999_999])
def test_timestamps(nanos: int) -> None:
    ev = _ev(kind=decode.EV_SYNACK, ts_ns=1_700_000_000_000_000_000 + nanos)
    assert json_line(ev) == _reference(ev)
    assert timestamp_json(0, 0) == "1970-01-01T00:00:00Z"


def test_json_line_with_enrichment_and_unicode() -> None:
    ev = _ev(kind=decode.EV_LIFECYCLE, role=1, ending=1, comm='naïve"x'.encode())
    ev.local.kind = POD
    ev.local.namespace, ev.local.name, ev.local.uid = "shop", "cart-7d9", "u-1"
    ev.local.labels["app"] = "cart"
    ev.local.labels["version"] = "v2\n"
    ev.local.container, ev.local.container_id = "cart", "ab" * 32
    ev.local.workload.kind, ev.local.workload.name = "Deployment", "cart"
    ev.remote.kind = SERVICE
    ev.process.cgroup_path = "/kubepods.slice/x"
    ev.local.services.add(namespace="shop", name="cart", port=80)  # --resolve-backends
    ev.local.services.add(namespace="shop", name="cart-canary", port=8080)
    assert json_line(ev) == _reference(ev)
    empty = TcpEvent()
    assert json_line(empty) == _reference(empty) == "{}"


def test_table_line() -> None:
    lc = table_line(
        _ev(kind=decode.EV_LIFECYCLE, role=1, duration_ns=2_500_000, tx_bytes=300_000, rx_bytes=777, ending=1)
    )
    assert TABLE_HEADER.split() == ["TIME", "PID", "COMM", "LOCAL", "REMOTE", "EVENT", "DETAILS"]
    cols = lc.split()
    assert cols[1:6] == ["42", "curl", "127.0.0.1:40000", "127.0.0.2:8080", "LIFECYCLE"]
    assert cols[6:] == ["role=ACTIVE", "tx=300000", "rx=777", "ms=2.500", "end=NORMAL"]
    rst = table_line(_ev(kind=decode.EV_RESET_SENT, reason=1, pid=0, comm=b""))
    assert rst.split()[1:] == ["0", "-", "127.0.0.1:40000", "127.0.0.2:8080", "RST_SENT", "state=-", "reason=NO_SOCKET"]
    v6 = _ev(
        kind=decode.EV_STATE,
        state=2,
        new_state=1,
        family=socket.AF_INET6,
        saddr=socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
        daddr=socket.inet_pton(socket.AF_INET6, "::1"),
    )
    assert "[2001:db8::1]:40000" in table_line(v6) and "SYN_SENT -> ESTABLISHED" in table_line(v6)
    enriched = _ev(kind=decode.EV_SYNACK)
    enriched.remote.namespace, enriched.remote.name = "shop", "cart-7d9"
    assert "shop/cart-7d9" in table_line(enriched)


def test_fast_path_covers_the_schema() -> None:
    """The hand-written renderer knows every field of the current schema (else it falls back)."""
    from tcpscope import render

    assert render._FAST


def _flow(**extra: object) -> TcpEvent:
    from agent.kernel.decode import FLOW_BUCKETS, FLOW_KEY, decode_flow

    buckets = [0] * FLOW_BUCKETS
    buckets[4], buckets[9] = 99, 1  # 99 in [16, 32) us, 1 in [512, 1024) us
    key = FLOW_KEY.pack(
        socket.inet_aton("127.0.0.1") + bytes(12),
        socket.inet_aton("127.0.0.2") + bytes(12),
        7,
        1,
        8080,
        socket.AF_INET,
        1,
        b"",
    )
    val = flow_val(
        connections=100,
        tx_bytes=5000,
        rx_bytes=70_000,
        duration_sum_ns=3_000_000,
        first_close_ns=10**9,
        last_close_ns=2 * 10**9,
        buckets=buckets,
        pid=42,
        comm=b"curl",
        **extra,
    )
    return decode_flow(Decoder("node-a", 0, {}), key, val, 10 * 10**9, aggregate=True)


def test_flow_json_and_table() -> None:
    ev = _flow()
    assert json_line(ev) == _reference(ev)
    cols = table_line(ev).split()
    assert cols[1:6] == ["42", "curl", "127.0.0.1:0", "127.0.0.2:8080", "FLOW"]
    # p50 lies in bucket 4: at most 32 us; p99 also (the 99th of 100), p100 would be bucket 9
    # the mean is exact: 3,000,000 ns over 100 connections
    assert cols[6:] == [
        "role=ACTIVE",
        "conns=100",
        "tx=5000",
        "rx=70000",
        "mean=30us",
        "p50<32us",
        "p99<32us",
        "every=10s",
    ]


def test_open_and_latency_in_the_table() -> None:
    op = _ev(kind=decode.EV_OPEN, role=1, tx_bytes=100, rx_bytes=7, duration_ns=65_000_000_000, srtt_us=40, state=1)
    assert table_line(op).split()[5:] == [
        "OPEN",
        "role=ACTIVE",
        "+tx=100",
        "+rx=7",
        "age=1m05s",
        "state=ESTABLISHED",
        "rtt=40us",
    ]
    first = _ev(kind=decode.EV_OPEN, role=2, connect_ns=310_000, srtt_us=40, state=8, open_flags=decode.OPEN_SEEDED)
    assert table_line(first).split()[-3:] == ["rtt=40us", "connect=310us", "seeded"]
    lc = _ev(kind=decode.EV_LIFECYCLE, role=1, ending=1, srtt_us=1500, connect_ns=2_000_000)
    assert table_line(lc).split()[-2:] == ["rtt=1.5ms", "connect=2.0ms"]
    fl = _flow(open_connections=3)
    assert "open=3" in table_line(fl).split() and json_line(fl) == _reference(fl)


def test_durations_read_as_people_write_them() -> None:
    from tcpscope.render import duration_text

    cases = {
        850: "850ns",
        32_768: "33us",
        4_200: "4.2us",
        1_024_000: "1.0ms",
        65_536_000: "66ms",
        4_194_304_000: "4.2s",
        8_388_608_000: "8.4s",
        59_900_000_000: "60s",
        125 * 10**9: "2m05s",
        3_720 * 10**9: "1h02m",
    }
    assert {ns: duration_text(ns) for ns in cases} == cases


@dataclass(frozen=True)
class _Cause:
    label: str
    detail: dict[str, str]

    def to_json(self) -> dict[str, str]:
        return self.detail


def test_event_line_with_and_without_a_reset_cause() -> None:
    """The one renderer of a judged received reset (tcpscope-tail's live view and --connection, the
    sim): the agent's line, with the cause at the end."""
    ev = _ev(kind=decode.EV_RESET_RECEIVED, state=1)
    cause = _Cause("network/no_send_seen", {"cause": "network", "detail": "no_send_seen", "peer_node": ""})
    assert event_line(ev) == table_line(ev) and event_line(ev, "json") == json_line(ev)
    assert event_line(ev, "table", cause) == table_line(ev) + " cause=network/no_send_seen"
    text = event_line(ev, "json", cause)
    assert text == (
        json_line(ev)[:-1] + ', "reset_cause": {"cause": "network", "detail": "no_send_seen", "peer_node": ""}}'
    )
    assert json.loads(text) == {**json.loads(json_line(ev)), "reset_cause": cause.detail}
    assert list(json.loads(text))[-1] == "reset_cause"
    assert json.loads(event_line(TcpEvent(), "json", cause)) == {"reset_cause": cause.detail}  # an empty event too


def test_json_line_carries_the_connection_id_as_json_format_does() -> None:
    ev = _ev(kind=decode.EV_LIFECYCLE, role=1, ending=1, new_state=5)
    ev.connection_id = 2**64 - 3
    assert json_line(ev) == _reference(ev)
    assert '"connection_id": "18446744073709551613"' in json_line(ev)


def test_values_no_calendar_holds_render_as_numbers_not_exceptions() -> None:
    """Readers skip such records (tcpscope/bounds.py); the renderers never fail on one either."""
    from tcpscope import render
    from tcpscope.v1.events_pb2 import TcpEvent

    ev = TcpEvent()
    ev.flow.connections = 1
    ev.flow.duration_us_log2.extend([0] * 4999 + [1])  # 5,000 buckets: 2^5000 overflowed a float
    for seconds in (10**12, 10**15, 2**62, -(2**62), 2**63 - 1):
        ev.time.seconds = seconds
        line = render.table_line(ev)
        assert "FLOW" in line and "p50<5124095576h01m" in line  # the top bucket of a u64 of microseconds
        assert render.json_line(ev).startswith('{"time": "')
    ev.time.seconds = 2**62  # beyond any calendar of this platform: the number itself
    assert render.table_line(ev).startswith(f"@{2**62}.000")
    assert render.json_line(ev).startswith(f'{{"time": "@{2**62}Z"')


def test_rfc3339_of_any_integer() -> None:
    from tail.gaps import rfc3339

    assert rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"
    assert rfc3339(-(10**20)) == f"@{-(10**20)}ns"
