"""Event times on one clock: readers subtract each batch's measured agent clock offset (docs/kafka.md,
"Clocks") from its times before comparing them across nodes, so a node whose clock is off does not
split one connection into two or blame the network for an application's reset. Event records carry
the correction in their `clock-offset-ns` header, batch summary records in their collector note.

The one place readers correct times: `correct(d)`, called on each record after at-least-once repeats
were dropped (a resend may carry another measurement) by tcpscope-tail's modes and the simulator's
watch. Times are corrected in place; a correction never takes a time out of the bounds."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from tcpscope.bounds import ANY_TIME
from tcpscope.kafka_layout import Decoded, clock_correction_ns


def _shift(ts: Timestamp, by_ns: int) -> None:
    if not (ts.seconds or ts.nanos):
        return  # unset
    shifted = Timestamp()
    shifted.FromNanoseconds(ts.ToNanoseconds() - by_ns)
    if ANY_TIME.holds(shifted):
        ts.CopyFrom(shifted)


def correct(d: Decoded) -> None:
    """Put the record's times on the collector's clock: an event's time (and a flow's close times),
    or a batch summary's sent_time; records without a correction are left alone."""
    if d.event is not None:
        if d.clock_offset_ns:
            ev = d.event
            _shift(ev.time, d.clock_offset_ns)
            if ev.WhichOneof("kind") == "flow":
                _shift(ev.flow.first_close, d.clock_offset_ns)
                _shift(ev.flow.last_close, d.clock_offset_ns)
    elif d.summary is not None and d.summary.HasField("collector"):
        by = clock_correction_ns(d.summary.collector)
        if by:
            _shift(d.summary.sent_time, by)
