"""The plan: tracepoint records laid out from recorded format files of several kernels (4.16 ...
6.18), HAS_* switches, skipped tracepoints, filters; and the whole BPF program compiles with bcc
against each kernel's layouts."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.kernel.btf import Btf
from agent.kernel.loader import program_text
from agent.kernel.probe import (
    Filters,
    KernelSupportError,
    Plan,
    build_filters,
    build_plan,
    cgroup_filter,
    select_tracepoints,
)
from agent.kernel.tracefs import TracepointFormat, read_format
from tests.support import traffic
from tests.support.kernel import require_root

FORMATS = Path(__file__).parent / "formats"
VERSIONS = ["4.16", "5.4", "5.15", "6.1", "6.18"]
ALL = ("lifecycle", "state", "retransmit", "synack", "reset", "error", "probe", "open")


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.load()


def plan_for(version: str, btf: Btf, **cfg: Any) -> Plan:
    root = FORMATS / version

    def reader(cat: str, name: str) -> TracepointFormat | None:
        return read_format(cat, name, root)

    return build_plan(
        AgentConfig(**cfg),
        btf=btf,
        format_reader=reader,
        kernel=version,
        socket_key=0x1234,
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_generated_structs_match_format_offsets(version: str, btf: Btf, tmp_path: Path) -> None:
    """gcc checks every generated struct against the format's offsets (the _Static_asserts)."""
    plan = plan_for(version, btf, events=ALL)
    src = tmp_path / "structs.c"
    src.write_text("#include <linux/types.h>\n" + plan.preamble() + "int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-c", "-o", str(tmp_path / "s.o"), str(src)], check=True, capture_output=True)
    for fmt in plan.formats:
        assert f"struct tp_{fmt.name} {{" in plan.preamble()


def test_kernel_differences_become_switches(btf: Btf) -> None:
    new, old = plan_for("6.18", btf, events=ALL).preamble(), plan_for("4.16", btf, events=ALL).preamble()
    # 6.10+: tcp_send_reset carries sockaddr copies and a reason; 4.16 has neither (nor a state)
    assert "#define HAS_TCP_SEND_RESET_SOCKADDR 1" in new and "#define HAS_TCP_SEND_RESET_REASON 1" in new
    assert "HAS_TCP_SEND_RESET_SOCKADDR" not in old and "HAS_TCP_SEND_RESET_REASON" not in old
    assert "HAS_TCP_SEND_RESET_STATE" not in old
    # inet_sock_set_state.protocol: __u16 now, __u8 on 4.16
    assert "__u16 protocol;" in new.split("struct tp_inet_sock_set_state")[1].split("};")[0]
    assert "__u8 protocol;" in old.split("struct tp_inet_sock_set_state")[1].split("};")[0]
    # family: absent from tcp_retransmit_skb on 5.4, present on 5.15
    assert "HAS_TCP_RETRANSMIT_SKB_FAMILY" not in plan_for("5.4", btf).preamble()
    assert "#define HAS_TCP_RETRANSMIT_SKB_FAMILY 1" in plan_for("5.15", btf).preamble()


