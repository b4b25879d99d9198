"""tcpscope/kinds.py: the one table of event kinds, and the live view's --kind parsing."""

from __future__ import annotations

import pytest

from tcpscope import kinds


def test_names_fields_and_defaults() -> None:
    assert kinds.FIELDS == {
        "lifecycle": "lifecycle",
        "state": "state_change",
        "retransmit": "retransmit",
        "synack": "synack_retransmit",
        "reset": "reset",
        "error": "socket_error",
        "probe": "probe",
        "flow": "flow",
        "anomalies": "anomalies",
    }
    assert kinds.AGENT_KINDS == ("lifecycle", "state", "retransmit", "synack", "reset", "error", "probe")
    # state changes (several per connection) and probes are on request only
    assert kinds.AGENT_DEFAULTS == ("lifecycle", "retransmit", "synack", "reset", "error")
    assert kinds.VIEW_DEFAULTS == ("lifecycle", "reset", "error", "flow", "anomalies")


def test_parse_view() -> None:
    assert kinds.parse_view("") == frozenset({"lifecycle", "reset", "socket_error", "flow", "anomalies"})
    assert kinds.parse_view(" state, reset ") == frozenset({"state_change", "reset"})
    assert kinds.parse_view("all") == frozenset()
    assert kinds.parse_view("reset,all") == frozenset()
    with pytest.raises(
        ValueError, match=r"unknown kinds \['bogus'\]; known: lifecycle, state, .*, flow, anomalies, all$"
    ):
        kinds.parse_view("lifecycle,bogus")
