"""The node journal: a previous incarnation's state file becomes the window nobody observed."""

from __future__ import annotations

import json
from pathlib import Path

from agent.export.exporter import Exporter, ExporterSettings
from agent.export.journal import NodeJournal, state_path
from tcpscope.v1.events_pb2 import EventBatch
from tests.agent.export.test_exporter import Clock, FakeTransport, _take
from tests.support.events import make_event


class Wall:
    def __init__(self) -> None:
        self.ns = 1_700_000_000_000_000_000

    def __call__(self) -> int:
        return self.ns


def _exporter(tmp: Path, agent_id: str, wall: Wall, clock: Clock) -> tuple[Exporter, NodeJournal]:
    journal = NodeJournal.open(str(tmp), "n1", agent_id, wall)
    return Exporter(
        ExporterSettings("n1", agent_id, 3, 1.0, 30, heartbeat_s=5.0),
        FakeTransport(),
        clock=clock,
        wall=lambda: wall.ns / 1e9,
        journal=journal,
    ), journal


def test_first_start_reports_nothing_and_a_crash_is_reported_with_exact_counts(tmp_path: Path) -> None:
    wall, clock = Wall(), Clock()
    old, old_journal = _exporter(tmp_path, "n1/old", wall, clock)
    old.attached()
    assert _take(old, old.begin_stream()) == []  # no previous incarnation: nothing to report
    started = wall.ns
    exp_gen = old.begin_stream()
    wall.ns += 1_000_000_000
    old.emit([make_event(i) for i in range(9)], {})  # batches 1, 2, 3 of 3 events
    b1, _b2, b3 = _take(old, exp_gen)
    old.on_ack("n1/old", b1.sequence)
    old.on_ack("n1/old", b3.sequence)  # acks come out of order: 2 is still outstanding
    doc = json.loads(state_path(str(tmp_path), "n1").read_text())
    assert (doc["state"], doc["first_unacked_sequence"], doc["unacked_batches"], doc["unacked_events"]) == (
        "running",
        2,
        1,
        3,
    )
    # kill -9: nothing more is written, the kernel drops the node lock. The next one attaches 5 s later.
    old_journal.release()
    wall.ns += 5_000_000_000
    new, new_journal = _exporter(tmp_path, "n1/new", wall, clock)
    new.attached()
    clock.t += 1.0
    new.emit([], {})
    (b,) = _take(new, new.begin_stream())
    batch = EventBatch.FromString(b.data)
    (w,) = batch.unobserved
    assert (w.node, w.previous_agent_id, w.agent_id, w.cause) == ("n1", "n1/old", "n1/new", "crash")
    assert (w.first_unacked_sequence, w.last_sequence, w.unacked_batches, w.unacked_events) == (2, 3, 1, 3)
    assert list(w.unacked_sequences) == [2]
    assert w.from_time.ToNanoseconds() == started + 1_000_000_000  # batch 1 sealed then, all before it acked
    assert w.to_time.ToNanoseconds() == wall.ns and w.uncounted
    # until that batch is acked the window stays unreported in the file: a second crash passes it on
    doc = json.loads(state_path(str(tmp_path), "n1").read_text())
    assert len(doc["unreported"]) == 1
    third = NodeJournal.open(str(tmp_path), "n1", "n1/third", wall)
    assert third.attached() == []  # "new" is alive (holds the node lock): nothing to report, no takeover
    new_journal.release()
    third = NodeJournal.open(str(tmp_path), "n1", "n1/third", wall)
    assert [x.previous_agent_id for x in third.attached()] == ["n1/old", "n1/new"]
    third.release()
    assert new_journal._try_lock()
    # once acked, it is gone from the file
    new.on_ack("n1/new", b.sequence)
    assert json.loads(state_path(str(tmp_path), "n1").read_text())["unreported"] == []


def test_a_drained_stop_reports_only_the_time_between(tmp_path: Path) -> None:
    wall, clock = Wall(), Clock()
    old, _ = _exporter(tmp_path, "n1/old", wall, clock)
    old.attached()
    old.emit([make_event(1)], {})
    gen = old.begin_stream()
    clock.t += 1.0
    old.emit([], {})
    (b,) = _take(old, gen)
    old.on_ack("n1/old", b.sequence)
    wall.ns += 2_000_000_000
    old.close(0)
    stopped = wall.ns
    wall.ns += 3_000_000_000
    new, _ = _exporter(tmp_path, "n1/new", wall, clock)
    new.attached()
    clock.t += 1.0
    new.emit([], {})
    (w,) = EventBatch.FromString(_take(new, new.begin_stream())[0].data).unobserved
    assert (w.cause, w.unacked_events, w.unacked_batches) == ("restart", 0, 0)
    assert w.from_time.ToNanoseconds() == w.last_alive_time.ToNanoseconds() == stopped
    assert w.to_time.ToNanoseconds() == stopped + 3_000_000_000


