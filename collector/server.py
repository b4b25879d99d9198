"""Wires the collector from its config: gRPC server (TLS/mTLS, health), service, Kafka publisher."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from collector.backends import BackendEnrichment, Enrichers, build_backend_enrichment
from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.pair_metrics import BatchObserver
from collector.publisher import KAFKA_DEFAULT_MAX_MESSAGE_BYTES, KafkaPublisher, Publisher
from collector.remote_ends import BatchEnricher, RemoteEnrichment, build_remote_enrichment
from collector.service import SERVICE_NAME, CollectorService
from tcpscope import tls
from tcpscope.ratelimit import Throttle, held_note
from tcpscope.settings import host_port
from tcpscope.v1.collector_pb2 import BatchAck

log = logging.getLogger(__name__)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(cfg: CollectorConfig) -> grpc.ServerCredentials | None:
    """TLS from --tls-cert/--tls-key; with --tls-client-ca, client certificates are required."""
    if not cfg.tls_cert or not cfg.tls_key:
        return None
    pair = [(_read(cfg.tls_key), _read(cfg.tls_cert))]
    if cfg.tls_client_ca:
        return grpc.ssl_server_credentials(pair, root_certificates=_read(cfg.tls_client_ca), require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


class StartupError(Exception):
    """The collector cannot start as configured (a port taken, the Kubernetes API unusable): one line."""


def check_tls_files(cfg: CollectorConfig) -> None:
    """--tls-cert, --tls-key and --tls-client-ca usable (StartupError naming the flag and file), and a
    warning for each certificate expired or expiring within tcpscope.tls.EXPIRY_WARN_DAYS."""
    try:
        if cfg.tls_cert and cfg.tls_key:
            tls.check_pair("--tls-cert", cfg.tls_cert, "--tls-key", cfg.tls_key)
        if cfg.tls_client_ca:
            tls.check_ca("--tls-client-ca", cfg.tls_client_ca)
        warnings = tls.expiry_warnings("--tls-cert", cfg.tls_cert) if cfg.tls_cert else []
        if cfg.tls_client_ca:
            warnings += tls.expiry_warnings("--tls-client-ca", cfg.tls_client_ca)
    except tls.TlsFileError as e:
        raise StartupError(str(e)) from None
    for w in warnings:
        log.warning("%s", w)


# file descriptors kept for everything but agent connections (Kafka, metrics, the API watch, logs)
FD_RESERVE = 256


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (before, after)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, want, e)
            return soft, soft
        return soft, want
    return soft, soft


def check_listen(listen: str) -> None:
    """Bind --listen once, here, so a taken or foreign address is one precise line at start-up
    (before Kafka is dialled), not gRPC's own log line and a generic failure later."""
    host, port = host_port(listen, "--listen", allow_zero=True)
    if not port:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise StartupError(f"--listen {listen}: {e.strerror}") from e
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                raise StartupError(f"--listen {listen}: {e.strerror or e}") from e


def server_options(cfg: CollectorConfig, max_connections: int) -> list[tuple[str, int]]:
    """gRPC server options, with the guards that keep a client that never authenticates from starving
    the collector: a connection must finish its TLS and HTTP/2 handshake within handshake_timeout
    (a raw socket that sends nothing is closed then), a connection with no call is closed after
    max_connection_idle, and beyond max_connections new connections are closed on accept, before
    they cost more than their file descriptor, which stays below the process's limit."""
    hard_limit = 2 * cfg.max_message_bytes + 1024 * 1024  # above it gRPC refuses by itself
    return [
        ("grpc.max_receive_message_length", hard_limit),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # a second collector on a busy port must fail, not share it and split the agents
        ("grpc.so_reuseport", 0),
        ("grpc.server_handshake_timeout_ms", int(cfg.handshake_timeout * 1000)),
        ("grpc.max_connection_idle_ms", int(cfg.max_connection_idle * 1000)),
        ("grpc.max_allowed_incoming_connections", max_connections),
    ]


T = TypeVar("T")


