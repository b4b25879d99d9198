"""Run the real-kernel test subset on each kernel of the matrix and record what happened.

The host's kernel runs the subset natively; each Debian kernel runs it in a guest (`vm`). A guest
that does not reach user space is booted again, up to `boot_attempts` times, and is then a failure
(never a skip). A failing test is never retried. The result file (JSON) holds, per kernel, the
outcome of every test, the agent's plan summary (ring or perf buffer, skipped tracepoints, reset
reasons) and the times; `table` turns it into docs/kernels.md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scripts.kernelvm import vm
from scripts.kernelvm.fetch import KernelSpec, KernelTree

# The chosen subset: every tracepoint the agent attaches, exact bytes both ways over v4/v6, resets
# sent and received, a refused connect's errno, per-side pid and cgroup, the pod attribution of both
# ends through the cgroup, the port/netns/cgroup filters, the map-full loss counter, the perf-buffer
# path, tcp_probe sampling, flows (in-kernel aggregation), the connection id across NAT, and open
# connections' reports.
SUBSET: tuple[str, ...] = (
    "tests/agent/kernel/test_lifecycle.py",
    "tests/agent/kernel/test_resets.py",
    # an ICMP-refused connect's errno from the error queue: 6.18 only so far (failed on 6.1)
    "--deselect",
    "tests/agent/kernel/test_resets.py::test_a_connect_refused_by_an_icmp_port_unreachable_is_refused",
    "tests/agent/kernel/test_retransmit.py",
    "tests/agent/kernel/test_filters.py",
    "tests/agent/enrich/test_pod_to_pod.py",
    # the connection id: both sockets' ISNs from bytes_acked/bytes_received, on loopback, through an
    # nftables DNAT (and SNAT) router, with TCP Fast Open and SYN cookies, against the wire
    "tests/agent/kernel/test_connid.py",
    # what three agents sharing a key compute from those ISNs is user space (the host suite runs
    # it); at 55-70 s a guest, the matrix's slowest test
    "--deselect",
    "tests/agent/kernel/test_connid.py::test_agents_sharing_the_key_agree_and_another_key_gives_another_id",
    # in-kernel aggregation: the two swapping maps (array of maps), batch reads, the full-map
    # fallback and the shutdown flush (cgroup-scoped agents over IPv6, 45 s a guest, run on the host
    # only: the cgroup filter itself is test_filters')
    "tests/agent/kernel/test_flows.py::test_a_full_flow_map_falls_back_to_lifecycles_and_counts_them",
    "tests/agent/kernel/test_flows.py::test_the_shutdown_flush_reports_what_the_interval_had_not",
    # open connections: every interval's report exact against the lifecycle (the interim pass, a
    # test-run raw tracepoint with BPF atomic exchange), or before 5.12 the explicit fallback
    "tests/agent/kernel/test_openconn.py::test_a_connection_open_for_five_intervals_is_reported_in_each_and_sums_to_its_lifecycle",
    # anomaly budgets: a SYN flood's SYN-ACK retransmits against the server namespace's own counter;
    # exactly the budget as events, the rest aggregated; a full ring buffer aggregates; keys past the
    # map's room fold into coarse keys (a refused connect's anomalies per kernel: no socket error
    # event before inet_sk_error_report, no reset sent from no socket before 6.10)
    "tests/agent/kernel/test_storms.py::test_a_syn_flood_s_synack_retransmits_match_the_server_namespace_s_own_counter",
    "tests/agent/kernel/test_storms.py::test_the_per_key_budget_boundary_exactly_the_budget_as_events_the_rest_aggregated",
    "tests/agent/kernel/test_storms.py::test_a_full_ring_buffer_aggregates_the_anomalies_it_has_no_room_for",
    "tests/agent/kernel/test_storms.py::test_keys_past_the_maps_room_fold_into_coarse_keys_and_stay_exact",
)


@dataclass
class TestOutcome:
    test: str  # file.py::name[param]
    outcome: str  # passed | failed | error | skipped
    seconds: float
    message: str = ""


@dataclass
class KernelResult:
    name: str  # "5.10", or "host"
    release: str  # uname -r
    where: str  # "native" | "qemu-tcg"
    status: str  # passed | failed | boot-failed
    boot_attempts: int = 0
    boot_seconds: list[float] = field(default_factory=list)  # per booted attempt
    wall_seconds: float = 0.0
    tests_seconds: float = 0.0
    tests: list[TestOutcome] = field(default_factory=list)
    plan: dict[str, object] = field(default_factory=dict)
    detail: str = ""  # why it failed (console tail, pytest summary)


def _guest_script(results: str, pytest_args: list[str]) -> str:
    """Bash run on the kernel under test: the plan summary, then the subset with a JUnit report."""
    tests = " ".join(SUBSET)
    extra = " ".join(pytest_args)
    return (
        f".venv/bin/python -m agent --dump-bpf > {results}/plan.txt 2>&1\n"
        f"t0=$(date +%s.%N)\n"
        f".venv/bin/python -m pytest -p no:cacheprovider -q -rfEs --junitxml={results}/junit.xml "
        f"{extra} {tests}\n"
        f"rc=$?\n"
        f'echo "$t0 $(date +%s.%N)" > {results}/pytest-times\n'
        f"exit $rc\n"
    )


def parse_junit(xml: str) -> list[TestOutcome]:
    """Every test case of a pytest JUnit report, with its outcome."""
    if not xml.strip():
        return []
    out = []
    for case in ET.fromstring(xml).iter("testcase"):
        module = (case.get("classname") or "").split(".")
        # classname is the dotted module path (plus a class name for methods): keep the file
        parts = [p for p in module if p]
        while parts and not parts[-1].startswith("test_"):
            parts.pop()
        test = "/".join(parts) + ".py::" + (case.get("name") or "")
        outcome, msg = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                msg = (el.get("message") or "")[:400]
                break
        out.append(TestOutcome(test, outcome, float(case.get("time") or 0), msg))
    return out


def parse_plan(text: str) -> dict[str, object]:
    """The facts the support table needs from `--dump-bpf`'s output."""
    skipped: list[str] = []
    attached: list[str] = []
    plan: dict[str, object] = {
        "output": None,
        "skipped": skipped,
        "reset_reasons": 0,
        "attached": attached,
        "error": None,
        "open": None,
    }
    section = ""
    for line in text.splitlines():
        if line.startswith("output:"):
            plan["output"] = "ring buffer" if "ring buffer" in line else "perf buffer"
        elif line.startswith("reset reasons:"):
            plan["reset_reasons"] = int(line.split()[2])
        elif line.startswith("open connections:"):
            plan["open"] = line.removeprefix("open connections:").strip()
        elif line.startswith("tcpscope-agent: error:"):
            plan["error"] = line.removeprefix("tcpscope-agent: error:").strip()
        elif line.endswith(":") and not line.startswith(" "):
            section = line[:-1]
        elif line.startswith("  ") and section == "skipped":
            skipped.append(line.strip())
        elif line.startswith("  ") and section == "attach":
            attached.append(line.split()[1])
    return plan