def test_from_time_moves_back_by_the_lag_but_not_before_the_start(tmp_path: Path) -> None:
    """An event reaches a batch up to lag after the kernel saw it (a flow interval in aggregate mode):
    only what happened before (last complete seal - lag) is surely in Kafka."""
    wall, clock = Wall(), Clock()
    start = wall.ns
    journal = NodeJournal.open(str(tmp_path), "n1", "n1/old", wall, 2.0)
    old = Exporter(
        ExporterSettings("n1", "n1/old", 3, 1.0, 30, heartbeat_s=5.0),
        FakeTransport(),
        clock=clock,
        wall=lambda: wall.ns / 1e9,
        journal=journal,
    )
    old.attached()
    gen = old.begin_stream()
    for _ in range(3):  # one acked batch a second
        wall.ns += 1_000_000_000
        old.emit([make_event(i) for i in range(3)], {})
        (b,) = _take(old, gen)
        old.on_ack("n1/old", b.sequence)
    journal.release()
    (w,) = NodeJournal.open(str(tmp_path), "n1", "n1/new", wall).attached()
    assert w.from_time.ToNanoseconds() == start + 3_000_000_000 - 2_000_000_000
    fresh = NodeJournal.open(str(tmp_path / "x"), "n1", "n1/a", wall, 10.0)
    fresh.attached()
    fresh.release()
    (w,) = NodeJournal.open(str(tmp_path / "x"), "n1", "n1/b", wall).attached()
    assert w.from_time.ToNanoseconds() == wall.ns  # never before the previous agent attached


def test_a_drained_stop_s_window_starts_when_it_stopped_observing_not_after_its_drain(tmp_path: Path) -> None:
    wall, clock = Wall(), Clock()
    old, _ = _exporter(tmp_path, "n1/old", wall, clock)
    old.attached()
    wall.ns += 1_000_000_000
    detached = wall.ns
    old.detached()  # the programs are detached; draining takes 0.8 s
    wall.ns += 800_000_000
    old.close(0)
    drained = wall.ns
    wall.ns += 1_000_000_000
    new, _ = _exporter(tmp_path, "n1/new", wall, clock)
    new.attached()
    clock.t += 1.0
    new.emit([], {})
    (w,) = EventBatch.FromString(_take(new, new.begin_stream())[0].data).unobserved
    assert w.cause == "restart"
    assert (w.from_time.ToNanoseconds(), w.last_alive_time.ToNanoseconds()) == (detached, drained)
    assert w.to_time.ToNanoseconds() == drained + 1_000_000_000


def test_an_agent_attached_while_the_old_one_drains_reports_the_handover_with_its_unsent_events(
    tmp_path: Path,
) -> None:
    """The old agent holds the node's lock while it drains (its collector stalled): the new one
    reports nothing yet, then the window and the old one's undelivered batches once it has exited."""
    wall, clock = Wall(), Clock()
    old, _ = _exporter(tmp_path, "n1/old", wall, clock)
    old.attached()
    gen = old.begin_stream()
    old.emit([make_event(i) for i in range(5)], {})  # one batch of 3 sealed and sent, never acked
    _take(old, gen)
    wall.ns += 1_000_000_000
    detached = wall.ns
    old.detached()
    wall.ns += 1_500_000_000
    new, new_journal = _exporter(tmp_path, "n1/new", wall, clock)
    new.attached()  # the lock is held: nothing to report yet
    attached = wall.ns
    clock.t += 1.0
    new.emit([], {})
    gen_new = new.begin_stream()
    assert all(not EventBatch.FromString(b.data).unobserved for b in _take(new, gen_new))
    assert new_journal.takeover_pending
    new.emit([make_event(7)], {})  # an open batch, sealed below by the transport thread
    wall.ns += 2_000_000_000
    old.close(0)  # the grace ran out: 5 events never acknowledged (agent.shutdown_unsent)
    assert old.losses() == {"agent.shutdown_unsent": 5}
    clock.t += 1.0
    assert new.next_batch(0.0, gen_new) is not None  # sealed before the journal was taken over
    new.emit([], {})
    clock.t += 1.0
    new.emit([], {})
    windows = [w for b in _take(new, gen_new) for w in EventBatch.FromString(b.data).unobserved]
    (w,) = windows
    assert (w.previous_agent_id, w.agent_id, w.cause) == ("n1/old", "n1/new", "undrained")
    assert (w.unacked_batches, w.unacked_events, list(w.unacked_sequences)) == (2, 5, [1, 2])
    assert w.from_time.ToNanoseconds() <= detached and w.to_time.ToNanoseconds() == attached
    assert not new_journal.takeover_pending


def test_a_surge_where_both_observed_reports_nothing(tmp_path: Path) -> None:
    wall, clock = Wall(), Clock()
    old, _ = _exporter(tmp_path, "n1/old", wall, clock)
    old.attached()
    wall.ns += 1_000_000_000
    new, new_journal = _exporter(tmp_path, "n1/new", wall, clock)
    new.attached()  # while the old one still observes
    wall.ns += 1_000_000_000
    old.detached()
    old.close(0)
    clock.t += 1.0
    new.emit([], {})
    clock.t += 1.0
    new.emit([], {})
    assert not new_journal.takeover_pending
    assert all(not EventBatch.FromString(b.data).unobserved for b in _take(new, new.begin_stream()))