def test_missing_tracepoint_is_skipped_with_one_log_line(btf: Btf, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.kernel.probe"):
        plan = plan_for("4.16", btf)
    why = "sock:inet_sk_error_report: not in this kernel (errno comes from sk_err at CLOSE)"
    assert plan.skipped == (why,)
    assert [r.getMessage() for r in caplog.records] == [f"skipping {why}"]
    assert "sock:inet_sk_error_report" not in [tp for _k, tp, _f in plan.attach]
    assert ("tracepoint", "sock:inet_sock_set_state", "tp_inet_sock_set_state") in plan.attach


def test_event_kinds_select_optional_tracepoints(btf: Btf) -> None:
    default = [tp for _k, tp, _f in plan_for("6.18", btf).attach]
    assert "tcp:tcp_probe" not in default and "tcp:tcp_retransmit_synack" in default
    only_lc = plan_for("6.18", btf, events=("lifecycle",))
    attached = [tp for _k, tp, _f in only_lc.attach]
    # lifecycle tracking needs resets, errors and destroy even when those events are off
    assert attached == [
        "sock:inet_sock_set_state",
        "tcp:tcp_destroy_sock",
        "tcp:tcp_retransmit_skb",
        "tcp:tcp_send_reset",
        "tcp:tcp_receive_reset",
        "sock:inet_sk_error_report",
    ]
    assert "-DENABLE_LIFECYCLE=1" in only_lc.cflags() and "-DENABLE_STATE=1" not in only_lc.cflags()
    assert "tcp:tcp_probe" in [tp for _k, tp, _f in plan_for("6.18", btf, events=ALL).attach]


def test_no_set_state_tracepoint_is_an_error(btf: Btf) -> None:
    with pytest.raises(KernelSupportError, match="sock:inet_sock_set_state is missing"):
        build_plan(AgentConfig(), btf=btf, format_reader=lambda c, n: None)


def test_btf_offsets_and_filters_in_cflags(btf: Btf) -> None:
    plan = plan_for("6.18", btf, ports=(80, 443), max_sockets=1000)
    flags = plan.cflags()
    assert f"-DOFF_BYTES_ACKED={btf.member_offset('tcp_sock', 'bytes_acked')}" in flags
    assert f"-DOFF_SK_CGROUP={btf.member_offset('sock', 'sk_cgrp_data')}" in flags
    assert "-DSOCKET_KEY=0x1234ULL" in flags and "-DMAX_SOCKETS=1000" in flags
    assert "#define PORT_MATCH(p) ((p) == 80 || (p) == 443)" in plan.preamble()
    text = plan.describe()
    assert "filters: ports=80,443" in text
    assert "tracepoint tcp:tcp_send_reset -> tp_tcp_send_reset" in text
    assert f"OFF_BYTES_ACKED = {btf.member_offset('tcp_sock', 'bytes_acked')}" in text


def reader_of(version: str, **records: TracepointFormat | None):
    """Read the recorded formats of `version`, with some records replaced (None: not in the kernel)."""

    def reader(cat: str, name: str) -> TracepointFormat | None:
        return records[name] if name in records else read_format(cat, name, FORMATS / version)

    return reader


def without(fmt: TracepointFormat | None, *names: str) -> TracepointFormat:
    assert fmt is not None
    return dataclasses.replace(fmt, fields=tuple(f for f in fmt.fields if f.name not in names))


def test_select_attaches_a_record_without_the_socket_as_a_raw_tracepoint() -> None:
    """inet_sk_error_report's record lacks the socket pointer: its program reads the raw tracepoint's
    arguments, so it attaches as a raw tracepoint and lays out no record struct."""
    tps = select_tracepoints(ALL, reader_of("6.18"), has_raw=True)
    assert ("raw_tracepoint", "sock:inet_sk_error_report", "raw_inet_sk_error_report") in tps.attach
    assert "inet_sk_error_report" not in [f.name for f in tps.formats]
    assert [f.name for f in tps.formats] == [tp.split(":")[1] for k, tp, _f in tps.attach if k == "tracepoint"]
    assert tps.skipped == ()


def test_select_skips_the_raw_tracepoint_without_raw_programs() -> None:
    tps = select_tracepoints(ALL, reader_of("6.18"), has_raw=False)
    assert "sock:inet_sk_error_report" not in [tp for _k, tp, _f in tps.attach]
    assert tps.skipped == ("sock:inet_sk_error_report: the kernel has no raw tracepoint programs (4.17+)",)


def test_select_skips_a_record_lacking_required_fields_with_what_it_lacks() -> None:
    probe = read_format("tcp", "tcp_probe", FORMATS / "5.4")
    reader = reader_of("5.4", tcp_probe=without(probe, "srtt", "data_len"))
    tps = select_tracepoints(ALL, reader, has_raw=True)
    assert "tcp:tcp_probe: record lacks srtt, data_len or length" in tps.skipped
    assert "tcp:tcp_probe" not in [tp for _k, tp, _f in tps.attach]
    assert "tcp_probe" not in [f.name for f in tps.formats]


@pytest.mark.parametrize(
    ("version", "drop", "lacks"),
    [
        ("6.18", (), None),  # sockaddr copies (6.10+)
        ("5.4", (), None),  # the classic fields
        ("5.4", ("saddr_v6",), "saddr_v6"),
        ("5.4", ("sport",), "sport (or sockaddr saddr)"),
    ],
)
def test_select_takes_tcp_send_reset_with_either_tuple_layout(version: str, drop: tuple[str, ...], lacks) -> None:
    reset = without(read_format("tcp", "tcp_send_reset", FORMATS / version), *drop)
    tps = select_tracepoints(("lifecycle",), reader_of(version, tcp_send_reset=reset), has_raw=True)
    attached = ("tracepoint", "tcp:tcp_send_reset", "tp_tcp_send_reset") in tps.attach
    assert attached == (lacks is None)
    if lacks:
        assert f"tcp:tcp_send_reset: record lacks {lacks}" in tps.skipped


def test_select_without_inet_sock_set_state_says_why() -> None:
    reader = reader_of("6.18", inet_sock_set_state=None)
    with pytest.raises(
        KernelSupportError, match=r"sock:inet_sock_set_state is missing .*: sock:inet_sock_set_state: not"
    ):
        select_tracepoints(("lifecycle",), reader, has_raw=True)


def test_filters_from_config() -> None:
    """Ports are sorted and unique; the netns is its inode; no cgroup subtree unless asked."""
    config = AgentConfig(ports=(443, 80, 443), netns="/proc/self/ns/net")
    assert build_filters(config) == Filters(ports=(80, 443), netns_inum=os.stat("/proc/self/ns/net").st_ino)
    assert build_filters(AgentConfig()) == Filters()


def test_cgroup_filter_of_a_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KernelSupportError, match=r"--cgroup-root .*/gone: no such directory"):
        build_filters(AgentConfig(cgroup_root=str(tmp_path / "gone")))


