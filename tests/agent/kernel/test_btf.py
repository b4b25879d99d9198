"""BTF parsing checked against bpftool's raw dump of the running kernel's /sys/kernel/btf/vmlinux."""

from __future__ import annotations

import re
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.kernel.btf import Btf, BtfError

VMLINUX = "/sys/kernel/btf/vmlinux"
_TYPE_RE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER_RE = re.compile(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?$")
_ENUM_RE = re.compile(r"^\t'([^']*)' val=(-?\d+)$")


@dataclass
class RawType:
    kind: str
    name: str
    rest: str
    members: list[tuple[str, int, int, int]]  # name, type_id, bits_offset, bitfield_size
    enumerators: dict[str, int]


@pytest.fixture(scope="module")
def raw() -> dict[int, RawType]:
    """bpftool's view of every type (the reference the parser must agree with)."""
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", VMLINUX, "format", "raw"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    types: dict[int, RawType] = {}
    current: RawType | None = None
    for line in out.splitlines():
        m = _TYPE_RE.match(line)
        if m:
            name = "" if m.group(3) == "(anon)" else m.group(3)
            current = RawType(m.group(2), name, m.group(4), [], {})
            types[int(m.group(1))] = current
            continue
        assert current is not None
        mm = _MEMBER_RE.match(line)
        if mm:
            name = "" if mm.group(1) == "(anon)" else mm.group(1)
            current.members.append((name, int(mm.group(2)), int(mm.group(3)), int(mm.group(4) or 0)))
            continue
        me = _ENUM_RE.match(line)
        if me:
            current.enumerators[me.group(1)] = int(me.group(2))
    return types


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.load()


def _named(raw: dict[int, RawType], kind: str, name: str) -> RawType:
    hits = [t for t in raw.values() if t.kind == kind and t.name == name]
    assert hits, f"bpftool has no {kind} {name}"
    return hits[0]


def _resolve(raw: dict[int, RawType], type_id: int) -> RawType:
    t = raw[type_id]
    while t.kind in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        t = raw[int(re.search(r"type_id=(\d+)", t.rest).group(1))]  # type: ignore[union-attr]
    return t


def test_load_is_fast_enough_for_startup() -> None:
    start = time.perf_counter()
    b = Btf.load()
    elapsed = time.perf_counter() - start
    assert b.type_count > 50_000
    assert elapsed < 2.0, f"parsing vmlinux BTF took {elapsed:.3f}s"


def test_type_count_matches_bpftool(btf: Btf, raw: dict[int, RawType]) -> None:
    assert btf.type_count == max(raw)


@pytest.mark.parametrize(
    "struct_name",
    [
        "sock",
        "sock_common",
        "tcp_sock",
        "inet_sock",
        "inet_connection_sock",
        "cgroup",
        "kernfs_node",
        "sock_cgroup_data",
        "task_struct",
    ],
)
def test_every_direct_member_offset_matches_bpftool(btf: Btf, raw: dict[int, RawType], struct_name: str) -> None:
    t = _named(raw, "STRUCT", struct_name)
    assert btf.struct_size(struct_name) == int(re.search(r"size=(\d+)", t.rest).group(1))  # type: ignore[union-attr]
    checked = 0
    for name, _type_id, bits, bitfield in t.members:
        if not name:
            continue
        if bitfield:
            assert btf.member_bits(struct_name, name) == (bits, bitfield), name
            assert btf.member_size(struct_name, name) is None, name
        else:
            assert bits % 8 == 0
            assert btf.member_offset(struct_name, name) == bits // 8, name
        checked += 1
    assert checked > 0


def test_offsets_used_by_the_agent(btf: Btf, raw: dict[int, RawType]) -> None:
    sock = _named(raw, "STRUCT", "sock")
    common = dict((m[0], m) for m in sock.members)["__sk_common"]
    sock_common = _resolve(raw, common[1])
    skc = dict((m[0], m) for m in sock_common.members)
    # skc_family and skc_dport sit inside anonymous unions/structs of sock_common: walk them like the parser.
    assert btf.member_offset("sock", "__sk_common.skc_net") is not None
    assert btf.member_offset("sock", "sk_cgrp_data") == dict((m[0], m) for m in sock.members)["sk_cgrp_data"][2] // 8
    assert btf.member_offset("sock", "sk_cgrp_data.cgroup") == btf.member_offset("sock", "sk_cgrp_data")
    assert btf.member_size("sock", "sk_cgrp_data.cgroup") == 8
    assert (
        btf.member_offset("cgroup", "kn")
        == dict((m[0], m) for m in _named(raw, "STRUCT", "cgroup").members)["kn"][2] // 8
    )
    kn = dict((m[0], m) for m in _named(raw, "STRUCT", "kernfs_node").members)["id"]
    assert btf.member_offset("kernfs_node", "id") == kn[2] // 8
    assert btf.member_size("kernfs_node", "id") == 8
    tcp = dict((m[0], m) for m in _named(raw, "STRUCT", "tcp_sock").members)
    assert btf.member_offset("tcp_sock", "bytes_received") == tcp["bytes_received"][2] // 8
    assert btf.member_offset("tcp_sock", "bytes_acked") == tcp["bytes_acked"][2] // 8
    assert btf.member_size("tcp_sock", "bytes_acked") == 8
    if "skc_net" in skc:
        assert btf.member_offset("sock", "__sk_common.skc_net") == skc["skc_net"][2] // 8


def _anon_offsets(raw: dict[int, RawType], t: RawType, base: int, out: dict[str, int]) -> None:
    """Member name -> bit offset, looking through anonymous struct/union members (bpftool's data)."""
    for name, _type_id, bits, _bf in t.members:
        if name:
            out.setdefault(name, base + bits)
    for name, type_id, bits, _bf in t.members:
        if not name:
            inner = _resolve(raw, type_id)
            if inner.kind in ("STRUCT", "UNION"):
                _anon_offsets(raw, inner, base + bits, out)


@pytest.mark.parametrize(
    "member",
    ["skc_family", "skc_dport", "skc_num", "skc_daddr", "skc_rcv_saddr", "skc_v6_daddr", "skc_state", "skc_cookie"],
)
def test_members_inside_anonymous_unions_of_sock_common(btf: Btf, raw: dict[int, RawType], member: str) -> None:
    flat: dict[str, int] = {}
    _anon_offsets(raw, _named(raw, "STRUCT", "sock_common"), 0, flat)
    assert member in flat, f"bpftool shows no {member}"
    assert btf.member_offset("sock_common", member) == flat[member] // 8
    assert btf.member_offset("sock", f"__sk_common.{member}") == flat[member] // 8
    assert btf.has_member("sock", f"__sk_common.{member}")


def test_enum_values_match_bpftool(btf: Btf, raw: dict[int, RawType]) -> None:
    reasons = _named(raw, "ENUM", "sk_rst_reason").enumerators
    assert btf.enum_values("sk_rst_reason") == reasons
    assert btf.enum_value("sk_rst_reason", "SK_RST_REASON_NO_SOCKET") == reasons["SK_RST_REASON_NO_SOCKET"]
    flags = _named(raw, "ENUM", "sock_flags").enumerators
    assert btf.enum_value("sock_flags", "SOCK_DONE") == flags["SOCK_DONE"]
    anon = [t for t in raw.values() if t.kind == "ENUM" and not t.name and "TCP_ESTABLISHED" in t.enumerators]
    assert btf.enum_value("", "TCP_ESTABLISHED") == anon[0].enumerators["TCP_ESTABLISHED"]


def test_absent_things_are_none(btf: Btf) -> None:
    assert btf.member_offset("sock", "no_such_member") is None
    assert btf.member_offset("no_such_struct_xyz", "a") is None
    assert btf.member_size("sock", "__sk_common.no_such") is None
    assert not btf.has_member("tcp_sock", "nope")
    # a pointer is not walked into: the offset would be inside another object
    assert btf.member_offset("sock", "sk_cgrp_data.cgroup.kn") is None
    assert btf.enum_value("sk_rst_reason", "NOPE") is None
    assert btf.enum_values("no_such_enum_xyz") == {}
    assert btf.enum_value("", "NO_SUCH_ENUMERATOR_XYZ") is None


def _blob(types: bytes, strings: bytes, endian: str = "<") -> bytes:
    header = struct.pack(endian + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


@pytest.mark.parametrize("endian", ["<", ">"], ids=["little-endian", "big-endian"])
def test_small_handmade_blob_with_bitfields_and_anonymous_union(endian: str) -> None:
    """The magic's byte order is the blob's: a big-endian blob (an s390x kernel's) reads the same."""
    strings = b"\0int\0outer\0a\0b\0c\0e\0X\0Y\0"
    off = {s: strings.index(b"\0" + s.encode() + b"\0") + 1 for s in ["int", "outer", "a", "b", "c", "e", "X", "Y"]}
    u32x3, u32, pair = endian + "III", endian + "I", endian + "Ii"
    t = b""
    t += struct.pack(u32x3, off["int"], 1 << 24, 4) + struct.pack(u32, (1 << 24) | 32)  # [1] int
    t += struct.pack(u32x3, 0, (5 << 24) | 2, 8)  # [2] anon union { int b; int c; }
    t += struct.pack(u32x3, off["b"], 1, 0) + struct.pack(u32x3, off["c"], 1, 0)
    # [3] struct outer (kind_flag): int a:3 at bit 35; anon union at byte 8
    t += struct.pack(u32x3, off["outer"], (4 << 24) | (1 << 31) | 2, 16)
    t += struct.pack(u32x3, off["a"], 1, (3 << 24) | 35) + struct.pack(u32x3, 0, 2, 64)
    t += struct.pack(u32x3, off["e"], (6 << 24) | 2, 4)  # [4] enum e { X = -1, Y = 5 } (signed)
    t = t[:-12] + struct.pack(u32x3, off["e"], (6 << 24) | (1 << 31) | 2, 4)
    t += struct.pack(pair, off["X"], -1) + struct.pack(pair, off["Y"], 5)
    b = Btf.parse(_blob(t, strings, endian))
    assert b.type_count == 4
    assert b.member_offset("outer", "a") == 4  # containing int unit of bit 35
    assert b.member_bits("outer", "a") == (35, 3)
    assert b.member_size("outer", "a") is None
    assert b.member_offset("outer", "c") == 8
    assert b.member_size("outer", "c") == 4
    assert b.enum_values("e") == {"X": -1, "Y": 5}


def test_malformed_blobs_raise_btf_error(tmp_path: Path) -> None:
    data = Path(VMLINUX).read_bytes()
    with pytest.raises(BtfError, match="bad magic"):
        Btf.parse(b"\0\0" + data[2:])
    with pytest.raises(BtfError, match="truncated"):
        Btf.parse(data[:10])
    with pytest.raises(BtfError, match="truncated"):
        Btf.parse(data[: len(data) // 2])
    with pytest.raises(BtfError, match="unknown BTF kind 31"):
        Btf.parse(_blob(struct.pack("<III", 0, 31 << 24, 0), b"\0"))
    with pytest.raises(BtfError, match="runs past the end"):
        Btf.parse(_blob(struct.pack("<III", 0, (4 << 24) | 5, 0), b"\0"))
    with pytest.raises(BtfError, match="CONFIG_DEBUG_INFO_BTF"):
        Btf.load(str(tmp_path / "vmlinux"))


def test_each_header_and_section_check_says_what_is_wrong() -> None:
    one_int = struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", 32)
    good = _blob(one_int, b"\0i\0")
    assert Btf.parse(good).type_count == 1
    with pytest.raises(BtfError, match="unsupported BTF version 2"):
        Btf.parse(good[:2] + b"\2" + good[3:])

    def header(hdr_len: int, type_len: int, str_off: int, str_len: int) -> bytes:
        return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, hdr_len, 0, type_len, str_off, str_len)

    with pytest.raises(BtfError, match="bad header length 23"):
        Btf.parse(header(23, 16, 16, 3) + one_int + b"\0i\0")
    with pytest.raises(BtfError, match=r"bad header length 999 \(blob is 43 bytes\)"):
        Btf.parse(header(999, 16, 16, 3) + one_int + b"\0i\0")
    with pytest.raises(BtfError, match="truncated: type section ends at byte 44, blob has 43"):
        Btf.parse(header(24, 20, 16, 3) + one_int + b"\0i\0")
    with pytest.raises(BtfError, match="truncated: string section ends at byte 44, blob has 43"):
        Btf.parse(header(24, 16, 16, 4) + one_int + b"\0i\0")
    with pytest.raises(BtfError, match="string section must start with an empty string"):
        Btf.parse(header(24, 16, 16, 0) + one_int + b"\0i\0")
    with pytest.raises(BtfError, match="string section must start with an empty string"):
        Btf.parse(_blob(one_int, b"i\0"))
    with pytest.raises(BtfError, match="truncated type record at type section offset 16"):
        Btf.parse(_blob(one_int + bytes(8), b"\0"))
