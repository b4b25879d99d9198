"""Kernel struct layouts from the running kernel's BTF (/sys/kernel/btf/vmlinux), in pure Python.

Headers on disk may belong to another kernel (Debian ships 6.1 headers; we run 6.18), so reading
`struct sock` or `struct tcp_sock` with them gives garbage. BTF describes the running kernel exactly.
Format: Documentation/bpf/btf.rst (include/uapi/linux/btf.h). One pass over the type section records
where each type starts and an index from name (string offset) to type ids; names and members are
decoded only when asked for, which keeps start-up cheap on a ~5 MB blob with ~130k types.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

BTF_MAGIC = 0xEB9F

# Kinds (include/uapi/linux/btf.h).
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes that follow the 12-byte struct btf_type: (fixed, per vlen item).
_EXTRA: dict[int, tuple[int, int]] = {
    0: (0, 0),
    KIND_INT: (4, 0),
    KIND_PTR: (0, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FWD: (0, 0),
    KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0),
    KIND_CONST: (0, 0),
    KIND_RESTRICT: (0, 0),
    KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (4, 0),
    KIND_TYPE_TAG: (0, 0),
    KIND_ENUM64: (0, 12),
}
_MODIFIERS = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})
_COMPOSITES = frozenset({KIND_STRUCT, KIND_UNION})
_ENUMS = frozenset({KIND_ENUM, KIND_ENUM64})
# Kinds worth indexing by name (what callers look up).
_INDEXED = frozenset({KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_TYPEDEF})
_HEADER_LEN = 24
_MAX_RESOLVE_DEPTH = 32


class BtfError(Exception):
    """The BTF blob is missing, unreadable or malformed."""


@dataclass(frozen=True)
class _Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0 when not a bitfield


@dataclass(frozen=True)
class _Found:
    """A member reached by a path: where it starts and what it is."""

    bit_offset: int
    type_id: int
    bitfield_size: int


@dataclass(frozen=True)
class _Sections:
    """Where the type and string sections of a blob are, as its header says (offsets into the blob)."""

    endian: str  # struct module prefix: "<" or ">"
    types_start: int
    types_end: int
    strs_start: int
    strs_end: int


@dataclass(frozen=True)
class _TypeIndex:
    """What one pass over the type section records (see the module docstring)."""

    starts: array[int]  # record offset of type id i + 1
    by_name: dict[int, list[int]]  # name string offset -> ids of the _INDEXED kinds with that name
    enum_ids: list[int]  # every enum and enum64, anonymous ones included


def _endian(data: bytes) -> str:
    """The blob's byte order, from how its magic reads."""
    if struct.unpack_from("<H", data, 0)[0] == BTF_MAGIC:
        return "<"
    if struct.unpack_from(">H", data, 0)[0] == BTF_MAGIC:
        return ">"
    raise BtfError(f"bad magic {data[:2].hex()}: not a BTF blob")


def _sections(data: bytes) -> _Sections:
    """Check the header (struct btf_header) and locate both sections inside the blob."""
    if len(data) < _HEADER_LEN:
        raise BtfError(f"truncated: {len(data)} bytes is shorter than the {_HEADER_LEN}-byte header")
    endian = _endian(data)
    version = data[2]
    if version != 1:
        raise BtfError(f"unsupported BTF version {version}")
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(endian + "5I", data, 4)
    if hdr_len < _HEADER_LEN or hdr_len > len(data):
        raise BtfError(f"bad header length {hdr_len} (blob is {len(data)} bytes)")
    types_start = hdr_len + type_off
    strs_start = hdr_len + str_off
    if types_start + type_len > len(data):
        raise BtfError(f"truncated: type section ends at byte {types_start + type_len}, blob has {len(data)}")
    if strs_start + str_len > len(data):
        raise BtfError(f"truncated: string section ends at byte {strs_start + str_len}, blob has {len(data)}")
    if str_len == 0 or data[strs_start] != 0:
        raise BtfError("string section must start with an empty string")
    return _Sections(endian, types_start, types_start + type_len, strs_start, strs_start + str_len)


