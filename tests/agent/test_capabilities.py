"""Capability proof: the chart's capability list is exactly what the agent needs on this kernel.

Each run happens the way the chart runs the agent: uid 0 with a bounding set of only the listed
capabilities (so permitted = effective = that list, as a container runtime sets it), no_new_privs
(allowPrivilegeEscalation: false), and /lib/modules replaced by a private tmpfs into which the
chart's own init script (helm/tcpscope/files/link-kernel-headers.sh) links the header tree: the
same layout as the pod's emptyDir. The host's /lib/modules is never touched.

1. With exactly the chart's list the real `tcpscope-agent` attaches and reports the connections
   this test makes, with their exact ports, states and pid.
2. Without each listed capability the agent exits 2 with its one-line error; and its kernel loader,
   called directly (past the agent's own capability pre-check), is refused by the kernel: without
   CAP_BPF map creation fails, without CAP_PERFMON loading the tracing program fails.
3. As a non-root uid (ambient capabilities), BPF+PERFMON are not enough: tracefs is mode 0700, so
   DAC_READ_SEARCH would be needed too. That is why the chart runs the agent as uid 0.

Needs root, unshare and setpriv; fails (never skips) without them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.helm import CHART_DIR, find, render
from tests.support.readable import in_view, readable_view

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / ".venv" / "bin" / "tcpscope-agent"
PYTHON = ROOT / ".venv" / "bin" / "python"
HEADERS_SCRIPT = CHART_DIR / "files" / "link-kernel-headers.sh"
CAP_NUMBERS = {"DAC_READ_SEARCH": 2, "NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}

# The wrapper: private mount namespace, tmpfs /lib/modules filled by the chart's init script, then
# the command with the given capability set. $1 = setpriv capability list (e.g. "+bpf,+perfmon").
WRAPPER = r"""
set -e
caps=$1; shift
mount -t tmpfs -o size=1m tcpscope-caps /lib/modules
HOST_ROOT=/ sh "$HEADERS_SCRIPT" >&2
if [ -n "$AS_UID" ]; then
  # another uid may not reach a checkout under /root: run it through a readable view of the checkout
  mount --bind "$REPO" "$VIEW"
  cd "$VIEW"
  exec setpriv --reuid "$AS_UID" --regid "$AS_UID" --clear-groups --inh-caps "-all$caps" \
       --ambient-caps "-all$caps" --bounding-set "-all$caps" --no-new-privs -- "$@"
fi
exec setpriv --bounding-set "-all$caps" --inh-caps -all --ambient-caps -all --no-new-privs -- "$@"
"""

# The agent's loader without the CLI's pre-check: does the kernel itself accept the programs?
LOADER = """
import sys
from agent.config import AgentConfig
from agent.kernel.probe import KernelSupportError
from agent.wiring import build_agent
cfg = AgentConfig.from_args(["--no-kubernetes", "--stdout", "json", "--port", sys.argv[1]])
try:
    build_agent(cfg, sys.stdout).source.close()
except KernelSupportError as e:
    print("LOADER-FAILED:", e, file=sys.stderr)
    sys.exit(2)
print("LOADER-ATTACHED", file=sys.stderr)
"""


def chart_capabilities() -> list[str]:
    """The agent container's added capabilities, as the chart renders them by default."""
    pod = find(render(), "DaemonSet")["spec"]["template"]["spec"]
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    assert agent["securityContext"]["capabilities"]["drop"] == ["ALL"]
    caps: list[str] = agent["securityContext"]["capabilities"]["add"]
    return caps


