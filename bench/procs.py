"""Process helpers for the harness: start tools, know when they are attached, stop them, read
their CPU time and peak memory from /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Unavailable(Exception):
    """A component the row needs is missing or failed to start: the row reads "n/a: <reason>"."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set size (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def attach_fds(pid: int) -> int:
    """How many perf-event and BPF-link fds the process holds: bcc attaches a tracepoint through a
    perf event (and opens one more per CPU for each perf buffer), so this stops growing once the
    tool has attached everything."""
    n = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target in ("anon_inode:[perf_event]", "anon_inode:bpf_link"):
                n += 1
    return n


def bpf_prog_stats(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs this process holds, from
    /proc/<pid>/fdinfo (the kernel fills them while kernel.bpf_stats_enabled is 1)."""
    ns = runs = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
            for line in info.splitlines():
                key, _, value = line.partition(":")
                if key == "run_time_ns":
                    ns += int(value)
                elif key == "run_cnt":
                    runs += int(value)
    return ns, runs


@contextlib.contextmanager
def bpf_stats() -> Iterator[bool]:
    """kernel.bpf_stats_enabled on for the block (restored after); yields whether it could be set."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    try:
        old = path.read_text().strip()
        path.write_text("1")
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            path.write_text(old)


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log file, for n/a reasons."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-400:]


@dataclass
class Tool:
    """A started tool: its process, where its stderr goes, how to stop it."""

    name: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    stop_signal: int = signal.SIGINT
    extra_stop: list[Callable[[], None]] = field(default_factory=list)
    stdout_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(
        self,
        timeout: float,
        stderr_marker: str | None = None,
        settle: float = 0.5,
        min_fds: int = 1,
        stable_for: float = 1.0,
    ) -> float:
        """Block until attached; return the seconds it took. With a stderr marker, wait for that
        text; otherwise wait until the attach-fd count is >= min_fds and unchanged for stable_for."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last, since = -1, t0
        while time.monotonic() < deadline:
            if not self.alive():
                raise Unavailable(f"{self.name} exited with {self.proc.returncode}: {tail(self.stderr_path)}")
            now = time.monotonic()
            if stderr_marker is not None:
                if stderr_marker in self.stderr():
                    break
            else:
                try:
                    n = attach_fds(self.pid)
                except OSError:
                    n = -1
                if n != last:
                    last, since = n, now
                elif n >= min_fds and now - since >= stable_for:
                    break
            time.sleep(0.05)
        else:
            self.stop()
            raise Unavailable(f"{self.name} not attached after {timeout:.0f}s: {tail(self.stderr_path)}")
        time.sleep(settle)
        return time.monotonic() - t0

    def stop(self, timeout: float = 15.0) -> int:
        """Signal, wait, then kill; returns the exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in self.extra_stop:
            f()
        self.extra_stop.clear()
        return int(self.proc.returncode or 0)


def start_tool(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    stdout: Path | None,
    stop_signal: int = signal.SIGINT,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Tool:
    """Start argv with stdout to the given file (None = /dev/null) and stderr to a log file."""
    stderr_path = workdir / f"{name}.{time.monotonic_ns()}.stderr"
    out = open(stdout, "wb") if stdout is not None else open(os.devnull, "wb")  # noqa: SIM115
    err = open(stderr_path, "wb")  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True
        )
    except OSError as e:
        raise Unavailable(f"{name}: cannot start {argv[0]}: {e}") from e
    finally:
        out.close()
        err.close()
    return Tool(name, proc, stderr_path, stop_signal, stdout_path=stdout)
