"""The Kafka record layout shared by the collector (writer) and tcpscope-tail (reader). Pure code.

One record per event, plus one *batch summary* record per agent batch (docs/kafka.md):

- event record: value = serialized `tcpscope.v1.TcpEvent` (or its canonical JSON),
  key = the connection's canonical 4-tuple, lower endpoint first, so both ends' events of one
  connection land in one partition, in order;
- summary record: value = a `tcpscope.v1.EventBatch` with no events, only its header fields and
  `lost` (the loss counters since the agent's previous batch), key = the agent id.

Headers on both tell them apart and identify the batch, so consumers can drop duplicates that
at-least-once delivery allows: the dedup key of an event record is (agent-id, batch-seq, batch-index).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import json_format

from tcpscope.v1.events_pb2 import Endpoint, EventBatch, TcpEvent

SCHEMA_VERSION = 1
SCHEMA_EVENT = "tcpscope.v1.TcpEvent"
SCHEMA_BATCH = "tcpscope.v1.EventBatch"

H_SCHEMA = "tcpscope-schema"
H_SCHEMA_VERSION = "tcpscope-schema-version"
H_RECORD = "tcpscope-record"  # "event" or "batch-summary"
H_CONTENT_TYPE = "content-type"
H_AGENT_ID = "agent-id"
H_NODE = "node"
H_BATCH_SEQ = "batch-seq"
H_BATCH_INDEX = "batch-index"  # event records: position of the event in its batch
H_BATCH_EVENTS = "batch-events"  # summary records: how many event records the batch produced
H_LOST_TOTAL = "lost-total"  # summary records: kernel + agent_buffer + enrichment

RECORD_EVENT = "event"
RECORD_SUMMARY = "batch-summary"
CT_PROTOBUF = "application/x-protobuf"
CT_JSON = "application/json"
VALUE_FORMATS = ("protobuf", "json")

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Record:
    """One Kafka record to publish: key, value, headers."""

    key: bytes
    value: bytes
    headers: Headers


def _endpoint_sort_key(ep: Endpoint) -> tuple[int, bytes, int]:
    try:
        addr = ipaddress.ip_address(ep.ip)
        return (addr.version, addr.packed, ep.port)
    except ValueError:
        return (0, ep.ip.encode(), ep.port)


def _fmt(ep: Endpoint) -> str:
    return f"[{ep.ip}]:{ep.port}" if ":" in ep.ip else f"{ep.ip}:{ep.port}"


def connection_key(ev: TcpEvent) -> bytes:
    """`A-B` with A the lower (address, port) of the two ends: equal for both sides of a connection."""
    a, b = ev.local, ev.remote
    if _endpoint_sort_key(b) < _endpoint_sort_key(a):
        a, b = b, a
    return f"{_fmt(a)}-{_fmt(b)}".encode()


def to_json(msg: TcpEvent | EventBatch) -> str:
    """The project's canonical JSON (proto field names, enum names, int64 as strings)."""
    return json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=None)


def lost_total(batch: EventBatch) -> int:
    return batch.lost.kernel + batch.lost.agent_buffer + batch.lost.enrichment


def batch_records(batch: EventBatch, value_format: str = "protobuf") -> list[Record]:
    """Every record for one batch: its events in order, then its summary record last."""
    if value_format not in VALUE_FORMATS:
        raise ValueError(f"value format must be one of {VALUE_FORMATS}")
    as_json = value_format == "json"
    ct = (CT_JSON if as_json else CT_PROTOBUF).encode()
    version = str(batch.schema_version).encode()
    agent = batch.agent_id.encode()
    node = batch.node.encode()
    seq = str(batch.sequence).encode()
    out: list[Record] = []
    for i, ev in enumerate(batch.events):
        value = to_json(ev).encode() if as_json else ev.SerializeToString()
        out.append(Record(connection_key(ev), value, [
            (H_SCHEMA, SCHEMA_EVENT.encode()), (H_SCHEMA_VERSION, version), (H_RECORD, RECORD_EVENT.encode()),
            (H_CONTENT_TYPE, ct), (H_AGENT_ID, agent), (H_NODE, node), (H_BATCH_SEQ, seq),
            (H_BATCH_INDEX, str(i).encode()),
        ]))
    summary = EventBatch()
    summary.CopyFrom(batch)
    summary.ClearField("events")
    value = to_json(summary).encode() if as_json else summary.SerializeToString()
    out.append(Record(agent, value, [
        (H_SCHEMA, SCHEMA_BATCH.encode()), (H_SCHEMA_VERSION, version), (H_RECORD, RECORD_SUMMARY.encode()),
        (H_CONTENT_TYPE, ct), (H_AGENT_ID, agent), (H_NODE, node), (H_BATCH_SEQ, seq),
        (H_BATCH_EVENTS, str(len(batch.events)).encode()), (H_LOST_TOTAL, str(lost_total(batch)).encode()),
    ]))
    return out


@dataclass(frozen=True)
class Decoded:
    """A record read back: exactly one of `event` / `summary` is set (None for foreign records)."""

    kind: str  # RECORD_EVENT, RECORD_SUMMARY, or "" for records this layout does not know
    agent_id: str
    sequence: int
    index: int
    event: TcpEvent | None
    summary: EventBatch | None


def header_map(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (headers or [])}


def decode_record(headers: Sequence[tuple[str, bytes]] | None, value: bytes | None) -> Decoded:
    """Parse a record written by `batch_records` (either value format); unknown records give kind ''."""
    h = header_map(headers)
    kind = h.get(H_RECORD, "")
    agent = h.get(H_AGENT_ID, "")
    seq = int(h.get(H_BATCH_SEQ, "0") or 0)
    idx = int(h.get(H_BATCH_INDEX, "-1") or -1)
    is_json = h.get(H_CONTENT_TYPE) == CT_JSON
    if value is None or kind not in (RECORD_EVENT, RECORD_SUMMARY):
        return Decoded("", agent, seq, idx, None, None)
    if kind == RECORD_EVENT:
        ev = TcpEvent()
        if is_json:
            json_format.Parse(value.decode(), ev)
        else:
            ev.ParseFromString(value)
        return Decoded(kind, agent, seq, idx, ev, None)
    batch = EventBatch()
    if is_json:
        json_format.Parse(value.decode(), batch)
    else:
        batch.ParseFromString(value)
    return Decoded(kind, agent, seq, idx, None, batch)
