"""tcpscope/settings.py: the one generator of the agent's and the collector's command lines, from a
documented config dataclass, and the checks both configs share."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tcpscope.settings import (
    ConfigError,
    add_flags,
    check,
    load,
    log_level,
    parser_for,
    readable_files,
    setting,
    settings_of,
    together,
)


@dataclass(frozen=True)
class Toy:
    mode: str = setting("TOY_MODE", "how to run", default="fast", choices=("fast", "slow"))
    port: int = setting("TOY_PORT", "a port", default=0, min=0, max=65535)
    wait: float | None = setting("TOY_WAIT", "seconds to wait", default=None, above=0)
    names: tuple[str, ...] = setting("TOY_NAMES", "names, comma separated", default=("a",), flag="--name-list")
    ports: tuple[int, ...] = setting("TOY_PORTS", "ports", default=(), items=int, flag="--port-of", repeatable=True)
    kinds: tuple[str, ...] = setting("TOY_KINDS", "kinds, comma separated", default=(), choices=("x", "y"))
    watch: bool = setting("TOY_WATCH", "watch things", default=False)
    resolve: bool = setting("TOY_RESOLVE", "resolve things", default=True, negative="leave things alone")
    dump: bool = setting("TOY_DUMP", "dump and exit", default=False, negative=False)
    secret: str | None = setting("TOY_SECRET", "a secret (environment only)", default=None, flag=False)

    def __post_init__(self) -> None:
        check(self)


def toy(argv: list[str], env: dict[str, str] | None = None) -> Toy:
    return load(Toy, parser_for(Toy, "toy", "a toy"), argv, env or {})


def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_field_gets_the_flag_its_setting_describes() -> None:
    p = argparse.ArgumentParser()
    add_flags(p, Toy)
    got = actions(p)
    assert set(got) == {
        "-h",
        "--help",
        "--mode",
        "--port",
        "--wait",
        "--name-list",
        "--port-of",
        "--kinds",
        "--watch",
        "--no-watch",
        "--resolve",
        "--no-resolve",
        "--dump",
    }  # no --secret: environment only; no --no-dump
    assert got["--mode"].choices == ("fast", "slow")
    assert got["--kinds"].choices is None  # a comma-separated list: its items are checked by check()
    assert (got["--port"].type, got["--wait"].type, got["--port-of"].type) == (int, float, int)
    assert got["--watch"] is got["--no-watch"]  # one BooleanOptionalAction
    assert got["--resolve"] is not got["--no-resolve"] and got["--no-resolve"].help == "leave things alone"
    assert {a.dest for a in p._actions} >= {"names", "ports", "resolve"}


def test_help_shows_each_flag_with_its_variable_and_default() -> None:
    text = parser_for(Toy, "toy", "a toy").format_help()
    for f in ("--mode {fast,slow}", "--name-list NAME_LIST", "--port-of PORT_OF", "--watch, --no-watch", "--dump"):
        assert f in text, f
    for env in ("TOY_MODE", "TOY_PORT", "TOY_WAIT", "TOY_NAMES", "TOY_PORTS", "TOY_WATCH", "TOY_RESOLVE", "TOY_DUMP"):
        assert f"[{env}]" in text, env
    assert "TOY_SECRET" not in text and "--secret" not in text
    assert "(default fast)" in text and "(default a)" in text and "(repeatable)" in text
    assert "Every flag can also be set by the environment variable shown in brackets." in text


def test_flags_over_environment_over_defaults() -> None:
    assert toy([]) == Toy()
    env = {"TOY_MODE": "slow", "TOY_PORTS": "1,2", "TOY_NAMES": "b, c", "TOY_RESOLVE": "off", "TOY_SECRET": "s"}
    got = toy([], env)
    assert (got.mode, got.ports, got.names, got.resolve, got.secret) == ("slow", (1, 2), ("b", "c"), False, "s")
    got = toy(["--mode", "fast", "--port-of", "7", "--port-of", "8", "--name-list", "d", "--resolve"], env)
    assert (got.mode, got.ports, got.names, got.resolve) == ("fast", (7, 8), ("d",), True)
    assert toy(["--no-resolve", "--watch", "--dump", "--wait", "0.5"]) == Toy(
        resolve=False, watch=True, dump=True, wait=0.5
    )
    assert toy(["--no-watch"], {"TOY_WATCH": "1"}).watch is False


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["--mode", "warp"], {}, "argument --mode: invalid choice: 'warp'"),
        ([], {"TOY_MODE": "warp"}, "--mode must be one of fast, slow, not 'warp'"),
        (["--port", "70000"], {}, "--port must be <= 65535, not 70000"),
        (["--wait", "0"], {}, "--wait must be > 0, not 0"),
        (["--wait", "nan"], {}, "--wait must be a finite number, not nan"),
        (["--kinds", "x,z"], {}, "--kinds must be one of x, y, not 'z'"),
        ([], {"TOY_PORTS": "1,two"}, "--port-of / TOY_PORTS: cannot use '1,two'"),  # the flag as spelt
        (["--port-of", "two"], {}, "argument --port-of: invalid int value: 'two'"),
        (["--secret", "s"], {}, "unrecognized arguments: --secret s"),
    ],
)
def test_bad_values_are_one_line_naming_the_flag(
    argv: list[str], env: dict[str, str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        toy(argv, env)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("toy: error: ") and said in err and err.count("\n") == 1, err


def test_log_level_any_case() -> None:
    assert log_level("debug") == "DEBUG"
    with pytest.raises(ConfigError, match="--log-level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        log_level("loud")


def test_together_and_readable_files(tmp_path: Path) -> None:
    together(("--tls-cert", "c"), ("--tls-key", "k"))
    together(("--tls-cert", None), ("--tls-key", ""))
    with pytest.raises(ConfigError, match=r"^--tls-cert and --tls-key go together$"):
        together(("--tls-cert", "c"), ("--tls-key", None))
    ok = tmp_path / "ca.pem"
    ok.write_text("x")
    readable_files((("--tls-ca", str(ok)), ("--token-file", None)))
    for bad in (tmp_path / "missing", tmp_path):  # a directory is not a readable file either
        with pytest.raises(ConfigError, match=f"^--tls-ca {re.escape(str(bad))}: not a readable file$"):
            readable_files((("--tls-ca", str(ok)), ("--tls-ca", str(bad))))


@dataclass(frozen=True)
class Auth:
    """Settings two processes share (as tcpscope/kafka_client.py's KafkaSecurity)."""

    mode: str = setting("TOY_AUTH_MODE", "auth mode", flag="--auth-mode", default="none", choices=("none", "key"))
    key_file: str | None = setting("TOY_AUTH_KEY_FILE", "key file", flag="--auth-key-file", default=None)
    key: str | None = setting("TOY_AUTH_KEY", "the key (environment only)", flag=False, default=None)

    def __post_init__(self) -> None:
        check(self)
        if self.mode == "key" and not (self.key or self.key_file):
            raise ConfigError("--auth-mode key needs --auth-key-file or TOY_AUTH_KEY")


@dataclass(frozen=True)
class Outer:
    mode: str = setting("TOY_MODE", "how to run", default="fast", choices=("fast", "slow"))
    auth: Auth = settings_of(Auth)
    port: int = setting("TOY_PORT", "a port", default=0, min=0, max=65535)


def outer(argv: list[str], env: dict[str, str] | None = None) -> Outer:
    return load(Outer, parser_for(Outer, "outer", "an outer"), argv, env or {})


def test_settings_of_puts_the_shared_flags_in_place_and_builds_them(capsys: pytest.CaptureFixture[str]) -> None:
    p = parser_for(Outer, "outer", "an outer")
    flags = [s for a in p._actions for s in a.option_strings if s not in ("-h", "--help")]
    assert flags == ["--mode", "--auth-mode", "--auth-key-file", "--port"]  # in the field's place
    # each value has its own name in the namespace: the shared `mode` is not the outer one
    assert {a.dest for a in p._actions} >= {"mode", "auth.mode", "auth.key_file", "port"}
    assert outer([]) == Outer(auth=Auth())
    got = outer(["--mode", "slow", "--auth-mode", "key"], {"TOY_AUTH_KEY": "k", "TOY_PORT": "9"})
    assert got == Outer(mode="slow", auth=Auth("key", None, "k"), port=9)
    assert outer(["--auth-key-file", "/f"], {"TOY_AUTH_MODE": "key"}).auth == Auth("key", "/f")
    # the shared settings' own checks are the process's one-line errors
    for argv, env, said in (
        (["--auth-mode", "key"], {}, "--auth-mode key needs --auth-key-file or TOY_AUTH_KEY"),
        ([], {"TOY_AUTH_MODE": "both"}, "--auth-mode must be one of none, key, not 'both'"),
    ):
        with pytest.raises(SystemExit):
            outer(argv, env)
        assert capsys.readouterr().err == f"outer: error: {said}\n"
