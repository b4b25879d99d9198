"""Loss reasons shared by the agent, the exporter, tail and the simulator.

Every stage reports cumulative losses by reason (`kernel.ringbuf_full`, `agent.buffer_full`, ...).
Most are definite: an event existed and was dropped. A few are only *possible* losses, upper
bounds that cannot tell a lost event from nothing: the kernel skipping a run of one of our programs
because another BPF program was running on that CPU (the run may have concerned a socket outside
the agent's filters). They are reported everywhere, but apart from the definite count."""

from __future__ import annotations

from collections.abc import Mapping

POSSIBLE_LOSS_REASONS = frozenset({"kernel.recursion_misses"})


def definite(losses: Mapping[str, int]) -> dict[str, int]:
    """The reasons that are definite losses."""
    return {k: v for k, v in losses.items() if k not in POSSIBLE_LOSS_REASONS}


def possible(losses: Mapping[str, int]) -> dict[str, int]:
    """The reasons that are possible losses (upper bounds)."""
    return {k: v for k, v in losses.items() if k in POSSIBLE_LOSS_REASONS}


def possible_text(skipped_runs: int) -> str:
    """What `kernel_skipped_runs` means, in the words the readers and the agent print it with."""
    return (
        f"up to {skipped_runs} more may be missing: the kernel skipped {skipped_runs} runs of the agent's BPF "
        "programs because another BPF program was running on that CPU, and a skipped run may have carried an event"
    )
