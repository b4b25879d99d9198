"""Wiring for streaming tests: an Exporter + GrpcTransport with test-sized settings, and readers."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc

from agent.export import Exporter, ExporterSettings, GrpcTransport, TransportSettings
from agent.metrics import AgentMetrics
from collector.config import CollectorConfig
from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, Decoded, decode_records
from tcpscope.v1.collector_pb2 import BatchAck
from tcpscope.v1.events_pb2 import EventBatch


def make_exporter(
    target: str,
    node: str = "node-a",
    agent_id: str = "agent-1",
    batch: int = 10,
    buffer: int = 10_000,
    age: float = 0.05,
    **transport: Any,
) -> Exporter:
    metrics = AgentMetrics()
    t = GrpcTransport(TransportSettings(target=target, backoff_initial_s=0.05, backoff_max_s=0.5, **transport), metrics)
    return Exporter(
        ExporterSettings(
            node=node,
            agent_id=agent_id,
            batch_max_events=batch,
            batch_max_age=age,
            buffer_max_events=buffer,
            heartbeat_s=3600,
        ),
        t,
        metrics,
    )


def collector_cfg(bootstrap: str, topic: str, **kw: Any) -> CollectorConfig:
    return CollectorConfig(listen="127.0.0.1:0", kafka_bootstrap=(bootstrap,), topic=topic, kafka_linger_ms=5, **kw)


def decode_all(records: list[Any]) -> tuple[list[Decoded], list[Decoded]]:
    """(event records, summary records) in consumption order."""
    decoded = [d for r in records for d in decode_records(r.headers, r.value)]
    return ([d for d in decoded if d.kind == RECORD_EVENT], [d for d in decoded if d.kind == RECORD_SUMMARY])


def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass(frozen=True)
class Refused:
    """A Collector.Stream call that ended with a status instead of an ack."""

    code: str
    details: str
    trailing: dict[str, str]


class RawClient:
    """A plain gRPC client of Collector.Stream, as any holder of the token could write one: each
    `send` opens a stream, sends one serialized batch, half-closes and returns its ack or refusal."""

    def __init__(self, target: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._channel = grpc.insecure_channel(target)
        self._call = self._channel.stream_stream(
            "/tcpscope.v1.Collector/Stream", request_serializer=None, response_deserializer=BatchAck.FromString
        )
        self._metadata = metadata

    def send(self, batch: EventBatch | bytes, timeout: float = 15.0) -> BatchAck | Refused:
        raw = batch if isinstance(batch, bytes) else batch.SerializeToString()
        try:
            acks = list(self._call(iter([raw]), metadata=self._metadata, timeout=timeout))
        except grpc.RpcError as e:
            call = cast(grpc.Call, e)
            trailing = {k: v for k, v in (call.trailing_metadata() or ()) if isinstance(v, str)}
            return Refused(call.code().name, call.details() or "", trailing)
        assert len(acks) == 1, acks
        return acks[0]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawStream:
    """One long-lived Collector.Stream of a plain gRPC client: `send` writes a batch and waits for
    the next ack (a refusal ends the stream and raises grpc.RpcError)."""

    def __init__(self, target: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._channel = grpc.insecure_channel(target)
        call = self._channel.stream_stream(
            "/tcpscope.v1.Collector/Stream", request_serializer=None, response_deserializer=BatchAck.FromString
        )
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        self._acks: Iterator[BatchAck] = iter(call(iter(self._requests.get, None), metadata=metadata))

    def send(self, batch: EventBatch) -> BatchAck:
        self._requests.put(batch.SerializeToString())
        return next(self._acks)

    def close(self) -> None:
        self._requests.put(None)
        with contextlib.suppress(grpc.RpcError):
            for _ in self._acks:
                pass
        self._channel.close()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
