"""The simulated cluster's network: one "fabric" netns routing between one netns per pod.

Calico-style, so every pod address is a /32 and nothing else on the machine is touched:
- each pod netns has `eth0` (one end of a veth pair) with 198.18.<node>.<n>/32, and a default
  route via the link-local gateway 169.254.1.1;
- the fabric netns holds the other ends (`c<index>`), a /32 route to each pod over its veth, and
  169.254.1.1 on its loopback, so it answers the pods' ARP for the gateway on every veth (the
  default arp_ignore=0 replies for any local address) and forwards between them (ip_forward=1,
  set in the fabric netns only; the root namespace's sysctls and routes are never changed).
Names carry the run id (`tss-<run>-fabric`, `tss-<run>-p<index>`), so concurrent runs never
collide and a crashed run's leftovers are found by name.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

GATEWAY = "169.254.1.1"
NETNS_DIR = "/run/netns"
PREFIX = "tss-"


class NetError(RuntimeError):
    """An `ip`/`nft` command failed while building the network."""


def run_ip(args: Sequence[str], stdin: str | None = None) -> str:
    """Run one iproute2/nft command; raise NetError with its stderr on failure."""
    p = subprocess.run(list(args), input=stdin, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise NetError(f"{' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def netns_names(run_id: str) -> list[str]:
    """Network namespaces that belong to this run (by name)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{PREFIX}{run_id}-"))


def all_run_ids() -> set[str]:
    """Run ids of every simulator netns on this machine (live or left over)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return set()
    return {n[len(PREFIX) :].split("-", 1)[0] for n in names if n.startswith(PREFIX) and "-" in n[len(PREFIX) :]}


def delete_netns(name: str) -> None:
    """Delete one netns (its veths and nft tables go with it); missing is fine."""
    with contextlib.suppress(NetError):
        run_ip(["ip", "netns", "del", name])


@dataclass
class PodNet:
    index: int
    netns: str
    ip: str

    @property
    def netns_path(self) -> str:
        return f"{NETNS_DIR}/{self.netns}"


@dataclass
class Fabric:
    """The router namespace and the pods attached to it."""

    run_id: str
    pods: list[PodNet] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.run_id}-fabric"

    def create(self) -> None:
        run_ip(["ip", "netns", "add", self.netns])
        self.created.append(self.netns)
        run_ip(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        run_ip(["ip", "-n", self.netns, "addr", "add", f"{GATEWAY}/32", "dev", "lo"])
        run_ip(["ip", "netns", "exec", self.netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    def add_pod(self, index: int, ip: str) -> PodNet:
        """A pod netns with eth0 = ip/32, joined to the fabric by a veth pair."""
        name = f"{PREFIX}{self.run_id}-p{index}"
        peer = f"c{index}"
        run_ip(["ip", "netns", "add", name])
        self.created.append(name)
        run_ip(["ip", "-n", name, "link", "set", "lo", "up"])
        run_ip(["ip", "-n", self.netns, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", name])
        run_ip(["ip", "-n", self.netns, "link", "set", peer, "up"])
        run_ip(["ip", "-n", self.netns, "route", "add", f"{ip}/32", "dev", peer, "scope", "link"])
        run_ip(["ip", "-n", name, "addr", "add", f"{ip}/32", "dev", "eth0"])
        run_ip(["ip", "-n", name, "link", "set", "eth0", "up"])
        run_ip(["ip", "-n", name, "route", "add", GATEWAY, "dev", "eth0", "scope", "link"])
        run_ip(["ip", "-n", name, "route", "add", "default", "via", GATEWAY, "dev", "eth0", "src", ip])
        pod = PodNet(index, name, ip)
        self.pods.append(pod)
        return pod

    def destroy(self) -> None:
        """Remove every namespace this fabric created (pods first, then the router)."""
        for name in reversed(self.created):
            delete_netns(name)
        self.created.clear()
        for name in netns_names(self.run_id):
            delete_netns(name)


def nft_table_name(run_id: str, what: str) -> str:
    return f"tss_{run_id}_{what}"


def add_drop_rule(netns: str, table: str, rule: str, hook: str = "output") -> None:
    """Create `inet <table>` with a chain on `hook` holding one rule, in a pod's netns.

    The table lives in the pod's own netns, so deleting the netns deletes it too. A drop in the
    output hook fails the sender's transmit locally (TCP queues the segment again: no retransmit);
    a drop in the receiver's input hook is a loss on the wire as the sender sees it.
    """
    script = (
        f"table inet {table} {{\n"
        f"  chain c {{ type filter hook {hook} priority 0; policy accept;\n"
        f"    {rule}\n"
        f"  }}\n"
        f"}}\n"
    )
    run_ip(["ip", "netns", "exec", netns, "nft", "-f", "-"], stdin=script)


def add_rules(netns: str, table: str, rules: Sequence[str], hook: str, sets: Sequence[str] = ()) -> None:
    """Create `inet <table>` with one filter chain on `hook` holding these rules, in netns, after
    these set declarations (`name { type ...; flags ...; }`)."""
    decls = "".join(f"  set {d}\n" for d in sets)
    body = "".join(f"    {r}\n" for r in rules)
    chain = f"  chain c {{ type filter hook {hook} priority 0; policy accept;\n{body}  }}\n"
    script = f"table inet {table} {{\n{decls}{chain}}}\n"
    run_ip(["ip", "netns", "exec", netns, "nft", "-f", "-"], stdin=script)


def tcp_mib(netns: str) -> dict[str, int]:
    """The netns's TCP MIB counters (the `Tcp:` lines of /proc/net/snmp): OutRsts, EstabResets, ..."""
    lines = run_ip(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"]).splitlines()
    head, values = (line.split() for line in lines if line.startswith("Tcp:"))
    return {k: int(v) for k, v in zip(head[1:], values[1:], strict=True)}


def netstat(netns: str) -> dict[str, int]:
    """The netns's TcpExt counters (/proc/net/netstat): TCPSynRetrans, ..."""
    lines = run_ip(["ip", "netns", "exec", netns, "cat", "/proc/net/netstat"]).splitlines()
    head, values = (line.split() for line in lines if line.startswith("TcpExt:"))
    return {k: int(v) for k, v in zip(head[1:], values[1:], strict=True)}


def half_open(netns: str, port: int) -> int:
    """Half-open connections (request sockets in SYN_RECV) of a listening port in a netns, by ss(8)."""
    out = run_ip(["ip", "netns", "exec", netns, "ss", "-Htn", "state", "syn-recv", f"( sport = :{port} )"])
    return len([line for line in out.splitlines() if line.strip()])


def sysctl(netns: str, name: str, value: str | None = None) -> str:
    """A network namespace's sysctl (net.* are per netns): its value, after setting it when given."""
    if value is not None:
        run_ip(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{name}={value}"])
    return run_ip(["ip", "netns", "exec", netns, "sysctl", "-n", name]).strip()


def delete_table(netns: str, table: str) -> None:
    with contextlib.suppress(NetError):
        run_ip(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", table])
