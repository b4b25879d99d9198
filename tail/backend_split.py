"""Which backends took a client's aggregated connections to a Service: the summary's per-backend split
of flows through kube-proxy's NAT (docs/services.md).

A client's flow names the Service (`C -> VIP:80`, remote end resolved as the Service) and counts T
ordinary connections; each backend's flow names the backend (`S:9000 <- C`) and counts what that
backend took from C, with no client port and no connection id to join the two one by one. With the
collector's `--resolve-backends`, a backend's flow says which Service ports list S:9000 as an
endpoint (`Endpoint.services`). So for a client address C and a Service port s, each backend key
k = (C, S, 9000) whose annotations name s and no other Service port C used gets the connections its
own views hold that are neither joined to a client's socket nor C's straight to S:9000:

    V_k = (k's flows) + (k's lone lifecycles whose client aggregated them)
          - (C's flows straight to S:9000) - (C's lone lifecycles straight to S:9000)

V_k holds k's share of T, plus the connections that were ordinary at k but not at C (C's socket is a
lone lifecycle through s, or in C's anomaly aggregates through s, counted under the Service row
already: a client-side retransmit, say), of which there are at most L_s (C's lone established
lifecycles and aggregated anomalies through s). So k's share of T is at
least V_k - L_s, and exactly V_k when L_s is 0, which is every connection that both ends saw alike.
The split moves max(0, V_k - L_s) of T from the Service row to the row (C, backend, via s); what is
left under the Service row is the connections whose backend is not known (a backend on a node no
agent watches, a lone client lifecycle's share, a backend shared with another Service C used). If
the shares add up to more than T (a --window edge that cut the two ends' flows differently), s is
not split at all.

Pure: counts in, shares out. tail/summary.py builds the counts from its views and flows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

FlowKey = tuple[str, str, int]
"""(client address, server address, server port): a flow's key as the summary keeps it."""
ServiceRef = tuple[str, str, int]
"""(namespace, name, port) of a Service port."""


@dataclass
class SplitCounts:
    """What the split needs, counted by tail/summary.py over the connections and flows in its window."""

    to_service: dict[tuple[str, ServiceRef], int] = field(default_factory=dict)
    """(client address, Service port) -> connections in the client's flows to it (T)"""
    used: dict[str, set[ServiceRef]] = field(default_factory=dict)
    """client address -> the Service ports its flows or its sockets named"""
    lone_via: dict[tuple[str, ServiceRef], int] = field(default_factory=dict)
    """(client address, Service port) -> its lone established client lifecycles through it and the
    connections of its anomaly aggregates through it (L)"""
    at_backend: dict[FlowKey, int] = field(default_factory=dict)
    """backend key -> connections in its flows and its lone lifecycles the client aggregated"""
    backend_of: dict[FlowKey, set[ServiceRef]] = field(default_factory=dict)
    """backend key -> the Service ports its local end is an endpoint of (Endpoint.services)"""
    direct: dict[FlowKey, int] = field(default_factory=dict)
    """backend key -> the client's own flows and lone lifecycles straight to that address and port"""

    def add_service_flow(self, client: str, ref: ServiceRef, connections: int) -> None:
        self.to_service[(client, ref)] = self.to_service.get((client, ref), 0) + connections
        self.used.setdefault(client, set()).add(ref)

    def add_client_socket(self, client: str, ref: ServiceRef, lone_established: bool) -> None:
        self.used.setdefault(client, set()).add(ref)
        if lone_established:
            self.lone_via[(client, ref)] = self.lone_via.get((client, ref), 0) + 1

    def add_unjoined(self, client: str, ref: ServiceRef, connections: int) -> None:
        """Client-side connections through a Service counted without an id (anomaly aggregates):
        like lone lifecycles, their backends' ends may be in the backends' flows."""
        self.used.setdefault(client, set()).add(ref)
        self.lone_via[(client, ref)] = self.lone_via.get((client, ref), 0) + connections

    def add_backend(self, key: FlowKey, connections: int, services: Iterable[ServiceRef]) -> None:
        self.at_backend[key] = self.at_backend.get(key, 0) + connections
        self.backend_of.setdefault(key, set()).update(services)

    def add_direct(self, key: FlowKey, connections: int) -> None:
        self.direct[key] = self.direct.get(key, 0) + connections


@dataclass
class BackendSplit:
    """The result: each backend key's share of its client's flows to one Service port."""

    shares: dict[FlowKey, tuple[ServiceRef, int]] = field(default_factory=dict)
    """backend key -> (the Service port, connections moved from the Service row to the backend's)"""
    moved: dict[tuple[str, ServiceRef], int] = field(default_factory=dict)
    """(client address, Service port) -> connections moved in all (the Service row keeps T minus this)"""
    via: dict[FlowKey, ServiceRef] = field(default_factory=dict)
    """backend key -> the one Service port its connections from this client came through (no other
    Service port of the client lists it, and the client never connected to it straight)"""
    unsplit: int = 0
    """Service ports of a client left unsplit because the shares exceeded T"""


def only_service(counts: SplitCounts, key: FlowKey) -> ServiceRef | None:
    """The one Service port the client used that lists this backend key, if exactly one does."""
    cands = counts.backend_of.get(key, set()) & counts.used.get(key[0], set())
    return next(iter(cands)) if len(cands) == 1 else None


def split(counts: SplitCounts) -> BackendSplit:
    """Each backend key's share of T (module docstring)."""
    out = BackendSplit()
    shares: dict[tuple[str, ServiceRef], dict[FlowKey, int]] = {}
    for key in sorted(counts.backend_of):
        ref = only_service(counts, key)
        if ref is None:
            continue
        if not counts.direct.get(key):
            out.via[key] = ref
        if (key[0], ref) not in counts.to_service:
            continue
        v = counts.at_backend.get(key, 0) - counts.direct.get(key, 0)
        share = v - counts.lone_via.get((key[0], ref), 0)
        if share > 0:
            shares.setdefault((key[0], ref), {})[key] = share
    for cs, by_key in sorted(shares.items()):
        total = sum(by_key.values())
        if total > counts.to_service[cs]:
            out.unsplit += 1
            continue
        out.moved[cs] = total
        for key, n in by_key.items():
            out.shares[key] = (cs[1], n)
    return out