def setpriv_list(caps: list[str]) -> str:
    return "".join(f",+{c.lower()}" for c in caps)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Check the prerequisites (failing loudly) and write the wrapper script."""
    if os.geteuid() != 0:
        pytest.fail("the capability proof needs root (it loads BPF programs and builds a mount namespace)")
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} (util-linux) is missing")
    if not Path("/sys/kernel/tracing/events/sock/inet_sock_set_state").is_dir():
        pytest.fail("tracefs is not mounted at /sys/kernel/tracing (run scripts/setup.sh)")
    if not AGENT.exists():
        pytest.fail(f"{AGENT} is missing (run scripts/setup.sh)")
    d = tmp_path_factory.mktemp("caps")
    os.chmod(d, 0o755)
    wrapper = d / "wrapper.sh"
    wrapper.write_text(WRAPPER)
    os.chmod(wrapper, 0o755)
    return wrapper


def run_wrapped(
    wrapper: Path, caps: list[str], argv: list[str], *, as_uid: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    if as_uid is None:
        env = dict(os.environ, HEADERS_SCRIPT=str(HEADERS_SCRIPT), AS_UID="")
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", str(wrapper), setpriv_list(caps), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
    with readable_view() as view:  # tests/support/readable.py: the checkout may sit under a 0700 /root
        env = dict(os.environ, HEADERS_SCRIPT=str(HEADERS_SCRIPT), AS_UID=str(as_uid), REPO=str(ROOT), VIEW=str(view))
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "/bin/sh",
                str(wrapper),
                setpriv_list(caps),
                *(in_view(a, view) if a.startswith(str(ROOT) + os.sep) else a for a in argv),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )


@pytest.fixture()
def listener() -> Iterator[socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    yield srv
    srv.close()


def connect_and_close(srv: socket.socket) -> int:
    """One real connection to srv (a byte each way, then close); returns the client's port."""
    port = srv.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        conn, _ = srv.accept()
        with conn:
            c.sendall(b"q")
            assert conn.recv(1) == b"q"
            conn.sendall(b"a")
            assert c.recv(1) == b"a"
        return int(c.getsockname()[1])


def test_effective_capabilities_are_exactly_the_chart_list(harness: Path) -> None:
    caps = chart_capabilities()
    out = run_wrapped(harness, caps, ["grep", "^Cap", "/proc/self/status"])
    assert out.returncode == 0, out.stderr
    status = dict(line.split(":\t") for line in out.stdout.splitlines())
    mask = sum(1 << CAP_NUMBERS[c] for c in caps)
    assert int(status["CapEff"], 16) == mask
    assert int(status["CapPrm"], 16) == mask
    assert int(status["CapBnd"], 16) == mask
    assert int(status["CapAmb"], 16) == 0


def test_agent_attaches_and_reports_real_connections_with_only_the_chart_list(
    harness: Path, listener: socket.socket, tmp_path: Path
) -> None:
    caps = chart_capabilities()
    assert caps == ["BPF", "PERFMON"]
    port = listener.getsockname()[1]
    stdout_path = tmp_path / "events.jsonl"
    env = dict(os.environ, HEADERS_SCRIPT=str(HEADERS_SCRIPT), AS_UID="")
    with stdout_path.open("w") as stdout:
        proc = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "/bin/sh",
                str(harness),
                setpriv_list(caps),
                str(AGENT),
                "--stdout",
                "json",
                "--duration",
                "4",
                "--no-kubernetes",
                "--port",
                str(port),
                "--events",
                "lifecycle,state",
            ],
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert proc.stderr is not None
        stderr_lines: list[str] = []
        try:
            while True:
                line = proc.stderr.readline()
                if not line:
                    pytest.fail(f"agent exited before attaching (rc={proc.wait()}): {''.join(stderr_lines)}")
                stderr_lines.append(line)
                if line.startswith("tcpscope-agent: attached:"):
                    break
            client_ports = [connect_and_close(listener) for _ in range(3)]
            rest = proc.stderr.read()
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    stderr = "".join(stderr_lines) + rest
    assert rc == 0, stderr
    assert "sock:inet_sock_set_state" in stderr
    events: list[dict[str, Any]] = [json.loads(line) for line in stdout_path.read_text().splitlines() if line]
    for cport in client_ports:
        client = [
            e for e in events if e.get("local", {}).get("port") == cport and e.get("remote", {}).get("port") == port
        ]
        server = [
            e for e in events if e.get("local", {}).get("port") == port and e.get("remote", {}).get("port") == cport
        ]
        transitions = {
            (e["state_change"]["old_state"], e["state_change"]["new_state"]) for e in client if "state_change" in e
        }
        assert ("SYN_SENT", "ESTABLISHED") in transitions, (cport, client)
        established = next(e for e in client if e.get("state_change", {}).get("new_state") == "ESTABLISHED")
        assert established["process"]["pid"] == os.getpid()
        assert established["local"]["ip"] == established["remote"]["ip"] == "127.0.0.1"
        assert any(
            e.get("state_change", {}).get("old_state") == "LISTEN" and e["state_change"]["new_state"] == "SYN_RECV"
            for e in server
        ), (cport, server)
    assert "lost 0" in stderr  # the loss summary line: nothing dropped


