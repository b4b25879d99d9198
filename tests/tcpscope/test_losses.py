"""tcpscope/losses.py: which losses are definite, and a batch's losses by name, in one place."""

from __future__ import annotations

from tcpscope import losses
from tcpscope.kafka_layout import H_LOST_TOTAL, batch_records, header_map
from tcpscope.v1.events_pb2 import EventBatch, Losses


def _lost(kernel: int, buffer: int, enrichment: int, skipped: int, **reasons: int) -> Losses:
    lost = Losses(kernel=kernel, agent_buffer=buffer, enrichment=enrichment, kernel_skipped_runs=skipped)
    for k, v in reasons.items():
        lost.by_reason[k.replace("__", ".")] = v
    return lost


def test_definite_and_possible_totals_of_a_batch_and_of_sums() -> None:
    a = _lost(3, 2, 1, 7, kernel__ringbuf_full=3, agent__buffer_full=2, enrich__pending_full=1)
    b = _lost(1, 0, 0, 0, kernel__ringbuf_full=1)
    assert (losses.definite_total(a), losses.possible_total(a)) == (6, 7)
    assert losses.counts(b) == {
        "kernel": 1,
        "agent_buffer": 0,
        "enrichment": 0,
        "kernel_skipped_runs": 0,
        "sockets_untracked": 0,
        "kernel.ringbuf_full": 1,
    }
    sums: dict[str, int] = {}
    losses.add_counts(sums, a)
    losses.add_counts(sums, b)
    assert sums["kernel"] == 4 and sums["kernel.ringbuf_full"] == 4 and sums["kernel_skipped_runs"] == 7
    # the same figures from the sums as from the batches: reasons are never counted a second time
    assert (losses.definite_total(sums), losses.possible_total(sums)) == (7, 7)
    assert losses.definite_total({}) == losses.possible_total({}) == 0


def test_possible_losses_stay_apart() -> None:
    reasons = {"kernel.ringbuf_full": 2, "kernel.recursion_misses": 5, "agent.buffer_full": 1}
    assert losses.definite(reasons) == {"kernel.ringbuf_full": 2, "agent.buffer_full": 1}
    assert losses.possible(reasons) == {"kernel.recursion_misses": 5}
    # a reader's sums hold the possible total under its own name: not a definite loss either
    assert losses.definite({"kernel": 2, "kernel_skipped_runs": 5}) == {"kernel": 2}


def test_the_summary_record_header_carries_the_definite_total() -> None:
    batch = EventBatch(schema_version=1, node="n", agent_id="a", sequence=1)
    batch.lost.CopyFrom(_lost(3, 2, 1, 9))
    assert header_map(batch_records(batch)[-1].headers)[H_LOST_TOTAL] == "6"


def test_untracked_sockets_are_sockets_not_lost_events() -> None:
    reasons = {"kernel.ringbuf_full": 2, "kernel.socket_map_full": 501}
    assert losses.definite(reasons) == {"kernel.ringbuf_full": 2}
    assert losses.untracked(reasons) == {"kernel.socket_map_full": 501}
    sums: dict[str, int] = {}
    lost = _lost(2, 0, 0, 0, kernel__ringbuf_full=2, kernel__socket_map_full=501)
    lost.sockets_untracked = 501
    losses.add_counts(sums, lost)
    assert (losses.definite_total(sums), losses.untracked_total(sums), losses.untracked_total(lost)) == (2, 501, 501)
    assert "sockets_untracked" not in losses.definite(sums)
