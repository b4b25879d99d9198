"""What the collector accepts: one batch's framing (size, schema version, ids, node binding), before
it is published. A refused batch is answered with a precise gRPC status and counted by reason."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from collector.config import CollectorConfig
from collector.node_binding import check_binding
from tcpscope.kafka_layout import SCHEMA_VERSION
from tcpscope.v1.events_pb2 import EventBatch


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
    return batch


def _sequence_of(raw: bytes) -> int:
    """The sequence of a batch too big to accept (0 if it does not parse); gRPC already let it in
    (the server's hard limit is above --max-message-bytes), so parsing it costs no new memory bound."""
    batch = EventBatch()
    try:
        batch.ParseFromString(raw)
    except DecodeError:
        return 0
    return batch.sequence
