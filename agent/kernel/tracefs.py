"""Tracepoint format files: find tracefs, read `events/<category>/<name>/format`, parse it.

The BPF side lays out each tracepoint's record from these offsets rather than from kernel headers,
because the records change between kernel versions (e.g. `tcp_send_reset` gained sockaddr-sized
`saddr[28]`/`daddr[28]` and `reason` in 6.10; `inet_sock_set_state.protocol` went from __u8 to
__u16 in 4.20). A format file looks like this (fields are tab separated):

    name: tcp_send_reset
    ID: 2280
    format:
    \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
    ...
    \tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;

    print fmt: "skbaddr=%p ...", REC->skbaddr, ...
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")

# "field:TYPE NAME; offset:N; size:N; signed:N;" (kernel/trace/trace_events.c, f_show()).
_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"\s*signed:(?P<signed>[01]);\s*$"
)
# The last token of a declaration: NAME, NAME[N] or NAME[] (flexible array).
_NAME_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<len>[^\]]*)\])?$")
_ARRAY_RE = re.compile(r"^(?P<head>.*?)\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\[(?P<len>[^\]]*)\]$")
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_.-]+$")


class TracefsError(Exception):
    """tracefs (or a format file in it) cannot be reached; the message says what is missing and how to fix."""


@dataclass(frozen=True)
class Field:
    """One field of a tracepoint record, as the kernel reports it.

    `ctype` is the declared type without the array suffix (`__u8` for `__u8 saddr[28]`, `const void *`
    for a pointer, `__data_loc char[]` for a dynamic string: its 4-byte slot holds offset|len<<16).
    `array_len` is N for `NAME[N]`, 0 for a flexible array `NAME[]`, None for a scalar. `size` is the
    total size in bytes (for arrays: all elements).
    """

    name: str
    ctype: str
    offset: int
    size: int
    signed: bool
    array_len: int | None
    array_expr: str | None = None  # the length as printed when not a number (older kernels print
    # `__u8 saddr[sizeof(struct sockaddr_in6)]`); array_len is then size / element size

    @property
    def is_common(self) -> bool:
        """True for the header every record starts with (common_type, common_pid, ...)."""
        return self.name.startswith("common_")

    def declaration(self) -> str:
        """The declaration as tracefs prints it, e.g. `__u8 saddr[28]`."""
        if self.array_len is None:
            return f"{self.ctype} {self.name}"
        if self.array_expr is not None:
            return f"{self.ctype} {self.name}[{self.array_expr}]"
        return f"{self.ctype} {self.name}[{self.array_len or ''}]"


@dataclass(frozen=True)
class TracepointFormat:
    """A parsed format file. `fields` holds every field in file order, common_* fields included."""

    category: str
    name: str
    id: int
    fields: tuple[Field, ...]
    print_fmt: str = ""

    def field(self, name: str) -> Field | None:
        """The field called `name`, or None if this kernel's record has no such field."""
        for f in self.fields:
            if f.name == name:
                return f
        return None

    @property
    def record_size(self) -> int:
        """Bytes up to the end of the last fixed-size field (dynamic data follows it)."""
        return max((f.offset + f.size for f in self.fields), default=0)

    def render(self) -> str:
        """The format file text as tracefs prints it (parse_format(render()) round-trips)."""
        lines = [f"name: {self.name}", f"ID: {self.id}", "format:"]

        def line(f: Field) -> str:
            return f"\tfield:{f.declaration()};\toffset:{f.offset};\tsize:{f.size};\tsigned:{int(f.signed)};"

        lines += [line(f) for f in self.fields if f.is_common]
        lines.append("")
        lines += [line(f) for f in self.fields if not f.is_common]
        lines.append("")
        lines.append(f"print fmt: {self.print_fmt}")
        return "\n".join(lines) + "\n"


