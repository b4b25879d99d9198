"""The gRPC client: one long-lived bidirectional Collector.Stream, run in its own thread.

It only knows how to send and resend: batches come from a BatchSource (the exporter) already
serialized, go out as raw bytes, and acks go back to the source. When the stream breaks, every
sent-unacked batch is handed back for resending (at least once), and the next attempt waits an
exponential backoff with jitter. TLS, mutual TLS, a bearer token and compression are set per channel.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from agent.export.exporter import BatchSource
from agent.metrics import AgentMetrics
from tcpscope.ratelimit import Throttle, held_note
from tcpscope.refusal import MD_REASON, MD_SEQUENCE
from tcpscope.v1.collector_pb2 import BatchAck

log = logging.getLogger(__name__)

STREAM_METHOD = "/tcpscope.v1.Collector/Stream"
COMPRESSION = {
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
    "none": grpc.Compression.NoCompression,
}


@dataclass(frozen=True)
class TransportSettings:
    target: str
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    token_file: str | None = None
    compression: str = "gzip"
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    max_message_bytes: int = 64 * 1024 * 1024


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def backoff_delay(attempt: int, initial: float, maximum: float, rand: Callable[[], float]) -> float:
    """Exponential backoff with 'equal jitter': half the step fixed, half random."""
    step = min(maximum, initial * (2 ** min(attempt, 30)))
    return float(step / 2 + rand() * step / 2)


def _refused_batch(e: grpc.RpcError) -> tuple[int, str] | None:
    """(sequence, reason) when the collector refused one batch for what it is (tcpscope/refusal.py)."""
    if not isinstance(e, grpc.Call):
        return None
    md = {k: v for k, v in (e.trailing_metadata() or ()) if isinstance(v, str)}
    try:
        seq = int(md.get(MD_SEQUENCE, "0"))
    except ValueError:
        return None
    return (seq, md.get(MD_REASON, "unknown")) if seq > 0 else None


def _host_port(target: str) -> tuple[str, int] | None:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def tls_refusal(s: TransportSettings, timeout_s: float = 2.0) -> str | None:
    """Why a TLS connection to the collector fails, found with a TLS handshake of our own (gRPC says
    only "Socket closed" when the collector refuses this agent's client certificate: its TLS layer
    closes the connection right after the handshake, before any gRPC status can be sent). None when
    TLS is off or the handshake and the first read go through: the problem is not TLS."""
    hp = _host_port(s.target)
    if not s.tls_ca or hp is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=s.tls_ca)
        if s.tls_cert and s.tls_key:
            ctx.load_cert_chain(s.tls_cert, s.tls_key)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(hp, timeout=timeout_s)
    except (OSError, ssl.SSLError):
        return None  # unreadable files are named at start; an unreachable collector is not TLS's doing
    with raw:
        try:
            conn = ctx.wrap_socket(raw, server_hostname=s.tls_server_name or hp[0])
        except ssl.SSLCertVerificationError as e:
            return f"the collector's certificate is not trusted with --tls-ca {s.tls_ca}: {e.verify_message}"
        except ssl.SSLError as e:
            if e.reason == "WRONG_VERSION_NUMBER":
                return "the collector does not speak TLS (this agent has --tls-ca; the collector no --tls-cert)"
            return f"the TLS handshake with the collector failed: {e.reason or e}"
        except OSError:
            return None
        with conn:
            conn.settimeout(timeout_s / 2)
            try:
                if conn.recv(1):
                    return None  # it speaks HTTP/2 to us: accepted
                alert = ""
            except TimeoutError:
                return None  # it waits for our HTTP/2 preface: accepted
            except ssl.SSLError as e:
                alert = f" ({e.reason})"
            except OSError as e:
                alert = f" ({e.strerror or e})"
    if not (s.tls_cert and s.tls_key):
        return (
            "the collector requires a client certificate (mutual TLS: its --tls-client-ca) and this agent "
            f"presents none (--tls-cert/--tls-key): it closed the connection after the TLS handshake{alert}"
        )
    return (
        f"the collector refused this agent's client certificate --tls-cert {s.tls_cert}: it closed the "
        f"connection after the TLS handshake{alert}; the certificate is not signed by a CA in its "
        "--tls-client-ca, has expired, or is not for client authentication"
    )


class GrpcTransport:
    """Runs the stream in a daemon thread until stop(); reconnects forever with backoff."""

    def __init__(
        self,
        settings: TransportSettings,
        metrics: AgentMetrics | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._s = settings
        self._metrics = metrics or AgentMetrics()
        self._rand = rand
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._cancel: Callable[[], object] | None = None  # cancels the current call
        self._thread: threading.Thread | None = None
        # a collector down for minutes: the first failure, then one line per 30 s with a count
        self._warn = Throttle(30.0)
        self._changed_log = Throttle(30.0)

    def start(self, source: BatchSource) -> None:
        self._thread = threading.Thread(target=self._run, args=(source,), name="tcpscope-export", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """End the stream cleanly if it can (the request stream ends: a half-close, which the collector
        counts as a clean end after acking what it read), else cancel it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(min(timeout_s, 1.0))  # _requests notices _stop within 0.2 s
        with self._lock:
            if self._cancel is not None:
                self._cancel()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _collector_changed(self, ack: BatchAck) -> None:
        """The collector left events out of an acknowledged batch, or cleared some of its times
        (docs/kafka.md, "Bounds"): counted and said, never reported as losses again (the batch's
        summary record in Kafka already carries them)."""
        for reason, n in ack.dropped.items():
            self._metrics.collector_dropped.labels(reason).inc(n)
        if (held := self._changed_log.ready()) is not None:
            log.warning(
                "collector accepted batch %d with changes: events left out %s, times cleared %s "
                "(docs/kafka.md, Bounds)%s",
                ack.sequence,
                dict(sorted(ack.dropped.items())),
                dict(sorted(ack.clamped.items())),
                held_note(held),
            )

    def _channel(self) -> grpc.Channel:
        s = self._s
        options: list[tuple[str, int | str]] = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            # our own backoff decides when to retry; keep gRPC's reconnect short so it does not add up
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if not s.tls_ca:
            return grpc.insecure_channel(s.target, options=options, compression=COMPRESSION[s.compression])
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(s.tls_ca),
            private_key=_read(s.tls_key) if s.tls_key else None,
            certificate_chain=_read(s.tls_cert) if s.tls_cert else None,
        )
        if s.tls_server_name:
            options.append(("grpc.ssl_target_name_override", s.tls_server_name))
        return grpc.secure_channel(s.target, creds, options=options, compression=COMPRESSION[s.compression])

    def _metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        if not self._s.token_file:
            return ()
        token = _read(self._s.token_file).decode().strip()  # re-read per connect: rotation works
        return (("authorization", f"Bearer {token}"),)

    def _requests(self, source: BatchSource, done: threading.Event) -> Iterator[bytes]:
        generation = source.begin_stream()
        while not done.is_set() and not self._stop.is_set():
            b = source.next_batch(timeout_s=0.2, generation=generation)
            if b is not None:
                yield b.data

    def _run(self, source: BatchSource) -> None:
        attempt = 0
        while not self._stop.is_set():
            done = threading.Event()
            code = "OK"
            try:
                with self._channel() as channel:
                    stream = channel.stream_stream(
                        STREAM_METHOD, request_serializer=None, response_deserializer=BatchAck.FromString
                    )
                    call = stream(self._requests(source, done), metadata=self._metadata())
                    cancel: Callable[[], object] = call.cancel
                    with self._lock:
                        self._cancel = cancel
                    if self._stop.is_set():
                        cancel()
                    for ack in call:
                        self._metrics.stream_connected.set(1)
                        if attempt:
                            self._warn.reset()
                        attempt = 0
                        source.on_ack(ack.agent_id, ack.sequence)
                        if ack.dropped or ack.clamped:
                            self._collector_changed(ack)
            except grpc.RpcError as e:
                code = e.code().name if isinstance(e, grpc.Call) else "UNKNOWN"
                details = e.details() if isinstance(e, grpc.Call) else str(e)
                refused = _refused_batch(e)
                if refused is not None:
                    source.on_refused(refused[0], refused[1], details or "")
                    attempt = 0  # the batch that stopped the stream is gone: go on at once
                elif not self._stop.is_set() and (held := self._warn.ready(code)) is not None:
                    why = tls_refusal(self._s) if code == "UNAVAILABLE" else None
                    log.warning(
                        "collector stream to %s ended: %s; reconnecting%s",
                        self._s.target,
                        f"TLS: {why}" if why else f"{code} {details}",
                        held_note(held),
                    )
            except OSError as e:  # unreadable certificate or token file
                code = "LOCAL_ERROR"
                if (held := self._warn.ready(code)) is not None:
                    log.error("collector stream to %s: %s%s", self._s.target, e, held_note(held))
            finally:
                done.set()
                with self._lock:
                    self._cancel = None
                self._metrics.stream_connected.set(0)
                source.on_stream_reset()
            if self._stop.is_set():
                break
            self._metrics.reconnects.labels(code).inc()
            delay = backoff_delay(attempt, self._s.backoff_initial_s, self._s.backoff_max_s, self._rand)
            attempt += 1
            self._stop.wait(delay)
