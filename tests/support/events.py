"""TcpEvents built in tests (the kernel source is not needed to test the streaming path)."""

from __future__ import annotations

import time

from tcpscope.v1.events_pb2 import ACTIVE, FIN_WAIT1, NORMAL, Endpoint, Lifecycle, Process, TcpEvent

# the events' times: an hour before the test run started, on the hour (the collector accepts times
# within --max-event-age of its clock: docs/kafka.md, Bounds)
BASE_NS = (time.time_ns() // 3_600_000_000_000 - 1) * 3_600_000_000_000


def make_event(i: int, node: str = "node-a", port: int = 8080) -> TcpEvent:
    """A distinct lifecycle event numbered i (socket_id = i + 1), loopback addresses."""
    ev = TcpEvent(
        node=node,
        socket_id=i + 1,
        local=Endpoint(ip="127.0.0.1", port=40000 + i % 20000),
        remote=Endpoint(ip="127.0.0.2", port=port),
        process=Process(pid=1000 + i, comm="client", cgroup_id=4242),
    )
    ev.time.FromNanoseconds(BASE_NS + i * 1000)
    ev.lifecycle.CopyFrom(
        Lifecycle(role=ACTIVE, duration_ns=1000 + i, tx_bytes=10 * i, rx_bytes=i, ending=NORMAL, last_state=FIN_WAIT1)
    )
    return ev
