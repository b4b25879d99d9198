"""The simulated kube-proxy: the plan's Services as kube-proxy writes them, in the router netns that
both directions of every connection cross (as a node's netns is crossed by its pods' traffic).

Two forms of the same NAT, both expressed with nft (`--kube-proxy`):
- `nftables` (kube-proxy's nftables mode): one rule per Service port in a nat chain on prerouting
  at priority dstnat, `dnat to numgen inc mod N map { 0 : backend0, ... } : targetPort`;
- `iptables` (kube-proxy's iptables mode, as iptables-nft stores it): a chain per Service
  (KUBE-SVC-*) that jumps to one chain per endpoint (KUBE-SEP-*) holding the DNAT. kube-proxy picks
  the endpoint with `-m statistic --mode random`; the sim uses `numgen inc` here too, so which
  backend gets which connection is known in advance (`Plan.backend_of`). The NAT is the same.

A Service without endpoints is rejected before routing, as kube-proxy rejects it, but with a TCP
reset from the router (`reject with tcp reset`) where kube-proxy answers with an ICMP port
unreachable (iptables `REJECT`, nft's plain `reject`). Both make connect() fail with ECONNREFUSED;
the sim uses the reset because the agent reports the RST a SYN_SENT socket receives (a refusal, as
pod to pod), while a connect refused by ICMP ends in its lifecycle as NORMAL without an errno today
(counted `failed`; docs/services.md). conntrack un-NATs the replies: the client's socket keeps the ClusterIP
and Service port as its remote, the backend's sees the client pod's address and port.
"""

from __future__ import annotations

from collections.abc import Mapping

from tcpscope_sim import net
from tcpscope_sim.plan import Plan, ServiceSpec

MODES = ("nftables", "iptables")


def _sep(i: int, j: int) -> str:
    return f"sep_{i}_{j}"


def ruleset(plan: Plan, table: str, mode: str = "nftables", ips: Mapping[str, str] | None = None) -> str:
    """The nft script for the plan's Services (ips: pod ref -> address, default the plan's)."""
    if mode not in MODES:
        raise ValueError(f"kube-proxy mode must be one of {', '.join(MODES)}")
    addr = dict(ips) if ips is not None else {p.ref: p.ip for p in plan.pods}
    chains: list[str] = []
    nat: list[str] = []
    reject: list[str] = []
    for i, svc in enumerate(plan.services):
        match = f"ip daddr {svc.ip} tcp dport {svc.port}"
        if not svc.backends:
            reject.append(f"{match} reject with tcp reset")
            continue
        if mode == "nftables":
            nat.append(f"{match} dnat to {_numgen_map(svc, addr)} : {svc.target_port}")
            continue
        seps = []
        for j, b in enumerate(svc.backends):
            chains.append(f"  chain {_sep(i, j)} {{\n    meta l4proto tcp dnat to {addr[b]}:{svc.target_port}\n  }}\n")
            seps.append(f"{j} : jump {_sep(i, j)}")
        chains.append(f"  chain svc_{i} {{\n    numgen inc mod {len(seps)} vmap {{ {', '.join(seps)} }}\n  }}\n")
        nat.append(f"{match} jump svc_{i}")
    body = "".join(chains)
    body += "  chain no_endpoints {\n    type filter hook prerouting priority dstnat - 10; policy accept;\n"
    body += "".join(f"    {r}\n" for r in reject) + "  }\n"
    body += "  chain services {\n    type nat hook prerouting priority dstnat; policy accept;\n"
    body += "".join(f"    {r}\n" for r in nat) + "  }\n"
    return f"table ip {table} {{\n{body}}}\n"


def _numgen_map(svc: ServiceSpec, addr: Mapping[str, str]) -> str:
    if len(svc.backends) == 1:
        return addr[svc.backends[0]]
    items = ", ".join(f"{j} : {addr[b]}" for j, b in enumerate(svc.backends))
    return f"numgen inc mod {len(svc.backends)} map {{ {items} }}"


def install(plan: Plan, fabric: net.Fabric, mode: str = "nftables") -> str | None:
    """Write the plan's Services into the router netns; returns the table's name (None: no Services).
    The table goes with the netns when the fabric is destroyed."""
    if not plan.services:
        return None
    table = net.nft_table_name(fabric.run_id, "kp")
    net.run_ip(["ip", "netns", "exec", fabric.netns, "nft", "-f", "-"], stdin=ruleset(plan, table, mode))
    return table
