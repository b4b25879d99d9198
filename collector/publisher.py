"""Kafka publishing behind a narrow Protocol: hand over records, get a future that resolves when
Kafka has acknowledged every one of them (acks=all), or fails with the first error.

kafka-python's `send()` may block (metadata fetch, full accumulator), so it runs on a dedicated
thread; completion comes back to the event loop through `call_soon_threadsafe`.

Per-record Python work is the collector's main cost (docs/kafka.md, "Throughput"), so a batch's
records carry their partition (computed by the layout with Kafka's own hash) and only the *last*
record of each partition gets a callback: one connection serves a partition's records in order,
so when the last one is acknowledged the earlier ones were settled before it; a final scan of the
batch's futures turns any earlier failure into a failed publish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from collector.config import CollectorConfig
from tcpscope.kafka_layout import Record
from tcpscope.ratelimit import Throttle, held_note

log = logging.getLogger(__name__)

# connection and security settings the admin client (probe, topic config) shares with the producer
_UNKNOWN_TOPIC = 3  # Kafka's UNKNOWN_TOPIC_OR_PARTITION
_ADMIN_KEYS = frozenset(
    {
        "bootstrap_servers",
        "security_protocol",
        "ssl_cafile",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "reconnect_backoff_max_ms",
    }
)


class Publisher(Protocol):
    async def publish(self, records: Sequence[Record]) -> None:
        """Return once Kafka acknowledged every record; raise on the first failure."""
        ...

    def partitions(self) -> int:
        """The topic's partition count (0 if unknown); may block on metadata: call it off the loop."""
        ...

    def probe(self) -> None:
        """Check that Kafka answers for the topic (metadata); raise if not. Blocks: off the loop."""
        ...

    def topic_max_record_bytes(self) -> int | None:
        """The topic's max.message.bytes as the brokers report it (None if they do not say); blocks."""
        ...

    def close(self, timeout_s: float) -> None: ...


# Kafka's default max.message.bytes (1 MiB + record batch overhead rounded, as brokers ship it)
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588


def producer_kwargs(cfg: CollectorConfig) -> dict[str, Any]:
    """KafkaProducer settings from the config: acks=all, compression, linger, TLS/SASL."""
    kw: dict[str, Any] = {
        "bootstrap_servers": list(cfg.kafka_bootstrap),
        "acks": "all",
        "linger_ms": cfg.kafka_linger_ms,
        "batch_size": cfg.kafka_batch_size,
        "compression_type": None if cfg.kafka_compression == "none" else cfg.kafka_compression,
        "delivery_timeout_ms": cfg.kafka_delivery_timeout_ms,
        "request_timeout_ms": min(cfg.kafka_delivery_timeout_ms - cfg.kafka_linger_ms - 1, 15_000),
        "max_block_ms": cfg.kafka_delivery_timeout_ms,
        "retries": 2**31 - 1,
        "retry_backoff_ms": 200,
        "reconnect_backoff_max_ms": 2000,
        # records of one partition stay in order across retries
        "max_in_flight_requests_per_connection": 1,
        "max_request_size": max(
            cfg.max_message_bytes * 2, cfg.kafka_batch_size, 1024 * 1024, cfg.kafka_max_record_bytes + 1024
        ),
        # TLS and SASL as the readers connect (tcpscope/kafka_client.py)
        **cfg.kafka_security.client_kwargs(),
    }
    return kw


