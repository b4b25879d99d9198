"""Folding of py-spy's collapsed stacks into own and inclusive shares."""

from __future__ import annotations

from bench.profile import fold, render


def test_fold_counts_own_and_inclusive_per_function_across_lines() -> None:
    raw = (
        "run (agent/pipeline.py:90);step (agent/pipeline.py:80);poll (agent/kernel/reader.py:10) 6\n"
        "run (agent/pipeline.py:90);step (agent/pipeline.py:81);emit (agent/sink.py:5) 3\n"
        "run (agent/pipeline.py:91) 1\n"
    )
    total, own, incl = fold(raw)
    assert total == 10
    assert own == {"poll (agent/kernel/reader.py)": 6, "emit (agent/sink.py)": 3, "run (agent/pipeline.py)": 1}
    assert incl["run (agent/pipeline.py)"] == 10 and incl["step (agent/pipeline.py)"] == 9
    text = render(total, own, incl, top=2)
    assert " 60.0  poll (agent/kernel/reader.py)" in text and "100.0  run (agent/pipeline.py)" in text
