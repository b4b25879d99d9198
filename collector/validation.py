"""What the collector accepts. The collector is the trust boundary (docs/kafka.md, "Bounds"):

- a batch's framing (size, schema version, ids, node binding) and its own fields (string and repeated
  sizes: tcpscope/bounds.py) are checked when it is read; a batch outside them is refused with its
  sequence (reason invalid_batch), and the agent drops it and counts its events (tcpscope/refusal.py);
- the times a batch carries itself (sent_time, last_ack_time, its unobserved windows') outside the
  window around this collector's clock are cleared and counted (`clamp_batch_times`): the batch is
  kept, those times are unknown;
- each event outside the bounds, its times held to that window too, is left out of the batch and
  counted in the batch's own loss report as collector.invalid_<bound> (`drop_invalid_events`), so
  readers see the loss in the batch summary record, and the agent is told in the ack.

A refused batch is answered with a precise gRPC status and counted by reason."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from collector.config import CollectorConfig
from collector.node_binding import check_binding
from tcpscope.bounds import TimeWindow, batch_problem, batch_time_fields, event_problem
from tcpscope.kafka_layout import SCHEMA_VERSION
from tcpscope.refusal import INVALID_BATCH
from tcpscope.v1.events_pb2 import EventBatch

REFUSED_INVALID_BATCH = INVALID_BATCH
INVALID_PREFIX = "collector.invalid_"  # + the bound: time, port, address, enum, string, repeated, empty


@dataclass(frozen=True)
class Refusal:
    """Why a message or stream is refused: the gRPC status, a metrics reason, a message, and for a
    refusal of one batch for what it is, that batch's sequence (sent back as trailing metadata, so
    the agent can split or drop it instead of resending it forever: tcpscope/refusal.py)."""

    code: grpc.StatusCode
    reason: str
    details: str
    sequence: int = 0


def validate(raw: bytes, cfg: CollectorConfig, peer_names: frozenset[str] | None) -> EventBatch | Refusal:
    """Parse and check one batch; peer_names is the nodes the client authenticated as (certificate
    names under mTLS, the token's pod's node under --tokenreview), None when nothing binds it."""
    if len(raw) > cfg.max_message_bytes:
        return Refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "oversized",
            f"batch of {len(raw)} bytes exceeds --max-message-bytes {cfg.max_message_bytes}",
            _sequence_of(raw),
        )
    batch = EventBatch()
    try:
        batch.ParseFromString(raw)
    except DecodeError as e:
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, "malformed", f"not a tcpscope.v1.EventBatch: {e}")
    if batch.schema_version != SCHEMA_VERSION:
        return Refusal(
            grpc.StatusCode.FAILED_PRECONDITION,
            "schema_version",
            f"schema_version {batch.schema_version} is not supported (want {SCHEMA_VERSION})",
        )
    if len(batch.events) > cfg.max_batch_events:
        return Refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "too_many_events",
            f"{len(batch.events)} events exceed --max-batch-events {cfg.max_batch_events}",
            batch.sequence,
        )
    if not batch.agent_id or not batch.node or batch.sequence == 0:
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, "missing_id", "batch needs node, agent_id and a sequence >= 1")
    if peer_names is not None:  # the nodes the client authenticated as (collector/node_binding.py)
        bad = check_binding(batch, peer_names)
        if bad is not None:
            return Refusal(grpc.StatusCode.PERMISSION_DENIED, bad[0], bad[1])
    problem = batch_problem(batch)
    if problem is not None:
        return Refusal(
            grpc.StatusCode.INVALID_ARGUMENT,
            REFUSED_INVALID_BATCH,
            f"batch outside the bounds ({problem}; docs/kafka.md, Bounds)",
            batch.sequence,
        )
    return batch


def window(cfg: CollectorConfig, now_s: float) -> TimeWindow:
    """The event and batch times accepted now (--max-event-age before the clock, --max-event-ahead after)."""
    return TimeWindow.around(now_s, cfg.max_event_age, cfg.max_event_ahead)


def clamp_batch_times(batch: EventBatch, accepted: TimeWindow) -> dict[str, int]:
    """Clear the batch's own times outside the window (counted by field: sent_time, last_ack_time,
    unobserved_time); an unobserved window that lost a time is marked `uncounted`."""
    clamped: dict[str, int] = {}
    for name, msg, f in batch_time_fields(batch):
        if msg.HasField(f) and not accepted.holds(getattr(msg, f)):
            msg.ClearField(f)
            clamped[name] = clamped.get(name, 0) + 1
    if "unobserved_time" in clamped:
        for w in batch.unobserved:
            if not (w.HasField("from_time") and w.HasField("to_time")):
                w.uncounted = True
    return clamped


def drop_invalid_events(batch: EventBatch, accepted: TimeWindow) -> dict[str, int]:
    """Leave out every event outside the bounds (tcpscope/bounds.py, times within `accepted`), counted
    in the batch's loss report (by_reason collector.invalid_<bound>, summed into `kernel`, the bucket
    of losses outside the agent's buffer and enrichment). Returns the counts by reason."""
    dropped: dict[str, int] = {}
    keep = []
    for ev in batch.events:
        problem = event_problem(ev, accepted)
        if problem is None:
            keep.append(ev)
        else:
            reason = INVALID_PREFIX + problem
            dropped[reason] = dropped.get(reason, 0) + 1
    if dropped:
        del batch.events[:]
        batch.events.extend(keep)
        for reason, n in dropped.items():
            batch.lost.by_reason[reason] += n
            batch.lost.kernel += n
    return dropped


def _sequence_of(raw: bytes) -> int:
    """The sequence of a batch too big to accept (0 if it does not parse); gRPC already let it in
    (the server's hard limit is above --max-message-bytes), so parsing it costs no new memory bound."""
    batch = EventBatch()
    try:
        batch.ParseFromString(raw)
    except DecodeError:
        return 0
    return batch.sequence