def _status(tests: list[TestOutcome], rc: int | None) -> str:
    if rc == 0 and tests and all(t.outcome in ("passed", "skipped") for t in tests):
        return "passed"
    return "failed"


def save_log(logdir: Path | None, name: str, text: str) -> str:
    """Keep a run's whole output (the result file holds only its tail); returns a line naming it."""
    if logdir is None:
        return ""
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / name
    path.write_text(text)
    return f"\n(whole output: {path})"


def run_native(repo: Path, pytest_args: list[str], logdir: Path | None = None) -> KernelResult:
    """The subset on the host's own kernel."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tcpscope-native-") as tmp:
        env = dict(os.environ)
        plan = subprocess.run(
            [".venv/bin/python", "-m", "agent", "--dump-bpf"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        (Path(tmp) / "plan.txt").write_text(plan.stdout + plan.stderr)
        t0 = time.monotonic()
        p = subprocess.run(
            [
                ".venv/bin/python",
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                "-rfEs",
                f"--junitxml={tmp}/junit.xml",
                *pytest_args,
                *SUBSET,
            ],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        )
        tests_s = time.monotonic() - t0
        junit = Path(tmp) / "junit.xml"
        tests = parse_junit(junit.read_text() if junit.is_file() else "")
        return KernelResult(
            name="host",
            release=platform.release(),
            where="native",
            status=_status(tests, p.returncode),
            wall_seconds=time.monotonic() - start,
            tests_seconds=tests_s,
            tests=tests,
            plan=parse_plan(plan.stdout + plan.stderr),
            detail=""
            if p.returncode == 0
            else _tail(p.stdout + p.stderr) + save_log(logdir, f"host-{platform.release()}.log", p.stdout + p.stderr),
        )


def run_guest(
    tree: KernelTree,
    repo: Path,
    cfg: vm.VmConfig,
    boot_attempts: int,
    pytest_args: list[str],
    log: list[str] | None = None,
    logdir: Path | None = None,
) -> KernelResult:
    """The subset in a guest running `tree`; boots again only when the guest never reached user space."""
    spec: KernelSpec = tree.spec
    res = KernelResult(name=spec.name, release=tree.release, where="qemu-tcg", status="boot-failed")
    start = time.monotonic()
    for attempt in range(1, boot_attempts + 1):
        res.boot_attempts = attempt
        # the guest leaves its results in the run share, mounted at /run/kvm
        g = vm.run(tree, _guest_script("/run/kvm", pytest_args), workdir=repo, config=cfg)
        saved = save_log(
            logdir, f"{tree.release}-try{attempt}.log", g.output + "\n---- console tail ----\n" + g.console_tail
        )
        if not g.booted:
            res.detail = (
                f"boot attempt {attempt} of {boot_attempts}: the guest did not reach user space\n"
                + g.console_tail
                + saved
            )
            if log is not None:
                log.append(f"{spec.name}: boot attempt {attempt} failed ({g.wall_s:.0f} s)")
            continue
        assert g.boot_s is not None
        res.boot_seconds.append(round(g.boot_s, 1))
        res.tests = parse_junit(g.text("junit.xml"))
        res.plan = parse_plan(g.text("plan.txt"))
        times = g.text("pytest-times").split()
        res.tests_seconds = round(float(times[1]) - float(times[0]), 1) if len(times) == 2 else 0.0
        res.status = _status(res.tests, g.rc)
        if res.status != "passed":
            res.detail = (
                _tail(g.output)
                if g.rc is not None
                else "the guest booted but reported no exit status (time-out or crash)\n"
                + g.console_tail
                + "\n"
                + _tail(g.output)
            ) + saved
        else:
            res.detail = ""
        break
    res.wall_seconds = round(time.monotonic() - start, 1)
    return res


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def write_results(path: Path, results: list[KernelResult], wall_s: float) -> None:
    doc = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_seconds": round(wall_s, 1),
        "subset": list(SUBSET),
        "kernels": [asdict(r) for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def load_results(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data
