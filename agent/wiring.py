"""The one place that builds the agent's pipeline from an AgentConfig.

KernelSource -> enrichers (agent/enrich) -> sink (stdout | exporter to the collector | both)

"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TextIO

from agent.config import AgentConfig, ConfigError
from agent.health import AgentHealth, HeartbeatSource
from agent.kernel.connid import NO_KEY_NOTICE, connection_ids
from agent.kernel.decode import Decoder
from agent.kernel.loader import load
from agent.kernel.probe import Plan, build_plan
from agent.kernel.source import KernelSource, boot_to_wall_offset_ns
from agent.metrics import AgentMetrics, Snapshot
from agent.pipeline import Enricher, FanOut, Pipeline, Sink
from agent.stdout import StdoutSink

log = logging.getLogger(__name__)


@dataclass
class Agent:
    """A built, attached agent: run `pipeline`, then `pipeline.shutdown()`."""

    plan: Plan
    source: KernelSource
    pipeline: Pipeline
    health: AgentHealth | None = None


def build_enrichers(config: AgentConfig) -> list[Enricher]:
    """Enrichers in order (cgroup -> pod for the local end, IP -> pod/service for the remote end)."""
    from agent.enrich import build_enrichers as build_enrichment

    return build_enrichment(config)


def build_sink(
    config: AgentConfig,
    out: TextIO,
    metrics: AgentMetrics | None = None,
    on_attached: list[Callable[[], None]] | None = None,
    on_detach: list[Callable[[], None]] | None = None,
) -> Sink:
    """The sink: stdout with --stdout, the exporter with --collector, both fanned out when both given.
    What must run once the programs are attached is appended to `on_attached`, what must run when
    they are detached at shutdown (before the drain) to `on_detach`."""
    sinks: list[Sink] = []
    if config.stdout is not None:
        sinks.append(StdoutSink(config.stdout, out))
    if config.collector:
        from agent.export import build_exporter

        exporter = build_exporter(config, metrics)
        if on_attached is not None:
            on_attached.append(exporter.attached)  # report the windows nobody observed before now
        if on_detach is not None:
            on_detach.append(exporter.detached)  # a handover's window starts when this agent stops observing
        sinks.append(exporter)
    if not sinks:
        raise ConfigError("nothing to do: pass --stdout table|json or --collector HOST:PORT")
    return sinks[0] if len(sinks) == 1 else FanOut(sinks)


def build_agent(config: AgentConfig, out: TextIO, plan: Plan | None = None) -> Agent:
    """Probe the kernel (unless a plan is given), start the metrics server and the Kubernetes
    watches, load and attach the programs, wire the stages.

    What fails fast comes first and starts nothing: the sinks and the connection key (config errors),
    then the kernel probe (tracefs, BTF, tracepoints). The metrics server is up before the programs
    are compiled (tens of seconds), so /healthz answers "starting" meanwhile, and the watches fill the
    pod cache while the compiler runs. When a later step fails, what was started is stopped: no port stays bound and no
    watch thread runs on. Raises KernelSupportError (kernel/permissions) or ConfigError."""
    metrics = AgentMetrics()
    health = AgentHealth(metrics, exporting=bool(config.collector))
    on_attached: list[Callable[[], None]] = []
    on_detach: list[Callable[[], None]] = []
    sink = build_sink(config, out, metrics, on_attached, on_detach)  # starts nothing before its first emit
    ids = connection_ids(config)
    plan = plan or build_plan(config)
    with ExitStack() as undo:
        if config.metrics_port:
            try:
                metrics.serve(config.metrics_port, config.metrics_address, health)
            except OSError as e:
                raise ConfigError(
                    f"--metrics-port {config.metrics_port} on {config.metrics_address}: {e.strerror or e}"
                ) from e
            undo.callback(metrics.close)
        enrichers = build_enrichers(config)
        for enricher in enrichers:
            undo.callback(enricher.close)

        def enrichment_stats() -> dict[str, int]:
            out: dict[str, int] = {}
            for e in enrichers:
                out.update(e.stats())
            return out

        # the stages count on the pipeline thread: the scrape thread reads copies taken there
        enrichment = Snapshot(enrichment_stats)
        metrics.watch_enrichment(enrichment)
        loaded = load(plan)
        undo.callback(loaded.close)
        for hook in on_attached:
            hook()
        decoder = Decoder(config.node_name, boot_to_wall_offset_ns(), plan.rst_reasons, ids)
        if ids.random:
            log.info(NO_KEY_NOTICE)
        source = KernelSource(loaded, decoder, flow_interval_s=config.flow_interval)
        flows = Snapshot(source.kernel_counters)
        metrics.watch_flows(flows)
        undo.pop_all()  # built: the pipeline's shutdown closes the stages from here on
    health.attached = True
    pipeline = Pipeline(
        source=HeartbeatSource(source, health),
        enrichers=enrichers,
        sink=sink,
        on_refresh=(enrichment.take, flows.take),
        on_detach=tuple(on_detach),
    )
    return Agent(plan=plan, source=source, health=health, pipeline=pipeline)
