"""Decide everything that depends on the running kernel, once, at start-up: the "plan".

The plan says which tracepoints exist and how their records are laid out (from tracefs format
files), which kernel struct offsets the programs read (from BTF), ring buffer or perf buffer, and
which filters and event kinds are compiled in. The loader only executes it; `--dump-bpf` prints it.
Nothing here takes a layout from kernel headers: the headers on a machine may be another kernel's.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.config import AgentConfig
from agent.kernel import cgen
from agent.kernel.btf import Btf, BtfError
from agent.kernel.tracefs import TracefsError, TracepointFormat, find_tracefs, read_format, tracefs_root

log = logging.getLogger(__name__)


_AGENT_PACKAGE = Path(__file__).resolve().parents[1]


def find_bpf_dir(package: Path = _AGENT_PACKAGE) -> Path:
    """Where the BPF C sources are: the source tree's bpf/ (a checkout or an editable install: the
    one source of truth), else the copy a built wheel carries as agent/bpf/ (setup.py build_py)."""
    for candidate in (package.parent / "bpf", package / "bpf"):
        if (candidate / "tcpscope.bpf.c").is_file():
            return candidate
    return package.parent / "bpf"  # absent: the loader's error names this path


BPF_DIR = find_bpf_dir()


class KernelSupportError(Exception):
    """The running kernel (or this process) lacks something the agent needs; the message says what
    and how to fix it."""


@dataclass(frozen=True)
class TracepointSpec:
    """A tracepoint the programs use: the fields they cannot do without, and any alternatives."""

    category: str
    name: str
    required: tuple[str, ...]
    # groups of which at least one field must be present (e.g. data_len | length)
    one_of: tuple[tuple[str, ...], ...] = ()
    raw: bool = False  # attach as a raw tracepoint (the record lacks the socket pointer)
    kinds: tuple[str, ...] = ()  # only attached when one of these event kinds is on ('' = always)


_CLASSIC = ("sport", "dport", "saddr", "daddr", "saddr_v6", "daddr_v6")

TRACEPOINTS: tuple[TracepointSpec, ...] = (
    TracepointSpec("sock", "inet_sock_set_state", ("skaddr", "oldstate", "newstate", "protocol", *_CLASSIC)),
    TracepointSpec("tcp", "tcp_destroy_sock", ("skaddr",)),
    TracepointSpec("tcp", "tcp_retransmit_skb", ("skaddr", *_CLASSIC)),  # state: 4.17+
    TracepointSpec("tcp", "tcp_retransmit_synack", ("skaddr", *_CLASSIC), kinds=("synack",)),
    TracepointSpec("tcp", "tcp_send_reset", ("skaddr", "saddr", "daddr", "sport|sockaddr")),
    TracepointSpec("tcp", "tcp_receive_reset", ("skaddr", *_CLASSIC)),
    TracepointSpec("sock", "inet_sk_error_report", (), raw=True),
    TracepointSpec(
        "tcp",
        "tcp_probe",
        ("saddr", "daddr", "snd_cwnd", "srtt", "snd_wnd"),
        one_of=(("data_len", "length"),),
        kinds=("probe",),
    ),
)

# (macro, struct, member path alternatives)
_OFFSETS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("OFF_SK_CGRP_DATA", "sock", ("sk_cgrp_data",)),
    ("OFF_CGROUP_KN", "cgroup", ("kn",)),
    ("OFF_KN_ID", "kernfs_node", ("id",)),
    ("OFF_SKC_NET", "sock", ("__sk_common.skc_net",)),
    ("OFF_NET_INUM", "net", ("ns.inum",)),
    ("OFF_SKC_STATE", "sock", ("__sk_common.skc_state",)),
    ("OFF_BYTES_ACKED", "tcp_sock", ("bytes_acked",)),
    ("OFF_BYTES_RECEIVED", "tcp_sock", ("bytes_received",)),
    ("OFF_SND_UNA", "tcp_sock", ("snd_una",)),
    ("OFF_WRITE_SEQ", "tcp_sock", ("write_seq",)),
    ("OFF_RCV_NXT", "tcp_sock", ("rcv_nxt",)),
    # sk_flags is `#define sk_flags __sk_common.skc_flags` on newer kernels
    ("OFF_SK_FLAGS", "sock", ("sk_flags", "__sk_common.skc_flags")),
    ("OFF_SK_ERR", "sock", ("sk_err",)),
    ("OFF_CGROUP_LEVEL", "cgroup", ("level",)),
    # the socket's own tuple (bpf/kread.h, tuple_of_sock): for events that carry no tuple in their
    # record (socket errors) on a socket whose tracked tuple is not final yet
    ("OFF_SKC_DADDR", "sock", ("__sk_common.skc_daddr",)),
    ("OFF_SKC_RCV_SADDR", "sock", ("__sk_common.skc_rcv_saddr",)),
    ("OFF_SKC_DPORT", "sock", ("__sk_common.skc_dport",)),
    ("OFF_SKC_NUM", "sock", ("__sk_common.skc_num",)),
    ("OFF_SKC_FAMILY", "sock", ("__sk_common.skc_family",)),
    ("OFF_SKC_V6_DADDR", "sock", ("__sk_common.skc_v6_daddr",)),
    ("OFF_SKC_V6_RCV_SADDR", "sock", ("__sk_common.skc_v6_rcv_saddr",)),
    # a SYN-ACK retransmit's request: how many times its SYN-ACK was sent again before (bpf/retransmit.h)
    ("OFF_REQ_NUM_RETRANS", "request_sock", ("num_retrans",)),
    # the newest entry of a socket's error queue: an ICMP error queued while connecting (bpf/error.h)
    ("OFF_SK_ERROR_QUEUE", "sock", ("sk_error_queue",)),
    ("OFF_SKB_HEAD_PREV", "sk_buff_head", ("prev",)),
    ("OFF_SKB_CB", "sk_buff", ("cb",)),
    ("OFF_SERR_EE", "sock_exterr_skb", ("ee",)),
    ("OFF_EE_ERRNO", "sock_extended_err", ("ee_errno",)),
    ("OFF_EE_ORIGIN", "sock_extended_err", ("ee_origin",)),
)


# Open connections and latency (bpf/counters.h, bpf/interim.h): (macro, struct, member path, then a
# member of that member's type added to it, or None). Not required: without them the agent reports
# connections at close only, or without RTTs, and says so (OpenConnections).
_RTT_OFFSETS: tuple[tuple[str, str, str, tuple[str, str] | None], ...] = (
    ("OFF_SRTT_US", "tcp_sock", "srtt_us", None),
    # struct minmax { struct minmax_sample { u32 t; u32 v; } s[3]; }: the current minimum is s[0].v
    ("OFF_RTT_MIN", "tcp_sock", "rtt_min", ("minmax_sample", "v")),
)
_INTERIM_OFFSETS: tuple[tuple[str, str, str, tuple[str, str] | None], ...] = (
    ("OFF_SK_RECEIVE_QUEUE", "sock", "sk_receive_queue", None),
    ("OFF_SKB_HEAD_PREV", "sk_buff_head", "prev", None),  # the queue's tail
    ("OFF_SKB_TCP_FLAGS", "sk_buff", "cb", ("tcp_skb_cb", "tcp_flags")),  # TCP_SKB_CB(skb)->tcp_flags
)

# BPF atomic exchange (BPF_XCHG) came with Linux 5.12 (commit 5ffa25502b5a, "bpf: Add instructions for
# atomic_[cmp]xchg"); BPF_PROG_TEST_RUN of raw tracepoint programs with 5.10 (commit 1b4d60ec162f).
OPEN_PASS_SINCE = (5, 12)
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21  # include/uapi/linux/capability.h


@dataclass(frozen=True)
class OpenConnections:
    """How open connections are reported (bpf/interim.h, bpf/seed.h): each field is empty when that
    part is on, else why it is off. The agent says which in --dump-bpf and at start-up, and counts the
    flow intervals whose open connections went unreported (open.passes_skipped)."""

    interim: str = "not decided"  # every flow interval, a pass over the socket map reports each one
    seed: str = "not decided"  # connections open before the agent started are found at start-up
    rtt: str = "not decided"  # smoothed and min RTT, the server's connect latency
    offsets: tuple[tuple[str, int], ...] = ()

    def describe(self, interval_s: float) -> list[str]:
        """The --dump-bpf lines."""
        return [
            (
                f"open connections: reported every {interval_s:g} s (flow interval) by a pass over the "
                "per-socket map (raw tracepoint program, test-run)"
                if not self.interim
                else f"open connections: reported at close only: {self.interim}"
            ),
            (
                "connections open before start: found at start-up (bpf_sk_lookup_tcp in each network namespace)"
                if not self.seed
                else f"connections open before start: not reported until they change state: {self.seed}"
            ),
            "latency: connect latency both sides, smoothed and min RTT"
            if not self.rtt
            else f"latency: client connect latency only: {self.rtt}",
        ]


@dataclass(frozen=True)
class Filters:
    """In-kernel filters, compiled in as constants."""

    ports: tuple[int, ...] = ()
    netns_inum: int | None = None
    cgroup_id: int | None = None
    cgroup_level: int | None = None
    cgroup_dir: str | None = None


@dataclass(frozen=True)
class Plan:
    """What the loader compiles and attaches, decided from the running kernel. Printable."""

    kernel: str
    formats: tuple[TracepointFormat, ...]
    attach: tuple[tuple[str, str, str], ...]  # (tracepoint | raw_tracepoint, "cat:name", fn_name)
    skipped: tuple[str, ...]  # "cat:name: why"
    offsets: tuple[tuple[str, int], ...]
    use_ringbuf: bool
    ringbuf_pages: int
    events: tuple[str, ...]
    filters: Filters
    max_sockets: int
    probe_sample: int
    rst_reasons: Mapping[int, str] = field(hash=False)
    socket_key: int = field(repr=False, default=0)
    connections: str = "each"  # 'each' | 'aggregate' (bpf/flow.h)
    max_flows: int = 4096
    spill_per_cpu: int = 0  # 'each': ordinary connections per second and CPU before they spill into flows
    open: OpenConnections = OpenConnections()
    flow_interval: float = 10.0
    anomaly_budget: int = 0  # anomalies per key and interval sent as events (bpf/anomaly.h); 0 = no per-key limit
    anomaly_node_per_cpu: int = 0  # anomalies per second and CPU sent as events; 0 = no node limit
    max_anomaly_keys: int = 8192

    @property
    def anomalies_on(self) -> bool:
        """Whether the anomaly maps are compiled in: a budget, and an anomaly kind on."""
        kinds = {"lifecycle", "retransmit", "synack", "reset", "error"}
        return bool(kinds & set(self.events)) and (self.anomaly_budget > 0 or self.anomaly_node_per_cpu > 0)

    @property
    def flows_on(self) -> bool:
        """Whether the flow maps are compiled in: lifecycles on, and aggregate mode or a spill limit."""
        return "lifecycle" in self.events and (self.connections == "aggregate" or self.spill_per_cpu > 0)

    @property
    def loss_reasons(self) -> tuple[str, ...]:
        """Names of the kernel's loss counters, by index (LOSS_* in bpf/events.h)."""
        return ("ringbuf_full" if self.use_ringbuf else "perfbuf_full", "socket_map_full", "listener_map_full")

    def preamble(self) -> str:
        """C text prepended to bpf/tcpscope.bpf.c: tracepoint record structs and HAS_* switches."""
        raw = [tp for kind, tp, _fn in self.attach if kind == "raw_tracepoint"]
        return cgen.preamble(self.kernel, self.formats, raw, self.filters.ports)

    def cflags(self) -> list[str]:
        """-D constants: BTF offsets, sizes, map sizes, event kinds, flows, filters."""
        flags = [
            *cgen.offset_flags(self.offsets, () if self.open.rtt else self.open.offsets),
            *cgen.map_flags(
                socket_key=self.socket_key,
                max_sockets=self.max_sockets,
                probe_sample=self.probe_sample,
                ringbuf_pages=self.ringbuf_pages if self.use_ringbuf else None,
            ),
            *cgen.event_flags(self.events),
        ]
        if self.flows_on:
            flags += cgen.flow_flags(
                connections=self.connections, max_flows=self.max_flows, spill_per_cpu=self.spill_per_cpu
            )
        flags += cgen.open_flags(
            self.open.offsets, interim=not self.open.interim, seed=not self.open.seed, rtt=not self.open.rtt
        )
        if self.anomalies_on:
            flags += cgen.anomaly_flags(
                budget=self.anomaly_budget, node_per_cpu=self.anomaly_node_per_cpu, max_keys=self.max_anomaly_keys
            )
        f = self.filters
        return flags + cgen.filter_flags(netns_inum=f.netns_inum, cgroup_id=f.cgroup_id, cgroup_level=f.cgroup_level)

    def describe(self) -> str:
        """The human-readable plan (what --dump-bpf prints)."""
        lines = [f"kernel: {self.kernel}"]
        lines.append(
            f"output: {'ring buffer' if self.use_ringbuf else 'perf buffer'}"
            + (f" ({self.ringbuf_pages} pages)" if self.use_ringbuf else "")
        )
        lines.append(f"events: {','.join(self.events)}")
        f = self.filters
        lines.append(
            "filters: ports="
            + (",".join(map(str, f.ports)) or "any")
            + f" netns={f.netns_inum if f.netns_inum is not None else 'any'}"
            + (f" cgroup={f.cgroup_dir} (id {f.cgroup_id}, level {f.cgroup_level})" if f.cgroup_id else " cgroup=any")
        )
        lines.append(f"per-socket map: {self.max_sockets} entries")
        if not self.flows_on:
            lines.append(f"connections: {self.connections} (every connection is a lifecycle event)")
        elif self.connections == "aggregate":
            lines.append(f"connections: aggregate (ordinary connections into flows, {self.max_flows} keys per map)")
        else:
            lines.append(
                f"connections: each (beyond {self.spill_per_cpu}/s per CPU ordinary connections spill "
                f"into flows, {self.max_flows} keys per map)"
            )
        lines += self.open.describe(self.flow_interval)
        if not self.anomalies_on:
            lines.append("anomalies: every one its own event (no budget)")
        else:
            per_key = f"{self.anomaly_budget} per key and interval" if self.anomaly_budget else "no per-key limit"
            node = f"{self.anomaly_node_per_cpu}/s per CPU" if self.anomaly_node_per_cpu else "no node limit"
            lines.append(
                f"anomalies: events within the budgets ({per_key}, {node}), the rest aggregated in the kernel "
                f"({self.max_anomaly_keys} keys per map)"
            )
        lines.append("attach:")
        lines += [f"  {kind} {tp} -> {fn}" for kind, tp, fn in self.attach]
        if self.skipped:
            lines.append("skipped:")
            lines += [f"  {s}" for s in self.skipped]
        lines.append("btf offsets:")
        lines += [f"  {k.lstrip('_')} = {v}" for k, v in (*self.offsets, *self.open.offsets)]
        lines.append(f"reset reasons: {len(self.rst_reasons)} from BTF enum sk_rst_reason")
        lines.append("tracepoint records:")
        for fmt in self.formats:
            lines.append(f"  {fmt.category}:{fmt.name} (id {fmt.id})")
            lines += [f"    {fl.declaration()}  @{fl.offset} size {fl.size}" for fl in fmt.fields if not fl.is_common]
        lines.append("cflags: " + " ".join(self.cflags()))
        return "\n".join(lines)