async def in_daemon_thread(make: Callable[[], T]) -> T:
    """make() on a daemon thread of its own, awaited: the loop keeps running (signals, a Ctrl-C
    cancels the wait), and a process that stops meanwhile exits without waiting for it (kafka-python's
    bootstrap blocks up to 30 s against an unreachable broker)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not done.done():
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

    def run() -> None:
        try:
            value: Any = make()
            ok = True
        except BaseException as e:
            value, ok = e, False
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=run, name="kafka-connect", daemon=True).start()
    return await done


class CollectorServer:
    """The running collector; `start()` binds, `stop(grace)` drains and closes Kafka."""

    def __init__(
        self,
        cfg: CollectorConfig,
        publisher: Publisher | None = None,
        metrics: CollectorMetrics | None = None,
        enricher: BatchEnricher | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        self.cfg = cfg
        self._observer = observer
        self.metrics = metrics or CollectorMetrics()
        self._publisher = publisher
        self._enricher = enricher
        self._service: CollectorService | None = None
        self._server: grpc.aio.Server | None = None
        self._health = HealthServicer()
        self._watch: asyncio.Task[None] | None = None
        self._probe_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-probe")
        self.serving = False  # what gRPC health says: Kafka answers and the last publish did not fail
        self.kafka_probe_interval = 2.0
        self.max_connections = cfg.max_connections
        self.port = 0
        self.streams_cancelled = 0  # agent streams still open when stop()'s grace ran out

    async def _start_enrichment(self) -> BatchEnricher:
        """--resolve-remote and --resolve-backends: their watches started, then up to
        --remote-sync-timeout for their first lists (serving starts regardless)."""
        cfg = self.cfg
        stages: list[RemoteEnrichment | BackendEnrichment] = []
        builders: list[tuple[str, Callable[[CollectorConfig, CollectorMetrics], RemoteEnrichment | BackendEnrichment]]]
        builders = [("--resolve-remote", build_remote_enrichment)] if cfg.resolve_remote else []
        builders += [("--resolve-backends", build_backend_enrichment)] if cfg.resolve_backends else []
        for flag, build in builders:
            try:
                stages.append(build(cfg, self.metrics))
            except Exception as e:  # kubernetes.config.ConfigException, unreadable kubeconfig, ...
                for started in stages:
                    started.close()
                raise StartupError(
                    f"{flag}: cannot use the Kubernetes API ({cfg.kubeconfig or 'in-cluster'}): {e}"
                ) from e
        loop = asyncio.get_running_loop()
        for stage in stages:
            if not await loop.run_in_executor(None, stage.wait_synced, cfg.remote_sync_timeout):
                log.warning(
                    "Kubernetes API not synced within %.1fs; %s resolve once it is "
                    "(counted as miss_api_unavailable until then)",
                    cfg.remote_sync_timeout,
                    "backend ends" if isinstance(stage, BackendEnrichment) else "remote ends",
                )
        return stages[0] if len(stages) == 1 else Enrichers(stages)

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with --listen HOST:0)."""
        cfg = self.cfg
        before, after = raise_fd_limit()
        self.max_connections = min(cfg.max_connections, max(1, after - FD_RESERVE))
        log.info(
            "open file limit %d%s; at most %d connections (--max-connections %d), handshake timeout "
            "%.1fs, idle connections closed after %.0fs",
            after,
            f" (raised from {before})" if after != before else "",
            self.max_connections,
            cfg.max_connections,
            cfg.handshake_timeout,
            cfg.max_connection_idle,
        )
        if cfg.metrics_port:  # first: a taken port fails at once, before Kafka is dialled
            try:
                self.metrics.serve(cfg.metrics_port, cfg.metrics_address, health=self)
            except OSError as e:
                raise StartupError(
                    f"--metrics-port {cfg.metrics_port} on {cfg.metrics_address}: {e.strerror or e}"
                ) from e
        token = cfg.read_token()
        check_tls_files(cfg)  # before Kafka: a bad certificate is named at once
        check_listen(cfg.listen)
        if self._enricher is None and (cfg.resolve_remote or cfg.resolve_backends):
            self._enricher = await self._start_enrichment()
        reviewer = None
        if cfg.tokenreview:
            from collector.node_binding import TokenReviewer
            from tcpscope.kube import load_api_client

            try:
                api = load_api_client(cfg.kubeconfig)
            except Exception as e:  # no kubeconfig and not in a cluster: one line, exit 2 (__main__)
                raise StartupError(
                    f"--tokenreview needs API access (--kubeconfig or the in-cluster service account): {e}"
                ) from e
            reviewer = TokenReviewer(api, cfg.token_audience, frozenset(cfg.agent_service_accounts))
        if self._publisher is None:
            log.info(
                "connecting to Kafka at %s (topic %s; up to 30 s, then an error)",
                ",".join(cfg.kafka_bootstrap),
                cfg.topic,
            )
            self._publisher = await in_daemon_thread(lambda: KafkaPublisher(cfg))
        service = CollectorService(
            cfg,
            self._publisher,
            self.metrics,
            token,
            self._enricher,
            self._observer,
            reviewer=reviewer,
            on_publish=self._published,
        )
        service.max_record_bytes = await self._record_limit(self._publisher)
        self._service = service
        server = grpc.aio.server(options=server_options(cfg, self.max_connections))
        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Stream": grpc.stream_stream_rpc_method_handler(
                    service.stream, request_deserializer=None, response_serializer=BatchAck.SerializeToString
                ),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        creds = server_credentials(cfg)
        try:
            if creds is None:
                self.port = server.add_insecure_port(cfg.listen)
            else:
                self.port = server.add_secure_port(cfg.listen, creds)
        except RuntimeError as e:  # recent gRPC raises instead of returning 0
            raise StartupError(f"cannot listen on {cfg.listen} (--listen): address in use or not this host's") from e
        if not self.port:  # gRPC returns 0 when it could not bind (older versions) instead of raising
            raise StartupError(f"cannot listen on {cfg.listen} (--listen): address in use or not this host's")
        await server.start()
        self._server = server
        await self._set_health(True)
        self._watch = asyncio.create_task(self._watch_kafka(self._publisher))
        log.info(
            "collector listening on %s (port %d, tls=%s, mtls=%s), Kafka %s topic %s",
            cfg.listen,
            self.port,
            bool(cfg.tls_cert),
            bool(cfg.tls_client_ca),
            ",".join(cfg.kafka_bootstrap),
            cfg.topic,
        )
        return self.port

    async def _record_limit(self, publisher: Publisher) -> int:
        """--kafka-max-record-bytes, else the topic's max.message.bytes, else Kafka's default."""
        if self.cfg.kafka_max_record_bytes:
            return self.cfg.kafka_max_record_bytes
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(self._probe_pool, publisher.topic_max_record_bytes)
        except Exception as e:
            found = None
            log.warning("cannot read the topic's max.message.bytes (%s: %s)", type(e).__name__, e)
        limit = found or KAFKA_DEFAULT_MAX_MESSAGE_BYTES
        log.info(
            "Kafka records above %d bytes are not sent (%s)",
            limit,
            "the topic's max.message.bytes" if found else "Kafka's default; set --kafka-max-record-bytes",
        )
        return limit

    def _published(self, ok: bool) -> None:
        """A publish outcome (from the service, on the loop): a failure turns health NOT_SERVING at
        once; a success restores SERVING."""
        if ok != self.serving:
            asyncio.get_running_loop().create_task(self._set_health(ok))

    async def _set_health(self, ok: bool) -> None:
        if ok == self.serving and self._watch is not None:
            return
        was, self.serving = self.serving, ok
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)
        if was and not ok:
            log.warning("Kafka cannot be published to: health NOT_SERVING until it can")
        elif ok and self._watch is not None:
            log.warning("Kafka reachable again: health SERVING")

    async def _watch_kafka(self, publisher: Publisher) -> None:
        """Probe the topic's metadata every kafka_probe_interval seconds and report the outcome as gRPC
        health, so readiness stops routing agents to a collector that can publish nothing and routes
        them back once it can (a publish failure in between turns it NOT_SERVING at once)."""
        loop = asyncio.get_running_loop()
        throttle = Throttle(60.0)
        while True:
            await asyncio.sleep(self.kafka_probe_interval)
            try:
                await loop.run_in_executor(self._probe_pool, publisher.probe)
            except Exception as e:
                held = throttle.ready()
                if held is not None:
                    log.warning("Kafka probe failed: %s: %s%s", type(e).__name__, e, held_note(held))
                await self._set_health(False)
            else:
                throttle.reset()
                await self._set_health(True)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    def live(self) -> tuple[bool, str]:
        """/healthz: the process answers (Kafka down is no reason to restart it)."""
        return True, "running"

    def ready(self) -> tuple[bool, str]:
        """/readyz: what gRPC health says (SERVING while Kafka answers and the last publish did not fail)."""
        return (True, "Kafka answers") if self.serving else (False, "Kafka cannot be published to (or not checked yet)")

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let open streams finish for `grace` seconds, close the producer."""
        if self._watch is not None:
            self._watch.cancel()
        self.serving = False
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._service is not None and self._server is not None:
            left = self.streams_cancelled = await self._service.drain(grace)
            if left:
                log.warning("%d agent streams still open after %.1fs: cancelling them", left, grace)
        if self._server is not None:
            await self._server.stop(grace)
        if self._service is not None:
            self._service.close()
        if self._publisher is not None:
            self._publisher.close(timeout_s=max(1.0, grace))
        if self._enricher is not None:
            self._enricher.close()
        self._probe_pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
