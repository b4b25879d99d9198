"""Kubelet-style cgroup trees, one subtree per simulated node.

    <cgroup2>/tcpscope-sim-<run>/<node>/kubepods.slice/kubepods-besteffort.slice/
        kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<64 hex>.scope

This is the systemd cgroup driver's naming with a prefix before `kubepods.slice`, so the agent's
cgroup-path parser sees real-looking pods, and `--cgroup-root <cgroup2>/tcpscope-sim-<run>/<node>`
scopes each node's agent to its own pods. Only the cgroup v2 hierarchy is used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import time
import uuid
from dataclasses import dataclass

PREFIX = "tcpscope-sim-"


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup/unified on hybrid hosts)."""
    with open(mountinfo, encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return left.split()[4]
    raise RuntimeError("no cgroup2 hierarchy is mounted")


def pod_uid(run_id: str, namespace: str, name: str) -> str:
    """A stable UUID per (run, pod): the same pod gets the same uid in the API and in its cgroup."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tcpscope-sim://{run_id}/{namespace}/{name}"))


def container_id(uid: str) -> str:
    """A 64-hex container id derived from the pod uid (one container per pod)."""
    return hashlib.sha256(uid.encode()).hexdigest()


@dataclass(frozen=True)
class PodCgroup:
    node_dir: str
    path: str
    uid: str
    container_id: str

    @property
    def cgroup_id(self) -> int:
        """The cgroup v2 id, as bpf_get_current_cgroup_id() reports it (the directory's inode)."""
        return os.stat(self.path).st_ino


@dataclass
class CgroupTree:
    run_id: str
    root: str = ""

    def __post_init__(self) -> None:
        if not self.root:
            self.root = os.path.join(cgroup2_mount(), f"{PREFIX}{self.run_id}")

    def node_dir(self, node: str) -> str:
        return os.path.join(self.root, node)

    def add_pod(self, node: str, namespace: str, name: str) -> PodCgroup:
        uid = pod_uid(self.run_id, namespace, name)
        cid = container_id(uid)
        path = os.path.join(
            self.node_dir(node),
            "kubepods.slice",
            "kubepods-besteffort.slice",
            f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice",
            f"cri-containerd-{cid}.scope",
        )
        os.makedirs(path, exist_ok=True)
        return PodCgroup(self.node_dir(node), path, uid, cid)

    def pids(self) -> list[int]:
        """Every process in the run's subtree."""
        out: list[int] = []
        for d, _, _ in os.walk(self.root):
            with contextlib.suppress(OSError), open(os.path.join(d, "cgroup.procs")) as f:
                out.extend(int(x) for x in f.read().split())
        return out

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill what still runs in the subtree, then remove the directories bottom-up."""
        if not os.path.isdir(self.root):
            return
        kill_file = os.path.join(self.root, "cgroup.kill")
        if os.path.exists(kill_file):
            with contextlib.suppress(OSError), open(kill_file, "w") as f:
                f.write("1")
        else:  # kernels before 5.14
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        for d, _, _ in sorted(os.walk(self.root), key=lambda w: -w[0].count("/")):
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    # EBUSY: a killed task is still leaving the cgroup (it exits asynchronously)
                    if e.errno != errno.EBUSY or time.monotonic() >= deadline + timeout:
                        raise
                    time.sleep(0.02)


def leftover_run_ids() -> set[str]:
    """Run ids of every simulator cgroup tree on this machine."""
    base = cgroup2_mount()
    return {n[len(PREFIX) :] for n in os.listdir(base) if n.startswith(PREFIX)}