# Element sizes for array lengths printed as expressions (size / element size = element count).
_ELEMENT_SIZES = {
    "char": 1,
    "signed char": 1,
    "unsigned char": 1,
    "u8": 1,
    "s8": 1,
    "__u8": 1,
    "__s8": 1,
    "u16": 2,
    "s16": 2,
    "__u16": 2,
    "__s16": 2,
    "u32": 4,
    "s32": 4,
    "__u32": 4,
    "__s32": 4,
    "int": 4,
    "unsigned int": 4,
    "u64": 8,
    "s64": 8,
    "__u64": 8,
    "__s64": 8,
}


def _parse_decl(decl: str, size: int, where: str) -> tuple[str, str, int | None, str | None]:
    """Split `TYPE NAME[N]` into (ctype, name, array_len, array_expr)."""
    decl = decl.strip()
    arr = _ARRAY_RE.match(decl) if decl.endswith("]") else None
    if arr is not None and arr.group("head").strip():
        ctype, last = arr.group("head").strip(), f"{arr.group('name')}[{arr.group('len')}]"
        sep = " "
    else:
        ctype, sep, last = decl.rpartition(" ")
    # Tolerate `char *name` (not what the kernel prints, which puts a space before the name).
    stars = len(last) - len(last.lstrip("*"))
    if stars:
        ctype, last = (ctype + " " + last[:stars]).strip(), last[stars:]
    m = _NAME_RE.match(last)
    if not sep or not ctype or m is None:
        raise ValueError(f"{where}: cannot split field declaration {decl!r} into TYPE and NAME")
    length = m.group("len")
    if length is None:
        return ctype, m.group("name"), None, None
    if length == "":
        return ctype, m.group("name"), 0, None
    if length.isdigit():
        return ctype, m.group("name"), int(length), None
    elem = _ELEMENT_SIZES.get(ctype)
    if elem is None or size % elem:
        raise ValueError(
            f"{where}: array length {length!r} in {decl!r} is an expression and the size of {ctype!r} "
            "is unknown, so the element count cannot be derived"
        )
    return ctype, m.group("name"), size // elem, length


def parse_format(text: str, category: str, name: str) -> TracepointFormat:
    """Parse the text of a tracefs format file; raises ValueError naming the offending line.

    The `name:` line must match `name` (a mismatch means the wrong file was read).
    """
    what = f"format of {category}/{name}"
    lines = text.splitlines()
    pos = 0

    def next_line() -> tuple[int, str]:
        nonlocal pos
        while pos < len(lines) and not lines[pos].strip():
            pos += 1
        if pos >= len(lines):
            raise ValueError(f"{what}: unexpected end of text after line {pos}")
        pos += 1
        return pos, lines[pos - 1]

    def header(key: str) -> tuple[int, str]:
        no, raw = next_line()
        k, colon, value = raw.partition(":")
        if not colon or k.strip() != key:
            raise ValueError(f"{what}, line {no}: expected '{key}:', got {raw!r}")
        return no, value.strip()

    no, got_name = header("name")
    if got_name != name:
        raise ValueError(f"{what}, line {no}: file is for event {got_name!r}, not {name!r}")
    no, id_text = header("ID")
    if not id_text.isdigit():
        raise ValueError(f"{what}, line {no}: ID {id_text!r} is not a non-negative integer")
    no, rest = header("format")
    if rest:
        raise ValueError(f"{what}, line {no}: unexpected text after 'format:': {rest!r}")

    fields: list[Field] = []
    seen: set[str] = set()
    print_fmt: str | None = None
    while pos < len(lines):
        raw = lines[pos]
        pos += 1
        if not raw.strip():
            continue
        if raw.startswith("print fmt:"):
            print_fmt = "\n".join([raw[len("print fmt:") :].strip(), *lines[pos:]]).rstrip("\n")
            break
        m = _FIELD_RE.match(raw)
        if m is None:
            raise ValueError(
                f"{what}, line {pos}: expected 'field:TYPE NAME; offset:N; size:N; signed:N;', got {raw!r}"
            )
        size = int(m.group("size"))
        ctype, fname, array_len, array_expr = _parse_decl(m.group("decl"), size, f"{what}, line {pos}")
        if fname in seen:
            raise ValueError(f"{what}, line {pos}: field {fname!r} appears twice")
        seen.add(fname)
        fields.append(
            Field(
                name=fname,
                ctype=ctype,
                offset=int(m.group("offset")),
                size=size,
                signed=m.group("signed") == "1",
                array_len=array_len,
                array_expr=array_expr,
            )
        )
    if not fields:
        raise ValueError(f"{what}: no 'field:' lines after 'format:'")
    return TracepointFormat(
        category=category, name=name, id=int(id_text), fields=tuple(fields), print_fmt=print_fmt or ""
    )


