"""Agent ids: [PREFIX/]NODE/INCARNATION, unique per start, the node recoverable by a collector."""

from __future__ import annotations

import datetime as dt

import pytest

from tcpscope.agent_id import belongs_to, make_agent_id, new_incarnation, node_of, prefix_of


def test_shape_and_parts() -> None:
    t = dt.datetime(2026, 11, 30, 11, 15, 0, tzinfo=dt.UTC)
    assert new_incarnation(t, "abc") == "20261130T111500Z-abc"
    aid = make_agent_id("node-1", "team/x", "inc1")
    assert aid == "team/x/node-1/inc1"
    assert node_of(aid) == "node-1" and prefix_of(aid) == "team/x"
    assert make_agent_id("node-1", incarnation="i") == "node-1/i" and prefix_of("node-1/i") == ""
    assert belongs_to(aid, "node-1") and not belongs_to(aid, "node-10") and not belongs_to(aid, "")


def test_incarnations_never_repeat() -> None:
    ids = {make_agent_id("node-1", "same") for _ in range(1000)}
    assert len(ids) == 1000


@pytest.mark.parametrize("bad", ["agent-1", "", "node-1/", "/x"])
def test_ids_without_a_node_belong_to_no_node(bad: str) -> None:
    assert node_of(bad) is None or not belongs_to(bad, "agent-1")
    with pytest.raises(ValueError):
        make_agent_id("a/b")
