"""The load: bench/loadgen.c built at run time, and the two places it runs (loopback, and a veth
pair between two network namespaces with 198.18.0.0/15 addresses).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Unavailable

LOADGEN_SRC = Path(__file__).with_name("loadgen.c")
REQ_BYTES = 64
RESP_BYTES = 256


def build_loadgen(workdir: Path) -> Path:
    """Compile loadgen.c into workdir with gcc; returns the binary's path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise Unavailable("gcc is not installed (scripts/setup.sh installs it)")
    out = workdir / "loadgen"
    subprocess.run([gcc, "-O2", "-Wall", "-pthread", "-o", str(out), str(LOADGEN_SRC)], check=True, capture_output=True)
    return out


@dataclass(frozen=True)
class ChurnResult:
    connections: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.connections / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Topology:
    """Where client and server run. `client_ns`/`server_ns` are netns names, or None for the host."""

    name: str
    server_addr: str
    client_ns: str | None = None
    server_ns: str | None = None
    client_ifname: str = "lo"  # the interface a packet capture on the client side listens on
    loadgen: Path = Path()
    server_threads: int = 1
    _server: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    port: int = 0

    def prefix(self, ns: str | None) -> list[str]:
        return ["ip", "netns", "exec", ns] if ns else []

    def start_server(self) -> None:
        self._server = subprocess.Popen(
            [
                *self.prefix(self.server_ns),
                str(self.loadgen),
                "serve",
                self.server_addr,
                "0",
                str(self.server_threads),
                str(RESP_BYTES),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self._server.stdout is not None
        line = self._server.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "ready":
            self.stop_server()
            raise Unavailable(f"loadgen server on {self.name} did not start")
        self.port = int(line[1])

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.terminate()
            try:
                self._server.wait(5)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait(5)
            self._server = None

    def churn(self, seconds: float, rate: float = 0.0, threads: int = 1) -> ChurnResult:
        """Run the client loop for `seconds` (rate 0 = as fast as it goes)."""
        p = subprocess.run(
            [
                *self.prefix(self.client_ns),
                str(self.loadgen),
                "churn",
                self.server_addr,
                str(self.port),
                str(threads),
                f"{seconds:.3f}",
                f"{rate:.1f}",
                str(REQ_BYTES),
            ],
            capture_output=True,
            check=True,
            timeout=seconds + 30,
        )
        d = json.loads(p.stdout)
        return ChurnResult(int(d["connections"]), int(d["errors"]), float(d["seconds"]))

    def close(self) -> None:
        self.stop_server()


def loopback(loadgen: Path, server_threads: int) -> Topology:
    return Topology("loopback", "127.0.0.1", loadgen=loadgen, server_threads=server_threads)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class VethPair:
    """Two network namespaces joined by a veth pair: client 198.18.0.1, server 198.18.0.2.
    Names carry our pid so concurrent runs do not collide; `close()` deletes both namespaces
    (which deletes the veth pair)."""

    def __init__(self, loadgen: Path, server_threads: int) -> None:
        tag = f"{os.getpid()}"
        self.client_ns, self.server_ns = f"tsbench{tag}c", f"tsbench{tag}s"
        self.client_if, self.server_if = f"tsb{tag}c"[:15], f"tsb{tag}s"[:15]
        self.created: list[str] = []
        try:
            for ns in (self.client_ns, self.server_ns):
                _ip("netns", "add", ns)
                self.created.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip(
                "link",
                "add",
                self.client_if,
                "netns",
                self.client_ns,
                "type",
                "veth",
                "peer",
                "name",
                self.server_if,
                "netns",
                self.server_ns,
            )
            _ip("-n", self.client_ns, "addr", "add", "198.18.0.1/30", "dev", self.client_if)
            _ip("-n", self.server_ns, "addr", "add", "198.18.0.2/30", "dev", self.server_if)
            _ip("-n", self.client_ns, "link", "set", self.client_if, "up")
            _ip("-n", self.server_ns, "link", "set", self.server_if, "up")
        except (subprocess.CalledProcessError, OSError) as e:
            self.close()
            err = e.stderr.decode().strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
            raise Unavailable(f"cannot build the veth pair: {err}") from e
        self.topology = Topology(
            "veth",
            "198.18.0.2",
            client_ns=self.client_ns,
            server_ns=self.server_ns,
            client_ifname=self.client_if,
            loadgen=loadgen,
            server_threads=server_threads,
        )
        # the veth link needs a moment before the first SYN gets through
        time.sleep(0.2)

    def close(self) -> None:
        self.topology_close()
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()

    def topology_close(self) -> None:
        topo = getattr(self, "topology", None)
        if topo is not None:
            topo.close()
