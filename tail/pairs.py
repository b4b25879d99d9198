"""The summary's rows: who the two ends of a pair are (`Party`) and the pair's counters
(`PairSummary`). Pure data, shared by the aggregation (tail/summary.py, which says what each
counter counts) and the renderers of its rows (summary's table and JSON, tail/servicemap.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tail.gaps import rfc3339

COUNTERS: tuple[str, ...] = (
    "connections",
    "client_resets",
    "server_resets",
    "network_resets",
    "refused",
    "timeouts",
    "retransmits",
    "failed",
)


@dataclass(frozen=True)
class Party:
    """Who one end of a pair is: a pod (namespace, name) or, when unresolved, an address."""

    namespace: str
    name: str
    kind: str  # POD, SERVICE, NODE, EXTERNAL, UNRESOLVED, PROCESS; or the workload kind with --by workload
    process: str = ""  # PROCESS: the owning process's comm (an end no pod owns, e.g. without Kubernetes)
    port: int = 0  # a server end no pod owns, seen by its own agent: the server port (one row per port)

    def label(self) -> str:
        if self.process:
            return f"{self.process}@{self.name}"
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"namespace": self.namespace, "name": self.name, "kind": self.kind}
        if self.process:
            out["process"] = self.process
        if self.port:
            out["port"] = self.port
        return out


@dataclass
class PairSummary:
    client: Party
    server: Party
    connections: int = 0
    client_resets: int = 0
    server_resets: int = 0
    network_resets: int = 0
    refused: int = 0
    timeouts: int = 0
    retransmits: int = 0
    failed: int = 0
    flow_connections: int = 0  # of `connections`, those counted from flows (aggregated ordinary ones)
    aggregated_connections: int = 0  # connections counted from anomaly aggregates (past the agents' budget)
    server_ports: set[int] = field(default_factory=set)
    client_reset_reasons: dict[str, int] = field(default_factory=dict)
    server_reset_reasons: dict[str, int] = field(default_factory=dict)
    reset_causes: dict[str, dict[str, int]] = field(default_factory=dict)
    """connections that ended by a received RST, by who sent it (resetcause): {cause: {detail: n}}"""
    first_seen_ns: int = 0
    last_seen_ns: int = 0
    via: Party | None = None
    """the Service (or node port) the client connected to, its port in `port`, when kube-proxy's NAT
    took the connection to the server (a backend); None for a connection straight to the server"""

    @property
    def problems(self) -> int:
        return (
            self.client_resets + self.server_resets + self.network_resets + self.refused + self.timeouts + self.failed
        )

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"client": self.client.to_json(), "server": self.server.to_json()}
        for c in COUNTERS:
            out[c] = getattr(self, c)
        out["flow_connections"] = self.flow_connections
        out["aggregated_connections"] = self.aggregated_connections
        out["server_ports"] = sorted(self.server_ports)
        out["client_reset_reasons"] = dict(sorted(self.client_reset_reasons.items()))
        out["server_reset_reasons"] = dict(sorted(self.server_reset_reasons.items()))
        out["reset_causes"] = {c: dict(sorted(d.items())) for c, d in sorted(self.reset_causes.items())}
        out["first_seen"] = rfc3339(self.first_seen_ns)
        out["last_seen"] = rfc3339(self.last_seen_ns)
        if self.via is not None:  # only through a Service or a node port: pod-to-pod rows keep their shape
            out["via"] = self.via.to_json()
        return out
