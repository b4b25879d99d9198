"""What the agent's and the collector's config dataclasses share: documented fields that carry their
environment variable and their flag, one generator of the command line from them (`add_flags`), one
way to read flags over environment over defaults, and the checks both make."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A flag or environment variable has a value the process cannot use."""


def setting(
    env: str,
    help: str,
    *,
    flag: bool | str = True,
    items: type = str,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    choices: Sequence[str] = (),
    repeatable: bool = False,
    negative: bool | str = True,
    **kw: Any,
) -> Any:
    """A config field documented with its environment variable and help text; `add_flags` makes its flag.

    flag: the flag's spelling when not `--field-name`, or False for environment only (secrets);
    items: the type of a tuple field's comma-separated items; min/max: inclusive bounds of a number,
    above: an exclusive lower bound; choices: the allowed values of a string (of each item of a tuple);
    repeatable: a tuple field whose flag is given once per item (`--port 80 --port 443`);
    negative (bools): the `--no-` form, True as `--x, --no-x` on one help line, a string as its own
    flag with that help, False none. `check()` enforces bounds and choices, so every field states its
    own and no flag or variable slips through."""
    return field(
        metadata={
            "env": env,
            "help": help,
            "flag": flag,
            "items": items,
            "min": min,
            "max": max,
            "above": above,
            "choices": tuple(choices),
            "repeatable": repeatable,
            "negative": negative,
        },
        **kw,
    )


def settings_of(cls: type, **kw: Any) -> Any:
    """A config field that holds another documented settings dataclass `cls` (its default: `cls()`):
    its fields' flags and environment variables are this config's own, in this field's place. One
    definition then serves every process that shares those settings (the Kafka security settings of
    the collector and the readers, tcpscope/kafka_client.py)."""
    return field(default_factory=cls, metadata={"settings": cls}, **kw)


def _group(f: Field[Any]) -> type | None:
    """The settings dataclass a `settings_of` field holds, None for a plain setting."""
    group: type | None = f.metadata.get("settings")
    return group


def flag_name(f: Field[Any]) -> str:
    """The field's flag as the command line spells it (`--field-name` unless the setting names another)."""
    flag = f.metadata.get("flag", True)
    return flag if isinstance(flag, str) else "--" + f.name.replace("_", "-")


def value_type(f: Field[Any]) -> type:
    """What a field holds: bool, int, float, tuple or str (from its default, else its annotation)."""
    if isinstance(f.default, (bool, int, float, tuple, str)):
        return type(f.default)
    annotation = str(f.type)
    return next((t for t in (tuple, bool, float, int) if t.__name__ in annotation), str)


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, prefix: str = "") -> None:
    """One flag per field of the config dataclass `cls`, in field order, with the field's help_text
    (a `settings_of` field: its dataclass's flags, in its place): the command line is generated from
    the documented fields, never written next to them. `parser` may be an argument group; each
    flag's value lands in the parsed namespace as `prefix + field name` (`read_values` reads it
    there; a nested field's under `outer.`, so no two fields' values share a name)."""
    for f in fields(cls):
        meta = f.metadata
        group = _group(f)
        if group is not None:
            add_flags(parser, group, f"{prefix}{f.name}.")
            continue
        if meta.get("flag", True) is False:
            continue
        dest = prefix + f.name
        flag, help = flag_name(f), help_text(cls, f.name)
        kind = value_type(f)
        if kind is bool:
            negative = meta.get("negative", True)
            if negative is True:
                parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help)
                continue
            parser.add_argument(flag, dest=dest, action="store_true", default=None, help=help)
            if negative:
                parser.add_argument(f"--no-{flag[2:]}", dest=dest, action="store_false", default=None, help=negative)
            continue
        metavar = flag[2:].replace("-", "_").upper()
        if meta.get("repeatable"):
            parser.add_argument(
                flag, dest=dest, action="append", type=meta["items"], metavar=metavar, help=f"{help} (repeatable)"
            )
            continue
        choices = meta.get("choices") if kind is str else None
        parser.add_argument(
            flag,
            dest=dest,
            type=kind if kind in (int, float) else str,
            choices=choices or None,
            metavar=None if choices else metavar,
            help=help,
        )


