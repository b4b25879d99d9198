"""Storm signals, computed in the collector beside the traffic metrics (docs/metrics.md, "Storms"):

- per listening socket, SYN-ACK retransmits and half-open timeouts (a SYN flood):
  `tcpscope_synack_retransmits_total` and `tcpscope_half_open_timeouts_total`
  {server_namespace, server_workload, server_port}. A half-open timeout is a request whose SYN-ACK
  had to be sent again (counted once per request, at its first retransmit: SynAckRetransmit
  .request_retransmit 1, or AnomalyAggregate.first_of_request). Each SYN-ACK retransmit is
  reported by the listener's own agent only, so replicas add up.
- per source, refused connects spread over many ports of one host or one port of many hosts (a
  scan): the gauges `tcpscope_scan_ports` {client_namespace, client_workload, server_namespace,
  server_workload} (distinct ports one host refused the source in the last --metrics-scan-window,
  the most over that server's hosts) and `tcpscope_scan_hosts` {client_namespace, client_workload,
  server_port} (distinct hosts that refused the source that port). Evidence: the client's refused
  lifecycles (one by one or aggregated) and the server kernel's RSTs sent from no socket (a closed
  port), so a source outside the cluster counts too. Both ends' evidence of one refusal is the
  same (port, host): seen twice, counted once. A replica sees only the batches it receives: with
  several replicas take the max over them (a lower bound when a source's refusals reach several).
- per pair, resets per second against its own baseline: a PromQL rule over tcpscope_resets_total
  (helm/tcpscope/templates/prometheusrule.yaml, TcpscopeResetStorm); nothing to compute here.

Pure bookkeeping, bounded: at most `max_keys` sources per gauge family (beyond it, folded into the
key whose labels are all `other`), and per key at most MAX_SET members.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.pair_metrics import BatchObserver
from tcpscope.outcome import aggregate_lifecycle, classify
from tcpscope.v1.events_pb2 import (
    ACTIVE,
    ANOMALY_LIFECYCLE,
    ANOMALY_RESET_SENT,
    ANOMALY_SYNACK_RETRANSMIT,
    SENT,
    Endpoint,
    EventBatch,
    Lifecycle,
    TcpEvent,
)

LISTENER_LABELS = ("server_namespace", "server_workload", "server_port")
PORTS_LABELS = ("client_namespace", "client_workload", "server_namespace", "server_workload")
HOSTS_LABELS = ("client_namespace", "client_workload", "server_port")
MAX_SET = 65_536
OTHER = "other"

Party = Callable[[Endpoint], tuple[str, str]]


class _Window:
    """Distinct members seen in the last `window_s` seconds (member -> last seen), bounded."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: dict[object, float] = {}

    def add(self, member: object, now: float) -> None:
        if member in self.seen or len(self.seen) < MAX_SET:
            self.seen[member] = now

    def size(self, cutoff: float) -> int:
        stale = [m for m, t in self.seen.items() if t < cutoff]
        for m in stale:
            del self.seen[m]
        return len(self.seen)


