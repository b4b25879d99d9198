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

A handover: the old agent notes when it stops observing (`detached()`, written at once), then
drains; a drained stop's window starts there, not at its last write after draining. A new agent that
attaches while the old one still holds the node's lock (draining, or a surge where both observe)
waits for it: `take_over()` (polled by the exporter) gets the lock once the old agent has exited and
reports the window between the old agent's detach and this agent's attach, with what the old one
could not deliver (its unacked batches and events), or nothing when both observed all along.

What cannot be counted is said, not guessed: events the kernel produced while no agent was attached,
and those in the kernel buffer or the exporter's open batch when the process died.
"""

from __future__ import annotations

import fcntl
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
    _lock_fd: int | None = None  # flock on agent-NODE.lock: one agent writes a node's state at a time
    detached_ns: int = 0  # when this incarnation stopped observing (0: still observing)
    _takeover_pending: bool = False  # attached while another agent held the lock: report once it is ours

    @staticmethod
    def open(state_dir: str, node: str, agent_id: str, wall_ns: Callable[[], int], lag_s: float = 0.0) -> NodeJournal:
        """The journal of this incarnation; the previous one's state is read once attached()."""
        return NodeJournal(state_path(state_dir, node), node, agent_id, wall_ns, None, int(lag_s * 1e9))

    def _read_previous(self) -> dict[str, Any] | None:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("state file %s unreadable (%s): the window before this agent cannot be reported", self.path, e)
            return None
        if isinstance(raw, dict) and raw.get("version") == FORMAT_VERSION:
            return raw
        log.warning("state file %s has an unknown format: ignored", self.path)
        return None

    def _try_lock(self) -> bool:
        """Take the node's lock if free. The kernel releases it when the holder dies (kill -9 too), so
        a held lock means another agent of this node is alive (a DaemonSet surge, two agents
        started by hand): its state file is not a crash to report."""
        if self._lock_fd is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.warning("cannot open the lock of %s: %s", self.path, e)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def release(self) -> None:
        """Give up the node's lock (process exit does it too)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def attached(self) -> list[UnobservedWindow]:
        """The agent observes from now on: the windows to report (the previous incarnation's gap and
        any it had not managed to report), and the file now describes this incarnation."""
        now = self.wall_ns()
        self.started_ns = self.complete_through_ns = now
        self._attached = True
        if not self._try_lock():
            # another live agent of this node: draining (it detached before we attached: a window), or
            # still observing (a surge: both observe, no window). Which, its state file says once it
            # exits and the lock is ours: take_over()
            self._takeover_pending = True
            log.warning(
                "another agent of node %s holds %s: this one reports the handover once it exits",
                self.node,
                self.path.with_suffix(".lock"),
            )
            return []
        return self._report_previous()

    @property
    def takeover_pending(self) -> bool:
        return self._takeover_pending

    def take_over(self) -> list[UnobservedWindow]:
        """Attached while another agent held the node's lock: once it has exited (the lock is free),
        the windows of the handover (see attached()); nothing before that, or with nothing to report."""
        if not self._takeover_pending or not self._try_lock():
            return []
        self._takeover_pending = False
        windows = self._report_previous()
        if windows:
            log.warning("took the state file of node %s over: reporting %d windows", self.node, len(windows))
        return windows

    def _report_previous(self) -> list[UnobservedWindow]:
        """With the lock held: the previous incarnation's windows (they stay unreported until acked),
        and the file now describes this incarnation."""
        windows: list[UnobservedWindow] = []
        self.previous = prev = self._read_previous()
        if prev is not None and prev.get("agent_id") != self.agent_id:
            windows += [json_format.ParseDict(w, UnobservedWindow()) for w in prev.get("unreported", [])]
            w = self._window(prev)
            if w is not None:
                windows.append(w)
        self.unreported = windows
        self._write(RUNNING)
        return list(windows)

    def _window(self, prev: dict[str, Any]) -> UnobservedWindow | None:
        """The span the previous incarnation's state leaves unobserved up to this one's attach, None
        when there is none: it drained, and detached only after this one attached (both observed)."""
        state = str(prev.get("state", RUNNING))
        alive = int(prev.get("updated_ns", 0))
        started = int(prev.get("started_ns", 0))
        detached = int(prev.get("detached_ns", 0))
        unacked = int(prev.get("unacked_batches", 0))
        if state == DRAINED:  # everything it observed is in Kafka: the window starts when it stopped observing
            complete = detached or alive
        else:  # batches sealed up to complete_through_ns were acked, but an event can reach a
            # batch up to lag_ns after the kernel saw it: only events before that are surely in
            complete = max(started, int(prev.get("complete_through_ns", 0)) - int(prev.get("lag_ns", 0)))
        if state == DRAINED and not unacked and (complete or started) >= self.started_ns:
            return None
        w = UnobservedWindow(
            node=self.node,
            previous_agent_id=str(prev.get("agent_id", "")),
            agent_id=self.agent_id,
            cause=CAUSES.get(state, "crash"),
            uncounted=True,
            first_unacked_sequence=int(prev.get("first_unacked_sequence", 0)),
            last_sequence=int(prev.get("last_sequence", 0)),
            unacked_batches=unacked,
            unacked_events=int(prev.get("unacked_events", 0)),
            unacked_sequences=[int(x) for x in prev.get("unacked_sequences", [])],
        )
        w.from_time.FromNanoseconds(complete or started)
        w.to_time.FromNanoseconds(max(self.started_ns, complete or started))
        w.last_alive_time.FromNanoseconds(alive)
        return w

    def detached(self) -> None:
        """This incarnation stops observing now (the programs are detached; it drains next): written
        at once, so the next one's window starts here even if the drain never ends."""
        self.detached_ns = self.wall_ns()
        self._write(RUNNING)

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
        self.release()

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
        # while a takeover is pending, the file is the previous agent's to read first (take_over())
        if not self._attached or self._takeover_pending or not self._try_lock():
            return
        doc = {
            "version": FORMAT_VERSION,
            "node": self.node,
            "agent_id": self.agent_id,
            "state": state,
            "started_ns": self.started_ns,
            "detached_ns": self.detached_ns,
            "updated_ns": self.wall_ns(),
            "complete_through_ns": self.complete_through_ns,
            "last_sequence": self.last_sequence,
            "lag_ns": self.lag_ns,
            "first_unacked_sequence": min(self.unacked) if self.unacked else 0,
            "unacked_batches": len(self.unacked),
            "unacked_events": sum(self.unacked.values()),
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
