"""The agent's one configuration object: every flag, its environment variable and its default.

Read once at start-up (`AgentConfig.from_args`) and passed down explicitly; nothing reads flags or
the environment anywhere else. The flags are generated from the fields (`tcpscope/settings.py`), so
`python -m agent --help` prints the same documentation.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tcpscope.agent_id import make_agent_id
from tcpscope.kinds import AGENT_DEFAULTS, AGENT_KINDS
from tcpscope.settings import (
    ConfigError,
    check,
    host_port,
    load,
    log_level,
    parser_for,
    readable_files,
    setting,
    together,
)

__all__ = ["AgentConfig", "ConfigError", "build_parser"]


@dataclass(frozen=True)
class AgentConfig:
    # --- output -----------------------------------------------------------------------------
    stdout: str | None = setting(
        "TCPSCOPE_STDOUT", "print events to stdout: 'table' or 'json'", default=None, choices=("table", "json")
    )
    events: tuple[str, ...] = setting(
        "TCPSCOPE_EVENTS",
        "event kinds to report, comma separated: " + ",".join(AGENT_KINDS),
        default=AGENT_DEFAULTS,
    )
    duration: float | None = setting(
        "TCPSCOPE_DURATION", "run this many seconds after attaching, then exit 0", default=None, above=0
    )
    dump_bpf: bool = setting(
        "TCPSCOPE_DUMP_BPF",
        "print the kernel probe plan (formats, offsets, attach list) and exit",
        default=False,
        negative=False,  # a command, not a setting: nothing to switch off
    )
    # --- kernel side ------------------------------------------------------------------------
    ports: tuple[int, ...] = setting(
        "TCPSCOPE_PORTS",
        "only sockets whose local or remote port is one of these (in-kernel)",
        default=(),
        items=int,
        flag="--port",
        repeatable=True,
    )
    cgroup_root: str | None = setting(
        "TCPSCOPE_CGROUP_ROOT",
        "only sockets whose cgroup v2 directory lies under this one (in-kernel subtree filter)",
        default=None,
    )
    netns: str | None = setting(
        "TCPSCOPE_NETNS", "only sockets in this network namespace (path like /proc/PID/ns/net)", default=None
    )
    tracefs: str | None = setting(
        "TCPSCOPE_TRACEFS",
        "tracefs mount to read tracepoint formats from (default /sys/kernel/tracing, mounted there when "
        "root, else /sys/kernel/debug/tracing); e.g. where a container has the host's tracefs",
        default=None,
    )
    btf: str | None = setting(
        "TCPSCOPE_BTF",
        "kernel BTF file with the running kernel's struct layouts (default /sys/kernel/btf/vmlinux)",
        default=None,
    )
    probe_sample: int = setting(
        "TCPSCOPE_PROBE_SAMPLE", "with the 'probe' kind: report one tcp_probe event in N", default=100, min=1
    )
    max_sockets: int = setting(
        "TCPSCOPE_MAX_SOCKETS",
        "capacity of the per-socket kernel map (a socket whose start finds it full is not tracked, counted "
        "once as kernel.socket_map_full, a count of sockets, not events; nothing is evicted)",
        default=65536,
        min=1,
    )
    connections: str = setting(
        "TCPSCOPE_CONNECTIONS",
        "'each': a lifecycle event per connection (tcplife-like); 'aggregate': ordinary connections "
        "(established, closed normally, no reset, error or retransmit) are counted in the kernel and "
        "reported as flows every --flow-interval, anomalies stay individual events. Default: each with "
        "--stdout, aggregate when only streaming to a collector",
        default="",
        choices=("each", "aggregate"),
    )
    flow_interval: float = setting(
        "TCPSCOPE_FLOW_INTERVAL",
        "seconds between flushes of the in-kernel flow maps (and at shutdown)",
        default=10.0,
        above=0,
    )
    max_flows: int = setting(
        "TCPSCOPE_MAX_FLOWS",
        "flow keys per interval (kernel map size); when full, ordinary connections are reported as their "
        "own lifecycle events and counted (flows.map_full), never lost",
        default=4096,
        min=1,
    )
    max_connection_events: int = setting(
        "TCPSCOPE_MAX_CONNECTION_EVENTS",
        "with --connections each: ordinary connections reported one by one per second at most (split "
        "evenly across CPUs); beyond it they spill into flows, counted (flows.aggregated). 0 = no limit",
        default=5000,
        min=0,
    )
    anomaly_budget: int = setting(
        "TCPSCOPE_ANOMALY_BUDGET",
        "anomalies (resets, refusals, errors, retransmits, ...) sent as their own events per key and "
        "--flow-interval; past it they are counted in the kernel and reported as one aggregate per key "
        "and interval beside those exemplars (a key: the connection's flow key plus kind and reason or "
        "errno). 0 = no per-key limit",
        default=100,
        min=0,
    )
    max_anomaly_events: int = setting(
        "TCPSCOPE_MAX_ANOMALY_EVENTS",
        "anomalies sent as their own events per second on this node at most (split evenly across CPUs); "
        "past it every anomaly is aggregated. 0 = no node limit; with --anomaly-budget 0 too, every "
        "anomaly is its own event",
        default=2000,
        min=0,
    )
    max_anomaly_keys: int = setting(
        "TCPSCOPE_MAX_ANOMALY_KEYS",
        "anomaly keys per interval (kernel map size); near full, anomalies fold into coarse keys (no "
        "remote address or server port), and with no room at all they are sent as events (counted: "
        "anomalies.no_key)",
        default=8192,
        min=64,
    )
    ring_buffer_kb: int = setting(
        "TCPSCOPE_RING_BUFFER_KB", "kernel-to-user ring buffer size in KiB (power of two)", default=8192
    )
    # --- identity and enrichment ------------------------------------------------------------
    node_name: str = setting(
        "NODE_NAME", "this node's name (Kubernetes downward API); defaults to the host name", default=""
    )
    connection_key_file: str | None = setting(
        "TCPSCOPE_CONNECTION_KEY_FILE",
        "file holding the cluster's connection id key (at least 16 bytes), the same on every agent: the "
        "two sockets of a connection then get the same connection_id on any nodes, across NAT. Without "
        "it a random key of this process is used, and ids join only sockets this agent sees "
        "(docs/connection-id.md)",
        default=None,
    )
    kubernetes: bool = setting(
        "TCPSCOPE_KUBERNETES",
        "enrich with pod metadata from the Kubernetes API ('--no-kubernetes' off)",
        default=True,
        negative="run with cgroup-level identity only",
    )
    kubeconfig: str | None = setting(
        "KUBECONFIG", "kubeconfig file; without it the in-cluster service account is used", default=None
    )
    resolve_remote: bool = setting(
        "TCPSCOPE_RESOLVE_REMOTE",
        "resolve remote IPs to pods/services/nodes in the agent (default on for --stdout)",
        default=True,
        negative="leave remote ends unresolved (the collector resolves them)",
    )
    label_allowlist: tuple[str, ...] = setting(
        "TCPSCOPE_LABELS",
        "pod labels copied onto events, comma separated (others are dropped)",
        default=("app", "app.kubernetes.io/name", "app.kubernetes.io/component", "version"),
        flag="--labels",
    )
    pod_cache_ttl: float = setting(
        "TCPSCOPE_POD_CACHE_TTL", "seconds a deleted pod stays resolvable for late events", default=120.0, min=0
    )
    pending_max_wait: float = setting(
        "TCPSCOPE_PENDING_MAX_WAIT",
        "seconds an event from an unknown container is held for its pod to appear",
        default=2.0,
        min=0,
    )
    # --- streaming ---------------------------------------------------------------------------
    collector: str | None = setting("TCPSCOPE_COLLECTOR", "stream batches to this collector HOST:PORT", default=None)
    agent_id: str = setting(
        "TCPSCOPE_AGENT_ID",
        "a prefix for this agent's id; the id is always [PREFIX/]NODE/INCARNATION, unique per process "
        "start, so a restarted agent never reuses batch ids (tcpscope/agent_id.py)",
        default="",
    )
    tls_ca: str | None = setting("TCPSCOPE_TLS_CA", "CA bundle to verify the collector (enables TLS)", default=None)
    tls_cert: str | None = setting("TCPSCOPE_TLS_CERT", "client certificate for mutual TLS", default=None)
    tls_key: str | None = setting("TCPSCOPE_TLS_KEY", "client key for mutual TLS", default=None)
    tls_server_name: str | None = setting(
        "TCPSCOPE_TLS_SERVER_NAME", "override the name checked in the collector's certificate", default=None
    )
    token_file: str | None = setting(
        "TCPSCOPE_TOKEN_FILE", "file holding a bearer token sent to the collector", default=None
    )
    compression: str = setting(
        "TCPSCOPE_COMPRESSION",
        "gRPC compression: gzip, deflate or none",
        default="gzip",
        choices=("gzip", "deflate", "none"),
    )
    batch_max_events: int = setting("TCPSCOPE_BATCH_MAX_EVENTS", "events per batch at most", default=1000, min=1)
    batch_max_age: float = setting(
        "TCPSCOPE_BATCH_MAX_AGE", "seconds before a partial batch is sent", default=0.5, min=0
    )
    buffer_max_events: int = setting(
        "TCPSCOPE_BUFFER_MAX_EVENTS",
        "events held for the collector (unsent + unacked); beyond it the oldest are dropped and counted",
        default=200_000,
    )
    drain_grace: float = setting(
        "TCPSCOPE_DRAIN_GRACE",
        "seconds to drain to the collector on SIGTERM before reporting the rest lost",
        default=10.0,
        min=0,
    )
    state_dir: str | None = setting(
        "TCPSCOPE_STATE_DIR",
        "directory on the node (a hostPath) for the agent's state file: an agent that ends without "
        "draining leaves a mark there, and the next one reports the window nobody observed",
        default=None,
    )
    metrics_port: int = setting(
        "TCPSCOPE_METRICS_PORT",
        "port of the metrics server: /metrics, /healthz, /readyz (0 = off)",
        default=0,
        min=0,
        max=65535,
    )
    metrics_address: str = setting(
        "TCPSCOPE_METRICS_ADDRESS",
        "address the metrics server binds (the chart sets 0.0.0.0)",
        default="127.0.0.1",
    )
    log_level: str = setting("TCPSCOPE_LOG_LEVEL", "logging level", default="INFO")

    def __post_init__(self) -> None:
        if not self.connections:  # the default follows the sinks
            mode = "aggregate" if self.collector and self.stdout is None else "each"
            object.__setattr__(self, "connections", mode)
        object.__setattr__(self, "log_level", log_level(self.log_level))
        check(self)  # each field's bounds and choices
        unknown = set(self.events) - set(AGENT_KINDS)
        if unknown:
            raise ConfigError(f"unknown event kinds {sorted(unknown)}; known: {', '.join(AGENT_KINDS)}")
        if not self.events:
            raise ConfigError("--events is empty")
        if any(not 0 < p < 65536 for p in self.ports):
            raise ConfigError(f"--port out of range: {self.ports}")
        kb = self.ring_buffer_kb
        if kb < 4 or kb & (kb - 1):
            raise ConfigError("--ring-buffer-kb must be a power of two >= 4")
        if self.buffer_max_events < self.batch_max_events:
            raise ConfigError("need 1 <= --batch-max-events <= --buffer-max-events")
        together(("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key))
        if (self.tls_cert or self.tls_server_name) and not self.tls_ca:
            # without a CA the stream is plaintext: a client certificate would be ignored and a
            # bearer token sent in the clear
            raise ConfigError("--tls-cert/--tls-key/--tls-server-name need --tls-ca (TLS is on only with a CA)")
        readable_files(
            (
                ("--tls-ca", self.tls_ca),
                ("--tls-cert", self.tls_cert),
                ("--tls-key", self.tls_key),
                ("--token-file", self.token_file),
                ("--connection-key-file", self.connection_key_file),
            )
        )
        if self.state_dir:
            d = self.state_dir
            where = d if os.path.isdir(d) else os.path.dirname(os.path.abspath(d))
            if (os.path.exists(d) and not os.path.isdir(d)) or not os.access(where, os.W_OK | os.X_OK):
                raise ConfigError(f"--state-dir {d}: not a writable directory")
        if self.collector is not None:
            check_target(self.collector)
        if self.netns:
            check_netns(self.netns)
        if not self.node_name:
            object.__setattr__(self, "node_name", socket.gethostname())
        if "/" in self.node_name:
            raise ConfigError(f"--node-name {self.node_name!r}: a node name holds no '/'")
        # --agent-id is only a prefix: every process start is its own incarnation (docs/deployment.md, agent identity)
        object.__setattr__(self, "agent_id", make_agent_id(self.node_name, self.agent_id))

    @staticmethod
    def from_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> AgentConfig:
        """Build the config from command-line flags over environment variables over defaults."""
        env = os.environ if env is None else env
        return load(AgentConfig, build_parser(), argv, env)


# gRPC name-resolver schemes a --collector target may use instead of HOST:PORT
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "xds:")
_NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type (Linux 4.11)
_CLONE_NEWNET = 0x40000000


def check_target(target: str) -> None:
    """--collector is HOST:PORT (port 1-65535, IPv6 in brackets) or a gRPC target with a scheme."""
    if target.startswith(_TARGET_SCHEMES):
        if not target.split(":", 1)[1].strip("/"):
            raise ConfigError(f"--collector {target!r}: the target names nothing")
        return
    host_port(target, "--collector")


def check_netns(path: str) -> None:
    """--netns must open as a network namespace (a /proc/PID/ns/net link or a bind mount of one, like
    /run/netns/NAME): anything else would filter on a meaningless inode and report nothing."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"--netns {path}: {e.strerror}") from e
    try:
        kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        raise ConfigError(f"--netns {path}: not a namespace file (want /proc/PID/ns/net or /run/netns/NAME)") from None
    finally:
        os.close(fd)
    if kind != _CLONE_NEWNET:
        raise ConfigError(f"--netns {path}: a namespace, but not a network namespace")


def build_parser() -> argparse.ArgumentParser:
    return parser_for(AgentConfig, "tcpscope-agent", "TCP observability from kernel tracepoints: per-node eBPF agent.")
