"""The node journal: a small state file that outlives the agent process, so an agent that ended
without draining leaves a mark, and the next agent on the node reports the window nobody observed.

One file per node, `STATE_DIR/agent-NODE.json` (a hostPath in the chart), rewritten atomically
(write + rename) whenever the exporter seals a batch and whenever a batch is settled (acked or
dropped), and once more at shutdown. It says which incarnation ran, when it was last alive, how far
its batches are acknowledged, and which batches (and how many events) were sealed but never acked.

At start-up the journal reads what the previous incarnation left; once the new agent is attached
to the kernel, `attached()` turns that into `UnobservedWindow`s (tcpscope.v1) for the exporter to
send. Windows are kept in the file as unreported until the batch carrying them is acknowledged, so
an agent that dies again before reporting passes them on to the next one.

What cannot be counted is said, not guessed: events the kernel produced while no agent was attached,
and those in the kernel buffer or the exporter's open batch when the process died.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from tcpscope.v1.events_pb2 import UnobservedWindow

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
RUNNING, DRAINED, UNDRAINED = "running", "drained", "undrained"
CAUSES = {RUNNING: "crash", UNDRAINED: "undrained", DRAINED: "restart"}


def state_path(state_dir: str, node: str) -> Path:
    return Path(state_dir) / f"agent-{node}.json"


@dataclass
class NodeJournal:
    """Exporter-side bookkeeping of one incarnation, mirrored to the state file (see module doc)."""

    path: Path
    node: str
    agent_id: str
    wall_ns: Callable[[], int]
    previous: dict[str, Any] | None = None
    # the longest an event can take from the kernel to a sealed batch (flow interval in aggregate
    # mode, the wait for an unknown pod, batch age, polling): from_time is moved back by it
    lag_ns: int = 0
    started_ns: int = 0
    last_sequence: int = 0
    unacked: dict[int, int] = field(default_factory=dict)  # sequence -> events
    sealed_ns: dict[int, int] = field(default_factory=dict)  # sequence -> seal time, pruned
    complete_through_ns: int = 0
    unreported: list[UnobservedWindow] = field(default_factory=list)
    reporting: set[int] = field(default_factory=set)  # sequences carrying the unreported windows
    _attached: bool = False

    @staticmethod
    def open(state_dir: str, node: str, agent_id: str, wall_ns: Callable[[], int], lag_s: float = 0.0) -> NodeJournal:
        """Read what the previous incarnation left (the file is only written after attached())."""
        path = state_path(state_dir, node)
        previous: dict[str, Any] | None = None
        try:
            raw = json.loads(path.read_text())
            if isinstance(raw, dict) and raw.get("version") == FORMAT_VERSION:
                previous = raw
            else:
                log.warning("state file %s has an unknown format: ignored", path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("state file %s unreadable (%s): the window before this agent cannot be reported", path, e)
        return NodeJournal(path, node, agent_id, wall_ns, previous, int(lag_s * 1e9))

    def attached(self) -> list[UnobservedWindow]:
        """The agent observes from now on: the windows to report (the previous incarnation's gap and
        any it had not managed to report), and the file now describes this incarnation."""
        now = self.wall_ns()
        self.started_ns = self.complete_through_ns = now
        self._attached = True
        windows: list[UnobservedWindow] = []
        prev = self.previous
        if prev is not None and prev.get("agent_id") != self.agent_id:
            for w in prev.get("unreported", []):
                windows.append(json_format.ParseDict(w, UnobservedWindow()))
            state = str(prev.get("state", RUNNING))
            alive = int(prev.get("updated_ns", 0))
            w = UnobservedWindow(node=self.node, previous_agent_id=str(prev.get("agent_id", "")),
                                 agent_id=self.agent_id, cause=CAUSES.get(state, "crash"), uncounted=True,
                                 first_unacked_sequence=int(prev.get("first_unacked_sequence", 0)),
                                 last_sequence=int(prev.get("last_sequence", 0)),
                                 unacked_batches=int(prev.get("unacked_batches", 0)),
                                 unacked_events=int(prev.get("unacked_events", 0)),
                                 unacked_sequences=[int(x) for x in prev.get("unacked_sequences", [])])
            started = int(prev.get("started_ns", 0))
            if state == DRAINED:
                complete = alive
            else:  # batches sealed up to complete_through_ns were acked, but an event can reach a
                # batch up to lag_ns after the kernel saw it: only events before that are surely in
                complete = max(started, int(prev.get("complete_through_ns", 0)) - int(prev.get("lag_ns", 0)))
            w.from_time.FromNanoseconds(complete or started)
            w.to_time.FromNanoseconds(now)
            w.last_alive_time.FromNanoseconds(alive)
            windows.append(w)
        self.unreported = windows
        self._write(RUNNING)
        return list(windows)

    def sealed(self, sequence: int, events: int, sent_ns: int, carries_windows: bool) -> None:
        self.last_sequence = max(self.last_sequence, sequence)
        self.unacked[sequence] = events
        self.sealed_ns[sequence] = sent_ns
        if carries_windows:
            self.reporting.add(sequence)
        self._advance()
        self._write(RUNNING)

    def settled(self, sequence: int, acked: bool) -> None:
        """Batch `sequence` is acknowledged (acked) or given up (dropped or refused: its loss is then
        reported under a later sequence, which the journal tracks in turn)."""
        if self.unacked.pop(sequence, None) is None:
            return
        if sequence in self.reporting:
            self.reporting.discard(sequence)
            if acked:
                self.unreported = []  # the windows are in Kafka
                self.reporting.clear()
        self._advance()
        self._write(RUNNING)

    def closed(self, drained: bool) -> None:
        self._write(DRAINED if drained and not self.unacked else UNDRAINED)

    def _advance(self) -> None:
        """complete_through_ns: the seal time of the last batch that, with all before it, is settled."""
        first = min(self.unacked) if self.unacked else self.last_sequence + 1
        done = [s for s in self.sealed_ns if s < first]
        if done:
            last = max(done)
            self.complete_through_ns = self.sealed_ns[last]
            for s in done:
                if s != last:
                    del self.sealed_ns[s]

    def _write(self, state: str) -> None:
        if not self._attached:
            return
        doc = {
            "version": FORMAT_VERSION, "node": self.node, "agent_id": self.agent_id, "state": state,
            "started_ns": self.started_ns, "updated_ns": self.wall_ns(),
            "complete_through_ns": self.complete_through_ns, "last_sequence": self.last_sequence,
            "lag_ns": self.lag_ns,
            "first_unacked_sequence": min(self.unacked) if self.unacked else 0,
            "unacked_batches": len(self.unacked), "unacked_events": sum(self.unacked.values()),
            "unacked_sequences": sorted(self.unacked),
            "unreported": [json_format.MessageToDict(w, preserving_proto_field_name=True) for w in self.unreported],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot write state file %s: %s", self.path, e)