def _has_events(path: Path) -> bool:
    """True if path/events is a directory. Raises PermissionError when tracefs is there but this
    user may not look into it (the default mode of /sys/kernel/tracing is 0700)."""
    try:
        return stat.S_ISDIR(os.stat(path / "events").st_mode)
    except PermissionError:
        raise
    except OSError:
        return False


def _mount_tracefs(target: Path) -> int:
    """mount -t tracefs nodev <target>; returns 0 or the errno."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    rc = libc.mount(b"nodev", os.fsencode(target), b"tracefs", ctypes.c_ulong(0), None)
    return 0 if rc == 0 else ctypes.get_errno()


def find_tracefs(primary: Path, fallback: Path, *, may_mount: bool) -> Path:
    """tracefs_root() with the paths and the mount decision made explicit (for tests, odd hosts and
    --tracefs). Raises TracefsError saying what is missing or unreadable and how to fix it."""
    denied: list[Path] = []

    def has_events(path: Path) -> bool:
        try:
            return _has_events(path)
        except PermissionError:
            denied.append(path)
            return False

    if has_events(primary):
        return primary
    mount_err = ""
    if may_mount and not denied and primary.is_dir():
        err = _mount_tracefs(primary)
        if err == 0 and has_events(primary):
            return primary
        if err:
            mount_err = f"; mounting tracefs on {primary} failed: {os.strerror(err)}"
    if fallback != primary and has_events(fallback):
        return fallback
    if denied:
        raise TracefsError(
            f"cannot read tracefs at {denied[0]} (permission denied for uid {os.geteuid()}): reading "
            "tracepoint formats needs root, or a tracefs mount this user may read (give it with --tracefs)"
        )
    where = f"{primary}/events" + (f" and {fallback}/events do" if fallback != primary else " does")
    how = (
        f"mount it with `mount -t tracefs nodev {primary}`"
        if may_mount or os.geteuid() == 0
        else f"run as root (or with CAP_SYS_ADMIN) so the agent can mount it on {primary}"
    )
    raise TracefsError(
        f"tracefs not found: {where} not exist{mount_err}. "
        f"The kernel needs CONFIG_TRACING (tracefs); {how}. In a container, bind-mount the host's "
        f"{primary} (or /sys/kernel/debug) into it."
    )


def tracefs_root() -> Path:
    """The tracefs mount: /sys/kernel/tracing, mounting it there if we are root and it is not mounted,
    else /sys/kernel/debug/tracing. Raises TracefsError saying how to fix it."""
    return find_tracefs(TRACEFS, DEBUGFS_TRACING, may_mount=os.geteuid() == 0)


def read_format(category: str, name: str, root: Path | None = None) -> TracepointFormat | None:
    """Read and parse events/<category>/<name>/format; None if this kernel has no such tracepoint.

    `root` defaults to tracefs_root(). It may also be a directory laid out like tracefs' `events/`
    directly (`<root>/<category>/<name>/format`), such as the recorded formats in the tests.
    Raises TracefsError if the file exists but cannot be read, ValueError if it is malformed.
    """
    for part in (category, name):
        if not _SAFE_COMPONENT.match(part) or part in (".", ".."):
            raise ValueError(f"invalid tracepoint name component {part!r}")
    base = root if root is not None else tracefs_root()
    events = base / "events" if (base / "events").is_dir() else base
    path = events / category / name / "format"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        hint = " (run as root)" if e.errno in (errno.EACCES, errno.EPERM) else ""
        raise TracefsError(f"cannot read {path}: {e.strerror}{hint}") from e
    return parse_format(text, category, name)
