"""The simulated kube-proxy: the plan's Services as kube-proxy writes them, in the router netns that
both directions of every connection cross (as a node's netns is crossed by its pods' traffic).

Two forms of the same NAT, both expressed with nft (`--kube-proxy`):
- `nftables` (kube-proxy's nftables mode): a nat chain on prerouting at priority dstnat sends each
  Service port (ClusterIP, and NodePorts) to the Service's chain, whose one rule is
  `dnat to numgen inc mod N map { 0 : backend0, ... } : targetPort`;
- `iptables` (kube-proxy's iptables mode, as iptables-nft stores it): a chain per Service
  (KUBE-SVC-*) that jumps to one chain per endpoint (KUBE-SEP-*) holding the DNAT. kube-proxy picks
  the endpoint with `-m statistic --mode random`; the sim uses `numgen inc` here too, so which
  backend gets which connection is known in advance (`Plan.backend_of`). The NAT is the same.

A NodePort (externalTrafficPolicy: Cluster) is matched on every node's address, marked as
kube-proxy marks it (KUBE-MARK-MASQ, 0x4000), and its source rewritten to the node's address in a
postrouting nat chain: the backend sees the node, not the client.

A Service without endpoints is rejected before routing with an ICMP port unreachable, as
kube-proxy rejects it (iptables `REJECT`, nft's `reject`): connect() fails with ECONNREFUSED, and
the agent reports the client's lifecycle as ERROR with errno 111 (`refused`), with no RST anywhere
(bpf/error.h: the ICMP often reaches the socket while connect() holds it, and the errno is read
from the socket's error queue). The router's ICMP rate limit is off (`net.ipv4.icmp_ratelimit=0`
in its netns): a node rate-limits them per client (a burst of 6, then one a second), and a refusal
beyond it waits for the SYN's retransmit, which a plan of many refusals at once would meet.
conntrack un-NATs the replies: the client's socket keeps the ClusterIP and Service port as its
remote, the backend's sees the client pod's address and port.
"""

from __future__ import annotations

from collections.abc import Mapping

from tcpscope_sim import net
from tcpscope_sim.plan import Plan, ServiceSpec

MODES = ("nftables", "iptables")


def _sep(i: int, j: int) -> str:
    return f"sep_{i}_{j}"


MASQUERADE_MARK = 0x4000
"""kube-proxy's mark for connections to be masqueraded (KUBE-MARK-MASQ)"""


def ruleset(plan: Plan, table: str, mode: str = "nftables", ips: Mapping[str, str] | None = None) -> str:
    """The nft script for the plan's Services (ips: pod ref -> address, default the plan's)."""
    if mode not in MODES:
        raise ValueError(f"kube-proxy mode must be one of {', '.join(MODES)}")
    addr = dict(ips) if ips is not None else {p.ref: p.ip for p in plan.pods}
    chains: list[str] = []
    nat: list[str] = []
    reject: list[str] = []
    snat: list[str] = []
    for i, svc in enumerate(plan.services):
        matches = [f"ip daddr {svc.ip} tcp dport {svc.port}"]
        if svc.node_port:
            # a NodePort on every node's address, masqueraded to that address (externalTrafficPolicy:
            # Cluster): the backend sees the node, not the client
            mark = f"meta mark set meta mark | {MASQUERADE_MARK:#x}"
            matches += [f"ip daddr {plan.node_ip(n)} tcp dport {svc.node_port} {mark}" for n in plan.nodes]
        if not svc.backends:
            reject += [f"{m} reject with icmp type port-unreachable" for m in matches]
            continue
        chains.append(_service_chain(i, svc, addr, mode))
        nat += [f"{m} jump svc_{i}" for m in matches]
        if mode == "iptables":
            for j, b in enumerate(svc.backends):
                chains.append(
                    f"  chain {_sep(i, j)} {{\n    meta l4proto tcp dnat to {addr[b]}:{svc.target_port}\n  }}\n"
                )
    for n in plan.nodes if any(s.node_port for s in plan.services) else ():
        ip = plan.node_ip(n)
        snat.append(f"meta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} ct original ip daddr {ip} snat to {ip}")
    body = "".join(chains)
    body += _chain("no_endpoints", "type filter hook prerouting priority dstnat - 10", reject)
    body += _chain("services", "type nat hook prerouting priority dstnat", nat)
    if snat:
        body += _chain("nodeports_snat", "type nat hook postrouting priority srcnat", snat)
    return f"table ip {table} {{\n{body}}}\n"


def _chain(name: str, hook: str, rules: list[str]) -> str:
    return f"  chain {name} {{\n    {hook}; policy accept;\n" + "".join(f"    {r}\n" for r in rules) + "  }\n"


def _service_chain(i: int, svc: ServiceSpec, addr: Mapping[str, str], mode: str) -> str:
    """The Service's own chain, jumped to from its ClusterIP and its NodePorts (one numgen counter)."""
    if mode == "nftables":
        if len(svc.backends) == 1:
            to = addr[svc.backends[0]]
        else:
            items = ", ".join(f"{j} : {addr[b]}" for j, b in enumerate(svc.backends))
            to = f"numgen inc mod {len(svc.backends)} map {{ {items} }}"
        return f"  chain svc_{i} {{\n    meta l4proto tcp dnat to {to} : {svc.target_port}\n  }}\n"
    seps = ", ".join(f"{j} : jump {_sep(i, j)}" for j in range(len(svc.backends)))
    return f"  chain svc_{i} {{\n    numgen inc mod {len(svc.backends)} vmap {{ {seps} }}\n  }}\n"


def install(plan: Plan, fabric: net.Fabric, mode: str = "nftables") -> str | None:
    """Write the plan's Services into the router netns; returns the table's name (None: no Services).
    The table goes with the netns when the fabric is destroyed."""
    if not plan.services:
        return None
    table = net.nft_table_name(fabric.run_id, "kp")
    net.run_ip(["ip", "netns", "exec", fabric.netns, "nft", "-f", "-"], stdin=ruleset(plan, table, mode))
    if any(not s.backends for s in plan.services):  # every rejected SYN gets its ICMP (module docstring)
        net.run_ip(["ip", "netns", "exec", fabric.netns, "sysctl", "-q", "-w", "net.ipv4.icmp_ratelimit=0"])
    return table
