"""Flows: ordinary connections aggregated in the kernel (bpf/flow.h), read out per key.

`FLOW_KEY_FIELDS` and `FLOW_VAL_FIELDS` mirror `struct flow_key` and `struct flow_val` of
bpf/events.h (a test checks them against the C structs compiled with gcc); `decode_flow` is pure.
`FlowMaps` owns the two swapping maps of a loaded program: `flush()` flips the active map, waits
for programs still adding to the old one, then reads and clears it with one batch operation, so a
flush costs per key, not per connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

from agent.kernel.decode import Decoder
from tcpscope.v1.events_pb2 import AGGREGATE, PASSIVE, SPILL, TcpEvent

log = logging.getLogger(__name__)

FLOW_BUCKETS = 32  # bpf/events.h FLOW_BUCKETS

FLOW_KEY_FIELDS: tuple[tuple[str, str], ...] = (
    ("laddr", "16s"),
    ("raddr", "16s"),
    ("cgroup_id", "Q"),
    ("netns", "I"),
    ("server_port", "H"),
    ("family", "H"),
    ("role", "B"),
    ("pad", "7s"),
)
FLOW_VAL_FIELDS: tuple[tuple[str, str], ...] = (
    ("connections", "Q"),
    ("tx_bytes", "Q"),
    ("rx_bytes", "Q"),
    ("duration_sum_ns", "Q"),
    ("first_close_ns", "Q"),
    ("last_close_ns", "Q"),
    ("buckets", f"{FLOW_BUCKETS}Q"),
    ("pid", "I"),
    ("pad", "I"),
    ("comm", "16s"),
    ("open_connections", "Q"),
    ("report_ns", "Q"),
    ("srtt_sum_us", "Q"),
    ("srtt_buckets", f"{FLOW_BUCKETS}Q"),
    ("connect_sum_ns", "Q"),
    ("connect_buckets", f"{FLOW_BUCKETS}Q"),
    ("min_rtt_us", "I"),
    ("pad2", "I"),
)
FLOW_KEY = struct.Struct("<" + "".join(c for _n, c in FLOW_KEY_FIELDS))
FLOW_VAL = struct.Struct("<" + "".join(c for _n, c in FLOW_VAL_FIELDS))

# bpf/events.h FLOWC_*: flow counters by index (reported as flows.<name>)
FLOW_COUNTERS: tuple[str, ...] = ("aggregated", "map_full")

# Programs that looked up the old map just before a flip finish within microseconds (tracepoint
# programs run to completion with preemption off); the flush waits this long before reading it.
FLIP_GRACE_S = 0.005


def decode_flow(decoder: Decoder, key: bytes, val: bytes, interval_ns: int, aggregate: bool) -> TcpEvent:
    """One (flow_key, flow_val) pair -> a TcpEvent whose kind is `flow`."""
    laddr, raddr, cgroup_id, _netns, server_port, family, role, _pad = FLOW_KEY.unpack_from(key)
    vals = FLOW_VAL.unpack_from(val)
    connections, tx, rx, dur_sum, first_ns, last_ns = vals[:6]
    at = 6 + FLOW_BUCKETS
    buckets = list(vals[6:at])
    pid, _vpad, comm, open_connections, report_ns, srtt_sum = vals[at : at + 6]
    srtt_buckets = list(vals[at + 6 : at + 6 + FLOW_BUCKETS])
    at += 6 + FLOW_BUCKETS
    connect_sum = vals[at]
    connect_buckets = list(vals[at + 1 : at + 1 + FLOW_BUCKETS])
    min_rtt = vals[at + 1 + FLOW_BUCKETS]
    ev = TcpEvent(node=decoder.node)
    wall = max(last_ns, report_ns) + decoder.offset_ns
    ev.time.seconds, ev.time.nanos = divmod(wall, 1_000_000_000)
    ev.local.ip = decoder.ip(family, laddr)
    ev.remote.ip = decoder.ip(family, raddr)
    if role == PASSIVE:  # the server port is ours
        ev.local.port = server_port
    else:
        ev.remote.port = server_port
    ev.process.pid = pid
    ev.process.comm = decoder.comm(comm)
    ev.process.cgroup_id = cgroup_id
    fl = ev.flow
    fl.role = role
    fl.connections = connections
    fl.tx_bytes = tx
    fl.rx_bytes = rx
    fl.duration_us_log2.extend(_trimmed(buckets))
    fl.duration_sum_ns = dur_sum
    if connections:
        for ts, stamp in ((first_ns, fl.first_close), (last_ns, fl.last_close)):
            stamp.seconds, stamp.nanos = divmod(ts + decoder.offset_ns, 1_000_000_000)
    fl.interval_ns = interval_ns
    fl.source = AGGREGATE if aggregate else SPILL
    fl.open_connections = open_connections
    if report_ns:
        fl.report_time.seconds, fl.report_time.nanos = divmod(report_ns + decoder.offset_ns, 1_000_000_000)
    fl.srtt_us_log2.extend(_trimmed(srtt_buckets))
    fl.srtt_sum_us = srtt_sum
    fl.connect_latency_us_log2.extend(_trimmed(connect_buckets))
    fl.connect_latency_sum_ns = connect_sum
    fl.min_rtt_us = min_rtt
    return ev


def _trimmed(buckets: list[int]) -> list[int]:
    """A log2 histogram without its trailing empty buckets."""
    end = len(buckets)
    while end and buckets[end - 1] == 0:
        end -= 1
    return buckets[:end]


class FlowMaps:
    """The flow maps of a loaded program: flip, drain, decode."""

    def __init__(
        self,
        bpf: Any,
        decoder: Decoder,
        interval_s: float,
        aggregate: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bpf = bpf
        self._decoder = decoder
        self._interval_s = interval_s
        self._aggregate = aggregate
        self._clock = clock
        self._maps = [bpf[b"flows0"], bpf[b"flows1"]]
        outer = bpf[b"flow_maps"]
        for i, m in enumerate(self._maps):
            outer[ctypes.c_int(i)] = ctypes.c_int(m.map_fd)
        self._ctl = bpf[b"flow_ctl"]
        self._counts = bpf[b"flow_counts"]
        self._active = 0
        self._ctl[ctypes.c_int(0)] = ctypes.c_uint32(0)
        self._last_flush = clock()
        self._batch_ops = True  # off after the first failure (kernels before 5.6 have none)

    def due(self) -> bool:
        """Whether --flow-interval has passed since the last flush."""
        return self._clock() - self._last_flush >= self._interval_s

    def flush(self) -> list[TcpEvent]:
        """Flip the active map and read out the old one: one Flow event per key."""
        now = self._clock()
        interval_ns = int((now - self._last_flush) * 1e9)
        self._last_flush = now
        old = self._active
        self._active = 1 - old
        self._ctl[ctypes.c_int(0)] = ctypes.c_uint32(self._active)
        time.sleep(FLIP_GRACE_S)
        return self._drain(self._maps[old], interval_ns)

    def flush_all(self) -> list[TcpEvent]:
        """At shutdown (programs detached): both maps, the active one included."""
        out = self.flush()
        out += self._drain(self._maps[self._active], 0)
        return out

    def _drain(self, table: Any, interval_ns: int) -> list[TcpEvent]:
        pairs: list[tuple[bytes, bytes]] = []
        if self._batch_ops:
            try:
                pairs = [(bytes(k), bytes(v)) for k, v in table.items_lookup_and_delete_batch()]
            except Exception as e:  # kernels before 5.6 have no batch operations on hash maps
                log.info("flow maps: batch lookup unavailable (%s); reading key by key", e)
                self._batch_ops = False
        # what the batch left (none expected on an inactive map), or everything without batch ops
        for k in list(table.keys()):
            try:
                v = table[k]
            except KeyError:
                continue
            pairs.append((bytes(k), bytes(v)))
            with contextlib.suppress(KeyError):
                del table[k]
        decoder = self._decoder
        aggregate = self._aggregate
        return [decode_flow(decoder, k, v, interval_ns, aggregate) for k, v in pairs]

    def counters(self) -> dict[str, int]:
        """Cumulative flows.<name> counters (FLOWC_*): connections aggregated, and reported
        individually because the map was full."""
        return {f"flows.{name}": int(sum(self._counts[ctypes.c_int(idx)])) for idx, name in enumerate(FLOW_COUNTERS)}