def _index_types(data: bytes, sections: _Sections) -> _TypeIndex:
    """One pass over the type section: each record's length is the fixed 12-byte struct btf_type plus
    what _EXTRA gives for its kind. The loop runs ~130k times on vmlinux: it stays one flat loop."""
    index = _TypeIndex(array("I"), {}, [])
    unpack = struct.Struct(sections.endian + "II").unpack_from
    extra = _EXTRA
    indexed = _INDEXED
    start, end = sections.types_start, sections.types_end
    off = start
    type_id = 0
    while off < end:
        if off + 12 > end:
            raise BtfError(f"truncated type record at type section offset {off - start}")
        name_off, info = unpack(data, off)
        kind = (info >> 24) & 0x1F
        try:
            fixed, per = extra[kind]
        except KeyError:
            raise BtfError(
                f"unknown BTF kind {kind} for type id {type_id + 1} (type section offset {off - start})"
            ) from None
        type_id += 1
        index.starts.append(off)
        if kind in indexed:
            _add_to_index(index, kind, name_off, type_id)
        off += 12 + fixed + per * (info & 0xFFFF)
    if off != end:
        raise BtfError(f"type {type_id} runs past the end of the type section")
    return index


def _add_to_index(index: _TypeIndex, kind: int, name_off: int, type_id: int) -> None:
    """Record a type callers may look up: by its name (when it has one), and among the enums."""
    if name_off:
        ids = index.by_name.get(name_off)
        if ids is None:
            index.by_name[name_off] = [type_id]
        else:
            ids.append(type_id)
    if kind in _ENUMS:
        index.enum_ids.append(type_id)