@pytest.mark.parametrize("dropped", ["BPF", "PERFMON"])
def test_agent_fails_clearly_without_each_capability(harness: Path, listener: socket.socket, dropped: str) -> None:
    caps = [c for c in chart_capabilities() if c != dropped]
    port = str(listener.getsockname()[1])
    cli = run_wrapped(
        harness, caps, [str(AGENT), "--stdout", "json", "--duration", "4", "--no-kubernetes", "--port", port]
    )
    assert cli.returncode == 2, cli.stderr
    assert cli.stdout == ""
    error = [ln for ln in cli.stderr.splitlines() if ln.startswith("tcpscope-agent: error:")]
    assert len(error) == 1 and "CAP_BPF and CAP_PERFMON" in error[0], cli.stderr
    # and the kernel itself refuses, not just the agent's pre-check
    loader = run_wrapped(harness, caps, [str(PYTHON), "-c", LOADER, port])
    assert loader.returncode == 2, loader.stderr
    assert "LOADER-ATTACHED" not in loader.stderr
    kernel_says = {
        "BPF": "could not open bpf map",  # BPF_MAP_CREATE needs CAP_BPF
        "PERFMON": "Failed to load program",  # BPF_PROG_TYPE_TRACEPOINT load needs CAP_PERFMON
    }[dropped]
    assert kernel_says in loader.stderr and "Operation not permitted" in loader.stderr, loader.stderr


def test_loader_attaches_with_the_chart_list(harness: Path, listener: socket.socket) -> None:
    """The control for the test above: the same loader call succeeds with the full list."""
    loader = run_wrapped(harness, chart_capabilities(), [str(PYTHON), "-c", LOADER, str(listener.getsockname()[1])])
    assert loader.returncode == 0, loader.stderr
    assert "LOADER-ATTACHED" in loader.stderr


def test_non_root_needs_dac_read_search_which_is_why_the_chart_uses_uid_0(
    harness: Path, listener: socket.socket
) -> None:
    port = str(listener.getsockname()[1])
    caps = chart_capabilities()
    assert os.stat("/sys/kernel/tracing").st_mode & 0o777 == 0o700  # root-only tracefs
    as_nobody = run_wrapped(harness, caps, [str(PYTHON), "-c", LOADER, port], as_uid=65534)
    assert as_nobody.returncode != 0, as_nobody.stderr
    assert "LOADER-ATTACHED" not in as_nobody.stderr
    assert "cannot read tracefs at /sys/kernel/tracing (permission denied for uid 65534)" in as_nobody.stderr, (
        as_nobody.stderr
    )
    with_dac = run_wrapped(harness, [*caps, "DAC_READ_SEARCH"], [str(PYTHON), "-c", LOADER, port], as_uid=65534)
    assert with_dac.returncode == 0, with_dac.stderr
    assert "LOADER-ATTACHED" in with_dac.stderr
