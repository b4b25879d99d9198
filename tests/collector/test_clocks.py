"""The clock offset estimate (collector/clocks.py): bounds from batches and echoed acks, exact
arithmetic on chosen times."""

from __future__ import annotations

from collector.clocks import ClockEstimator, Offset
from tcpscope.v1.events_pb2 import EventBatch

S = 1_000_000_000
BASE = 1_800_000_000 * S


def _batch(sent_ns: int, ack_seq: int = 0, ack_ns: int = 0) -> EventBatch:
    b = EventBatch(sequence=1)
    b.sent_time.FromNanoseconds(sent_ns)
    if ack_seq:
        b.last_ack_sequence = ack_seq
        b.last_ack_time.FromNanoseconds(ack_ns)
    return b


def test_lower_bound_alone_then_bounded_by_the_echoed_ack() -> None:
    c = ClockEstimator()
    # the agent is 5 s ahead; the batch took 2 ms to arrive
    assert c.observe(_batch(BASE + 5 * S), BASE + 2_000_000) == Offset(5 * S - 2_000_000, 0, False)
    c.ack_sent(1, BASE + 3_000_000)
    # the ack arrived 1 ms later (agent clock: +5 s); echoed on the next batch
    got = c.observe(_batch(BASE + 5 * S + 10_000_000, 1, BASE + 5 * S + 4_000_000), BASE + 11_000_000)
    # lower bounds: 5 s - 2 ms and 5 s - 1 ms; upper: 5 s + 1 ms -> [5 s - 1 ms, 5 s + 1 ms]
    assert got == Offset(5 * S, 1_000_000, True)


def test_an_ack_of_another_stream_is_no_bound_and_old_resends_do_not_lower_it() -> None:
    c = ClockEstimator()
    c.observe(_batch(BASE), BASE + 1_000_000)
    assert c.observe(_batch(BASE - 60 * S, 9, BASE), BASE + 2_000_000) == Offset(-1_000_000, 0, False)


def test_a_clock_step_forgets_the_older_samples() -> None:
    c = ClockEstimator()
    c.observe(_batch(BASE), BASE)
    c.ack_sent(1, BASE + 1_000_000)
    assert c.observe(_batch(BASE + 10_000_000, 1, BASE + 2_000_000), BASE + 10_000_000).bounded  # type: ignore[union-attr]
    # the agent's clock steps 3 s back: its new lower bound (-3 s) is below the old upper bound, fine;
    # a new upper bound of -3 s contradicts the old lower bound (0): the old samples go
    c.ack_sent(2, BASE + 20_000_000)
    got = c.observe(_batch(BASE + 30_000_000 - 3 * S, 2, BASE + 21_000_000 - 3 * S), BASE + 30_000_000)
    assert got == Offset(-3 * S + 500_000, 500_000, True)