class Btf:
    """A parsed BTF blob. Use `Btf.load()` for the running kernel or `Btf.parse(data)` for bytes."""

    def __init__(
        self,
        data: bytes,
        endian: str,
        types_start: int,
        strs_start: int,
        strs_end: int,
        starts: array[int],
        by_name: dict[int, list[int]],
        enum_ids: list[int],
    ) -> None:
        """Use load() or parse(); this only stores what parse() computed."""
        self._data = data
        self._types_start = types_start
        self._strs_start = strs_start
        self._strs_end = strs_end
        self._starts = starts
        self._by_name = by_name
        self._enum_ids = enum_ids
        self._hdr = struct.Struct(endian + "III")
        self._u32 = struct.Struct(endian + "I")
        self._i32 = struct.Struct(endian + "i")
        self._pair = struct.Struct(endian + "Ii")
        self._enum64 = struct.Struct(endian + "III")
        self._ptr_size: int | None = None

    # ---- construction -------------------------------------------------------------------------

    @staticmethod
    def load(path: str = "/sys/kernel/btf/vmlinux") -> Btf:
        """Read and parse a BTF file; raises BtfError (a missing vmlinux BTF needs CONFIG_DEBUG_INFO_BTF)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError as e:
            raise BtfError(
                f"{path} not found: the kernel must be built with CONFIG_DEBUG_INFO_BTF=y "
                "(and sysfs mounted) so tcpscope can read struct layouts of the running kernel"
            ) from e
        except OSError as e:
            raise BtfError(f"cannot read {path}: {e.strerror}") from e
        try:
            return Btf.parse(data)
        except BtfError as e:
            raise BtfError(f"{path}: {e}") from e

    @staticmethod
    def parse(data: bytes) -> Btf:
        """Parse a raw BTF blob (header, type section, string section); raises BtfError if malformed."""
        sections = _sections(data)
        index = _index_types(data, sections)
        return Btf(
            data,
            sections.endian,
            sections.types_start,
            sections.strs_start,
            sections.strs_end,
            index.starts,
            index.by_name,
            index.enum_ids,
        )

    # ---- low-level access ---------------------------------------------------------------------

    @property
    def type_count(self) -> int:
        """Number of types (ids 1..type_count; id 0 is void)."""
        return len(self._starts)

    def _str(self, off: int) -> str:
        start = self._strs_start + off
        if off < 0 or start >= self._strs_end:
            raise BtfError(f"string offset {off} outside the string section")
        stop = self._data.find(b"\0", start, self._strs_end)
        if stop < 0:
            raise BtfError(f"string at offset {off} is not NUL-terminated")
        return self._data[start:stop].decode("utf-8", errors="replace")

    def _type(self, type_id: int) -> tuple[int, int, int, bool, int, int]:
        """(kind, vlen, size_or_type, kind_flag, name_off, record offset) of a type id."""
        if type_id <= 0 or type_id > len(self._starts):
            raise BtfError(f"type id {type_id} out of range (1..{len(self._starts)})")
        off = self._starts[type_id - 1]
        name_off, info, size_or_type = self._hdr.unpack_from(self._data, off)
        return (info >> 24) & 0x1F, info & 0xFFFF, size_or_type, bool(info >> 31), name_off, off

    def _name_offsets(self, name: str) -> list[int]:
        """String-section offsets holding exactly `name` (vmlinux strings are deduplicated: usually one)."""
        needle = b"\0" + name.encode() + b"\0"
        found: list[int] = []
        pos = self._data.find(needle, self._strs_start, self._strs_end)
        while pos >= 0:
            found.append(pos + 1 - self._strs_start)
            pos = self._data.find(needle, pos + 1, self._strs_end)
        return found

    def _ids_named(self, name: str) -> list[int]:
        if not name:
            return []
        ids: list[int] = []
        for off in self._name_offsets(name):
            ids.extend(self._by_name.get(off, ()))
        return sorted(ids)

    def _resolve(self, type_id: int) -> int:
        """Skip typedef/const/volatile/restrict/type_tag; returns the underlying type id (0 = void)."""
        for _ in range(_MAX_RESOLVE_DEPTH):
            if type_id == 0:
                return 0
            kind, _vlen, target, _kf, _n, _o = self._type(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = target
        raise BtfError(f"type chain too deep (loop?) at type id {type_id}")

    def _members(self, type_id: int) -> list[_Member]:
        kind, vlen, _size, kflag, _n, off = self._type(type_id)
        if kind not in _COMPOSITES:
            return []
        out: list[_Member] = []
        pos = off + 12
        for _ in range(vlen):
            name_off, mtype, moff = self._hdr.unpack_from(self._data, pos)
            pos += 12
            if kflag:
                out.append(_Member(self._str(name_off), mtype, moff & 0xFFFFFF, moff >> 24))
            else:
                out.append(_Member(self._str(name_off), mtype, moff, 0))
        return out

    def _composite(self, name: str) -> int | None:
        """The id of a complete struct/union called `name` (or a typedef of one)."""
        for prefix in ("struct ", "union "):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        for tid in self._ids_named(name):
            rid = self._resolve(tid)
            if rid and self._type(rid)[0] in _COMPOSITES:
                return rid
        return None

    def _size_of(self, type_id: int) -> int | None:
        """sizeof(type) in bytes, None for void/func/forward declarations."""
        type_id = self._resolve(type_id)
        if type_id == 0:
            return None
        kind, _vlen, size, _kf, _n, off = self._type(type_id)
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT, KIND_DATASEC):
            return size
        if kind == KIND_PTR:
            return self._pointer_size()
        if kind == KIND_ARRAY:
            elem, _index, nelems = self._hdr.unpack_from(self._data, off + 12)
            esize = self._size_of(elem)
            return None if esize is None else esize * nelems
        return None

    def _pointer_size(self) -> int:
        """BTF records no pointer size; it equals sizeof(long) on every Linux ABI (cached)."""
        if self._ptr_size is None:
            self._ptr_size = 8
            offs = set(self._name_offsets("long unsigned int"))
            for tid in range(1, len(self._starts) + 1):  # type 1 on vmlinux: the scan stops at once
                kind, _v, size, _kf, name_off, _o = self._type(tid)
                if kind == KIND_INT and name_off in offs:
                    self._ptr_size = size
                    break
        return self._ptr_size

    def _find_in(self, type_id: int, name: str, base_bits: int, depth: int = 0) -> _Found | None:
        """Find member `name` in a struct/union, looking through anonymous struct/union members."""
        if depth > _MAX_RESOLVE_DEPTH:
            return None
        members = self._members(type_id)
        for m in members:
            if m.name == name:
                return _Found(base_bits + m.bit_offset, m.type_id, m.bitfield_size)
        for m in members:
            if m.name == "":
                inner = self._resolve(m.type_id)
                if inner and self._type(inner)[0] in _COMPOSITES:
                    hit = self._find_in(inner, name, base_bits + m.bit_offset, depth + 1)
                    if hit is not None:
                        return hit
        return None

    def _walk(self, struct_name: str, path: str) -> _Found | None:
        """Follow a dotted member path from a struct; None if any step is absent or not a struct/union
        (pointers are not followed: an offset inside the pointee is not an offset inside the struct)."""
        current = self._composite(struct_name)
        if current is None or not path:
            return None
        found: _Found | None = None
        bits = 0
        for i, part in enumerate(path.split(".")):
            if i > 0:
                assert found is not None
                if found.bitfield_size:
                    return None
                current = self._resolve(found.type_id)
                if current == 0 or self._type(current)[0] not in _COMPOSITES:
                    return None
                bits = found.bit_offset
            found = self._find_in(current, part, bits)
            if found is None:
                return None
        return found

    def _bitfield_bits(self, found: _Found) -> int:
        """Width in bits when the member is a bitfield (kind_flag or old INT encoding), else 0."""
        if found.bitfield_size:
            return found.bitfield_size
        rid = self._resolve(found.type_id)
        if rid == 0:
            return 0
        kind, _v, size, _kf, _n, off = self._type(rid)
        if kind == KIND_INT:
            enc = int(self._u32.unpack_from(self._data, off + 12)[0])
            nr_bits, int_bit_off = enc & 0xFF, (enc >> 16) & 0xFF
            if nr_bits != size * 8 or int_bit_off:
                return nr_bits
        return 0

    # ---- public queries -----------------------------------------------------------------------

    def member_offset(self, struct: str, path: str) -> int | None:
        """Byte offset of a member of `struct`; dotted paths walk nested members (through anonymous
        structs/unions too), e.g. ("sock", "__sk_common.skc_net"). None if absent.

        For a bitfield, the byte offset of its containing storage unit (aligned to the size of its
        declared type), which is what a BPF program reads before shifting and masking.
        """
        found = self._walk(struct, path)
        if found is None:
            return None
        if self._bitfield_bits(found) or found.bit_offset % 8:
            unit = self._size_of(found.type_id) or 1
            return (found.bit_offset // (unit * 8)) * unit
        return found.bit_offset // 8

    def member_size(self, struct: str, path: str) -> int | None:
        """sizeof the member in bytes; None if absent, a bitfield (not byte-sized), or of unknown size."""
        found = self._walk(struct, path)
        if found is None or self._bitfield_bits(found) or found.bit_offset % 8:
            return None
        return self._size_of(found.type_id)

    def member_bits(self, struct: str, path: str) -> tuple[int, int] | None:
        """(bit offset from the start of `struct`, width in bits) of a member; works for bitfields."""
        found = self._walk(struct, path)
        if found is None:
            return None
        width = self._bitfield_bits(found)
        if not width:
            size = self._size_of(found.type_id)
            if size is None:
                return None
            width = size * 8
        return found.bit_offset, width

    def has_member(self, struct: str, path: str) -> bool:
        """True if `struct` has the (dotted) member path."""
        return self._walk(struct, path) is not None

    def struct_size(self, struct: str) -> int | None:
        """sizeof(struct <name>) (or union), None if the kernel has no such type."""
        tid = self._composite(struct)
        return None if tid is None else self._type(tid)[2]

    def _enumerators(self, type_id: int) -> dict[str, int]:
        kind, vlen, _size, signed, _n, off = self._type(type_id)
        out: dict[str, int] = {}
        pos = off + 12
        if kind == KIND_ENUM:
            for _ in range(vlen):
                name_off, val = self._pair.unpack_from(self._data, pos)
                pos += 8
                out[self._str(name_off)] = val if signed else val & 0xFFFFFFFF
        elif kind == KIND_ENUM64:
            for _ in range(vlen):
                name_off, lo, hi = self._enum64.unpack_from(self._data, pos)
                pos += 12
                val = (hi << 32) | lo
                if signed and val >= 1 << 63:
                    val -= 1 << 64
                out[self._str(name_off)] = val
        return out

    def enum_values(self, enum: str) -> dict[str, int]:
        """All enumerators of `enum <name>` (e.g. "sk_rst_reason"); empty dict if there is no such enum."""
        if enum.startswith("enum "):
            enum = enum[len("enum ") :]
        for tid in self._ids_named(enum):
            rid = self._resolve(tid)
            if rid and self._type(rid)[0] in _ENUMS:
                return self._enumerators(rid)
        return {}

    def enum_value(self, enum: str, name: str) -> int | None:
        """Value of enumerator `name` in `enum <enum>`, e.g. ("sock_flags", "SOCK_DONE"); None if absent.

        `enum=""` searches every enum, anonymous ones included (TCP_ESTABLISHED lives in an
        anonymous enum in include/net/tcp_states.h).
        """
        if enum:
            return self.enum_values(enum).get(name)
        for tid in self._enum_ids:
            values = self._enumerators(tid)
            if name in values:
                return values[name]
        return None
