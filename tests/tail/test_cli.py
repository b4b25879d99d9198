"""tcpscope-tail's and kubectl-tcpscope's flags: every one says what it does in --help."""

from __future__ import annotations

import argparse

import pytest

from tail import cli, kubectl_plugin

PARSERS = {"tcpscope-tail": lambda: cli.build_parser({}), "kubectl-tcpscope": kubectl_plugin.build_parser}


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_flag_has_help(prog: str) -> None:
    parser = PARSERS[prog]()
    missing = [a.option_strings or [a.dest] for a in parser._actions if not a.help or a.help == argparse.SUPPRESS]
    assert missing == []
    text = parser.format_help()
    assert "--from-beginning" not in text or "oldest record" in text


def test_rows_flag_and_kinds() -> None:
    o = cli.parse_args(["--kafka-bootstrap", "k:9092"], env={})
    assert o.rows == "connection"
    assert cli.parse_args(["--kafka-bootstrap", "k:9092", "--kind", "all"], env={}).rows == "socket"
    with pytest.raises(SystemExit):
        cli.parse_args(["--kafka-bootstrap", "k:9092", "--rows", "connection", "--kind", "state"], env={})
