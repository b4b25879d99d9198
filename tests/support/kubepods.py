"""Kubelet-style cgroup trees, pod processes and network-namespace "pods" for enrichment tests.

Everything is created under unique names (pid + random) and removed by `close()`, also when the
test fails (use them from fixtures with finalizers).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from agent.enrich.cgroups import find_cgroup2_mount


def new_uid() -> str:
    return str(uuid.uuid4())


def new_container_id() -> str:
    return secrets.token_hex(32)


@dataclass
class CgroupTree:
    """A private kubelet-like tree below `<cgroup2>/<prefix>`; `container()` makes a leaf."""

    prefix: str = field(default_factory=lambda: f"tcpscope-enrich-test-{os.getpid()}-{secrets.token_hex(3)}")
    mount: str = field(default_factory=find_cgroup2_mount)
    made: list[str] = field(default_factory=list)

    def _mkdir(self, path: str) -> None:
        if not os.path.isdir(path):
            os.mkdir(path)
            self.made.append(path)

    def container(
        self, uid: str, cid: str, qos: str = "besteffort", driver: str = "systemd", runtime: str = "cri-containerd"
    ) -> str:
        """Create the container's cgroup dir; return its absolute path."""
        base = os.path.join(self.mount, self.prefix)
        if driver == "systemd":
            segs = ["kubepods.slice"]
            if qos == "guaranteed":
                segs.append(f"kubepods-pod{uid.replace('-', '_')}.slice")
            else:
                segs += [f"kubepods-{qos}.slice", f"kubepods-{qos}-pod{uid.replace('-', '_')}.slice"]
            segs.append(f"{runtime}-{cid}.scope")
        else:
            segs = ["kubepods"] + ([] if qos == "guaranteed" else [qos]) + [f"pod{uid}", cid]
        path = base
        self._mkdir(base)
        for s in segs:
            path = os.path.join(path, s)
            self._mkdir(path)
        return path

    def host(self, name: str = "host.scope") -> str:
        base = os.path.join(self.mount, self.prefix)
        self._mkdir(base)
        path = os.path.join(base, name)
        self._mkdir(path)
        return path

    def rel(self, path: str) -> str:
        return path[len(self.mount) :]

    def remove(self, path: str) -> None:
        """Remove one leaf (its processes must be gone)."""
        _rmdir(path, self.mount)
        if path in self.made:
            self.made.remove(path)

    def close(self) -> None:
        for path in reversed(self.made):
            _rmdir(path, self.mount)
        self.made.clear()


def _rmdir(path: str, mount: str) -> None:
    # move any straggler back to the root cgroup first, so rmdir cannot fail with EBUSY
    with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs")) as f:
        for pid in f.read().split():
            with contextlib.suppress(OSError), open(os.path.join(mount, "cgroup.procs"), "w") as root:
                root.write(pid)
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


def spawn_in_cgroup(cgroup_dir: str, argv: list[str], netns: str | None = None) -> subprocess.Popen[str]:
    """Start argv with its process already in cgroup_dir (and netns), so its sockets are charged there."""
    procs = os.path.join(cgroup_dir, "cgroup.procs")

    def enter() -> None:
        with open(procs, "w") as f:
            f.write("0")

    full = ["ip", "netns", "exec", netns, *argv] if netns else argv
    return subprocess.Popen(
        full, preexec_fn=enter, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def proc_cgroup_path(pid: int) -> str:
    """The process's cgroup v2 path, from /proc/PID/cgroup ('0::/...')."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    raise RuntimeError(f"pid {pid} has no cgroup v2 line")


def stop(p: subprocess.Popen[str]) -> None:
    """Kill the peer if it still runs, reap it and close its pipes (the test may have closed stdin
    already, which makes communicate() raise before it closes the others)."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(5)
    for pipe in (p.stdin, p.stdout, p.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


# A tiny TCP peer: the server accepts one connection and prints both ends; the client connects and
# prints both ends; both hold the connection until stdin closes.
SERVER = r"""
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print('LISTEN', s.getsockname()[1], flush=True)
c, _ = s.accept()
print('CONN', c.getsockname()[0], c.getsockname()[1], c.getpeername()[0], c.getpeername()[1], flush=True)
sys.stdin.read()
"""

CLIENT = r"""
import socket, sys, time
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
for _ in range(100):
    c = socket.socket(fam)
    try:
        c.connect((sys.argv[1], int(sys.argv[2]))); break
    except OSError:
        c.close(); time.sleep(0.05)
print('CONN', c.getsockname()[0], c.getsockname()[1], c.getpeername()[0], c.getpeername()[1], flush=True)
sys.stdin.read()
"""


def read_conn(p: subprocess.Popen[str]) -> tuple[str, int, str, int]:
    """Wait for the 'CONN lip lport rip rport' line."""
    assert p.stdout is not None
    while True:
        line = p.stdout.readline()
        if not line:
            assert p.stderr is not None
            raise RuntimeError(f"peer exited: {p.stderr.read()}")
        parts = line.split()
        if parts[0] == "CONN":
            return parts[1], int(parts[2]), parts[3], int(parts[4])


def python_argv(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


@dataclass
class VethPods:
    """Two network namespaces joined by a veth pair: a = 198.18.<n>.1, b = 198.18.<n>.2 (/30)."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}{secrets.token_hex(2)}")
    ns_a: str = ""
    ns_b: str = ""
    ip_a: str = ""
    ip_b: str = ""

    def __post_init__(self) -> None:
        n = secrets.randbelow(250)  # 198.18.250-255.x stay free for tests' node and service addresses
        self.ns_a, self.ns_b = f"tsenr-{self.tag}-a", f"tsenr-{self.tag}-b"
        self.ip_a, self.ip_b = f"198.18.{n}.1", f"198.18.{n}.2"

    def up(self) -> VethPods:
        run = _run
        run("ip", "netns", "add", self.ns_a)
        run("ip", "netns", "add", self.ns_b)
        run("ip", "-n", self.ns_a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", self.ns_b)
        for ns, ip in ((self.ns_a, self.ip_a), (self.ns_b, self.ip_b)):
            run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def close(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _run(*argv: str) -> None:
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
