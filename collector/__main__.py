"""`tcpscope-collector`: receive agents' batches over gRPC and publish them to Kafka."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from collector.config import CollectorConfig, ConfigError
from collector.metrics import CollectorMetrics
from collector.pair_metrics import build_traffic_metrics
from collector.server import CollectorServer, StartupError
from collector.storm_metrics import Observers, build_storm_metrics

log = logging.getLogger("collector")


async def run(cfg: CollectorConfig) -> None:
    """Serve until SIGTERM/SIGINT, then drain for cfg.grace seconds."""
    metrics = CollectorMetrics()
    observer = None
    if cfg.metrics_port:  # traffic metrics per pair and storm signals, beside the collector's own (docs/metrics.md)
        traffic = build_traffic_metrics(cfg)
        storms = build_storm_metrics(traffic.party, cfg.metrics_scan_window)
        metrics.registry.register(traffic)
        metrics.registry.register(storms)
        observer = Observers(traffic, storms)
    server = CollectorServer(cfg, metrics=metrics, observer=observer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before start: Ctrl-C works while Kafka is being reached
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(server.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while starting (Kafka not reached yet): stop at once
            starting.cancel()
            log.info("stopped before the collector was up")
            await server.stop(0)
            return
        starting.result()
    except BaseException:
        stopping.cancel()
        await server.stop(0)  # whatever did start (metrics, producer) goes, so the process can exit
        raise
    await stopping
    log.info("shutting down (grace %.1fs)", cfg.grace)
    await server.stop(cfg.grace)


def error_text(e: Exception, cfg: CollectorConfig) -> str:
    """One line for a start-up failure: the error's type once (kafka-python's text often starts with
    it already), and where Kafka was looked for."""
    from kafka.errors import KafkaError

    text, name = str(e), type(e).__name__
    line = text if text.startswith(name) else f"{name}: {text}"
    return f"Kafka at {','.join(cfg.kafka_bootstrap)}: {line}" if isinstance(e, KafkaError) else line


def main(argv: Sequence[str] | None = None) -> int:
    cfg = CollectorConfig.from_args(argv)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.log_level != "DEBUG":
        # kafka-python logs every failed connection attempt (several a second while a broker is
        # down); the collector reports Kafka's state itself, rate-limited, and as gRPC health
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    from kafka.errors import KafkaError

    try:
        asyncio.run(run(cfg))
    except (StartupError, ConfigError) as e:
        print(f"tcpscope-collector: error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, KafkaError) as e:  # cannot listen (port in use), Kafka unreachable
        print(f"tcpscope-collector: error: {error_text(e, cfg)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
