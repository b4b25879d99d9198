"""Losses, and which of them are definite: the one place that says so, for the agent, the exporter,
the Kafka layout, tail and the simulator.

Every stage reports cumulative losses by reason (`kernel.ringbuf_full`, `agent.buffer_full`, ...).
Most are definite: an event existed and was dropped. A few are only *possible* losses, upper
bounds that cannot tell a lost event from nothing: the kernel skipping a run of one of our programs
because another BPF program was running on that CPU (the run may have concerned a socket outside
the agent's filters). They are reported everywhere, but apart from the definite count. And one
counts sockets, not events (UNTRACKED_SOCKET_REASONS): reported as sockets not tracked.

A batch carries its losses as `Losses` (EventBatch.lost): the totals `kernel`, `agent_buffer` and
`enrichment` (definite), `kernel_skipped_runs` (possible), `sockets_untracked` (sockets), and every
reason in `by_reason`.
Readers add them up by name (`counts`, `add_counts`) and take the definite and possible sums from those
(`definite_total`, `possible_total`)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from tcpscope.v1.events_pb2 import Losses

POSSIBLE_LOSS_REASONS = frozenset({"kernel.recursion_misses"})

DEFINITE_TOTALS = ("kernel", "agent_buffer", "enrichment")
"""The `Losses` totals that are definite losses (every reason but the possible ones, in three sums)."""
POSSIBLE_TOTAL = "kernel_skipped_runs"
"""The `Losses` total of the possible ones (POSSIBLE_LOSS_REASONS)."""

UNTRACKED_SOCKET_REASONS = frozenset({"kernel.socket_map_full"})
"""Reasons that count sockets, not events: sockets the agent could not track (its per-socket map was
full at their start). Their events are missing, but how many is unknown: reported as sockets
(Losses.sockets_untracked), never added to a count of lost events."""
UNTRACKED_TOTAL = "sockets_untracked"
"""The `Losses` total of the untracked sockets (UNTRACKED_SOCKET_REASONS)."""


def definite(losses: Mapping[str, int]) -> dict[str, int]:
    """The reasons (or `counts` names) that are definite losses of events."""
    return {
        k: v
        for k, v in losses.items()
        if k not in POSSIBLE_LOSS_REASONS
        and k != POSSIBLE_TOTAL
        and k not in UNTRACKED_SOCKET_REASONS
        and k != UNTRACKED_TOTAL
    }


def untracked(losses: Mapping[str, int]) -> dict[str, int]:
    """The reasons (or `counts` names) that count sockets not tracked (their events missing)."""
    return {k: v for k, v in losses.items() if k in UNTRACKED_SOCKET_REASONS}


def untracked_total(lost: Losses | Mapping[str, int]) -> int:
    """How many sockets the agent could not track: a batch's, or of sums made by `add_counts`."""
    if isinstance(lost, Losses):
        return int(lost.sockets_untracked)
    return lost.get(UNTRACKED_TOTAL, 0)


def possible(losses: Mapping[str, int]) -> dict[str, int]:
    """The reasons that are possible losses (upper bounds)."""
    return {k: v for k, v in losses.items() if k in POSSIBLE_LOSS_REASONS}


def possible_text(skipped_runs: int) -> str:
    """What `kernel_skipped_runs` means, in the words the readers and the agent print it with."""
    return (
        f"up to {skipped_runs} more may be missing: the kernel skipped {skipped_runs} runs of the agent's BPF "
        "programs because another BPF program was running on that CPU, and a skipped run may have carried an event"
    )


def counts(lost: Losses) -> dict[str, int]:
    """A batch's losses by name: the five totals, then each reason."""
    out = {name: getattr(lost, name) for name in (*DEFINITE_TOTALS, POSSIBLE_TOTAL, UNTRACKED_TOTAL)}
    out.update(lost.by_reason)
    return out


def add_counts(into: MutableMapping[str, int], lost: Losses) -> None:
    """Add a batch's `counts` to running sums (several batches, one report)."""
    for k, v in counts(lost).items():
        into[k] = into.get(k, 0) + v


def definite_total(lost: Losses | Mapping[str, int]) -> int:
    """How many events were definitely lost: a batch's, or of sums made by `add_counts`."""
    if isinstance(lost, Losses):
        return sum(getattr(lost, name) for name in DEFINITE_TOTALS)
    return sum(lost.get(name, 0) for name in DEFINITE_TOTALS)


def possible_total(lost: Losses | Mapping[str, int]) -> int:
    """How many more events may have been lost (program runs the kernel skipped)."""
    if isinstance(lost, Losses):
        return int(lost.kernel_skipped_runs)
    return lost.get(POSSIBLE_TOTAL, 0)
