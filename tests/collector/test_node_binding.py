"""collector/identity.check_binding: what an authenticated client may claim (pure)."""

from __future__ import annotations

from collector.node_binding import check_binding
from tcpscope.v1.events_pb2 import EventBatch, UnobservedWindow
from tests.support.events import make_event

NODES = frozenset({"node-a"})


def _batch(node: str = "node-a", agent_id: str = "p/node-a/i2", *windows: UnobservedWindow) -> EventBatch:
    b = EventBatch(schema_version=1, node=node, agent_id=agent_id, sequence=1)
    b.events.append(make_event(1, node=node))
    b.unobserved.extend(windows)
    return b


def test_own_node_and_ids_pass_others_are_named() -> None:
    assert check_binding(_batch(), NODES) is None
    assert check_binding(_batch("node-b", "p/node-b/i"), NODES) == (
        "node_mismatch",
        "node 'node-b' is not the authenticated node",
    )
    reason, _ = check_binding(_batch("node-a", "p/node-b/i"), NODES) or ("", "")
    assert reason == "agent_id_mismatch"
    assert (check_binding(_batch("node-a", "agent-1"), NODES) or ("",))[0] == "agent_id_mismatch"
    b = _batch()
    b.events[0].node = "node-b"
    assert (check_binding(b, NODES) or ("",))[0] == "node_mismatch"


def test_windows_passed_on_by_a_dead_incarnation_pass_foreign_ones_do_not() -> None:
    passed_on = UnobservedWindow(node="node-a", previous_agent_id="p/node-a/i0", agent_id="p/node-a/i1")
    assert check_binding(_batch("node-a", "p/node-a/i2", passed_on), NODES) is None
    foreign = UnobservedWindow(node="node-a", previous_agent_id="p/node-b/i0", agent_id="p/node-a/i2")
    assert (check_binding(_batch("node-a", "p/node-a/i2", foreign), NODES) or ("",))[0] == "agent_id_mismatch"
    other_node = UnobservedWindow(node="node-b", previous_agent_id="p/node-a/i0", agent_id="p/node-a/i2")
    assert (check_binding(_batch("node-a", "p/node-a/i2", other_node), NODES) or ("",))[0] == "agent_id_mismatch"
