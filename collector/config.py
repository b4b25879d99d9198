"""The collector's one configuration object: every flag, its environment variable and its default.

Read once at start-up (`CollectorConfig.from_args`) and passed down explicitly; the flags are
generated from the fields (`tcpscope/settings.py`). Secrets (the Kafka SASL password) come from the
environment or a file, never from a flag.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tcpscope.kafka_client import KafkaSecurity
from tcpscope.kafka_layout import RECORD_LAYOUTS, VALUE_FORMATS
from tcpscope.settings import (
    ConfigError,
    check,
    host_port,
    load,
    log_level,
    parser_for,
    readable_files,
    setting,
    settings_of,
    together,
)

METRICS_BY = ("workload", "pod", "namespace")
KAFKA_COMPRESSIONS = ("gzip", "none", "snappy", "lz4", "zstd")


__all__ = [
    "METRICS_BY",
    "CollectorConfig",
    "ConfigError",
    "build_parser",
]


@dataclass(frozen=True)
class CollectorConfig:
    listen: str = setting(
        "TCPSCOPE_LISTEN",
        "gRPC listen address HOST:PORT; loopback unless set (the chart sets the pod's address); port 0 picks one",
        default="127.0.0.1:4317",
    )
    kafka_bootstrap: tuple[str, ...] = setting(
        "TCPSCOPE_KAFKA_BOOTSTRAP", "Kafka bootstrap servers HOST:PORT[,HOST:PORT]", default=()
    )
    topic: str = setting("TCPSCOPE_TOPIC", "Kafka topic for events", default="tcpscope-events")
    value_format: str = setting(
        "TCPSCOPE_VALUE_FORMAT",
        "Kafka record values: 'protobuf' or 'json' (docs/kafka.md)",
        default="protobuf",
        choices=VALUE_FORMATS,
    )
    record_layout: str = setting(
        "TCPSCOPE_RECORD_LAYOUT",
        "Kafka records: 'event' (one per event) or 'packed' (one per batch and partition; docs/kafka.md)",
        default="event",
        choices=RECORD_LAYOUTS,
    )
    # --- agent-facing security -----------------------------------------------------------------
    tls_cert: str | None = setting("TCPSCOPE_TLS_CERT", "server certificate (enables TLS)", default=None)
    tls_key: str | None = setting("TCPSCOPE_TLS_KEY", "server private key", default=None)
    tls_client_ca: str | None = setting(
        "TCPSCOPE_TLS_CLIENT_CA",
        "CA for client certificates: requires mutual TLS and checks batch.node against the cert (CN/SAN DNS)",
        default=None,
    )
    token_file: str | None = setting(
        "TCPSCOPE_TOKEN_FILE",
        "file holding a shared bearer token agents must send; it trusts every holder to speak for every "
        "node (prefer --tokenreview or mutual TLS, which bind each agent to its node)",
        default=None,
    )
    tokenreview: bool = setting(
        "TCPSCOPE_TOKENREVIEW",
        "authenticate agents by their projected ServiceAccount token (Kubernetes TokenReview) and bind "
        "each stream to the node of the token's pod (collector/node_binding.py)",
        default=False,
    )
    token_audience: str = setting(
        "TCPSCOPE_TOKEN_AUDIENCE", "audience the agents' projected tokens must carry", default="tcpscope-collector"
    )
    agent_service_accounts: tuple[str, ...] = setting(
        "TCPSCOPE_AGENT_SERVICE_ACCOUNTS",
        "with --tokenreview: NAMESPACE/NAME of the agents' ServiceAccounts, comma separated (empty: any "
        "ServiceAccount, still bound to its pod's node)",
        default=(),
    )
    # --- Kafka ---------------------------------------------------------------------------------
    kafka_security: KafkaSecurity = settings_of(KafkaSecurity)  # --kafka-security-protocol ... --kafka-ssl-cafile
    kafka_compression: str = setting(
        "TCPSCOPE_KAFKA_COMPRESSION",
        "producer compression: gzip or none (snappy/lz4/zstd if their codec is installed)",
        default="gzip",
        choices=KAFKA_COMPRESSIONS,
    )
    kafka_linger_ms: int = setting("TCPSCOPE_KAFKA_LINGER_MS", "producer linger in ms", default=20, min=0)
    kafka_batch_size: int = setting(
        "TCPSCOPE_KAFKA_BATCH_SIZE",
        "producer batch size in bytes per partition (large: fewer, bigger produce requests)",
        default=1024 * 1024,
        min=1,
    )
    kafka_delivery_timeout_ms: int = setting(
        "TCPSCOPE_KAFKA_DELIVERY_TIMEOUT_MS",
        "give up on a record after this long; the batch is then not acked and the agent resends it",
        default=30_000,
        min=1,
    )
    kafka_max_record_bytes: int = setting(
        "TCPSCOPE_KAFKA_MAX_RECORD_BYTES",
        "largest Kafka record the topic accepts; a larger one is not sent and its events are counted lost "
        "(collector.record_too_large). 0 = the topic's max.message.bytes, read at start-up (1048576, "
        "Kafka's default, if it cannot be read)",
        default=0,
        min=0,
    )
    # --- remote-end enrichment (docs/enrichment.md: in a cluster the collector resolves remote ends) --
    resolve_remote: bool = setting(
        "TCPSCOPE_RESOLVE_REMOTE",
        "resolve events' remote IPs to pod/service/node from cluster-wide watches (agents then run "
        "with --no-resolve-remote); ends the agent already resolved are left alone",
        default=False,
    )
    resolve_backends: bool = setting(
        "TCPSCOPE_RESOLVE_BACKENDS",
        "name on each server socket's and server flow's local end the Service ports whose EndpointSlices "
        "list it (Endpoint.services), from cluster-wide Service and EndpointSlice watches: readers then "
        "split a client's aggregated connections to a Service by backend (docs/services.md)",
        default=False,
    )
    kubeconfig: str | None = setting(
        "KUBECONFIG",
        "kubeconfig for --resolve-remote, --resolve-backends and --tokenreview; without it the in-cluster "
        "service account",
        default=None,
    )
    labels: tuple[str, ...] = setting(
        "TCPSCOPE_LABELS", "pod labels copied onto remote ends, comma separated (others are dropped)", default=()
    )
    remote_sync_timeout: float = setting(
        "TCPSCOPE_REMOTE_SYNC_TIMEOUT",
        "seconds to wait at start-up for the first pod/service/node (and service/endpointslice) lists "
        "(serving starts regardless)",
        default=5.0,
        min=0,
    )
    # --- limits --------------------------------------------------------------------------------
    max_batch_events: int = setting("TCPSCOPE_MAX_BATCH_EVENTS", "events per batch at most", default=10_000, min=1)
    max_message_bytes: int = setting(
        "TCPSCOPE_MAX_MESSAGE_BYTES",
        "largest accepted batch (serialized bytes)",
        default=8 * 1024 * 1024,
        min=1,
    )
    max_inflight_batches: int = setting(
        "TCPSCOPE_MAX_INFLIGHT_BATCHES",
        "batches awaiting Kafka acks, all streams together; beyond it streams are not read (backpressure)",
        default=64,
        min=1,
    )
    max_event_age: float = setting(
        "TCPSCOPE_MAX_EVENT_AGE",
        "seconds an event's time may lie behind this collector's clock; older events are left out and "
        "counted (collector.invalid_time; docs/kafka.md, Bounds)",
        default=7 * 86400.0,
        min=1,
    )
    max_event_ahead: float = setting(
        "TCPSCOPE_MAX_EVENT_AHEAD",
        "seconds an event's time may lie ahead of this collector's clock (an agent's clock running fast); "
        "later events are left out and counted (collector.invalid_time)",
        default=3600.0,
        min=1,
    )
    clock_offset_warn: float = setting(
        "TCPSCOPE_CLOCK_OFFSET_WARN",
        "log a warning when an agent's clock is off from this collector's by more than this many seconds "
        "(tcpscope_agent_clock_offset_seconds; docs/kafka.md, Clocks)",
        default=1.0,
        min=0.001,
    )
    # --- connection guards (an unauthenticated client must not starve the collector) --------------
    handshake_timeout: float = setting(
        "TCPSCOPE_HANDSHAKE_TIMEOUT",
        "seconds a new connection has to finish its TLS and HTTP/2 handshake before it is closed",
        default=5.0,
        min=0.1,
    )
    max_connection_idle: float = setting(
        "TCPSCOPE_MAX_CONNECTION_IDLE",
        "seconds a connection may stay open with no call (agents always have one) before it is closed",
        default=60.0,
        min=1,
    )
    max_connections: int = setting(
        "TCPSCOPE_MAX_CONNECTIONS",
        "open connections at most (agents and handshakes together); beyond it new ones are closed at once",
        default=10_000,
        min=1,
    )
    metrics_port: int = setting(
        "TCPSCOPE_METRICS_PORT", "Prometheus metrics port (0 = off)", default=0, min=0, max=65535
    )
    metrics_address: str = setting(
        "TCPSCOPE_METRICS_ADDRESS",
        "address the metrics server binds (the chart sets 0.0.0.0)",
        default="127.0.0.1",
    )
    # --- traffic metrics (collector/pair_metrics.py, docs/metrics.md), served on --metrics-port ---------
    metrics_by: str = setting(
        "TCPSCOPE_METRICS_BY",
        "traffic metrics' *_workload labels name the workload, the pod, or nothing (namespace)",
        default="workload",
        choices=METRICS_BY,
    )
    metrics_namespaces: tuple[str, ...] = setting(
        "TCPSCOPE_METRICS_NAMESPACES",
        "count only connections with an end in these namespaces, comma separated (empty: all)",
        default=(),
    )
    metrics_exclude_namespaces: tuple[str, ...] = setting(
        "TCPSCOPE_METRICS_EXCLUDE_NAMESPACES",
        "never count connections with an end in these namespaces, comma separated",
        default=(),
    )
    metrics_max_series: int = setting(
        "TCPSCOPE_METRICS_MAX_SERIES",
        "traffic series at most; past it new pairs fold into 'other' (tcpscope_traffic_folded_total)",
        default=20_000,
        min=1,
    )
    metrics_ttl: float = setting(
        "TCPSCOPE_METRICS_TTL",
        "seconds after which a pair's traffic series, not updated, are removed",
        default=900.0,
        above=0,
    )
    metrics_scan_window: float = setting(
        "TCPSCOPE_METRICS_SCAN_WINDOW",
        "seconds over which the scan gauges count distinct refused ports and hosts per source "
        "(tcpscope_scan_ports, tcpscope_scan_hosts; collector/storm_metrics.py)",
        default=60.0,
        above=0,
    )
    metrics_watched_peers: tuple[str, ...] = setting(
        "TCPSCOPE_METRICS_WATCHED_PEERS",
        "remote-end kinds an agent watches too, so their own agent counts the connection: pod, and node "
        "while agents also watch host processes (they do unless --cgroup-root limits them to pods; then "
        "set pod alone). With node, a NodePort's SNATed connection is counted by its client's socket once",
        default=("pod", "node"),
        choices=("pod", "node"),
    )
    grace: float = setting("TCPSCOPE_SHUTDOWN_GRACE", "seconds to finish streams on SIGTERM", default=10.0, min=0)
    log_level: str = setting("TCPSCOPE_LOG_LEVEL", "logging level", default="INFO")

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_level", log_level(self.log_level))  # any case, like the agent's
        check(self)
        if not self.kafka_bootstrap:
            raise ConfigError("--kafka-bootstrap is required")
        host_port(self.listen, "--listen", allow_zero=True)
        for server in self.kafka_bootstrap:
            host_port(server, "--kafka-bootstrap")
        if self.kafka_delivery_timeout_ms <= self.kafka_linger_ms + 1:
            raise ConfigError("--kafka-delivery-timeout-ms must be above --kafka-linger-ms + 1")
        if not codec_available(self.kafka_compression):
            raise ConfigError(
                f"--kafka-compression {self.kafka_compression}: its codec library is not "
                f"installed (pip install {CODEC_PACKAGES[self.kafka_compression]})"
            )
        together(("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key))
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.tokenreview and self.token_file:
            raise ConfigError("--tokenreview and --token-file are alternatives (a shared token binds no node)")
        if any(a.count("/") != 1 or a.startswith("/") or a.endswith("/") for a in self.agent_service_accounts):
            raise ConfigError("--agent-service-accounts takes NAMESPACE/NAME entries")
        readable_files(
            (
                ("--tls-cert", self.tls_cert),
                ("--tls-key", self.tls_key),
                ("--tls-client-ca", self.tls_client_ca),
                ("--token-file", self.token_file),
                ("--kafka-ssl-cafile", self.kafka_security.ssl_cafile),
                ("--kafka-username-file", self.kafka_security.username_file),
                ("--kafka-password-file", self.kafka_security.password_file),
                ("--kubeconfig", self.kubeconfig if self.resolve_remote or self.resolve_backends else None),
            )
        )
        self.read_token()  # an empty token file is refused now, not at the first agent

    def read_token(self) -> str | None:
        if not self.token_file:
            return None
        try:
            with open(self.token_file) as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--token-file {self.token_file}: {e}") from e
        if not token:
            raise ConfigError(f"--token-file {self.token_file} is empty")
        return token

    @staticmethod
    def from_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> CollectorConfig:
        """Flags over environment variables over defaults."""
        env = os.environ if env is None else env
        return load(CollectorConfig, build_parser(), argv, env)


# kafka-python's optional codecs and the package that provides each
CODEC_PACKAGES = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}


def codec_available(compression: str) -> bool:
    """Whether kafka-python can compress with this codec here (gzip and none always can)."""
    if compression not in CODEC_PACKAGES:
        return True
    from kafka import codec

    return bool(getattr(codec, f"has_{compression}")())


def build_parser() -> argparse.ArgumentParser:
    return parser_for(
        CollectorConfig, "tcpscope-collector", "Receive tcpscope event batches over gRPC and publish them to Kafka."
    )
