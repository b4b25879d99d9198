"""Streaming to the collector: the exporter Sink (policy) over a gRPC transport (mechanism).

`build_exporter(config)` is the one place that wires them from the agent's config.
"""

from __future__ import annotations

import time

from agent.config import AgentConfig
from agent.export.exporter import Exporter, ExporterSettings, OutgoingBatch, split_losses
from agent.export.journal import NodeJournal
from agent.export.transport import GrpcTransport, TransportSettings
from agent.metrics import AgentMetrics

__all__ = [
    "Exporter",
    "ExporterSettings",
    "GrpcTransport",
    "NodeJournal",
    "OutgoingBatch",
    "TransportSettings",
    "build_exporter",
    "split_losses",
]


def build_exporter(config: AgentConfig, metrics: AgentMetrics | None = None) -> Exporter:
    """The exporter for `--collector`, with its transport; its thread starts on the first emit()."""
    if not config.collector:
        raise ValueError("build_exporter needs --collector")
    metrics = metrics or AgentMetrics()
    transport = GrpcTransport(
        TransportSettings(
            target=config.collector,
            tls_ca=config.tls_ca,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
            tls_server_name=config.tls_server_name,
            token_file=config.token_file,
            compression=config.compression,
        ),
        metrics,
    )
    journal = None
    if config.state_dir:
        # how long an event can take from the kernel to a sealed batch: the window's start moves back by it
        lag = (
            (config.flow_interval if config.connections == "aggregate" else 0.0)
            + (config.pending_max_wait if config.kubernetes else 0.0)
            + config.batch_max_age
            + 0.5
        )
        journal = NodeJournal.open(config.state_dir, config.node_name, config.agent_id, lambda: time.time_ns(), lag)
    return Exporter(
        ExporterSettings(
            node=config.node_name,
            agent_id=config.agent_id,
            batch_max_events=config.batch_max_events,
            batch_max_age=config.batch_max_age,
            buffer_max_events=config.buffer_max_events,
        ),
        transport,
        metrics,
        journal=journal,
    )