def check(obj: object) -> None:
    """Raise ConfigError for the first field outside its bounds or choices (None values pass)."""
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if value is None or isinstance(value, bool):
            continue
        meta = f.metadata
        lo, hi, above, choices = meta.get("min"), meta.get("max"), meta.get("above"), meta.get("choices", ())
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{flag_name(f)} must be a finite number, not {value}")
            if lo is not None and value < lo:
                raise ConfigError(f"{flag_name(f)} must be >= {_num(lo)}, not {_num(value)}")
            if above is not None and value <= above:
                raise ConfigError(f"{flag_name(f)} must be > {_num(above)}, not {_num(value)}")
            if hi is not None and value > hi:
                raise ConfigError(f"{flag_name(f)} must be <= {_num(hi)}, not {_num(value)}")
        if choices:
            for item in value if isinstance(value, tuple) else (value,):
                if item not in choices:
                    raise ConfigError(f"{flag_name(f)} must be one of {', '.join(choices)}, not {item!r}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def log_level(value: str) -> str:
    """A logging level name in any case, upper-cased (what `logging` takes); ConfigError otherwise."""
    level = value.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
    return level


def together(*flags: tuple[str, object]) -> None:
    """(flag, value) pairs that are set together or not at all, like a certificate and its key."""
    if len({bool(value) for _, value in flags}) > 1:
        raise ConfigError(f"{' and '.join(flag for flag, _ in flags)} go together")


def readable_files(files: Iterable[tuple[str, str | None]]) -> None:
    """Each (flag, path) given is a file this process can read now, not at the first connection."""
    for flag, path in files:
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise ConfigError(f"{flag} {path}: not a readable file")


def host_port(value: str, what: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); the port must be 1-65535 (0 too with allow_zero, to let
    the system pick). A port out of range is an error, never silently another port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{what} must be HOST:PORT, not {value!r}")
    n = int(port)
    if not (0 if allow_zero else 1) <= n <= 65535:
        raise ConfigError(f"{what} {value!r}: port must be {'0' if allow_zero else '1'}-65535")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ConfigError(f"{what} {value!r}: write an IPv6 host in brackets, e.g. [::1]:{n}")
    return host.strip("[]"), n


def coerce(f: Field[Any], raw: Any) -> Any:
    """Turn a raw string (from the environment, or a str flag) into the field's type; a repeated
    flag's list into a tuple."""
    if isinstance(raw, list):
        return tuple(raw)
    if not isinstance(raw, str):
        return raw
    kind = value_type(f)
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("", "0", "false", "no", "off"):
                return False
            raise ValueError("want true or false")
        if kind is tuple:
            item = f.metadata.get("items", str)
            return tuple(item(x.strip()) for x in raw.split(",") if x.strip())
        if kind is int:
            try:
                return int(raw)
            except ValueError:
                raise ValueError("want an integer") from None
        if kind is float:
            try:
                return float(raw)
            except ValueError:
                raise ValueError("want a number") from None
    except ValueError as e:
        raise ConfigError(f"{flag_name(f)} / {f.metadata['env']}: cannot use {raw!r}: {e}") from e
    return raw


def read_values(cls: type, ns: argparse.Namespace, env: Mapping[str, str], prefix: str = "") -> dict[str, Any]:
    """Field values from parsed flags (`add_flags` with the same prefix), else the field's
    environment variable; unset ones are left out. A `settings_of` field is built from its own."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        group = _group(f)
        if group is not None:  # its own checks run as it is built (a ConfigError, like the rest)
            values[f.name] = group(**read_values(group, ns, env, f"{prefix}{f.name}."))
            continue
        raw: Any = getattr(ns, prefix + f.name, None)
        if raw is None and f.metadata["env"] in env:
            raw = env[f.metadata["env"]]
        if raw is not None:
            values[f.name] = coerce(f, raw)
    return values


def parser_for(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """The command line of a process whose config is the dataclass `cls`: its flags (`add_flags`) and
    the note that each has an environment variable."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Every flag can also be set by the environment variable shown in brackets.",
    )
    add_flags(parser, cls)
    return parser


def load(
    cls: Callable[..., T],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    env: Mapping[str, str],
) -> T:
    """Parse flags, read values (flags over environment over defaults) and build the config; any
    ConfigError (a bad flag or environment value, a failed check) exits 2 with one line on stderr,
    `PROG: error: ...`, no usage block and no traceback."""
    ns = one_line_errors(parser).parse_args(argv)
    try:
        return cls(**read_values(cls, ns, env))  # type: ignore[arg-type]
    except ConfigError as e:
        fail(parser.prog, str(e))


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make argparse's usage errors the one-line form too (no usage block: --help has it)."""

    def error(message: str) -> NoReturn:
        fail(parser.prog, f"{message} (see --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser


def fail(prog: str, msg: str, code: int = 2) -> NoReturn:
    """One line on stderr and exit: the form every tcpscope command uses for bad input."""
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def number(
    kind: Callable[[str], float], *, min: float | None = None, above: float | None = None
) -> Callable[[str], float]:
    """An argparse `type=` for a finite number >= min (or > above): a bad value is argparse's usual
    one-line error instead of a silently accepted negative duration or window."""

    def parse(raw: str) -> float:
        try:
            v = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"not a finite number: {raw!r}")
        if min is not None and v < min:
            raise argparse.ArgumentTypeError(f"must be >= {_num(min)}, not {raw}")
        if above is not None and v <= above:
            raise argparse.ArgumentTypeError(f"must be > {_num(above)}, not {raw}")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def help_text(cls: type, name: str) -> str:
    """A field's help with its default (when it has a telling one) and its environment variable in
    brackets, for argparse."""
    f = next(f for f in fields(cls) if f.name == name)
    meta = f.metadata
    default = f.default
    shown = ""
    if default is not MISSING and default not in (None, "", (), False) and "default" not in meta["help"]:
        if isinstance(default, bool):
            value = "on"
        elif isinstance(default, tuple):
            value = ",".join(str(x) for x in default)
        else:
            value = str(default)
        shown = f" (default {value})"
    return f"{meta['help']}{shown} [{meta['env']}]"