class StormMetrics(Collector):
    """`observe` on the collector's prepare thread, `collect` on the metrics server's (one lock)."""

    def __init__(
        self,
        party: Party,
        window_s: float = 60.0,
        max_keys: int = 2000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._party = party
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._synack: dict[tuple[str, str, str], int] = {}
        self._half_open: dict[tuple[str, str, str], int] = {}
        # (client labels, server labels) -> server ip -> window of ports
        self._ports: dict[tuple[str, str, str, str], dict[str, _Window]] = {}
        # (client labels, server port) -> window of server ips
        self._hosts: dict[tuple[str, str, str], _Window] = {}
        self.folded = 0

    # --- input -----------------------------------------------------------------------------------

    def observe(self, batch: EventBatch) -> None:
        with self._lock:
            now = self._clock()
            for ev in batch.events:
                self._observe_event(ev, now)

    def _observe_event(self, ev: TcpEvent, now: float) -> None:
        which = ev.WhichOneof("kind")
        if which == "synack_retransmit":
            self._count_synack(ev, 1, ev.synack_retransmit.request_retransmit == 1)
        elif which == "anomalies":
            a = ev.anomalies
            if a.kind == ANOMALY_SYNACK_RETRANSMIT:
                self._count_synack(ev, a.count, a.first_of_request)
            elif a.kind == ANOMALY_RESET_SENT and a.no_socket and not a.coarse:
                self._refused(ev.remote, ev.local, now)
            elif a.kind == ANOMALY_LIFECYCLE and a.role == ACTIVE and not a.coarse and _refused(aggregate_lifecycle(a)):
                self._refused(ev.local, ev.remote, now)
        elif which == "reset" and ev.reset.direction == SENT and ev.socket_id == 0:
            self._refused(ev.remote, ev.local, now)  # sent from no socket: a closed port's answer
        elif which == "lifecycle" and ev.lifecycle.role == ACTIVE and _refused(ev.lifecycle):
            self._refused(ev.local, ev.remote, now)

    def _fold(self, table: dict[Any, Any], key: tuple[str, ...]) -> Any:
        if key in table or len(table) < self.max_keys:
            return key
        self.folded += 1
        return (OTHER,) * len(key)

    def _count_synack(self, ev: TcpEvent, n: int, first: bool) -> None:
        ns, wl = self._party(ev.local)
        key = self._fold(self._synack, (ns, wl, str(ev.local.port)))
        self._synack[key] = self._synack.get(key, 0) + n
        if first:
            self._half_open[key] = self._half_open.get(key, 0) + n

    def _refused(self, client: Endpoint, server: Endpoint, now: float) -> None:
        """One refused connect from `client` to `server` (ip and port)."""
        if not server.ip or not server.port:
            return
        cns, cwl = self._party(client)
        sns, swl = self._party(server)
        pkey = self._fold(self._ports, (cns, cwl, sns, swl))
        self._ports.setdefault(pkey, {}).setdefault(server.ip, _Window()).add(server.port, now)
        hkey = self._fold(self._hosts, (cns, cwl, str(server.port)))
        self._hosts.setdefault(hkey, _Window()).add(server.ip, now)

    # --- output ----------------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = self._families(self._clock() - self.window_s)
        yield from families

    def _families(self, cutoff: float) -> list[Metric]:
        synack = CounterMetricFamily(
            "tcpscope_synack_retransmits", "SYN-ACKs sent again by a listener", labels=list(LISTENER_LABELS)
        )
        half_open = CounterMetricFamily(
            "tcpscope_half_open_timeouts",
            "half-open connections (requests) whose handshake timed out at least once",
            labels=list(LISTENER_LABELS),
        )
        for key, n in self._synack.items():
            synack.add_metric(list(key), n)
            half_open.add_metric(list(key), self._half_open.get(key, 0))
        ports = GaugeMetricFamily(
            "tcpscope_scan_ports",
            "distinct ports one host of the server refused the client in the scan window (max over the hosts)",
            labels=list(PORTS_LABELS),
        )
        for pk, by_ip in list(self._ports.items()):
            sizes = [w.size(cutoff) for w in by_ip.values()]
            for ip in [ip for ip, w in by_ip.items() if not w.seen]:
                del by_ip[ip]
            if not by_ip:
                del self._ports[pk]
                continue
            ports.add_metric(list(pk), max(sizes))
        hosts = GaugeMetricFamily(
            "tcpscope_scan_hosts",
            "distinct server hosts that refused the client this port in the scan window",
            labels=list(HOSTS_LABELS),
        )
        for hk, w in list(self._hosts.items()):
            n = w.size(cutoff)
            if not n:
                del self._hosts[hk]
                continue
            hosts.add_metric(list(hk), n)
        folded = CounterMetricFamily(
            "tcpscope_storm_folded_events",
            "storm observations counted under the 'other' key: the key bound was reached",
        )
        folded.add_metric([], self.folded)
        return [synack, half_open, ports, hosts, folded]


def _refused(lc: Lifecycle) -> bool:
    """A client's lifecycle of a refused connect (the server answered the SYN with a RST)."""
    return classify(lc, True) == (False, "refused")


class Observers:
    """Several batch observers behind one (the collector's service takes one)."""

    def __init__(self, *observers: BatchObserver) -> None:
        self._observers = observers

    def observe(self, batch: EventBatch) -> None:
        for o in self._observers:
            o.observe(batch)


def build_storm_metrics(party: Party, window_s: float) -> StormMetrics:
    """The collector's storm signals (collector/__main__.py registers them beside the traffic metrics)."""
    return StormMetrics(party, window_s)
