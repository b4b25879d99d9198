"""bench/modes.py: the flags an agent of another git ref is run with."""

from __future__ import annotations

from pathlib import Path

from bench.modes import EACH, each_args


def test_the_working_tree_reports_each_connection() -> None:
    assert each_args() == EACH


def test_a_ref_that_knows_the_flags_gets_them_and_one_from_before_aggregation_does_not(tmp_path: Path) -> None:
    # a ref's agent must run as the working tree's does, or their figures compare different work
    newer, older = tmp_path / "newer", tmp_path / "older"
    for tree, text in ((newer, "max_connection_events: int = 0\n"), (older, "events: str = 'lifecycle'\n")):
        (tree / "agent").mkdir(parents=True)
        (tree / "agent" / "config.py").write_text(text)
    assert each_args(newer) == EACH
    assert each_args(older) == []
    assert each_args(tmp_path / "missing") == []
