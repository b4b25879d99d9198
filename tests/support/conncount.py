"""An exact number of ordinary connections from native code (tests/support/conncount.c): the flow
tests need 100k connections in seconds, with exact counts and bytes on both sides."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("conncount.c")


def build(directory: Path) -> Path:
    """Compile conncount.c with gcc into directory; returns the binary."""
    exe = directory / "conncount"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(SOURCE)], check=True, capture_output=True, timeout=60)
    return exe


def _in_cgroup(cmd: list[str], cgroup: Path | None) -> list[str]:
    """The command, started inside cgroup (its own pid written to cgroup.procs before exec)."""
    if cgroup is None:
        return cmd
    return ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "conncount", *cmd]


@contextlib.contextmanager
def serving(
    exe: Path, addr: str, port: int, *, req: int, resp: int, acceptors: int = 2, cgroup: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A conncount server on addr:port (in cgroup), killed with its acceptors afterwards."""
    proc = subprocess.Popen(
        _in_cgroup([str(exe), "serve", addr, str(port), str(acceptors), str(req), str(resp)], cgroup),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "ready", f"conncount server did not start: {line!r}"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass(frozen=True)
class Churned:
    completed: int
    failed: int
    bytes_read: int


def churn(
    exe: Path,
    addr: str,
    port: int,
    n: int,
    *,
    clients: int = 2,
    req: int,
    resp: int,
    cgroup: Path | None = None,
    timeout: float = 300,
) -> Churned:
    """Make n connections to a conncount server; every one must complete."""
    out = subprocess.run(
        _in_cgroup([str(exe), "churn", addr, str(port), str(n), str(clients), str(req), str(resp)], cgroup),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    done, failed, got = (int(x) for x in out.stdout.split())
    return Churned(done, failed, got)


@dataclass(frozen=True)
class Refused:
    refused: int
    other: int


def refuse(exe: Path, addr: str, port: int, n: int, *, clients: int = 2, timeout: float = 300) -> Refused:
    """Make n connects to addr:port, where nothing listens; each should be refused (ECONNREFUSED)."""
    out = subprocess.run(
        [str(exe), "refuse", addr, str(port), str(n), str(clients)], capture_output=True, text=True, timeout=timeout
    )
    refused, other = (int(x) for x in out.stdout.split())
    return Refused(refused, other)
