"""The agent's remote-end stage: `tcpscope.kube` resolves, this counts (an `agent.pipeline.Enricher`).

Used when the agent resolves remote ends itself (`--resolve-remote`, the standalone default); in a
cluster the collector does it instead (docs/enrichment.md). Never holds, never drops.
"""

from __future__ import annotations

from tcpscope.kube.remote_ends import RemoteResolver, RemoteResult, fill_remote_ends
from tcpscope.v1.events_pb2 import TcpEvent


class RemoteEnricher:
    """Fills `event.remote` identity; `remote.events` and one `remote.<result>` count per `RemoteResult`."""

    def __init__(self, resolver: RemoteResolver, node_name: str, *, own_resolver: bool = True) -> None:
        self.resolver = resolver
        self.node_name = node_name
        self._own = own_resolver
        self.counters: dict[str, int] = {"remote.events": 0, **{f"remote.{r.value}": 0 for r in RemoteResult}}

    def process(self, events: list[TcpEvent], now: float) -> list[TcpEvent]:
        self.counters["remote.events"] += len(events)
        for result, n in fill_remote_ends(events, self.resolver, self.node_name).items():
            self.counters[f"remote.{result.value}"] += n
        return events

    def flush(self) -> list[TcpEvent]:
        return []

    def losses(self) -> dict[str, int]:
        return {}

    def stats(self) -> dict[str, int]:
        return {**self.counters, **self.resolver.stats()}

    def close(self) -> None:
        if self._own:
            self.resolver.close()
