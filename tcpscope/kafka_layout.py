"""The Kafka record layout shared by the collector (writer) and tcpscope-tail (reader). Pure code.

Two record layouts (`--record-layout`, docs/kafka.md), both ending each agent batch with one
*batch summary* record:

- `event` (default): one record per event, described below;
- `packed`: one record per (batch, partition): value = an `EventBatch` holding that partition's
  events of the batch (header `batch-indexes` gives their positions), key = its first event's
  connection key. Events are grouped by the partition their own connection key hashes to, so one
  connection's events still share a partition, in order. `decode_records` reads every layout.

Per-event layout:

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
import socket
import struct
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from google.protobuf import json_format

from tcpscope.bounds import OutOfBounds, event_problem, summary_problem
from tcpscope.losses import definite_total
from tcpscope.v1.events_pb2 import CollectorNote, Endpoint, EventBatch, TcpEvent

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
H_BATCH_INDEXES = "batch-indexes"  # packed records: the events' positions in their batch, "0,4,9"
H_UNOBSERVED = "unobserved-windows"  # summary records whose batch reports windows nobody observed
H_CLOCK_OFFSET = "clock-offset-ns"  # event and packed records: the agent's measured clock offset (docs/kafka.md)

CLOCK_CORRECTION_MIN_NS = 50_000_000
"""Offsets smaller than this (50 ms) are left alone: readers compare times across nodes with wider
margins, and correcting by a noisy estimate would only move times about."""

RECORD_EVENT = "event"
RECORD_SUMMARY = "batch-summary"
RECORD_PACKED = "events"  # packed layout: several events of one batch and one partition
CT_PROTOBUF = "application/x-protobuf"
CT_JSON = "application/json"
VALUE_FORMATS = ("protobuf", "json")
LAYOUT_EVENT = "event"
LAYOUT_PACKED = "packed"
RECORD_LAYOUTS = (LAYOUT_EVENT, LAYOUT_PACKED)

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Record:
    """One Kafka record to publish: key, value, headers, and the partition when the layout chose it
    (the same one Kafka's default partitioner picks for the key)."""

    key: bytes
    value: bytes
    headers: Headers
    partition: int | None = None


def _endpoint_sort_key(ep: Endpoint) -> tuple[int, bytes, int]:
    ip = ep.ip
    try:  # inet_pton is ~10x cheaper than ipaddress and orders identically (version, packed bytes)
        if ":" in ip:
            return (6, socket.inet_pton(socket.AF_INET6, ip), ep.port)
        return (4, socket.inet_pton(socket.AF_INET, ip), ep.port)
    except OSError:
        pass
    try:  # e.g. scoped IPv6 "fe80::1%eth0"
        addr = ipaddress.ip_address(ip)
        return (addr.version, addr.packed, ep.port)
    except ValueError:
        return (0, ip.encode(), ep.port)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java `Utils.murmur2`) as an unsigned 32-bit value; 4-byte words are
    unpacked at once, about 3x faster than kafka-python's byte-indexing loop (same results)."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    n = len(data)
    h = 0x9747B28C ^ n
    for k in struct.unpack_from(f"<{n // 4}I", data):
        k = (k * m) & mask
        k ^= k >> 24
        h = ((h * m) & mask) ^ ((k * m) & mask)
    tail = n & ~3
    extra = n - tail
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (Java and kafka-python) partitioner gives a keyed record:
    murmur2(key) & 0x7fffffff mod the partition count (partitions numbered 0..n-1)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


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


def clock_correction_ns(note: CollectorNote) -> int:
    """What readers subtract from the event times of a batch with this collector note: the measured
    offset of the agent's clock when it is bounded, larger than its error and at least
    CLOCK_CORRECTION_MIN_NS; else 0 (docs/kafka.md, "Clocks")."""
    off = note.clock_offset_ns
    if not note.clock_offset_bounded or abs(off) < CLOCK_CORRECTION_MIN_NS or abs(off) <= note.clock_offset_error_ns:
        return 0
    return off


