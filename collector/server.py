"""Wires the collector from its config: gRPC server (TLS/mTLS, health), service, Kafka publisher."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.publisher import KafkaPublisher, Publisher
from collector.remote import BatchEnricher
from collector.service import SERVICE_NAME, CollectorService
from collector.traffic import BatchObserver
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
        return grpc.ssl_server_credentials(pair, root_certificates=_read(cfg.tls_client_ca),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


class CollectorServer:
    """The running collector; `start()` binds, `stop(grace)` drains and closes Kafka."""

    def __init__(self, cfg: CollectorConfig, publisher: Publisher | None = None,
                 metrics: CollectorMetrics | None = None, enricher: BatchEnricher | None = None,
                 observer: BatchObserver | None = None) -> None:
        self.cfg = cfg
        self._observer = observer
        self.metrics = metrics or CollectorMetrics()
        self._publisher = publisher
        self._enricher = enricher
        self._service: CollectorService | None = None
        self._server: grpc.aio.Server | None = None
        self._health = HealthServicer()
        self.port = 0
        self.streams_cancelled = 0  # agent streams still open when stop()'s grace ran out

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with --listen HOST:0)."""
        cfg = self.cfg
        if self._publisher is None:
            self._publisher = KafkaPublisher(cfg)
        if self._enricher is None and cfg.resolve_remote:
            from collector.remote import build_remote_enrichment

            remote = build_remote_enrichment(cfg, self.metrics)
            self._enricher = remote
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, remote.wait_synced, cfg.remote_sync_timeout):
                log.warning("Kubernetes API not synced within %.1fs; remote ends resolve once it is "
                            "(counted as miss_api_unavailable until then)", cfg.remote_sync_timeout)
        reviewer = None
        if cfg.tokenreview:
            from agent.enrich.kube import load_api_client
            from collector.identity import TokenReviewer

            try:
                api = load_api_client(cfg.kubeconfig)
            except Exception as e:  # no kubeconfig and not in a cluster: one line, exit 2 (__main__)
                raise RuntimeError(f"--tokenreview needs API access (--kubeconfig or the in-cluster service "
                                   f"account): {e}") from e
            reviewer = TokenReviewer(api, cfg.token_audience, frozenset(cfg.agent_service_accounts))
        service = CollectorService(cfg, self._publisher, self.metrics, cfg.read_token(), self._enricher,
                                   self._observer, reviewer=reviewer)
        self._service = service
        hard_limit = 2 * cfg.max_message_bytes + 1024 * 1024  # above it gRPC refuses by itself
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", hard_limit),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # a second collector on a busy port must fail, not share it and split the agents
            ("grpc.so_reuseport", 0),
        ])
        handler = grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Stream": grpc.stream_stream_rpc_method_handler(
                service.stream, request_deserializer=None, response_serializer=BatchAck.SerializeToString),
        })
        server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        creds = server_credentials(cfg)
        if creds is None:
            self.port = server.add_insecure_port(cfg.listen)
        else:
            self.port = server.add_secure_port(cfg.listen, creds)
        if not self.port:  # gRPC returns 0 when it could not bind (older versions) instead of raising
            raise OSError(f"cannot listen on {cfg.listen}")
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port)
        log.info("collector listening on %s (port %d, tls=%s, mtls=%s), Kafka %s topic %s",
                 cfg.listen, self.port, bool(cfg.tls_cert), bool(cfg.tls_client_ca),
                 ",".join(cfg.kafka_bootstrap), cfg.topic)
        return self.port

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let open streams finish for `grace` seconds, close the producer."""
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
