"""What the agent's and the collector's config dataclasses share: documented fields that carry their
environment variable, and one way to read flags over environment over defaults."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any


class ConfigError(ValueError):
    """A flag or environment variable has a value the process cannot use."""


def setting(env: str, help: str, *, flag: bool = True, items: type = str, **kw: Any) -> Any:
    """A config field documented with its environment variable and help text.

    flag=False: environment only (secrets); items: the type of a tuple field's comma-separated items."""
    return field(metadata={"env": env, "help": help, "flag": flag, "items": items}, **kw)


def coerce(f: Field[Any], raw: Any) -> Any:
    """Turn a raw string (from the environment, or a str flag) into the field's type."""
    if not isinstance(raw, str):
        return raw
    default = f.default
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("", "0", "false", "no", "off"):
                return False
            raise ValueError("want true or false")
        if isinstance(default, tuple):
            item = f.metadata.get("items", str)
            return tuple(item(x.strip()) for x in raw.split(",") if x.strip())
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float) or "float" in str(f.type):
            return float(raw)
    except ValueError as e:
        raise ConfigError(f"{f.name}: cannot use {raw!r}: {e}") from e
    return raw


def read_values(cls: type, ns: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """Field values from parsed flags, else the field's environment variable; unset ones are left out."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw: Any = getattr(ns, f.name, None)
        if raw is None and f.metadata["env"] in env:
            raw = env[f.metadata["env"]]
        if raw is not None:
            values[f.name] = coerce(f, raw)
    return values


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