def test_cgroup_filter_id_and_level() -> None:
    require_root()
    with traffic.kubepods_root() as root:
        pod = traffic.pod_cgroup(root)
        f = cgroup_filter(str(pod.pod))
        assert (f.cgroup_id, f.cgroup_level) == (os.stat(pod.pod).st_ino, 3)
        top = cgroup_filter(str(root))
        assert (top.cgroup_id, top.cgroup_level) == (os.stat(root).st_ino, 1)
    with pytest.raises(KernelSupportError, match="not on a cgroup v2 mount"):
        cgroup_filter("/tmp")


@pytest.mark.root
@pytest.mark.parametrize("version", VERSIONS)
def test_program_compiles_for_each_kernel_layout(version: str, btf: Btf) -> None:
    """The whole program compiles (bcc/clang) against each kernel's record layouts, every kind on."""
    require_root()
    from bcc import BPF

    plan = plan_for(version, btf, events=ALL, ports=(1,))
    bpf = BPF(text=program_text(plan).encode(), cflags=plan.cflags())
    try:
        for _kind, _tp, fn in plan.attach:
            bpf.load_func(fn.encode(), BPF.RAW_TRACEPOINT if _kind == "raw_tracepoint" else BPF.TRACEPOINT)
    finally:
        bpf.cleanup()


@pytest.mark.root
def test_without_tcp_destroy_sock_lifecycle_is_emitted_at_close(btf: Btf) -> None:
    """Kernels without tcp:tcp_destroy_sock: the program emits the lifecycle at CLOSE instead."""
    require_root()
    from bcc import BPF

    root = FORMATS / "6.18"
    plan = build_plan(
        AgentConfig(ports=(1,)),
        btf=btf,
        socket_key=1,
        format_reader=lambda c, n: None if n == "tcp_destroy_sock" else read_format(c, n, root),
    )
    want = "tcp:tcp_destroy_sock: not in this kernel (lifecycles are emitted at CLOSE"
    assert [x for x in plan.skipped if x.startswith(want)]
    bpf = BPF(text=program_text(plan).encode(), cflags=plan.cflags())
    try:
        bpf.load_func(b"tp_inet_sock_set_state", BPF.TRACEPOINT)
    finally:
        bpf.cleanup()