def build_plan(
    config: AgentConfig,
    *,
    btf: Btf | None = None,
    format_reader: Callable[[str, str], TracepointFormat | None] | None = None,
    kernel: str | None = None,
    socket_key: int | None = None,
    capabilities: int | None = None,
) -> Plan:
    """Probe the running kernel (or the given stand-ins) and decide the plan for this config, in
    three steps: struct offsets (BTF), tracepoints (tracefs), filters (config, /proc, cgroupfs).

    Raises KernelSupportError naming what is missing and how to fix it."""
    btf = btf if btf is not None else load_btf(config)
    read = format_reader if format_reader is not None else tracefs_reader(config)
    require_cgroup_root_support(btf, config)  # first: the one filter a kernel layout rules out
    offsets = struct_offsets(btf)
    tracepoints = select_tracepoints(config.events, read, has_raw=has_raw_tracepoints(btf))
    filters = build_filters(config)
    kernel = kernel or platform.release()
    use_ringbuf = btf.enum_value("bpf_map_type", "BPF_MAP_TYPE_RINGBUF") is not None
    caps = effective_capabilities() if capabilities is None else capabilities
    return Plan(
        kernel=kernel,
        formats=tracepoints.formats,
        attach=tracepoints.attach,
        skipped=tracepoints.skipped,
        offsets=offsets,
        use_ringbuf=use_ringbuf,
        ringbuf_pages=max(1, config.ring_buffer_kb * 1024 // os.sysconf("SC_PAGE_SIZE")),
        events=tuple(config.events),
        filters=filters,
        max_sockets=config.max_sockets,
        probe_sample=config.probe_sample,
        rst_reasons=reset_reasons(btf),
        socket_key=secrets.randbits(64) if socket_key is None else socket_key,
        connections=config.connections,
        max_flows=config.max_flows,
        spill_per_cpu=spill_per_cpu(config),
        open=open_connections(config, btf, kernel, use_ringbuf=use_ringbuf, capabilities=caps),
        flow_interval=config.flow_interval,
        anomaly_budget=config.anomaly_budget,
        anomaly_node_per_cpu=per_cpu(config.max_anomaly_events),
        max_anomaly_keys=config.max_anomaly_keys,
    )


# ---- the running kernel's BTF and tracefs --------------------------------------------------------


def load_btf(config: AgentConfig) -> Btf:
    """The kernel's BTF (or --btf's file)."""
    try:
        return Btf.load(config.btf) if config.btf else Btf.load()
    except BtfError as e:
        raise KernelSupportError(
            f"kernel BTF unavailable ({e}); the agent needs a kernel built with CONFIG_DEBUG_INFO_BTF "
            "(/sys/kernel/btf/vmlinux)"
        ) from e


def tracefs_reader(config: AgentConfig) -> Callable[[str, str], TracepointFormat | None]:
    """A reader of tracepoint format files from tracefs (or --tracefs), found once, now."""
    try:
        if config.tracefs:
            root = find_tracefs(Path(config.tracefs), Path(config.tracefs), may_mount=False)
        else:
            root = tracefs_root()
    except TracefsError as e:
        raise KernelSupportError(str(e)) from e

    def reader(cat: str, name: str) -> TracepointFormat | None:
        try:
            return read_format(cat, name, root)
        except TracefsError as e:
            raise KernelSupportError(str(e)) from e

    return reader


def has_raw_tracepoints(btf: Btf) -> bool:
    """Whether the kernel has raw tracepoint programs (4.17+)."""
    return btf.enum_value("bpf_prog_type", "BPF_PROG_TYPE_RAW_TRACEPOINT") is not None


def reset_reasons(btf: Btf) -> dict[int, str]:
    """enum sk_rst_reason (6.10+) by value, without its prefix; empty before."""
    return {v: k.removeprefix("SK_RST_REASON_") for k, v in btf.enum_values("sk_rst_reason").items()}


# ---- step 1: struct offsets (BTF) ----------------------------------------------------------------


def struct_offsets(btf: Btf) -> tuple[tuple[str, int], ...]:
    """The kernel struct offsets the programs read (_OFFSETS), then the layout facts cgen derives
    flags from (`_`-prefixed: they are not offsets). Raises naming every member BTF lacks."""
    missing: list[str] = []
    offsets = _member_offsets(btf, missing)
    offsets += _socket_cgroup_layout(btf, missing)
    offsets.append(("_KN_ID_SIZE", _kernfs_id_size(btf)))
    offsets += _cgroup_ancestors(btf, missing)
    offsets.append(("_SOCK_DONE", _sock_done(btf, missing)))
    if missing:
        raise KernelSupportError(
            "kernel BTF lacks " + ", ".join(missing) + "; this kernel's socket layout is not supported"
        )
    return tuple(offsets)


def _member_offsets(btf: Btf, missing: list[str]) -> list[tuple[str, int]]:
    """_OFFSETS, each at the first of its member paths that BTF has."""
    offsets = []
    for macro, struct, paths in _OFFSETS:
        found = _first_offset(btf, struct, paths)
        if found is None:
            missing.append(f"{struct}.{paths[0]}")
        else:
            offsets.append((macro, found))
    return offsets


def _first_offset(btf: Btf, struct: str, paths: Sequence[str]) -> int | None:
    """The offset of the first of these member paths that the struct has."""
    for path in paths:
        offset = btf.member_offset(struct, path)
        if offset is not None:
            return offset
    return None


def _socket_cgroup_layout(btf: Btf, missing: list[str]) -> list[tuple[str, int]]:
    """Where sock.sk_cgrp_data keeps the socket's cgroup v2 pointer, by kernel layout.

    5.15+ (commit 8520e224f547): `struct sock_cgroup_data { struct cgroup *cgroup; u32 classid; u16
    prioidx; }`. 4.5-5.14: a union of `u64 val` (the pointer) with the cgroup v1 net_prio/net_cls
    data `{ u8 is_data:1, no_refcnt:1 (5.7+), ...; u16 prioidx; u32 classid; }`; once a v1
    net_cls/net_prio setting is applied to a socket the pointer is gone (bpf/kread.h,
    sock_cgroup()). The low bits of `val` tell the two apart, so SOCK_CGROUP_UNION switches that
    check on."""
    direct = btf.member_offset("sock_cgroup_data", "cgroup")
    if direct is not None:
        return [("OFF_SCD_CGROUP", direct)]
    val = btf.member_offset("sock_cgroup_data", "val")
    if val is not None and btf.member_size("sock_cgroup_data", "val") == 8:
        return [("OFF_SCD_CGROUP", val), ("_SOCK_CGROUP_UNION", 1)]
    missing.append("sock_cgroup_data.cgroup (5.15+) or sock_cgroup_data.val (4.5-5.14)")
    return []


def _kernfs_id_union(btf: Btf) -> bool:
    """Before 5.5 kernfs_node.id is `union kernfs_node_id { struct { u32 ino, generation; }; u64 id; }`
    and a cgroupfs directory's inode number is its ino alone; from 5.5 (commit 67c0496e87d1) id is a
    u64 equal to the inode number."""
    return btf.has_member("kernfs_node", "id.ino")


def _kernfs_id_size(btf: Btf) -> int:
    """How many bytes of kernfs_node.id are the inode number (KN_ID_SIZE)."""
    return 4 if _kernfs_id_union(btf) else btf.member_size("kernfs_node", "id") or 8


def _cgroup_ancestors(btf: Btf, missing: list[str]) -> list[tuple[str, int]]:
    """Where a cgroup's ancestors are: pointers since 6.1 (commit 7f203bc89eb6), ids before."""
    if btf.has_member("cgroup", "ancestors"):
        return [("_OFF_CGROUP_ANCESTORS", btf.member_offset("cgroup", "ancestors") or 0)]
    if btf.has_member("cgroup", "ancestor_ids"):
        return [
            ("_OFF_CGROUP_ANCESTORS", btf.member_offset("cgroup", "ancestor_ids") or 0),
            ("_CGROUP_ANCESTOR_IDS", 1),
        ]
    missing.append("cgroup.ancestors")
    return []


def _sock_done(btf: Btf, missing: list[str]) -> int:
    """The bit number of SOCK_DONE in sk_flags."""
    bit = btf.enum_value("sock_flags", "SOCK_DONE")
    if bit is None:
        missing.append("enum sock_flags SOCK_DONE")
        return 1
    return bit


def _optional_offsets(
    btf: Btf, wanted: Sequence[tuple[str, str, str, tuple[str, str] | None]]
) -> tuple[list[tuple[str, int]], list[str]]:
    """(offsets found, members missing) of optional offsets."""
    found: list[tuple[str, int]] = []
    missing: list[str] = []
    for macro, struct, path, inner in wanted:
        off = btf.member_offset(struct, path)
        extra = btf.member_offset(*inner) if inner else 0
        if off is None or extra is None:
            missing.append(f"{struct}.{path}" if off is None else f"{inner[0]}.{inner[1]}" if inner else path)
        else:
            found.append((macro, off + extra))
    return found, missing


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string ("6.18.44-fc" -> (6, 18)); (0, 0) when unreadable."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def effective_capabilities(status: str = "/proc/self/status") -> int:
    """This process' effective capability set (CapEff), as a bit mask."""
    with open(status) as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def open_connections(
    config: AgentConfig, btf: Btf, kernel: str, *, use_ringbuf: bool, capabilities: int
) -> OpenConnections:
    """Which parts of open-connection reporting this kernel, this config and this process allow."""
    rtt_found, rtt_missing = _optional_offsets(btf, _RTT_OFFSETS)
    interim_found, interim_missing = _optional_offsets(btf, _INTERIM_OFFSETS)
    rtt = f"kernel BTF lacks {', '.join(rtt_missing)}" if rtt_missing else ""
    if "open" not in config.events:
        interim = "not requested (--events without open)"
    elif "lifecycle" not in config.events:
        interim = "needs the lifecycle kind (the reports add up to each connection's lifecycle)"
    elif not use_ringbuf:
        interim = "needs the BPF ring buffer (Linux 5.8+)"
    elif kernel_version(kernel) < OPEN_PASS_SINCE:
        interim = (
            f"needs BPF atomic exchange, Linux {OPEN_PASS_SINCE[0]}.{OPEN_PASS_SINCE[1]}+ (this is {kernel}): "
            "without it a report racing with the close could count bytes twice"
        )
    elif interim_missing:
        interim = f"kernel BTF lacks {', '.join(interim_missing)}"
    else:
        interim = ""
    needed = (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)
    if interim:
        seed = "needs the open-connection reports"
    elif capabilities & needed != needed:
        seed = (
            "needs CAP_NET_ADMIN (bpf_sk_lookup_tcp, the one way to a socket's kernel address, exists only in "
            "networking programs) and CAP_SYS_ADMIN (to enter each network namespace)"
        )
    else:
        seed = ""
    offsets = rtt_found + (interim_found if not interim else [])
    return OpenConnections(interim=interim, seed=seed, rtt=rtt, offsets=tuple(offsets))


# ---- step 2: tracepoints (tracefs) ---------------------------------------------------------------


@dataclass(frozen=True)
class Tracepoints:
    """Which tracepoints the plan attaches and how, the records it lays out, and what it skips."""

    formats: tuple[TracepointFormat, ...]  # records of the plain tracepoints attached
    attach: tuple[tuple[str, str, str], ...]  # (tracepoint | raw_tracepoint, "cat:name", fn_name)
    skipped: tuple[str, ...]  # "cat:name: why"


# what a missing tracepoint costs, beyond its own events
_WITHOUT = {
    "tcp_destroy_sock": " (lifecycles are emitted at CLOSE instead; "
    "resets and errors reported after CLOSE then miss them)",
    "inet_sk_error_report": " (errno comes from sk_err at CLOSE)",
}


def select_tracepoints(
    events: Sequence[str],
    read: Callable[[str, str], TracepointFormat | None],
    *,
    has_raw: bool,
) -> Tracepoints:
    """TRACEPOINTS that the event kinds need and the kernel has in a usable form, in that order.

    Raises when sock:inet_sock_set_state is not among them; logs one line per tracepoint skipped."""
    formats: list[TracepointFormat] = []
    attach: list[tuple[str, str, str]] = []
    skipped: list[str] = []
    for spec in TRACEPOINTS:
        if spec.kinds and not set(spec.kinds) & set(events):
            continue
        fmt = read(spec.category, spec.name)
        how = _attachment(spec, fmt, has_raw)
        if isinstance(how, str):
            skipped.append(f"{spec.category}:{spec.name}: {how}")
            continue
        attach.append(how)
        if how[0] == "tracepoint" and fmt is not None:
            formats.append(fmt)
    if not any(tp == "sock:inet_sock_set_state" for _k, tp, _f in attach):
        raise KernelSupportError(
            "tracepoint sock:inet_sock_set_state is missing or unusable on this kernel (needs Linux 4.16+): "
            + "; ".join(skipped)
        )
    for s in skipped:
        log.warning("skipping %s", s)
    return Tracepoints(tuple(formats), tuple(attach), tuple(skipped))


def _attachment(spec: TracepointSpec, fmt: TracepointFormat | None, has_raw: bool) -> tuple[str, str, str] | str:
    """How to attach this tracepoint, (kind, "cat:name", fn_name), or why it is skipped.

    A raw spec (a record without the socket pointer) is attached as a raw tracepoint, which reads
    the tracepoint's arguments rather than its record; its format file only says it exists."""
    tp = f"{spec.category}:{spec.name}"
    if fmt is None:
        return f"not in this kernel{_WITHOUT.get(spec.name, '')}"
    if spec.raw and not has_raw:
        return "the kernel has no raw tracepoint programs (4.17+)"
    if spec.raw:
        return ("raw_tracepoint", tp, f"raw_{spec.name}")
    why = _usable(spec, fmt)
    return why if why else ("tracepoint", tp, f"tp_{spec.name}")


def _usable(spec: TracepointSpec, fmt: TracepointFormat) -> str | None:
    """Why this record cannot be used by the programs, or None if it can."""
    missing = []
    for name in spec.required:
        if name == "sport|sockaddr":
            missing += _missing_tuple(fmt)
        elif fmt.field(name) is None:
            missing.append(name)
    missing += [" or ".join(group) for group in spec.one_of if all(fmt.field(n) is None for n in group)]
    return f"record lacks {', '.join(missing)}" if missing else None


def _missing_tuple(fmt: TracepointFormat) -> list[str]:
    """What a record lacks for the tuple ("sport|sockaddr"): sockaddr copies (tcp_send_reset 6.10+)
    suffice, else the classic fields need saddr_v6."""
    if cgen.has_sockaddr(fmt):
        return []
    if fmt.field("sport") is None:
        return ["sport (or sockaddr saddr)"]
    return ["saddr_v6"] if fmt.field("saddr_v6") is None else []


# ---- step 3: filters (config, /proc, cgroupfs) ---------------------------------------------------


def require_cgroup_root_support(btf: Btf, config: AgentConfig) -> None:
    """Refuse --cgroup-root where the kernel's cgroup ids cannot be matched against a directory."""
    if config.cgroup_root and _kernfs_id_union(btf):
        raise KernelSupportError(
            "--cgroup-root needs Linux 5.5+: before it, cgroup.ancestor_ids[] holds cgroup idr ids, not the "
            "kernfs inode numbers a cgroup directory is known by, so a subtree cannot be matched in the kernel"
        )


def build_filters(config: AgentConfig) -> Filters:
    """The in-kernel filters of this config: ports, network namespace inode, cgroup subtree."""
    netns = netns_inum(config.netns) if config.netns else None
    cgroup = cgroup_filter(config.cgroup_root) if config.cgroup_root else Filters()
    return replace(cgroup, ports=tuple(sorted(set(config.ports))), netns_inum=netns)


def netns_inum(path: str) -> int:
    """The inode number of a network namespace file (/proc/PID/ns/net, /run/netns/NAME)."""
    try:
        return os.stat(path).st_ino
    except OSError as e:
        raise KernelSupportError(f"--netns {path}: {e.strerror}") from e


def cgroup2_mount(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The cgroup2 mount point containing path (longest match), or None."""
    best: str | None = None
    with open(mountinfo) as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            if not right.startswith("cgroup2 "):
                continue
            mnt = left.split()[4]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and (best is None or len(mnt) > len(best)):
                best = mnt
    return best


def cgroup_filter(directory: str) -> Filters:
    """Subtree filter values for a cgroup v2 directory: its id (inode) and level (depth)."""
    real = os.path.realpath(directory)
    if not os.path.isdir(real):
        raise KernelSupportError(f"--cgroup-root {directory}: no such directory")
    mnt = cgroup2_mount(real)
    if mnt is None:
        raise KernelSupportError(
            f"--cgroup-root {directory} is not on a cgroup v2 mount (see /proc/self/mountinfo); "
            "pass a directory under the cgroup2 hierarchy, e.g. /sys/fs/cgroup/unified/kubepods.slice"
        )
    rel = os.path.relpath(real, mnt)
    level = 0 if rel == "." else len(Path(rel).parts)
    return Filters(cgroup_id=os.stat(real).st_ino, cgroup_level=level, cgroup_dir=real)


def per_cpu(per_second: int) -> int:
    """A per-node rate split evenly across the CPUs (the kernel counts per CPU); 0 stays 0 (no limit)."""
    if per_second <= 0:
        return 0
    cpus = os.cpu_count() or 1
    return max(1, -(-per_second // cpus))


def spill_per_cpu(config: AgentConfig) -> int:
    """`--max-connection-events` split evenly across the CPUs (the kernel counts per CPU)."""
    if config.connections != "each" or config.max_connection_events <= 0:
        return 0
    cpus = os.cpu_count() or 1
    return max(1, -(-config.max_connection_events // cpus))
