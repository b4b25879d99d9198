"""Tracepoint format parsing: recorded formats of 4.16/5.4/5.15/6.1/6.18, the live tracefs, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.kernel.tracefs import (
    Field,
    TracefsError,
    TracepointFormat,
    find_tracefs,
    parse_format,
    read_format,
    tracefs_root,
)

FORMATS = Path(__file__).parent / "formats"
VERSIONS = ("4.16", "5.4", "5.15", "6.1", "6.18")
EVENTS = (
    "sock/inet_sock_set_state",
    "sock/inet_sk_error_report",
    "tcp/tcp_retransmit_skb",
    "tcp/tcp_retransmit_synack",
    "tcp/tcp_send_reset",
    "tcp/tcp_receive_reset",
    "tcp/tcp_destroy_sock",
    "tcp/tcp_probe",
)
RECORDED = sorted(FORMATS.glob("*/*/*/format"))


def _load(version: str, event: str) -> TracepointFormat:
    category, name = event.split("/")
    fmt = read_format(category, name, root=FORMATS / version)
    assert fmt is not None, f"{version} {event} not recorded"
    return fmt


def _natural_alignment(f: Field) -> int:
    """Alignment the compiler gives the field: its element size (pointers 8, u8 arrays 1)."""
    elem = f.size // f.array_len if f.array_len else f.size
    return min(elem, 8)


def test_every_version_and_event_recorded_where_it_exists() -> None:
    got = {str(p.parent.relative_to(FORMATS)) for p in RECORDED}
    want = {f"{v}/{e}" for v in VERSIONS for e in EVENTS}
    # inet_sk_error_report appeared in 5.13 (include/trace/events/sock.h): absent from 4.16 and 5.4.
    want -= {"4.16/sock/inet_sk_error_report", "5.4/sock/inet_sk_error_report"}
    assert got == want


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: str(p.parent.relative_to(FORMATS)))
def test_recorded_format_parses_round_trips_and_follows_c_layout(path: Path) -> None:
    text = path.read_text()
    fmt = parse_format(text, path.parent.parent.name, path.parent.name)
    assert fmt.render() == text
    assert [(f.name, f.ctype, f.offset, f.size, f.signed) for f in fmt.fields[:4]] == [
        ("common_type", "unsigned short", 0, 2, False),
        ("common_flags", "unsigned char", 2, 1, False),
        ("common_preempt_count", "unsigned char", 3, 1, False),
        ("common_pid", "int", 4, 4, True),
    ]
    end = 8
    for f in fmt.fields[4:]:
        align = _natural_alignment(f)
        assert f.offset == (end + align - 1) // align * align, f"{path}: {f.name} misplaced"
        end = f.offset + f.size
    assert fmt.print_fmt.startswith('"')


def test_inet_sock_set_state_protocol_widened_after_5_4() -> None:
    for version in ("4.16", "5.4"):
        fmt = _load(version, "sock/inet_sock_set_state")
        protocol, family, saddr = fmt.field("protocol"), fmt.field("family"), fmt.field("saddr")
        assert protocol is not None and family is not None and saddr is not None
        assert (protocol.ctype, protocol.offset, protocol.size) == ("__u8", 30, 1)
        assert (family.offset, family.size) == (28, 2)
        assert (saddr.offset, saddr.array_len) == (31, 4)
        assert fmt.field("daddr_v6") == Field("daddr_v6", "__u8", 55, 16, False, 16)
    for version in ("5.15", "6.1", "6.18"):
        fmt = _load(version, "sock/inet_sock_set_state")
        assert fmt.field("protocol") == Field("protocol", "__u16", 30, 2, False, None)
        assert fmt.field("saddr") == Field("saddr", "__u8", 32, 4, False, 4)
        assert fmt.field("daddr_v6") == Field("daddr_v6", "__u8", 56, 16, False, 16)
        assert fmt.record_size == 72


def test_tcp_send_reset_layouts() -> None:
    old = _load("4.16", "tcp/tcp_send_reset")
    assert [f.name for f in old.fields[4:]] == [
        "skbaddr",
        "skaddr",
        "sport",
        "dport",
        "saddr",
        "daddr",
        "saddr_v6",
        "daddr_v6",
    ]
    assert (old.field("sport"), old.field("state"), old.field("family")) == (
        Field("sport", "__u16", 24, 2, False, None),
        None,
        None,
    )
    v54 = _load("5.4", "tcp/tcp_send_reset")
    assert v54.field("state") == Field("state", "int", 24, 4, True, None)
    assert v54.field("family") is None
    assert v54.field("saddr_v6") == Field("saddr_v6", "__u8", 40, 16, False, 16)
    v515 = _load("5.15", "tcp/tcp_send_reset")
    assert v515.field("family") == Field("family", "__u16", 32, 2, False, None)
    assert v515.field("saddr_v6") == Field("saddr_v6", "__u8", 42, 16, False, 16)
    new = _load("6.18", "tcp/tcp_send_reset")
    assert new.field("saddr") == Field("saddr", "__u8", 32, 28, False, 28)
    assert new.field("reason") == Field("reason", "enum sk_rst_reason", 28, 4, False, None)
    assert new.field("sport") is None and new.field("saddr_v6") is None


def test_sock_cookie_and_family_in_tcp_event_sk() -> None:
    assert _load("4.16", "tcp/tcp_destroy_sock").field("sock_cookie") is None
    assert _load("5.4", "tcp/tcp_destroy_sock").field("sock_cookie") == Field(
        "sock_cookie", "__u64", 64, 8, False, None
    )
    for version in ("5.15", "6.1", "6.18"):
        fmt = _load(version, "tcp/tcp_receive_reset")
        assert fmt.field("family") == Field("family", "__u16", 20, 2, False, None)
        assert fmt.field("sock_cookie") == Field("sock_cookie", "__u64", 64, 8, False, None)


def test_tcp_probe_layouts() -> None:
    v54 = _load("5.4", "tcp/tcp_probe")
    saddr = v54.field("saddr")
    assert saddr == Field("saddr", "__u8", 8, 28, False, 28, "sizeof(struct sockaddr_in6)")
    assert v54.field("sock_cookie") == Field("sock_cookie", "__u64", 104, 8, False, None)
    assert v54.field("family") is None
    v61 = _load("6.1", "tcp/tcp_probe")
    assert v61.field("family") == Field("family", "__u16", 68, 2, False, None)
    assert v61.field("sock_cookie") == Field("sock_cookie", "__u64", 112, 8, False, None)
    assert v61.field("skaddr") is None
    new = _load("6.18", "tcp/tcp_probe")
    assert new.field("saddr") == Field("saddr", "__u8", 8, 28, False, 28)
    assert new.field("skaddr") == Field("skaddr", "const void *", 128, 8, False, None)
    assert _load("4.16", "tcp/tcp_probe").field("sock_cookie") is None


def test_live_tracefs_formats_parse_and_round_trip() -> None:
    root = tracefs_root()
    assert (root / "events" / "tcp").is_dir(), f"{root} has no tcp events"
    paths = sorted((root / "events").glob("tcp/*/format")) + sorted((root / "events").glob("sock/*/format"))
    assert len(paths) >= 8
    for path in paths:
        text = path.read_text()
        fmt = parse_format(text, path.parent.parent.name, path.parent.name)
        assert fmt.render() == text, path
        assert fmt.id > 0
        live = read_format(path.parent.parent.name, path.parent.name)
        assert live == fmt


@pytest.mark.root  # reads the live tracefs (read_format without root=)
def test_live_formats_match_recording_on_6_18() -> None:
    if not os.uname().release.startswith("6.18"):
        pytest.fail(f"the 6.18 recordings are checked against a 6.18 kernel; this is {os.uname().release}")
    for event in EVENTS:
        category, name = event.split("/")
        live = read_format(category, name)
        assert live is not None
        assert live.fields == _load("6.18", event).fields


@pytest.mark.root  # reads the live tracefs (read_format without root=)
def test_read_format_absent_tracepoint_is_none() -> None:
    assert read_format("tcp", "no_such_tracepoint") is None
    assert read_format("no_such_category", "x") is None
    assert read_format("sock", "inet_sk_error_report", root=FORMATS / "4.16") is None
    with pytest.raises(ValueError, match="invalid tracepoint name"):
        read_format("..", "tcp_probe")


@pytest.mark.root  # the message names the mount command only to a user who may run it
def test_find_tracefs_error_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(TracefsError, match="mount -t tracefs nodev"):
        find_tracefs(tmp_path / "tracing", tmp_path / "debug" / "tracing", may_mount=False)
    (tmp_path / "debug" / "tracing" / "events").mkdir(parents=True)
    assert find_tracefs(tmp_path / "tracing", tmp_path / "debug" / "tracing", may_mount=False) == (
        tmp_path / "debug" / "tracing"
    )


GOOD = (
    "name: x\nID: 7\nformat:\n"
    "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n"
    "\tfield:char buf[];\toffset:8;\tsize:0;\tsigned:0;\n"
    "\tfield:__data_loc char[] msg;\toffset:8;\tsize:4;\tsigned:0;\n\n"
    'print fmt: "%s", __get_str(msg)\n'
)


def test_parse_flexible_arrays_and_data_loc() -> None:
    fmt = parse_format(GOOD, "c", "x")
    assert fmt.id == 7
    assert fmt.field("buf") == Field("buf", "char", 8, 0, False, 0)
    assert fmt.field("msg") == Field("msg", "__data_loc char[]", 8, 4, False, None)
    assert fmt.render() == GOOD


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unexpected end"),
        ("ID: 1\n", "line 1: expected 'name:'"),
        ("name: y\nID: 1\nformat:\n", "file is for event 'y', not 'x'"),
        ("name: x\nID: one\nformat:\n", "line 2: ID 'one'"),
        ("name: x\nID: 1\nformat:\n\n", "no 'field:' lines"),
        (GOOD.replace("offset:8;\tsize:0", "offset:eight;\tsize:0"), "line 6: expected 'field:TYPE NAME"),
        (GOOD.replace("char buf[]", "buf"), "line 6: cannot split field declaration 'buf'"),
        (GOOD.replace("char buf[]", "char msg"), "line 7: field 'msg' appears twice"),
        (GOOD.replace("char buf[]", "struct foo buf[N]"), "line 6: array length 'N'"),
    ],
)
def test_malformed_format_raises_value_error_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_format(text, "c", "x")
