"""Prometheus metrics of the collector, in its own registry (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tcpscope.httpserve import Health, HttpServer


class CollectorMetrics:
    """Every counter the collector keeps; tests read them back through `value()`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._servers: list[HttpServer] = []
        r = self.registry
        self.streams_active = Gauge("tcpscope_collector_streams_active", "open agent streams", registry=r)
        self.streams_ended = Counter(
            "tcpscope_collector_streams_ended_total",
            "agent streams ended, by how: agent_closed (the agent half-closed after draining), refused, "
            "draining (this collector shut down), broken (the agent vanished: killed, or the link broke)",
            ["how"],
            registry=r,
        )
        self.batches_received = Counter(
            "tcpscope_collector_batches_received_total", "valid batches received from agents", registry=r
        )
        self.batches_acked = Counter(
            "tcpscope_collector_batches_acked_total", "batches acknowledged after Kafka acked them", registry=r
        )
        self.events_received = Counter(
            "tcpscope_collector_events_received_total", "events in valid batches", registry=r
        )
        self.records_published = Counter(
            "tcpscope_collector_records_published_total", "Kafka records acknowledged by Kafka", registry=r
        )
        self.rejected = Counter(
            "tcpscope_collector_rejected_total", "messages or streams refused, by reason", ["reason"], registry=r
        )
        self.kafka_errors = Counter(
            "tcpscope_collector_kafka_errors_total", "failed Kafka publishes, by error type", ["error"], registry=r
        )
        self.dropped = Counter(
            "tcpscope_collector_dropped_events_total",
            "events the collector left out and counted in the batch's loss report, by reason "
            "(collector.record_too_large: above the topic's max.message.bytes; collector.invalid_<bound>: "
            "outside the bounds of docs/kafka.md)",
            ["reason"],
            registry=r,
        )
        self.clamped = Counter(
            "tcpscope_collector_clamped_total",
            "times of batches the collector cleared because they were outside the accepted window, by field "
            "(sent_time, last_ack_time, unobserved_time; docs/kafka.md, Bounds)",
            ["field"],
            registry=r,
        )
        self.clock_offset = Gauge(
            "tcpscope_agent_clock_offset_seconds",
            "each connected agent's clock minus this collector's, measured from its batches and acks "
            "(docs/kafka.md, Clocks)",
            ["node", "agent"],
            registry=r,
        )
        self.lost_reported = Counter(
            "tcpscope_collector_agent_lost_events_total",
            "events agents reported lost upstream of the collector, by reason",
            ["reason"],
            registry=r,
        )
        self.remote_ends = Counter(
            "tcpscope_collector_remote_ends_total",
            "remote ends seen with --resolve-remote, by result (tcpscope.kube.RemoteResult): pod, service, "
            "node, loopback (hits); pod_unknown (in a node's pod range, no pod known yet); external "
            "(synced index, no owner), miss_api_unavailable (index not synced yet), no_ip; "
            "agent_resolved (left as the agent resolved it)",
            ["result"],
            registry=r,
        )
        self.backend_ends = Counter(
            "tcpscope_collector_backend_ends_total",
            "server lifecycles and flows seen with --resolve-backends, by result (tcpscope.kube.backends."
            "BackendResult): backend (Endpoint.services set), not_backend (no Service lists the address and "
            "port), already_set, miss_api_unavailable (services and endpointslices not listed yet)",
            ["result"],
            registry=r,
        )
        self.inflight = Gauge("tcpscope_collector_inflight_batches", "batches awaiting Kafka acks", registry=r)
        self.publish_seconds = Histogram(
            "tcpscope_collector_publish_seconds",
            "from batch receipt to Kafka ack of all its records",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_lag_seconds = Histogram(
            "tcpscope_collector_batch_lag_seconds",
            "batch sent_time to receipt (agent clock vs ours)",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
        )

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (0 when absent), e.g. value('..._rejected_total', reason='x')."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def serve(self, port: int, addr: str = "0.0.0.0", health: Health | None = None) -> None:
        """/metrics, and /healthz and /readyz when health is given (the readiness probe with TLS on,
        where the kubelet's gRPC probe cannot connect), until close(). OSError: the port is taken."""
        self._servers.append(HttpServer(self.registry, port, addr, health))

    def close(self) -> None:
        while self._servers:
            self._servers.pop().close()
