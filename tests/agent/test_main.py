"""tcpscope-agent as a subprocess: JSON lines during real traffic, --dump-bpf, and the one-line
errors with exit code 2 when it cannot run."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.kernel.connid import NO_KEY_NOTICE, ConnectionIds
from tests.support import traffic
from tests.support.kernel import require_root
from tests.support.readable import readable_view, through_view

REPO = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "agent"]


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*AGENT, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_attached(proc: subprocess.Popen[str], timeout: float = 20.0, read: list[str] | None = None) -> str:
    """The agent's 'attached:' line. Reads the raw fd: select() and a buffered readline() together
    miss a line that arrived in the same chunk as the one before it. `read` gets all stderr read here
    (communicate() returns only the rest)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(0.2):
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"agent exited before attaching: rc={proc.wait(5)}, stderr: {seen!r}")
            seen += chunk
            for line in seen.decode(errors="replace").splitlines(keepends=True):
                if "attached:" in line and line.endswith("\n"):
                    if read is not None:
                        read.append(seen.decode(errors="replace"))
                    return line
    raise AssertionError(f"agent did not attach in time; stderr: {seen!r}")


@pytest.mark.root
def test_json_lines_during_traffic_then_exit_after_duration() -> None:
    require_root()
    port = traffic.free_port()
    proc = _start(
        "--stdout",
        "json",
        "--duration",
        "3",
        "--port",
        str(port),
        "--no-kubernetes",
        "--events",
        "lifecycle,state,retransmit,synack,reset,error",
    )
    started = time.monotonic()
    early: list[str] = []
    attached = _wait_attached(proc, read=early)
    assert attached.startswith("tcpscope-agent: attached: sock:inet_sock_set_state")
    ex = traffic.tcp_exchange(port=port, client_bytes=300_000, server_bytes=777)
    out, err = proc.communicate(timeout=20)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, err
    assert 3.0 <= elapsed < 12
    events = [json.loads(line) for line in out.splitlines()]
    assert events and all(e["node"] and "time" in e and "socket_id" in e for e in events)
    lcs = sorted((e for e in events if "lifecycle" in e), key=lambda e: e["lifecycle"]["role"])
    assert [(e["lifecycle"]["role"], e["lifecycle"]["tx_bytes"], e["lifecycle"]["rx_bytes"]) for e in lcs] == [
        ("ACTIVE", "300000", "777"),
        ("PASSIVE", "777", "300000"),
    ]
    assert lcs[0]["process"]["pid"] == ex.client_pid and lcs[1]["process"]["pid"] == ex.server_pid
    assert (lcs[0]["local"]["ip"], lcs[0]["local"]["port"]) == ("127.0.0.1", ex.client_port)
    assert {e["state_change"]["new_state"] for e in events if "state_change" in e} >= {
        "SYN_SENT",
        "ESTABLISHED",
        "CLOSE",
    }
    summary = err.strip().splitlines()[-1]
    assert summary.startswith(f"tcpscope-agent: {len(events)} events out, lost 0 (kernel.")
    # no key file: ids from a random key of this process, said once
    err = early[0] + err
    assert err.count(NO_KEY_NOTICE) == 1 and f"tcpscope-agent: INFO {NO_KEY_NOTICE}\n" in err
    assert all(e["connection_id"] for e in lcs)


