"""The Python mirror of bpf/events.h agrees with the C struct (compiled with gcc), and decoding
turns records into the right TcpEvent fields."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from struct import Struct

import pytest

from agent.kernel import decode
from agent.kernel.anomalies import ANOMALY_COUNTERS
from agent.kernel.decode import (
    AK_COARSE,
    AK_ESTABLISHED,
    AK_FIRST_SYNACK,
    AK_NO_SOCKET,
    AK_RETRANSMITTED,
    ANOMALY_KEY,
    ANOMALY_KEY_FIELDS,
    ANOMALY_VAL,
    ANOMALY_VAL_FIELDS,
    EVENT,
    EVENT_FIELDS,
    FLOW_BUCKETS,
    FLOW_KEY,
    FLOW_KEY_FIELDS,
    FLOW_VAL,
    FLOW_VAL_FIELDS,
    Decoder,
    decode_anomaly,
    decode_flow,
)
from agent.kernel.flows import FLOW_COUNTERS
from agent.kernel.probe import BPF_DIR
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    AGGREGATE,
    ANOMALY_LIFECYCLE,
    ANOMALY_RESET_SENT,
    ANOMALY_SYNACK_RETRANSMIT,
    FIN_WAIT2,
    PASSIVE,
    RECEIVED,
    RESET_RECEIVED,
    RESET_SENT,
    SENT,
    SPILL,
    SYN_SENT,
)

_SIZES = {"Q": 8, "I": 4, "i": 4, "H": 2, "B": 1}


def _c_layout(tmp_path: Path, struct: str, fields: tuple[tuple[str, str], ...]) -> dict[str, tuple[int, int]]:
    """{field: (offset, size)} and '__size__' of a struct of bpf/events.h, from gcc."""
    names = [n for n, _ in fields]
    header = (BPF_DIR / "events.h").read_text()
    declared = re.findall(
        r"^\s+(?:__[us]\d+|char)\s+(\w+)(?:\[\w+\])?;", header.split(f"struct {struct} {{")[1].split("};")[0], re.M
    )
    assert declared == names, f"events.h and the Python mirror list different fields or orders for {struct}"
    prints = "\n".join(
        f'printf("{n} %zu %zu\\n", offsetof(struct {struct}, {n}), sizeof(((struct {struct} *)0)->{n}));' for n in names
    )
    src = tmp_path / f"layout_{struct}.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
        f'#include "{BPF_DIR / "events.h"}"\n'
        f'int main(void) {{\n{prints}\nprintf("__size__ %zu 0\\n", sizeof(struct {struct}));\nreturn 0; }}\n'
    )
    exe = tmp_path / f"layout_{struct}"
    subprocess.run(["gcc", "-O0", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {n: (int(o), int(s)) for n, o, s in (line.split() for line in out.splitlines())}


def _size(code: str) -> int:
    if code.endswith("s"):
        return int(code[:-1])
    if len(code) > 1:  # "32Q"
        return int(code[:-1]) * _SIZES[code[-1]]
    return _SIZES[code]


@pytest.mark.parametrize(
    ("struct", "fields", "packed"),
    [
        ("tcpscope_event", EVENT_FIELDS, EVENT),
        ("flow_key", FLOW_KEY_FIELDS, FLOW_KEY),
        ("flow_val", FLOW_VAL_FIELDS, FLOW_VAL),
    ],
)
def test_python_mirror_matches_c_struct(
    tmp_path: Path, struct: str, fields: tuple[tuple[str, str], ...], packed: Struct
) -> None:
    layout = _c_layout(tmp_path, struct, fields)
    offset = 0
    for name, code in fields:
        size = _size(code)
        assert layout[name] == (offset, size), f"{name}: C {layout[name]}, Python {(offset, size)}"
        offset += size
    assert layout["__size__"][0] == packed.size == offset


def test_flow_constants_agree_with_events_h() -> None:
    header = (BPF_DIR / "events.h").read_text()
    consts = {m[0]: int(m[1]) for m in re.findall(r"^#define (FLOW\w+) (\d+)", header, re.M)}
    assert consts["FLOW_BUCKETS"] == FLOW_BUCKETS
    assert consts["FLOWC_NCOUNTS"] == len(FLOW_COUNTERS)
    assert [consts["FLOWC_AGGREGATED"], consts["FLOWC_MAP_FULL"]] == [
        FLOW_COUNTERS.index("aggregated"),
        FLOW_COUNTERS.index("map_full"),
    ]


def test_decode_flow_passive_and_active() -> None:
    dec = Decoder("n1", 1_000_000_000_000, {})
    buckets = [0] * FLOW_BUCKETS
    buckets[3], buckets[6] = 2, 1
    val = FLOW_VAL.pack(3, 300, 30, 90_000, 5_000, 9_000, *buckets, 42, 0, b"srv")
    key = FLOW_KEY.pack(
        socket.inet_aton("198.18.0.2") + bytes(12),
        socket.inet_aton("198.18.0.1") + bytes(12),
        77,
        4026531840,
        8080,
        socket.AF_INET,
        PASSIVE,
        b"",
    )
    ev = decode_flow(dec, key, val, 10_000_000_000, aggregate=True)
    assert ev.WhichOneof("kind") == "flow" and ev.socket_id == 0
    assert (ev.local.ip, ev.local.port, ev.remote.ip, ev.remote.port) == ("198.18.0.2", 8080, "198.18.0.1", 0)
    assert (ev.process.pid, ev.process.comm, ev.process.cgroup_id) == (42, "srv", 77)
    fl = ev.flow
    assert (fl.role, fl.connections, fl.tx_bytes, fl.rx_bytes, fl.duration_sum_ns) == (PASSIVE, 3, 300, 30, 90_000)
    assert list(fl.duration_us_log2) == [0, 0, 0, 2, 0, 0, 1]  # trailing empty buckets left out
    assert fl.first_close.ToNanoseconds() == 1_000_000_005_000
    assert fl.last_close.ToNanoseconds() == ev.time.ToNanoseconds() == 1_000_000_009_000
    assert (fl.interval_ns, fl.source) == (10_000_000_000, AGGREGATE)
    key6 = FLOW_KEY.pack(
        socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
        socket.inet_pton(socket.AF_INET6, "::1"),
        1,
        1,
        443,
        socket.AF_INET6,
        ACTIVE,
        b"",
    )
    ev6 = decode_flow(dec, key6, val, 0, aggregate=False)
    assert (ev6.local.ip, ev6.local.port, ev6.remote.ip, ev6.remote.port) == ("2001:db8::1", 0, "::1", 443)
    assert ev6.flow.source == SPILL


def _record(**kw: object) -> bytes:
    values: dict[str, object] = {n: (b"" if code.endswith("s") else 0) for n, code in EVENT_FIELDS}
    values.update(kw)
    return EVENT.pack(*(values[n] for n, _ in EVENT_FIELDS))


def test_decode_lifecycle_v4() -> None:
    d = Decoder("node-1", 1_000_000_000_000, {1: "NO_SOCKET", 11: "TCP_ABORT_ON_CLOSE"})
    raw = _record(
        ts_ns=5_123_456_789,
        socket_id=42,
        cgroup_id=7,
        duration_ns=99,
        tx_bytes=300_000,
        rx_bytes=777,
        pid=1234,
        saddr=socket.inet_aton("10.0.0.1"),
        daddr=socket.inet_aton("10.0.0.2"),
        sport=40000,
        dport=80,
        family=socket.AF_INET,
        kind=decode.EV_LIFECYCLE,
        role=1,
        new_state=FIN_WAIT2,
        ending=2,
        err=0,
        reason=11,
        retransmits=3,
        comm=b"curl\0\0",
    )
    ev = d.decode(raw)
    assert (ev.time.seconds, ev.time.nanos) == (1005, 123_456_789)
    assert (ev.node, ev.socket_id) == ("node-1", 42)
    assert (ev.local.ip, ev.local.port, ev.remote.ip, ev.remote.port) == ("10.0.0.1", 40000, "10.0.0.2", 80)
    assert (ev.process.pid, ev.process.comm, ev.process.cgroup_id) == (1234, "curl", 7)
    lc = ev.lifecycle
    assert (lc.role, lc.duration_ns, lc.tx_bytes, lc.rx_bytes) == (ACTIVE, 99, 300_000, 777)
    assert (lc.ending, lc.last_state, lc.retransmits) == (RESET_SENT, FIN_WAIT2, 3)
    assert (lc.reset_reason, lc.reset_reason_name) == (11, "TCP_ABORT_ON_CLOSE")


def test_decode_addresses_v6_and_v4_mapped() -> None:
    d = Decoder("n", 0, {})
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:198.18.0.9")
    ev = d.decode(_record(saddr=v6, daddr=mapped, family=socket.AF_INET6, kind=decode.EV_STATE, state=2, new_state=1))
    assert (ev.local.ip, ev.remote.ip) == ("2001:db8::1", "198.18.0.9")
    assert (ev.state_change.old_state, ev.state_change.new_state) == (SYN_SENT, 1)


def test_decode_resets_errors_and_unknown_reason() -> None:
    d = Decoder("n", 0, {1: "NO_SOCKET"})
    sent = d.decode(_record(kind=decode.EV_RESET_SENT, reason=1, family=socket.AF_INET))
    assert (sent.reset.direction, sent.reset.reason, sent.reset.reason_name) == (SENT, 1, "NO_SOCKET")
    unknown = d.decode(_record(kind=decode.EV_RESET_SENT, reason=77, family=socket.AF_INET))
    assert unknown.reset.reason_name == "77"
    recv = d.decode(_record(kind=decode.EV_RESET_RECEIVED, state=1, family=socket.AF_INET))
    assert (recv.reset.direction, recv.reset.state, recv.reset.reason_name) == (RECEIVED, 1, "")
    err = d.decode(_record(kind=decode.EV_SOCKET_ERROR, err=111, state=7, family=socket.AF_INET))
    assert (err.socket_error.errno, err.socket_error.errno_name, err.socket_error.state) == (111, "ECONNREFUSED", 7)
    # kernels before 6.10 have no reset reasons at all: no name
    assert Decoder("n", 0, {}).decode(_record(kind=decode.EV_RESET_SENT, family=2)).reset.reason_name == ""
    syn = d.decode(_record(kind=decode.EV_SYNACK, family=2))
    assert syn.WhichOneof("kind") == "synack_retransmit"
    pr = d.decode(_record(kind=decode.EV_PROBE, snd_cwnd=10, srtt_us=50, snd_wnd=65535, data_len=1448, family=2))
    assert (pr.probe.snd_cwnd, pr.probe.srtt_us, pr.probe.snd_wnd, pr.probe.data_len) == (10, 50, 65535, 1448)


@pytest.mark.parametrize(
    ("struct", "fields", "packed"),
    [("anomaly_key", ANOMALY_KEY_FIELDS, ANOMALY_KEY), ("anomaly_val", ANOMALY_VAL_FIELDS, ANOMALY_VAL)],
)
def test_anomaly_mirror_matches_c_struct(
    tmp_path: Path, struct: str, fields: tuple[tuple[str, str], ...], packed: Struct
) -> None:
    test_python_mirror_matches_c_struct(tmp_path, struct, fields, packed)


def _anomaly_key(kind: int, role: int, **kw: object) -> bytes:
    f = {
        "laddr": socket.inet_aton("198.18.0.2") + bytes(12),
        "raddr": socket.inet_aton("198.18.0.1") + bytes(12),
        "cgroup_id": 77,
        "netns": 4026531840,
        "err": 0,
        "reason": 0,
        "server_port": 8080,
        "family": socket.AF_INET,
        "kind": kind,
        "role": role,
        "state": 0,
        "ending": 0,
        "flags": 0,
        "pad": b"",
    }
    f.update(kw)
    return ANOMALY_KEY.pack(*f.values())


def test_decode_anomaly_lifecycle_refused_on_the_client() -> None:
    dec = Decoder("n1", 1_000_000_000_000, {})
    key = _anomaly_key(
        decode.EV_LIFECYCLE,
        ACTIVE,
        err=111,
        state=SYN_SENT,
        ending=RESET_RECEIVED,
        raddr=socket.inet_aton("198.18.0.9") + bytes(12),
    )
    val = ANOMALY_VAL.pack(990, 10, 5_000, 9_000, 0, 0, 123_456, 0, 42, 0, b"curl")
    ev = decode_anomaly(dec, key, val, 10_000_000_000)
    assert ev.WhichOneof("kind") == "anomalies" and ev.socket_id == 0
    assert (ev.local.ip, ev.local.port, ev.remote.ip, ev.remote.port) == ("198.18.0.2", 0, "198.18.0.9", 8080)
    assert (ev.process.pid, ev.process.comm, ev.process.cgroup_id) == (42, "curl", 77)
    a = ev.anomalies
    assert (a.kind, a.count, a.exemplars, a.role) == (ANOMALY_LIFECYCLE, 990, 10, ACTIVE)
    assert (a.state, a.ending, a.errno, a.errno_name, a.reason, a.reason_name) == (
        SYN_SENT,
        RESET_RECEIVED,
        111,
        "ECONNREFUSED",
        0,
        "",
    )
    assert (a.established, a.retransmitted, a.coarse, a.duration_sum_ns) == (False, False, False, 123_456)
    assert a.first.ToNanoseconds() == 1_000_000_005_000
    assert a.last.ToNanoseconds() == ev.time.ToNanoseconds() == 1_000_000_009_000
    assert a.interval_ns == 10_000_000_000


def test_decode_anomaly_reset_from_no_socket_and_a_coarse_key() -> None:
    dec = Decoder("n1", 0, {2: "NO_SOCKET"})
    key = _anomaly_key(decode.EV_RESET_SENT, 0, reason=2, flags=AK_NO_SOCKET, server_port=5432)
    ev = decode_anomaly(dec, key, ANOMALY_VAL.pack(7, 1, 1, 2, 0, 0, 0, 0, 0, 0, b""), 0)
    a = ev.anomalies
    assert (a.kind, a.no_socket, a.reason, a.reason_name) == (ANOMALY_RESET_SENT, True, 2, "NO_SOCKET")
    assert (ev.local.port, ev.remote.ip, ev.remote.port) == (5432, "198.18.0.1", 0)
    coarse = _anomaly_key(decode.EV_SYNACK, 0, flags=AK_COARSE | AK_FIRST_SYNACK, server_port=0, raddr=bytes(16))
    ev = decode_anomaly(dec, coarse, ANOMALY_VAL.pack(3, 0, 1, 2, 0, 0, 0, 0, 0, 0, b""), 0)
    a = ev.anomalies
    assert (a.kind, a.coarse, a.first_of_request) == (ANOMALY_SYNACK_RETRANSMIT, True, True)
    assert (ev.local.ip, ev.local.port, ev.remote.ip, ev.remote.port) == ("198.18.0.2", 0, "", 0)


def test_anomaly_constants_agree_with_events_h() -> None:
    header = (BPF_DIR / "events.h").read_text()
    consts = {m[0]: int(m[1]) for m in re.findall(r"^#define ((?:ANOMC|AK)_\w+) (\d+)", header, re.M)}
    assert consts.pop("ANOMC_NCOUNTS") == len(ANOMALY_COUNTERS)
    assert {k: v for k, v in consts.items() if k.startswith("ANOMC_")} == {
        f"ANOMC_{name.upper()}": i for i, name in enumerate(ANOMALY_COUNTERS)
    }
    assert {k: v for k, v in consts.items() if k.startswith("AK_")} == {
        "AK_ESTABLISHED": AK_ESTABLISHED,
        "AK_RETRANSMITTED": AK_RETRANSMITTED,
        "AK_FIRST_SYNACK": AK_FIRST_SYNACK,
        "AK_NO_SOCKET": AK_NO_SOCKET,
        "AK_COARSE": AK_COARSE,
    }