def batch_records(
    batch: EventBatch, value_format: str = "protobuf", layout: str = LAYOUT_EVENT, partitions: int = 0
) -> list[Record]:
    """Every record for one batch: its events in order (one record each, or packed per partition),
    then its summary record last. With `partitions` > 0 every event-carrying record gets the
    partition its key hashes to; the packed layout needs it. When the batch's collector note has a
    clock correction, event-carrying records carry it in a header (readers need not wait for the
    summary record)."""
    if value_format not in VALUE_FORMATS:
        raise ValueError(f"value format must be one of {VALUE_FORMATS}")
    if layout not in RECORD_LAYOUTS:
        raise ValueError(f"record layout must be one of {RECORD_LAYOUTS}")
    if layout == LAYOUT_PACKED and partitions < 1:
        raise ValueError("the packed layout needs the topic's partition count")
    as_json = value_format == "json"
    ct = (CT_JSON if as_json else CT_PROTOBUF).encode()
    version = str(batch.schema_version).encode()
    agent = batch.agent_id.encode()
    node = batch.node.encode()
    seq = str(batch.sequence).encode()
    correction = clock_correction_ns(batch.collector) if batch.HasField("collector") else 0
    clock: Headers = [(H_CLOCK_OFFSET, str(correction).encode())] if correction else []

    def headers(schema: str, record: str) -> Headers:
        """The headers every record of the batch carries (docs/kafka.md), for one record kind; the
        event-carrying ones also the clock correction."""
        return [
            (H_SCHEMA, schema.encode()),
            (H_SCHEMA_VERSION, version),
            (H_RECORD, record.encode()),
            (H_CONTENT_TYPE, ct),
            (H_AGENT_ID, agent),
            (H_NODE, node),
            (H_BATCH_SEQ, seq),
            *(clock if record != RECORD_SUMMARY else []),
        ]

    out: list[Record] = []
    if layout == LAYOUT_PACKED:
        out.extend(_packed_records(batch, as_json, partitions, headers(SCHEMA_BATCH, RECORD_PACKED)))
    else:
        common = headers(SCHEMA_EVENT, RECORD_EVENT)
        for i, ev in enumerate(batch.events):
            value = to_json(ev).encode() if as_json else ev.SerializeToString()
            key = connection_key(ev)
            out.append(
                Record(
                    key,
                    value,
                    [*common, (H_BATCH_INDEX, str(i).encode())],
                    partition_for(key, partitions) if partitions > 0 else None,
                )
            )
    summary = EventBatch()
    summary.CopyFrom(batch)
    summary.ClearField("events")
    value = to_json(summary).encode() if as_json else summary.SerializeToString()
    out.append(
        Record(
            agent,
            value,
            [
                *headers(SCHEMA_BATCH, RECORD_SUMMARY),
                (H_BATCH_EVENTS, str(len(batch.events)).encode()),
                (H_LOST_TOTAL, str(definite_total(batch.lost)).encode()),
                *([(H_UNOBSERVED, str(len(batch.unobserved)).encode())] if batch.unobserved else []),
            ],
        )
    )
    return out


def _packed_records(batch: EventBatch, as_json: bool, partitions: int, common: Headers) -> list[Record]:
    """One record per partition that has events, in the order of each partition's first event."""
    groups: dict[int, tuple[bytes, list[int]]] = {}
    for i, ev in enumerate(batch.events):
        key = connection_key(ev)
        p = partition_for(key, partitions)
        g = groups.get(p)
        if g is None:
            groups[p] = (key, [i])
        else:
            g[1].append(i)
    out: list[Record] = []
    events = batch.events
    for p, (key, idx) in groups.items():
        packed = EventBatch(
            schema_version=batch.schema_version, node=batch.node, agent_id=batch.agent_id, sequence=batch.sequence
        )
        if batch.HasField("sent_time"):
            packed.sent_time.CopyFrom(batch.sent_time)
        packed.events.extend(events[i] for i in idx)
        value = to_json(packed).encode() if as_json else packed.SerializeToString()
        out.append(Record(key, value, [*common, (H_BATCH_INDEXES, ",".join(map(str, idx)).encode())], p))
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
    clock_offset_ns: int = 0  # header clock-offset-ns: subtract from the event's times (tail/clock.py)


def header_map(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (headers or [])}


def _clock_offset(h: dict[str, str]) -> int:
    raw = h.get(H_CLOCK_OFFSET)
    if raw is None:
        return 0
    try:
        off = int(raw)
    except ValueError:
        raise OutOfBounds("header", f"{H_CLOCK_OFFSET} {raw[:32]!r} is not a number") from None
    if abs(off) > 10**18:
        raise OutOfBounds("header", f"{H_CLOCK_OFFSET} {off} is out of range")
    return off


def check_bounds(d: Decoded) -> Decoded:
    """The record as decoded, or OutOfBounds when its content is outside the bounds (tcpscope/bounds.py)."""
    if d.event is not None:
        problem = event_problem(d.event)
        if problem is not None:
            raise OutOfBounds(problem, f"event of agent {d.agent_id[:64]} batch {d.sequence} index {d.index}")
    elif d.summary is not None:
        problem = summary_problem(d.summary)
        if problem is not None:
            raise OutOfBounds(problem, f"batch summary of agent {d.agent_id[:64]} batch {d.sequence}")
    return d


