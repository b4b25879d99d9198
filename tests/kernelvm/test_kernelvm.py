"""The kernel-matrix runner's own logic, without booting anything: the retry policy (a boot failure
is retried a bounded number of times, a failing test never), JUnit and plan parsing, the module
order of the initramfs, the private apt configuration and the generated table."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.kernelvm import fetch, matrix, table, vm

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.agent.kernel.test_lifecycle"
  name="test_exact_bytes_roles_and_attribution[ipv4-client]" time="1.5"/>
<testcase classname="tests.agent.kernel.test_resets" name="test_refused_connect" time="0.7">
  <failure message="assert 0 == 1">trace</failure></testcase>
<testcase classname="tests.agent.kernel.test_filters" name="test_port_filter" time="0.1">
  <skipped message="why"/></testcase>
</testsuite></testsuites>"""

PLAN = """kernel: 5.10.0-32-cloud-amd64
output: ring buffer (2048 pages)
events: lifecycle,state
attach:
  tracepoint sock:inet_sock_set_state -> tp_inet_sock_set_state
  tracepoint tcp:tcp_destroy_sock -> tp_tcp_destroy_sock
skipped:
  sock:inet_sk_error_report: not in this kernel (errno comes from sk_err at CLOSE)
btf offsets:
  OFF_SK_CGRP_DATA = 664
reset reasons: 0 from BTF enum sk_rst_reason
"""


def test_junit_outcomes() -> None:
    got = [(t.test, t.outcome) for t in matrix.parse_junit(JUNIT)]
    assert got == [
        ("tests/agent/kernel/test_lifecycle.py::test_exact_bytes_roles_and_attribution[ipv4-client]", "passed"),
        ("tests/agent/kernel/test_resets.py::test_refused_connect", "failed"),
        ("tests/agent/kernel/test_filters.py::test_port_filter", "skipped"),
    ]
    assert matrix.parse_junit("") == []


def test_plan_summary() -> None:
    p = matrix.parse_plan(PLAN)
    assert p["output"] == "ring buffer" and p["reset_reasons"] == 0 and p["error"] is None
    assert p["attached"] == ["sock:inet_sock_set_state", "tcp:tcp_destroy_sock"]
    assert p["skipped"] == ["sock:inet_sk_error_report: not in this kernel (errno comes from sk_err at CLOSE)"]
    assert matrix.parse_plan("open connections: reported at close only: needs x\n")["open"] == (
        "reported at close only: needs x"
    )
    refused = matrix.parse_plan("tcpscope-agent: error: kernel BTF lacks x\n")
    assert refused["error"] == "kernel BTF lacks x"


def _guest(booted: bool, rc: int | None, junit: str = "") -> vm.GuestResult:
    return vm.GuestResult(
        booted=booted,
        rc=rc,
        output="out",
        console_tail="Kernel panic",
        wall_s=1.0,
        boot_s=0.5 if booted else None,
        files={"junit.xml": junit, "plan.txt": PLAN},
    )


def _tree(tmp_path: Path) -> fetch.KernelTree:
    return fetch.KernelTree(fetch.MATRIX[0], tmp_path, "5.10.0-32-cloud-amd64")


def _run_with(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, guests: list[vm.GuestResult], attempts: int = 3
) -> tuple[matrix.KernelResult, int]:
    calls = []

    def fake_run(*_a: object, **_k: object) -> vm.GuestResult:
        calls.append(1)
        return guests[len(calls) - 1]

    monkeypatch.setattr(vm, "run", fake_run)
    res = matrix.run_guest(_tree(tmp_path), tmp_path, vm.VmConfig(), attempts, [])
    return res, len(calls)


def test_a_guest_that_never_boots_is_a_failure_after_bounded_retries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    res, calls = _run_with(monkeypatch, tmp_path, [_guest(False, None)] * 5)
    assert calls == 3 and res.boot_attempts == 3
    assert res.status == "boot-failed"
    assert "did not reach user space" in res.detail and "Kernel panic" in res.detail


def test_a_failing_test_is_never_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    res, calls = _run_with(monkeypatch, tmp_path, [_guest(True, 1, JUNIT), _guest(True, 0)])
    assert calls == 1 and res.status == "failed"
    assert [t.outcome for t in res.tests] == ["passed", "failed", "skipped"]


def test_a_boot_failure_then_a_boot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    passing = JUNIT.split('<testcase classname="tests.agent.kernel.test_resets"')[0] + "</testsuite></testsuites>"
    res, calls = _run_with(monkeypatch, tmp_path, [_guest(False, None), _guest(True, 0, passing)])
    assert calls == 2 and res.boot_attempts == 2 and res.status == "passed"
    assert res.plan["skipped"] and res.boot_seconds == [0.5]