class KafkaPublisher:
    """Publishes records to one topic with a kafka-python KafkaProducer (thread-safe)."""

    def __init__(self, cfg: CollectorConfig) -> None:
        from kafka import KafkaProducer

        self._topic = cfg.topic
        self._producer = KafkaProducer(**producer_kwargs(cfg))
        # a replacement producer reuses the broker version the first one learned, so building it
        # does not wait for a broker to answer (it would block the send thread through an outage)
        version = self._producer.config.get("api_version")
        self._new_producer: Callable[[], Any] = lambda: KafkaProducer(
            **producer_kwargs(cfg), **({"api_version": version} if version else {})
        )
        self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-send")
        self.resets = 0
        self._reset_log = Throttle(30.0)
        self._admin_kw = {k: v for k, v in producer_kwargs(cfg).items() if k in _ADMIN_KEYS}
        self._admin: Any = None  # made on first probe; dropped after a failure, so it reconnects afresh

    def _admin_client(self) -> Any:
        from kafka.admin import KafkaAdminClient

        if self._admin is None:
            self._admin = KafkaAdminClient(**self._admin_kw, request_timeout_ms=5000, bootstrap_timeout_ms=5000)
        return self._admin

    def _drop_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()

    def probe(self) -> None:
        try:
            topics = self._admin_client().describe_topics([self._topic])
        except Exception:
            self._drop_admin()
            raise
        for t in topics:
            code = t.get("error_code", 0)
            if code == _UNKNOWN_TOPIC and self._producer.partitions_for(self._topic):
                # a broker that creates topics on first use: the producer's metadata request did
                # (the admin client's never does). Without this, every replica would stay
                # NOT_SERVING, no agent would be routed to one, and nothing would create the topic.
                continue
            if code:
                from kafka.errors import for_code

                raise for_code(code)(f"topic {self._topic!r}")
            if not t.get("partitions"):
                raise RuntimeError(f"topic {self._topic!r} has no partitions")

    def topic_max_record_bytes(self) -> int | None:
        from kafka.admin import ConfigResource, ConfigResourceType

        try:
            found = self._admin_client().describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, self._topic)], config_filter="all"
            )
        except Exception:
            self._drop_admin()
            raise
        entry = found.get("topic", {}).get(self._topic, {}).get("max.message.bytes")
        value = entry.get("value", entry.get("config_value")) if isinstance(entry, dict) else entry
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    def partitions(self) -> int:
        return len(self._producer.partitions_for(self._topic) or ())

    async def publish(self, records: Sequence[Record]) -> None:
        if not records:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        topic = self._topic
        used: list[Any] = []  # the producer send_all took (read on the send thread: after any reset)

        def send_all() -> None:
            producer = self._producer
            used.append(producer)
            futures: list[Any] = []
            last: dict[int, Any] = {}
            watched: list[Any] = []  # records without a known partition are each watched
            for r in records:
                fut = producer.send(topic, key=r.key, value=r.value, headers=r.headers, partition=r.partition)
                futures.append(fut)
                if r.partition is None:
                    watched.append(fut)
                else:
                    last[r.partition] = fut
            watched.extend(last.values())
            remaining = [len(watched)]
            lock = threading.Lock()

            def ok(_: Any) -> None:
                with lock:
                    remaining[0] -= 1
                    if remaining[0]:
                        return
                bad = next((f for f in futures if not f.succeeded()), None)
                if bad is None:
                    loop.call_soon_threadsafe(_resolve, done, None)
                else:
                    exc = bad.exception if bad.is_done else None
                    fail(exc or RuntimeError("a record was not acknowledged before a later one"))

            def fail(exc: BaseException) -> None:
                loop.call_soon_threadsafe(_resolve, done, exc)

            for fut in watched:  # callbacks run at once on an already settled future
                fut.add_callback(ok)
                fut.add_errback(fail)

        # a failure after this coroutine was cancelled (its stream ended) is expected: mark it seen
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await loop.run_in_executor(self._sender, send_all)
        except Exception as e:  # send() itself failed (metadata timeout, record too large, ...)
            _resolve(done, e)
        try:
            await done
        except Exception:
            # replaced on the send thread, before any later send, but not awaited: the failure
            # reaches the agent (UNAVAILABLE, it resends) now, not after the replacement
            if used:
                self._sender.submit(self._reset, used[0])
            raise

    def _reset(self, failed: Any) -> None:
        """Replace a producer that failed: kafka-python's idempotent producer stays in a fatal state
        after some errors (e.g. InitProducerId against a restarted broker). Runs on the send thread."""
        if failed is not self._producer:
            return  # another batch already replaced it
        self.resets += 1
        held = self._reset_log.ready()
        if held is not None:
            log.warning("recreating the Kafka producer after a failed publish%s", held_note(held))
        try:
            failed.close(timeout=0)
        except Exception as e:  # KafkaTimeoutError: records it still held are failed anyway
            log.debug("closing the failed Kafka producer: %s", e)
        self._producer = self._new_producer()

    def close(self, timeout_s: float) -> None:
        self._sender.shutdown(wait=False, cancel_futures=True)
        self._drop_admin()
        try:
            self._producer.close(timeout=timeout_s)
        except Exception as e:
            log.warning("closing the Kafka producer: %s: %s", type(e).__name__, e)


def _resolve(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    """Complete fut once: the first error wins, success only if nothing failed before."""
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