@pytest.mark.root
def test_json_carries_the_connection_id_and_never_the_sequence_numbers(tmp_path: Path) -> None:
    require_root()
    port = traffic.free_port()
    key = tmp_path / "connection-key"
    key.write_text("a-cluster-wide-key-0123456789\n")
    proc = _start(
        *("--stdout", "json", "--duration", "3", "--port", str(port), "--no-kubernetes"),
        *("--events", "lifecycle,state,reset,error", "--connection-key-file", str(key)),
    )
    early: list[str] = []
    _wait_attached(proc, read=early)
    with traffic.syn_capture((port,)) as syns:
        ex = traffic.tcp_exchange(port=port, client_bytes=3000, server_bytes=70, closer="client-rst")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    err = early[0] + err
    assert "tcpscope-agent: attached: " in err and NO_KEY_NOTICE not in err
    isn_c, isn_s = traffic.handshake_isns(syns, ex.client_port)
    want = str(ConnectionIds(b"a-cluster-wide-key-0123456789").of(isn_c, isn_s))
    events = [json.loads(line) for line in out.splitlines()]
    lcs = [e for e in events if "lifecycle" in e]
    assert [e["connection_id"] for e in lcs] == [want, want]
    # every event of the connection's two sockets has it (fixed64: a string); the listener's none
    listener = {e["socket_id"] for e in events if e.get("state_change", {}).get("new_state") == "LISTEN"}
    assert len(listener) == 1
    assert {e.get("connection_id") for e in events if e["socket_id"] not in listener} == {want}
    assert {e.get("connection_id") for e in events if e["socket_id"] in listener} == {None}
    assert {(e["reset"]["direction"], e["connection_id"]) for e in events if "reset" in e} == {
        ("SENT", want),
        ("RECEIVED", want),
    }
    # what it would take to inject into the connection is nowhere in the output
    for isn in (isn_c, isn_s, (isn_c + 1) % 2**32, (isn_s + 1) % 2**32):
        for text in (str(isn), f"{isn:08x}", f"{isn:08X}"):
            assert text not in out and text not in err, text


