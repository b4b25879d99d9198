"""Unobserved windows and dedup conflicts, as readers report them (tail, --summary). Pure code.

An `UnobservedWindow` (proto) arrives on an agent's batch summary record: a span of time on a node
that no agent observed completely (docs/kafka.md, "Unobserved windows"). `Gaps` collects them and
checks, against what the topic holds, which of the previous incarnation's unacked batches reached
Kafka anyway (an ack lost) and how many of their events are definitely missing.

A *conflict* is two records under one dedup key (agent id, batch sequence, index) with different
content: two producers used one agent id. Readers keep both and report it (`Conflicts`); dropping
one as a "duplicate" would hide a real event behind a forged one.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tcpscope.kafka_layout import RECORD_EVENT, Decoded
from tcpscope.v1.events_pb2 import UnobservedWindow

MAX_CONFLICT_EXAMPLES = 20


def rfc3339(ns: int) -> str:
    """RFC 3339 of a time in ns; one no calendar holds (a record outside the bounds: tcpscope/bounds.py)
    is shown as its number instead of stopping the reader."""
    if not ns:
        return ""
    try:
        t = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).replace(microsecond=(ns // 1000) % 1_000_000)
    except (OverflowError, ValueError, OSError):
        return f"@{ns}ns"
    return t.isoformat().replace("+00:00", "Z")


@dataclass
class Gaps:
    """Windows nobody observed, plus what the topic tells about the unacked batches they name."""

    windows: list[UnobservedWindow] = field(default_factory=list)
    _seen_windows: set[tuple[str, str, int]] = field(default_factory=set)
    _batch_events: Counter[tuple[str, int]] = field(default_factory=Counter)  # events read per batch
    _summaries: set[tuple[str, int]] = field(default_factory=set)  # batches whose summary was read

    def take(self, d: Decoded) -> None:
        """Every record a reader keeps (after dedup): counts events per batch, collects windows."""
        if d.kind == RECORD_EVENT:
            self._batch_events[(d.agent_id, d.sequence)] += 1
            return
        if d.summary is None:
            return
        self._summaries.add((d.agent_id, d.sequence))
        for w in d.summary.unobserved:
            key = (w.previous_agent_id, w.agent_id, w.to_time.ToNanoseconds())
            if key not in self._seen_windows:  # re-reported after a second crash: once
                self._seen_windows.add(key)
                self.windows.append(w)

    def to_json(self, w: UnobservedWindow) -> dict[str, Any]:
        in_topic = [s for s in w.unacked_sequences if (w.previous_agent_id, s) in self._summaries]
        events_in_topic = sum(self._batch_events[(w.previous_agent_id, s)] for s in w.unacked_sequences)
        f, t = w.from_time.ToNanoseconds(), w.to_time.ToNanoseconds()
        return {
            "node": w.node,
            "previous_agent_id": w.previous_agent_id,
            "agent_id": w.agent_id,
            "cause": w.cause,
            "from": rfc3339(f),
            "to": rfc3339(t),
            "seconds": round(max(0, t - f) / 1e9, 3),
            "last_alive": rfc3339(w.last_alive_time.ToNanoseconds()),
            "unacked_batches": w.unacked_batches,
            "unacked_events": w.unacked_events,
            "unacked_sequences": list(w.unacked_sequences),
            # of those, what reached the topic anyway (an ack lost) and what is definitely missing
            "unacked_batches_in_topic": len(in_topic),
            "missing_events": max(0, w.unacked_events - events_in_topic),
            "uncounted": w.uncounted,
        }

    def json_list(self) -> list[dict[str, Any]]:
        return [self.to_json(w) for w in self.windows]

    def footer_lines(self) -> list[str]:
        out = []
        for g in self.json_list():
            out.append(
                f"# UNOBSERVED node {g['node']} from {g['from']} to {g['to']} ({g['seconds']}s, {g['cause']}; "
                f"agent {g['previous_agent_id']} -> {g['agent_id']}): {g['missing_events']} events known "
                f"missing"
                + (
                    " and more that nobody could count (kernel buffer, open batch, time with no agent)"
                    if g["uncounted"]
                    else ""
                )
            )
        return out


def unobserved_line(w: UnobservedWindow) -> str:
    """One line for a live reader, which cannot yet tell which unacked batches reached the topic."""
    f, t = w.from_time.ToNanoseconds(), w.to_time.ToNanoseconds()
    return (
        f"# UNOBSERVED node {w.node} from {rfc3339(f)} to {rfc3339(t)} ({max(0, t - f) / 1e9:.3f}s, {w.cause}; "
        f"agent {w.previous_agent_id} -> {w.agent_id}): up to {w.unacked_events} events in "
        f"{w.unacked_batches} unacked batches" + (" and more that nobody could count" if w.uncounted else "")
    )


@dataclass
class Conflicts:
    """Records that shared a dedup key with a different earlier record: all kept, here reported."""

    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, d: Decoded) -> None:
        self.count += 1
        if len(self.examples) < MAX_CONFLICT_EXAMPLES:
            self.examples.append(
                {
                    "agent_id": d.agent_id,
                    "sequence": d.sequence,
                    "index": d.index if d.kind == RECORD_EVENT else -1,
                    "kind": d.kind,
                }
            )

    def line(self) -> str:
        if not self.count:
            return ""
        first = self.examples[0]
        return (
            f"# CONFLICT: {self.count} records reuse the dedup key of a different record (two producers "
            f"under one agent id, e.g. {first['agent_id']} batch {first['sequence']}): all kept, none "
            f"dropped as a duplicate"
        )
