"""Collector throughput into Kafka, measured on its own: a gRPC client plays an agent and sends
batches of realistic lifecycle events as fast as the collector acknowledges them (acks mean Kafka
has the records). Events acknowledged per CPU-second of the collector process = events/s per core.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.modes import start_stack
from bench.procs import Unavailable, cpu_seconds, vm_hwm_kb


@dataclass
class CollectorResult:
    events_acked: int
    batches_acked: int
    seconds: float
    collector_cpu_s: float
    collector_hwm_kb: int
    events_in_kafka: int
    kafka_lost_total: int

    @property
    def events_per_s(self) -> float:
        return self.events_acked / self.seconds if self.seconds else 0.0

    @property
    def events_per_cpu_s(self) -> float:
        return self.events_acked / self.collector_cpu_s if self.collector_cpu_s else 0.0


def _batch_template(n: int) -> bytes:
    """A batch of n lifecycle events with distinct 4-tuples, like one agent's busy second."""
    from tcpscope.v1.events_pb2 import ACTIVE, NORMAL, PASSIVE, EventBatch

    b = EventBatch(schema_version=1, node="bench-node", agent_id="bench-agent")
    now = time.time_ns()
    for i in range(n):
        ev = b.events.add()
        ev.time.FromNanoseconds(now + i * 1000)
        ev.node = "bench-node"
        ev.socket_id = i + 1
        ev.local.ip, ev.local.port = "127.0.0.1", 32768 + i % 28000
        ev.remote.ip, ev.remote.port = "127.0.0.1", 8080
        ev.process.pid, ev.process.comm, ev.process.cgroup_id = 4242, "loadgen", 1234
        lc = ev.lifecycle
        lc.role = ACTIVE if i % 2 == 0 else PASSIVE
        lc.duration_ns, lc.tx_bytes, lc.rx_bytes, lc.ending = 180_000, 64, 256, NORMAL
    return bytes(b.SerializeToString())


def run_collector_load(
    workdir: Path,
    seconds: float,
    batch_events: int = 1000,
    inflight: int = 8,
    verify: bool = True,
    profile_raw: Path | None = None,
    layout: str = "event",
) -> CollectorResult:
    """Start broker + collector (`--record-layout layout`), stream batches for `seconds`, then count
    what reached Kafka."""
    import grpc

    from bench.runner import read_topic
    from tcpscope.v1 import collector_pb2_grpc
    from tcpscope.v1.events_pb2 import EventBatch

    stack = start_stack(workdir, f"bench-collector-{time.monotonic_ns()}", ["--record-layout", layout])
    template = EventBatch.FromString(_batch_template(batch_events))
    credits: queue.Queue[int] = queue.Queue()
    for _ in range(inflight):
        credits.put(1)
    stop = threading.Event()
    sent = [0]

    def batches() -> Iterator[EventBatch]:
        seq = 0
        while not stop.is_set():
            try:
                credits.get(timeout=0.2)
            except queue.Empty:
                continue
            seq += 1
            template.sequence = seq
            template.sent_time.GetCurrentTime()
            sent[0] = seq
            yield template

    try:
        channel = grpc.insecure_channel(stack.listen, options=[("grpc.max_send_message_length", 64 << 20)])
        stub = collector_pb2_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
        acked = 0
        spy = None
        if profile_raw is not None:
            import subprocess
            import sys

            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-p",
                    str(stack.collector.pid),
                    "-d",
                    f"{int(seconds)}",
                    "-r",
                    "250",
                    "-f",
                    "raw",
                    "-o",
                    str(profile_raw),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        c0 = cpu_seconds(stack.collector.pid)
        t0 = time.monotonic()
        stream = stub.Stream(batches())
        try:
            for _ack in stream:
                acked += 1
                if time.monotonic() - t0 >= seconds:
                    break
                credits.put(1)
        except grpc.RpcError as e:
            raise Unavailable(f"collector stream failed: {e.code()} {e.details()}") from e
        elapsed = time.monotonic() - t0
        c1 = cpu_seconds(stack.collector.pid)
        hwm = vm_hwm_kb(stack.collector.pid)
        if spy is not None:
            spy.wait(30)
        stop.set()
        stream.cancel()
        channel.close()
        kafka = (
            read_topic(stack.bootstrap, stack.topic, acked * batch_events, idle_s=2.0)
            if verify
            else {"events": 0, "lost_total": 0}
        )
    finally:
        stop.set()
        stack.stop()
    return CollectorResult(
        acked * batch_events, acked, elapsed, c1 - c0, hwm, int(kafka["events"]), int(kafka["lost_total"])
    )