def test_bpf_sources_found_in_source_tree_then_in_package(tmp_path: Path) -> None:
    from agent.kernel.probe import BPF_DIR, find_bpf_dir

    repo = Path(__file__).resolve().parents[3]
    assert repo / "bpf" == BPF_DIR  # a checkout (or editable install) reads bpf/ itself
    installed = tmp_path / "site-packages" / "agent"
    (installed / "bpf").mkdir(parents=True)
    (installed / "bpf" / "tcpscope.bpf.c").write_text("/* copy */\n")
    assert find_bpf_dir(installed) == installed / "bpf"


@pytest.mark.slow  # builds the wheel with pip, writing build/ into the checkout
def test_wheel_ships_the_bpf_sources(tmp_path: Path) -> None:
    """`pip install .` (not editable) carries bpf/*.c, *.h as agent/bpf, and the agent finds them."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(repo),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    sources = sorted(p.name for p in (repo / "bpf").iterdir() if p.suffix in (".c", ".h"))
    assert sorted(p.name for p in (target / "agent" / "bpf").iterdir()) == sources
    for name in sources:
        assert (target / "agent" / "bpf" / name).read_text() == (repo / "bpf" / name).read_text()
    res = subprocess.run(
        [sys.executable, "-c", "import agent.kernel.probe as p; print(p.BPF_DIR)"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert res.stdout.strip() == str(target / "agent" / "bpf")


NET_AND_SYS_ADMIN = (1 << 12) | (1 << 21)


def test_open_connections_plan_says_what_is_on_and_why_not(btf: Btf) -> None:
    """Reports need the lifecycle kind, the ring buffer, BPF atomic exchange (5.12+) and the BTF
    members they read; seeding needs the reports and CAP_NET_ADMIN + CAP_SYS_ADMIN. Each part off
    says why, in --dump-bpf too; the cflags switch exactly what is on."""

    def plan(kernel: str = "6.18", caps: int = NET_AND_SYS_ADMIN, **cfg: Any) -> Plan:
        return build_plan(
            AgentConfig(**{"events": ALL, **cfg}),
            btf=btf,
            format_reader=lambda c, n: read_format(c, n, FORMATS / "6.18"),
            kernel=kernel,
            socket_key=1,
            capabilities=caps,
        )

    on = plan()
    assert (on.open.interim, on.open.seed, on.open.rtt) == ("", "", "")
    flags = on.cflags()
    assert "-DOPEN_PASS=1" in flags and "-DOPEN_SEED=1" in flags
    rtt_min = btf.member_offset("tcp_sock", "rtt_min")
    assert rtt_min is not None and f"-DOFF_RTT_MIN={rtt_min + 4}" in flags  # minmax.s[0].v
    assert "open connections: reported every 10 s (flow interval)" in on.describe()
    old = plan("5.10.0-32-cloud-amd64")
    assert old.open.interim.startswith("needs BPF atomic exchange, Linux 5.12+ (this is 5.10.0-32-cloud-amd64)")
    assert old.open.seed == "needs the open-connection reports" and old.open.rtt == ""
    assert "-DOPEN_PASS=1" not in old.cflags() and "-DOFF_SRTT_US=" in " ".join(old.cflags())
    assert "open connections: reported at close only: needs BPF atomic exchange" in old.describe()
    assert plan(events=("lifecycle", "reset")).open.interim == "not requested (--events without open)"
    assert plan(events=("reset", "open")).open.interim.startswith("needs the lifecycle kind")
    no_caps = plan(caps=0)
    assert no_caps.open.interim == "" and no_caps.open.seed.startswith("needs CAP_NET_ADMIN")
    assert "-DOPEN_SEED=1" not in no_caps.cflags()
    assert "connections open before start: not reported until they change state: needs CAP_NET_ADMIN" in (
        no_caps.describe()
    )


def test_kernel_versions_read_from_release_strings() -> None:
    from agent.kernel.probe import kernel_version

    assert kernel_version("6.18.44-fc-v769") == (6, 18)
    assert kernel_version("5.10.0-32-cloud-amd64") == (5, 10)
    assert kernel_version("5.4") == (5, 4)
    assert kernel_version("5.12rc3") == (5, 12)
    assert kernel_version("weird") == (0, 0)
