"""How far an agent's clock is from this collector's, measured from its batches (docs/kafka.md, "Clocks").

Let the offset be the agent's clock minus ours. A batch is sealed (sent_time, agent clock) before it
arrives (received, our clock), so `sent_time - received` is a lower bound of the offset: the batch's
wait and transit only make it smaller. An ack is sent (our clock) before the agent receives it
(last_ack_time, agent clock, echoed on a later batch), so `last_ack_time - ack sent` is an upper
bound. The estimate is the middle of the tightest bounds seen on this stream lately, with half their
distance as its error; with no upper bound yet, the lower bound alone (unbounded). Bounds that
contradict each other mean the agent's clock stepped: the older samples are forgotten.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from tcpscope.v1.events_pb2 import EventBatch

SAMPLE_MAX_AGE_NS = 120 * 1_000_000_000  # samples older than this (our clock) are forgotten
SAMPLES_MAX = 64  # per bound
ACKS_REMEMBERED = 256  # ack send times kept per stream, to match the agent's echo


@dataclass(frozen=True)
class Offset:
    """The agent's clock minus ours (ns), within error_ns when bounded; else a lower bound."""

    offset_ns: int
    error_ns: int
    bounded: bool


class ClockEstimator:
    """One agent's clock offset on one stream (one per stream: acks are matched on the stream that sent them)."""

    def __init__(self) -> None:
        self._lower: deque[tuple[int, int]] = deque(maxlen=SAMPLES_MAX)  # (our ns, bound ns)
        self._upper: deque[tuple[int, int]] = deque(maxlen=SAMPLES_MAX)
        self._acks: OrderedDict[int, int] = OrderedDict()  # sequence -> our ns when the ack was sent

    def ack_sent(self, sequence: int, now_ns: int) -> None:
        self._acks[sequence] = now_ns
        self._acks.move_to_end(sequence)
        while len(self._acks) > ACKS_REMEMBERED:
            self._acks.popitem(last=False)

    def observe(self, batch: EventBatch, received_ns: int) -> Offset | None:
        """Take one arriving batch's bounds (its times already within the accepted window); the
        estimate after it, None when the batch carried no time at all."""
        if batch.HasField("sent_time"):
            self._lower.append((received_ns, batch.sent_time.ToNanoseconds() - received_ns))
        sent = self._acks.get(batch.last_ack_sequence) if batch.last_ack_sequence else None
        if sent is not None and batch.HasField("last_ack_time"):
            self._upper.append((received_ns, batch.last_ack_time.ToNanoseconds() - sent))
        for samples in (self._lower, self._upper):
            while samples and received_ns - samples[0][0] > SAMPLE_MAX_AGE_NS:
                samples.popleft()
        if not self._lower:
            return None
        lo = max(b for _, b in self._lower)
        if not self._upper:
            return Offset(lo, 0, False)
        hi = min(b for _, b in self._upper)
        if lo > hi:  # contradictory: the agent's clock stepped; keep only the newest of each
            for samples in (self._lower, self._upper):
                last = samples[-1]
                samples.clear()
                samples.append(last)
            lo, hi = self._lower[0][1], self._upper[0][1]
            if lo > hi:
                return Offset(lo, 0, False)
        return Offset((lo + hi) // 2, (hi - lo + 1) // 2, True)
