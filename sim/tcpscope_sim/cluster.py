"""The simulated nodes and pods: cgroup trees, network namespaces and one worker process per pod.

`PodCluster` builds everything a plan describes and tears it down again (also after a crash, by
run id: `cleanup_leftovers`). A small state file per run in /run/tcpscope-sim records the owner
pid and every helper process it started, so `tcpscope-sim --cleanup` can tell a dead run's
leftovers from a live run's resources and kill only processes it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from tcpscope_sim import kubeproxy, net
from tcpscope_sim.cgroups import CgroupTree, PodCgroup, leftover_run_ids
from tcpscope_sim.plan import Plan, PodSpec

log = logging.getLogger(__name__)
STATE_DIR = "/run/tcpscope-sim"


def new_run_id() -> str:
    return secrets.token_hex(3)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): with the pid, an
    identity that survives pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class RunState:
    """What a run created, persisted so a later `--cleanup` can undo a crashed run."""

    run_id: str
    owner_pid: int = field(default_factory=os.getpid)
    procs: list[tuple[int, str]] = field(default_factory=list)  # (pid, start time)
    paths: list[str] = field(default_factory=list)  # temporary files and directories

    @property
    def path(self) -> str:
        return os.path.join(STATE_DIR, f"{self.run_id}.json")

    def save(self) -> None:
        os.makedirs(STATE_DIR, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {
                    "run_id": self.run_id,
                    "owner_pid": self.owner_pid,
                    "owner_start": _start_time(self.owner_pid),
                    "procs": self.procs,
                    "paths": self.paths,
                },
                f,
            )
        os.replace(tmp, self.path)

    def track(self, pid: int) -> None:
        st = _start_time(pid)
        if st is not None:
            self.procs.append((pid, st))
            self.save()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _alive(pid: int, start: str | None) -> bool:
    return start is not None and _start_time(pid) == start


def kill_tracked(procs: list[tuple[int, str]] | list[list[Any]]) -> None:
    """SIGKILL the processes a run started, if they are still those processes."""
    for pid, start in procs:
        if _alive(int(pid), str(start)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def cleanup_leftovers(only: str | None = None) -> list[str]:
    """Remove what dead runs left behind (namespaces, cgroups, processes, files); never touch a run
    whose owner is still alive. Returns the run ids cleaned."""
    ids = net.all_run_ids() | leftover_run_ids()
    with contextlib.suppress(FileNotFoundError):
        ids |= {n[:-5] for n in os.listdir(STATE_DIR) if n.endswith(".json")}
    cleaned = []
    for rid in sorted(ids):
        if only is not None and rid != only:
            continue
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError), open(os.path.join(STATE_DIR, f"{rid}.json")) as f:
            state = json.load(f)
        if state and _alive(int(state["owner_pid"]), state.get("owner_start")):
            continue
        kill_tracked(state.get("procs", []))
        CgroupTree(rid).destroy()
        for name in net.netns_names(rid):
            net.delete_netns(name)
        for p in state.get("paths", []):
            _remove_path(p)
        RunState(rid).remove()
        cleaned.append(rid)
    return cleaned


def _remove_path(p: str) -> None:
    import shutil

    if os.path.isdir(p):
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


class WorkerError(RuntimeError):
    """A pod worker died or answered something unexpected."""


@dataclass
class Pod:
    spec: PodSpec
    cgroup: PodCgroup
    netns: net.PodNet
    proc: subprocess.Popen[str]
    _next_id: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    _cv: threading.Condition = field(default_factory=threading.Condition)

    def start_reader(self) -> None:
        threading.Thread(target=self._read, daemon=True, name=f"pod-{self.spec.name}").start()

    def _read(self) -> None:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        for line in out:
            msg = json.loads(line)
            with self._cv:
                self._replies[int(msg.get("id") or 0)] = msg
                self._cv.notify_all()
        with self._cv:
            self._replies[-1] = {"error": "worker exited"}
            self._cv.notify_all()

    def send(self, op: str, **kw: Any) -> int:
        with self._lock:
            self._next_id += 1
            cid = self._next_id
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"id": cid, "op": op, **kw}) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError as e:
                raise WorkerError(f"pod {self.spec.ref}: worker is gone") from e
        return cid

    def wait(self, cid: int, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while cid not in self._replies:
                if -1 in self._replies:
                    raise WorkerError(f"pod {self.spec.ref}: worker exited ({self.proc.poll()})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerError(f"pod {self.spec.ref}: no answer to command {cid} in {timeout}s")
                self._cv.wait(left)
            return self._replies.pop(cid)

    def call(self, op: str, timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        return self.wait(self.send(op, **kw), timeout)


@dataclass
class PodCluster:
    """Nodes (cgroup subtrees) and pods (netns + cgroup + worker) for one plan."""

    plan: Plan
    run_id: str = field(default_factory=new_run_id)
    backlogs: dict[str, int] = field(default_factory=dict)  # "ns/name" -> listen backlog (default 128)
    proxy_mode: str = "nftables"  # the simulated kube-proxy's form of the Services' NAT (kubeproxy.py)
    state: RunState = field(init=False)
    cgroups: CgroupTree = field(init=False)
    fabric: net.Fabric = field(init=False)
    pods: dict[str, Pod] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.state = RunState(self.run_id)
        self.cgroups = CgroupTree(self.run_id)
        self.fabric = net.Fabric(self.run_id)

    def node_cgroup(self, node: str) -> str:
        return self.cgroups.node_dir(node)

    def start(self, ready_timeout: float = 20.0) -> None:
        """Create nodes, network and pods; return once every worker listens."""
        self.state.save()
        os.makedirs(self.cgroups.root, exist_ok=True)
        for node in self.plan.nodes:
            os.makedirs(self.node_cgroup(node), exist_ok=True)
        self.fabric.create()
        kubeproxy.install(self.plan, self.fabric, self.proxy_mode)
        for i, spec in enumerate(self.plan.pods, start=1):
            cg = self.cgroups.add_pod(spec.node, spec.namespace, spec.name)
            pn = self.fabric.add_pod(i, spec.ip)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tcpscope_sim.worker",
                    "--netns",
                    pn.netns_path,
                    "--cgroup",
                    cg.path,
                    "--listen",
                    ",".join(map(str, spec.listen)),
                    "--backlog",
                    str(self.backlogs.get(spec.ref, 128)),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
            self.state.track(proc.pid)
            self.pods[spec.ref] = Pod(spec, cg, pn, proc)
        deadline = time.monotonic() + ready_timeout
        for pod in self.pods.values():
            assert pod.proc.stdout is not None
            left = max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([pod.proc.stdout], [], [], left)
            line = pod.proc.stdout.readline() if readable else ""
            if not line or not json.loads(line).get("ready"):
                raise WorkerError(f"pod {pod.spec.ref} did not start (exit {pod.proc.poll()})")
            pod.start_reader()

    def stop(self) -> None:
        """Stop the workers, then remove cgroups, namespaces and the state file. Idempotent."""
        for pod in self.pods.values():
            with contextlib.suppress(Exception):
                pod.send("quit")
        for pod in self.pods.values():
            try:
                pod.proc.wait(2)
            except subprocess.TimeoutExpired:
                pod.proc.kill()
                pod.proc.wait(2)
            for f in (pod.proc.stdin, pod.proc.stdout):
                with contextlib.suppress(Exception):
                    if f is not None:
                        f.close()
        self.pods.clear()
        self.cgroups.destroy()
        self.fabric.destroy()
        for p in self.state.paths:
            _remove_path(p)
        kill_tracked(self.state.procs)
        self.state.remove()
