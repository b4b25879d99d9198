"""Loss reasons shared by the agent, the exporter, tail and the simulator.

Every stage reports cumulative losses by reason (`kernel.ringbuf_full`, `agent.buffer_full`, ...).
Most are definite: an event existed and was dropped. A few are only *possible* losses, upper
bounds that cannot tell a lost event from nothing: the kernel skipping a run of one of our programs
because another BPF program was running on that CPU (the run may have concerned a socket outside
the agent's filters). They are reported everywhere, but apart from the definite count. And one
counts sockets, not events (UNTRACKED_SOCKET_REASONS): reported as sockets not tracked."""

from __future__ import annotations

from collections.abc import Mapping

POSSIBLE_LOSS_REASONS = frozenset({"kernel.recursion_misses"})

UNTRACKED_SOCKET_REASONS = frozenset({"kernel.socket_map_full"})
"""Reasons that count sockets, not events: sockets the agent could not track (its per-socket map was
full at their start). Their events are missing, but how many is unknown: reported as sockets
(Losses.sockets_untracked), never added to a count of lost events."""


def definite(losses: Mapping[str, int]) -> dict[str, int]:
    """The reasons that are definite losses of events."""
    return {k: v for k, v in losses.items() if k not in POSSIBLE_LOSS_REASONS and k not in UNTRACKED_SOCKET_REASONS}


def untracked(losses: Mapping[str, int]) -> dict[str, int]:
    """The reasons that count sockets not tracked (their events missing)."""
    return {k: v for k, v in losses.items() if k in UNTRACKED_SOCKET_REASONS}


def possible(losses: Mapping[str, int]) -> dict[str, int]:
    """The reasons that are possible losses (upper bounds)."""
    return {k: v for k, v in losses.items() if k in POSSIBLE_LOSS_REASONS}