def test_booted_but_no_exit_status_is_a_failure_not_a_retry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    res, calls = _run_with(monkeypatch, tmp_path, [_guest(True, None, ""), _guest(True, 0)])
    assert calls == 1 and res.status == "failed"
    assert "reported no exit status" in res.detail


def test_no_tests_ran_is_a_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    res, _ = _run_with(monkeypatch, tmp_path, [_guest(True, 0, "")])
    assert res.status == "failed"


def test_initramfs_modules_in_dependency_order(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.modules.mkdir(parents=True)
    (tree.modules / "modules.dep").write_text(
        "kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko\n"
        "kernel/fs/fuse/fuse.ko:\nkernel/drivers/virtio/virtio_ring.ko:\nkernel/fs/overlayfs/overlay.ko.xz:\n"
    )
    (tree.modules / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    got = [p.relative_to(tree.modules).as_posix() for p in vm._module_order(tree, vm.BOOT_MODULES)]
    assert got == [
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/fs/fuse/fuse.ko",
        "kernel/fs/fuse/virtiofs.ko",
        "kernel/fs/overlayfs/overlay.ko.xz",
    ]
    with pytest.raises(vm.VmError, match="module nope neither"):
        vm._module_order(tree, ("nope",))


def test_private_apt_configuration_never_reads_the_systems_sources(tmp_path: Path) -> None:
    opts = fetch.Apt(tmp_path)._opts()
    settings = dict(o.split("=", 1) for o in opts if o != "-o")
    assert settings["Dir::Etc::sourceparts"] == "/dev/null"
    for key in ("Dir::Etc::sourcelist", "Dir::State::Lists", "Dir::Cache"):
        assert settings[key].startswith(str(tmp_path)), key
    assert {s.name for s in fetch.MATRIX} == {"5.10", "6.1", "6.12"}


def _kernel(status: str, outcomes: dict[str, str], skipped: list[str], reasons: int) -> dict[str, object]:
    return {
        "name": "x",
        "release": "5.10.0-32-cloud-amd64",
        "where": "qemu-tcg",
        "status": status,
        "boot_attempts": 1,
        "wall_seconds": 200.0,
        "tests": [{"test": t, "outcome": o, "seconds": 1.0, "message": ""} for t, o in outcomes.items()],
        "plan": {"output": "ring buffer", "skipped": skipped, "reset_reasons": reasons},
    }


def test_table_cells_come_from_test_outcomes_and_the_plan() -> None:
    lc = "tests/agent/kernel/test_lifecycle.py::test_exact_bytes_roles_and_attribution[ipv4-client]"
    rst = "tests/agent/kernel/test_resets.py::test_refused_connect"
    k = _kernel("failed", {lc: "passed", rst: "failed"}, ["sock:inet_sk_error_report: not in this kernel"], 0)
    features = dict(table.FEATURES)
    assert table.cell("lifecycle bytes", features["lifecycle bytes"], k) == "yes"
    assert table.cell("errors", features["errors"], k) == "**FAIL** (1 of 1 tests)"
    assert table.cell("ring or perf buffer", features["ring or perf buffer"], k) == "ring buffer"
    assert table.cell("retransmits", features["retransmits"], k) == "not run"
    ok = _kernel("passed", {rst: "passed"}, ["sock:inet_sk_error_report: not in this kernel"], 0)
    assert table.cell("errors", features["errors"], ok) == "yes, errno at close only (no inet_sk_error_report)"
    assert table.cell("resets with reason", features["resets with reason"], ok) == "yes, no reason (6.10+)"
    assert table.cell("errors", features["errors"], _kernel("boot-failed", {}, [], 0)) == "did not boot"
    oc = "tests/agent/kernel/test_openconn.py::test_a_connection_open_for_five_intervals_is_reported_in_each_and_sums"
    old = _kernel("passed", {oc + "_to_its_lifecycle[each]": "passed"}, [], 0)
    old["plan"] = {"open": "reported at close only: needs BPF atomic exchange, Linux 5.12+ (this is 5.10.0)"}
    assert table.cell("open connections", features["open connections"], old) == (
        "yes, at close only (no BPF atomic exchange before 5.12)"
    )


def test_generated_block_replaces_itself_and_keeps_the_rest() -> None:
    results = {"generated": "T", "wall_seconds": 1.0, "kernels": [_kernel("passed", {}, [], 3)]}
    block = table.render(results)
    doc = table.splice("# title\n\ntext\n", block)
    assert doc.startswith("# title\n\ntext\n\n" + table.BEGIN)
    again = table.splice(doc + "\n## after\n", block.replace("T,", "U,"))
    assert again.count(table.BEGIN) == 1 and "run of U" in again and again.endswith("## after\n")