@pytest.mark.root
def test_sigterm_exits_cleanly_with_loss_summary() -> None:
    require_root()
    proc = _start("--stdout", "table", "--port", str(traffic.free_port()))
    _wait_attached(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out == ""
    assert err.strip().splitlines()[-1].startswith("tcpscope-agent: 0 events out, lost 0 (")


@pytest.mark.root
def test_dump_bpf() -> None:
    require_root()
    res = subprocess.run([*AGENT, "--dump-bpf", "--port", "443"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"kernel: {os.uname().release}" in res.stdout
    assert "tracepoint sock:inet_sock_set_state -> tp_inet_sock_set_state" in res.stdout
    assert "filters: ports=443" in res.stdout and "OFF_BYTES_ACKED" in res.stdout
    assert "struct" not in res.stderr


def _run_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """The agent as uid 65534 when the tests run as root (else as the current user), through a
    readable view of the checkout (tests/support/readable.py): a checkout under /root (0700) is
    out of that uid's reach, and that must not decide the outcome."""
    if os.geteuid() != 0:
        return _run(list(AGENT), *args)
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed for this test"
    with readable_view() as view:
        return _run(
            through_view(
                view, [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", *AGENT]
            ),
            *args,
        )


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    """The run failed the way the CLI promises: exit 2, one line on stderr, nothing on stdout."""
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tcpscope-agent: error: ")
    assert res.stdout == ""
    return lines[0]


def _run(cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_not_root_is_one_clear_error() -> None:
    line = _one_error_line(_run_as_nobody("--stdout", "json", "--duration", "1"))
    assert line.startswith("tcpscope-agent: error: not root (uid 65534)")
    # what is missing, not how to get it on a workstation: in a container there is no sudo
    assert "CAP_BPF" in line and "CAP_PERFMON" in line and "missing: CAP_BPF, CAP_PERFMON" in line
    assert "sudo" not in line


@pytest.fixture
def readable_tracefs() -> Iterator[Path]:
    """A copy of the live tcp/sock format files in a directory laid out like tracefs, readable by all."""
    require_root()
    top = Path(tempfile.mkdtemp(prefix="tcpscope-tracefs-"))
    try:
        os.chmod(top, 0o755)
        for category in ("sock", "tcp"):
            for fmt in Path("/sys/kernel/tracing/events", category).glob("*/format"):
                dest = top / "events" / category / fmt.parent.name
                dest.mkdir(parents=True)
                (dest / "format").write_text(fmt.read_text())
        for d in top.rglob("*"):
            os.chmod(d, 0o755 if d.is_dir() else 0o644)
        yield top
    finally:
        shutil.rmtree(top)


@pytest.mark.root
def test_dump_bpf_without_root_reads_a_readable_tracefs(readable_tracefs: Path) -> None:
    res = _run_as_nobody("--dump-bpf", "--tracefs", str(readable_tracefs))
    assert res.returncode == 0, res.stderr
    assert "tracepoint sock:inet_sock_set_state -> tp_inet_sock_set_state" in res.stdout
    assert "OFF_BYTES_ACKED" in res.stdout


@pytest.mark.root
def test_dump_bpf_without_root_and_unreadable_tracefs_is_one_clear_error() -> None:
    require_root()
    assert os.stat("/sys/kernel/tracing").st_mode & 0o005 == 0, "tracefs is readable by all on this host"
    line = _one_error_line(_run_as_nobody("--dump-bpf"))
    assert line == (
        "tcpscope-agent: error: cannot read tracefs at /sys/kernel/tracing (permission denied for "
        "uid 65534): reading tracepoint formats needs root, or a tracefs mount this user may read "
        "(give it with --tracefs)"
    )


@pytest.mark.root
@pytest.mark.parametrize("dump", [True, False], ids=["dump-bpf", "run"])
def test_missing_tracefs_is_one_clear_error(dump: bool, tmp_path: Path) -> None:
    require_root()
    args = ["--dump-bpf"] if dump else ["--stdout", "json", "--duration", "1", "--no-kubernetes"]
    line = _one_error_line(_run(list(AGENT), *args, "--tracefs", str(tmp_path / "nothing")))
    assert line.startswith(f"tcpscope-agent: error: tracefs not found: {tmp_path}/nothing/events does not exist.")
    assert "CONFIG_TRACING" in line


@pytest.mark.root
@pytest.mark.parametrize("dump", [True, False], ids=["dump-bpf", "run"])
def test_missing_btf_is_one_clear_error(dump: bool, tmp_path: Path) -> None:
    require_root()
    args = ["--dump-bpf"] if dump else ["--stdout", "json", "--duration", "1", "--no-kubernetes"]
    line = _one_error_line(_run(list(AGENT), *args, "--btf", str(tmp_path / "vmlinux")))
    assert line.startswith(f"tcpscope-agent: error: kernel BTF unavailable ({tmp_path}/vmlinux not found: ")
    assert "CONFIG_DEBUG_INFO_BTF" in line


@pytest.mark.root
def test_a_key_too_short_to_be_secret_is_one_clear_error(tmp_path: Path) -> None:
    require_root()
    key = tmp_path / "key"
    key.write_text("hunter2\n")
    args = ["--stdout", "json", "--duration", "1", "--no-kubernetes", "--connection-key-file", str(key)]
    line = _one_error_line(_run(list(AGENT), *args))
    assert line == (
        f"tcpscope-agent: error: --connection-key-file {key}: 7 bytes, a key needs at least 16 "
        "(e.g. `head -c 32 /dev/urandom | base64 > FILE`; the chart generates one)"
    )


def test_loss_summary_keeps_possible_losses_apart() -> None:
    from agent.__main__ import loss_summary

    assert loss_summary({"kernel.ringbuf_full": 0}, 12) == (
        "tcpscope-agent: 12 events out, lost 0 (kernel.ringbuf_full=0)"
    )
    line = loss_summary({"kernel.ringbuf_full": 2, "kernel.recursion_misses": 5}, 9)
    assert line == (
        "tcpscope-agent: 9 events out, lost 2 (kernel.recursion_misses=5, kernel.ringbuf_full=2); "
        "possibly lost 5 more (runs the kernel skipped)"
    )
