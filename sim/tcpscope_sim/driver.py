"""The traffic driver: turns plan entries into worker commands and checks every connection went as
planned (a refused connect must be refused, a timeout must time out), so a summary that disagrees
with the plan points at tcpscope, not at the simulator."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tcpscope_sim import net
from tcpscope_sim.cluster import Pod, PodCluster
from tcpscope_sim.plan import TrafficSpec
from tcpscope_sim.worker import KILL_MARK

log = logging.getLogger(__name__)


class TrafficError(RuntimeError):
    """Connections did not behave as the plan says (the simulator's own check)."""


SYN_FLOOD_SYNACK_RETRIES = "2"
"""net.ipv4.tcp_synack_retries in the server pod's netns during a syn_flood entry: its requests' SYN-ACKs
are sent again after about 1 s and 3 s, and they expire seconds later (the default, 5, takes a minute)."""
SYN_FLOOD_EXPIRY_LIMIT_S = 30.0
"""How long a syn_flood entry waits at most for the server's half-open requests to expire."""


@dataclass
class Driver:
    cluster: PodCluster
    outcomes: Counter[str] = field(default_factory=Counter)
    synack_retransmits: Counter[tuple[str, int]] = field(default_factory=Counter)
    """per syn_flood listener (server pod, port): SYN-ACKs its netns sent again during the entry,
    by the kernel's own counter (TcpExt TCPSynRetrans): what the agents must have reported"""

    def _pods(self, t: TrafficSpec) -> tuple[Pod, Pod]:
        return self.cluster.pods[t.src], self.cluster.pods[t.dst]

    def _servers(self, t: TrafficSpec) -> tuple[list[Pod], str, int]:
        """The pods that may serve t's connections, the address and the port the client connects to
        and the servers' own port (a Service's backends, its ClusterIP and port, its target port)."""
        if t.service:
            svc = self.cluster.plan.service(t.service)
            ip = self.cluster.plan.node_ip(t.node) if t.node else svc.ip  # a NodePort: the node's address
            return [self.cluster.pods[b] for b in svc.backends], ip, svc.target_port
        server = self.cluster.pods[t.dst]
        return [server], server.spec.ip, t.port

    def run_entry(self, t: TrafficSpec, strict: bool = True, timeout: float = 120.0) -> dict[str, int]:
        """Make t.count connections of t.kind from t.src to t.dst (or to t.service's ClusterIP);
        return outcomes by name."""
        client = self.cluster.pods[t.src]
        if t.kind == "syn_flood":  # pod targets only (tcpscope_sim/plan.py)
            return self._syn_flood(t, client, self.cluster.pods[t.dst], strict, timeout)
        servers, ip, server_port = self._servers(t)
        tables: list[tuple[str, str]] = []
        mibs: dict[str, dict[str, int]] = {}
        if t.kind == "network_reset":
            tables += [self._network_reset_rules(t, client, s, server_port) for s in servers]
            mibs = {p.spec.ref: net.tcp_mib(p.netns.netns) for p in (client, *servers)}
        if t.kind == "timeout":
            # drop the servers' SYN-ACKs to this client on this port, in the server pods' netns only,
            # for the duration of this entry: the client's connect (TCP_SYNCNT=1) fails with ETIMEDOUT;
            # through a NodePort the backend answers the node its SYN came from (SNAT)
            to = self.cluster.plan.node_ip(t.node) if t.node else client.spec.ip
            for server in servers:
                table = net.nft_table_name(self.cluster.run_id, f"to{server.netns.index}")
                tables.append((table, server.netns.netns))
                net.add_drop_rule(
                    server.netns.netns,
                    table,
                    f"ip daddr {to} tcp sport {server_port} tcp flags & (syn | ack) == syn | ack drop",
                )
        pool = {"size": t.rate, "seconds": t.seconds} if t.kind == "pooled" else {}
        try:
            reply = client.call(
                "connect", timeout=timeout + t.seconds, ip=ip, port=t.port, kind=t.kind, count=t.count, **pool
            )
        finally:
            for table, table_netns in tables:
                net.delete_table(table_netns, table)
        got: dict[str, int] = reply.get("outcomes", {})
        self.outcomes.update({f"{t.kind}:{k}": v for k, v in got.items()})
        where = f"{t.src} -> {t.service or t.dst}:{t.port} {t.kind} x{t.count}"
        if strict and got != {"ok": t.count}:
            raise TrafficError(f"{where}: got {got}")
        if strict and t.kind == "pooled" and reply.get("chunks") != t.count * t.seconds:
            raise TrafficError(f"{where}: {reply.get('chunks')} chunks sent, not {t.count * t.seconds}")
        if strict and mibs:
            self._check_forged(where, t.count, client, servers, mibs)
        return got

    def _syn_flood(self, t: TrafficSpec, client: Pod, server: Pod, strict: bool, timeout: float) -> dict[str, int]:
        """A SYN flood without raw sockets: the router drops the server's SYN-ACKs to this client on this
        port, and the client opens t.count non-blocking connects at once (TCP_SYNCNT 1), which all time
        out. The server's half-open requests retransmit their SYN-ACKs (on the client's SYN retransmit
        and on their timer) until they expire; the entry waits for that, and records how many SYN-ACKs
        the server's kernel counted as sent again."""
        table = net.nft_table_name(self.cluster.run_id, f"sf{client.netns.index}x{server.netns.index}")
        name = "net.ipv4.tcp_synack_retries"
        old = net.sysctl(server.netns.netns, name)
        net.sysctl(server.netns.netns, name, SYN_FLOOD_SYNACK_RETRIES)
        before = net.netstat(server.netns.netns)["TCPSynRetrans"]
        c, s = client.spec.ip, server.spec.ip
        rule = f"ip saddr {s} ip daddr {c} tcp sport {t.port} tcp flags & (syn | ack) == syn | ack drop"
        net.add_rules(self.cluster.fabric.netns, table, [rule], hook="forward")
        try:
            reply = client.call("connect", timeout=timeout, ip=s, port=t.port, kind="syn_flood", count=t.count)
            # the requests retransmit until they expire: wait for that before the retries go back up
            deadline = time.monotonic() + SYN_FLOOD_EXPIRY_LIMIT_S
            while net.half_open(server.netns.netns, t.port) and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            net.delete_table(self.cluster.fabric.netns, table)
            net.sysctl(server.netns.netns, name, old)
        self.synack_retransmits[(t.dst, t.port)] += net.netstat(server.netns.netns)["TCPSynRetrans"] - before
        got: dict[str, int] = reply.get("outcomes", {})
        self.outcomes.update({f"{t.kind}:{k}": v for k, v in got.items()})
        if strict and got != {"ok": t.count}:
            raise TrafficError(f"{t.src} -> {t.dst}:{t.port} {t.kind} x{t.count}: got {got}")
        return got

    @staticmethod
    def _check_forged(where: str, count: int, client: Pod, servers: list[Pod], mibs: dict[str, dict[str, int]]) -> None:
        """Entries run one at a time: no pod's kernel may have sent a RST (OutRsts), and the client's
        and the servers' established connections must each have been reset `count` times
        (EstabResets), by the router."""
        resets = {}
        for p in (client, *servers):
            after = net.tcp_mib(p.netns.netns)
            sent = after["OutRsts"] - mibs[p.spec.ref]["OutRsts"]
            resets[p.spec.ref] = after["EstabResets"] - mibs[p.spec.ref]["EstabResets"]
            if sent:
                raise TrafficError(f"{where}: {p.spec.ref} sent {sent} RSTs")
        on_servers = sum(resets[s.spec.ref] for s in servers)
        if resets[client.spec.ref] != count or on_servers != count:
            raise TrafficError(f"{where}: established connections reset {resets}, want {count} per side")

    def _network_reset_rules(self, t: TrafficSpec, client: Pod, server: Pod, server_port: int) -> tuple[str, str]:
        """The network between the pods kills the connection: in the router netns, the forward hook
        rejects with a forged RST every segment of this pair and port whose payload starts with
        worker.KILL_MARK, in both directions. Each end sends one such segment after the exchange
        and gets a RST forged as if from its peer (nf_send_reset: its sequence number is the
        rejected segment's ack, exactly what the receiver expects, so it is accepted). The rejected
        segments never reach the peer, so neither pod's kernel answers anything with a RST of its
        own. Handshake, request and response pass: the connection dies mid-stream. Through a Service
        the forward hook sees the backend's address and target port both ways (DNAT happened at
        prerouting, the replies are un-NATed at postrouting), and the RST forged to the client is
        un-NATed like any reply: it comes from the ClusterIP.
        Once a connection's first such segment was rejected, the router drops whatever else of that
        connection comes after (a set of the killed connections' client address and port): on a
        loaded machine a late segment (say, a response retransmitted because its ACK was slow)
        would otherwise reach an end whose socket the forged RST already closed, and that end's
        kernel would answer it with a RST of its own, which is not what this traffic kind makes."""
        table = net.nft_table_name(self.cluster.run_id, f"nr{client.netns.index}x{server.netns.index}")
        mark = f"@ih,0,32 0x{KILL_MARK.hex()}"
        c, s, port = client.spec.ip, server.spec.ip, server_port
        to_server = f"ip saddr {c} ip daddr {s} tcp dport {port}"
        to_client = f"ip saddr {s} ip daddr {c} tcp sport {port}"
        net.add_rules(
            self.cluster.fabric.netns,
            table,
            [
                f"{to_server} {mark} add @killed {{ ip saddr . tcp sport }} reject with tcp reset",
                f"{to_client} {mark} add @killed {{ ip daddr . tcp dport }} reject with tcp reset",
                f"{to_server} ip saddr . tcp sport @killed drop",
                f"{to_client} ip daddr . tcp dport @killed drop",
            ],
            hook="forward",
            sets=["killed { type ipv4_addr . inet_service; flags dynamic; }"],
        )
        return table, self.cluster.fabric.netns

    def run_plan(self, strict: bool = True) -> None:
        """Run every entry of the plan once, in order (entries with a drop rule must not overlap
        entries of the same pair, so they are not run concurrently)."""
        for t in self.cluster.plan.traffic:
            self.run_entry(t, strict=strict)

    # --- the built-in mix's extras ------------------------------------------------------------

    def start_pool(self, t: TrafficSpec) -> int:
        """A pooled entry's connections, open until `stop_pool` (or t.seconds): the command id."""
        client, server = self._pods(t)
        return client.send(
            "connect", ip=server.spec.ip, port=t.port, kind="pooled", count=t.count, size=t.rate, seconds=t.seconds
        )

    def stop_pool(self, t: TrafficSpec, cid: int) -> dict[str, int]:
        """Close a pool's connections now; their outcomes and the chunks they sent ("chunks")."""
        client, _server = self._pods(t)
        client.call("stop", of=cid)
        reply = client.wait(cid, timeout=60)
        got: dict[str, int] = reply.get("outcomes", {})
        self.outcomes.update({f"pooled:{k}": v for k, v in got.items()})
        return {**got, "chunks": int(reply.get("chunks", 0))}

    def lossy_bulk(self, t: TrafficSpec, size: int = 128 * 1024) -> dict[str, int]:
        """Bulk responses with every third data-carrying packet of the server dropped as it reaches
        the client (its netns' input hook): data retransmits (tcp_retransmit_skb) by the server.

        The drop is counted (`numgen inc`), not random: with TSO/GRO a 64 KiB response can cross
        the veth as two or three packets, and a 30% random drop then misses all of them about one
        time in four. The counter starts at 0, so the first data packet is always dropped."""
        client, server = self._pods(t)
        table = net.nft_table_name(self.cluster.run_id, f"loss{client.netns.index}")
        net.add_drop_rule(
            client.netns.netns,
            table,
            f"ip saddr {server.spec.ip} tcp sport {t.port} ip length > 200 numgen inc mod 3 == 0 drop",
            hook="input",
        )
        try:
            reply = client.call(
                "connect", timeout=120, ip=server.spec.ip, port=t.port, kind="ok", count=t.count, size=size
            )
        finally:
            net.delete_table(client.netns.netns, table)
        got: dict[str, int] = reply.get("outcomes", {})
        self.outcomes.update({f"bulk:{k}": v for k, v in got.items()})
        return got

    def stalled_server(self, t: TrafficSpec, stall_s: float = 3.0) -> dict[str, int]:
        """The server stops accepting while clients connect: its small accept queue overflows, so
        SYN-ACKs are retransmitted and clients retransmit SYNs; then it resumes."""
        client, server = self._pods(t)
        server.call("stall", port=t.port, on=True)
        cid = client.send("connect", ip=server.spec.ip, port=t.port, kind="ok", count=t.count)
        time.sleep(stall_s)
        server.call("stall", port=t.port, on=False)
        got: dict[str, int] = client.wait(cid, timeout=120).get("outcomes", {})
        self.outcomes.update({f"stall:{k}": v for k, v in got.items()})
        return got


def run_mix(
    driver: Driver,
    stop: threading.Event,
    deadline: float | None,
    bulk: TrafficSpec | None,
    stall: TrafficSpec | None,
    seed: int = 0,
) -> None:
    """The built-in mix: the plan's entries in random order, plus lossy bulk transfers and a stalled
    server now and then, until stop is set or the deadline passes."""
    rng = random.Random(seed)
    entries = list(driver.cluster.plan.traffic)
    rounds = 0
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        rng.shuffle(entries)
        for t in entries:
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return
            driver.run_entry(t, strict=False)
        if bulk is not None and rounds % 2 == 0:
            driver.lossy_bulk(bulk)
        if stall is not None and rounds % 3 == 1:
            driver.stalled_server(stall)
        rounds += 1
        stop.wait(0.5)