def decode_records(headers: Sequence[tuple[str, bytes]] | None, value: bytes | None) -> list[Decoded]:
    """Every event or summary in one record, whatever the layout: a packed record gives one
    `Decoded(kind=RECORD_EVENT)` per event with its own batch index, so readers need not care.
    A record whose content is outside the documented bounds raises OutOfBounds (a ValueError):
    readers skip it and count it apart from records that are not tcpscope records at all."""
    h = header_map(headers)
    if h.get(H_RECORD) != RECORD_PACKED or value is None:
        return [check_bounds(decode_record(headers, value))]
    agent = h.get(H_AGENT_ID, "")
    seq = int(h.get(H_BATCH_SEQ, "0") or 0)
    packed = EventBatch()
    if h.get(H_CONTENT_TYPE) == CT_JSON:
        json_format.Parse(value.decode(), packed)
    else:
        packed.ParseFromString(value)
    raw_idx = h.get(H_BATCH_INDEXES, "")
    idx = [int(x) for x in raw_idx.split(",")] if raw_idx else []
    if len(idx) != len(packed.events):
        raise ValueError(f"{H_BATCH_INDEXES} has {len(idx)} entries for {len(packed.events)} events")
    off = _clock_offset(h)
    return [
        check_bounds(Decoded(RECORD_EVENT, agent, seq, i, ev, None, off))
        for i, ev in zip(idx, packed.events, strict=True)
    ]


def decode_record(headers: Sequence[tuple[str, bytes]] | None, value: bytes | None) -> Decoded:
    """Parse one per-event or summary record written by `batch_records` (either value format);
    unknown records give kind '' and packed records kind RECORD_PACKED with no content (use
    `decode_records` to read those)."""
    h = header_map(headers)
    kind = h.get(H_RECORD, "")
    agent = h.get(H_AGENT_ID, "")
    seq = int(h.get(H_BATCH_SEQ, "0") or 0)
    idx = int(h.get(H_BATCH_INDEX, "-1") or -1)
    is_json = h.get(H_CONTENT_TYPE) == CT_JSON
    if kind == RECORD_PACKED:
        return Decoded(kind, agent, seq, idx, None, None)
    if value is None or kind not in (RECORD_EVENT, RECORD_SUMMARY):
        return Decoded("", agent, seq, idx, None, None)
    if kind == RECORD_EVENT:
        ev = TcpEvent()
        if is_json:
            json_format.Parse(value.decode(), ev)
        else:
            ev.ParseFromString(value)
        return Decoded(kind, agent, seq, idx, ev, None, _clock_offset(h))
    batch = EventBatch()
    if is_json:
        json_format.Parse(value.decode(), batch)
    else:
        batch.ParseFromString(value)
    return Decoded(kind, agent, seq, idx, None, batch)


def dedup_key(d: Decoded) -> tuple[str, int, int]:
    """The documented identity of a record's content: (agent id, batch sequence, batch index), the
    index -1 for a batch summary. A resent batch repeats these exactly."""
    return (d.agent_id, d.sequence, d.index if d.kind == RECORD_EVENT else -1)


def fingerprint(d: Decoded) -> int:
    """What a record under one dedup key must repeat exactly when it is a genuine resend: for an event,
    everything the agent produced (the collector's `--resolve-remote` may fill the remote end's
    identity differently on a resend, so only its address and port count); for a summary, the batch
    header, losses and unobserved windows (not the collector's note of its arrival). Two records with
    one dedup key and different fingerprints are a conflict (two producers under one agent id), never
    a duplicate."""
    if d.event is not None:
        ev = d.event
        kind = ev.WhichOneof("kind")
        body = getattr(ev, kind).SerializeToString(deterministic=True) if kind else b""
        return hash(
            (
                ev.time.seconds,
                ev.time.nanos,
                ev.node,
                ev.socket_id,
                ev.local.SerializeToString(deterministic=True),
                ev.remote.ip,
                ev.remote.port,
                ev.process.pid,
                ev.process.comm,
                ev.process.cgroup_id,
                kind,
                body,
            )
        )
    if d.summary is not None:
        if not d.summary.HasField("collector"):
            return hash(d.summary.SerializeToString(deterministic=True))
        mine = EventBatch()  # what the collector noted (arrival, clock) differs on a resend: not content
        mine.CopyFrom(d.summary)
        mine.ClearField("collector")
        return hash(mine.SerializeToString(deterministic=True))
    return 0


NEW, REPEAT, CONFLICT = "new", "repeat", "conflict"


class RecentKeys:
    """A bounded set of the most recently seen keys. At-least-once delivery repeats a batch soon
    after its first copy (the agent resends what was unacked when its stream broke), so a window
    of recent record ids finds the repeats in bounded memory."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._keys: OrderedDict[Hashable, tuple[int, ...] | None] = OrderedDict()

    def see(self, key: Hashable, fp: int) -> str:
        """NEW the first time a key is seen within the window; REPEAT when it comes again with the same
        fingerprint (at-least-once delivery); CONFLICT when it comes with different content: the
        record must then be kept and reported, never dropped as a duplicate."""
        if key in self._keys:
            self._keys.move_to_end(key)
            fps = self._keys[key]
            if fps is None or fp in fps:
                return REPEAT
            self._keys[key] = (*fps, fp)  # a resend of either version is then a plain repeat
            return CONFLICT
        self._keys[key] = (fp,)
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return NEW

    def add(self, key: Hashable) -> bool:
        """True the first time a key is seen within the window, False for a repeat."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True
