"""Rendering a plan as C text and -D flags (agent/kernel/cgen.py): pure, from recorded formats."""

from __future__ import annotations

import re
import subprocess

import pytest

from agent.kernel import cgen
from agent.kernel.btf import Btf
from agent.kernel.probe import BPF_DIR
from agent.kernel.tracefs import Field, TracepointFormat, read_format
from tests.agent.kernel.test_probe import ALL, FORMATS, VERSIONS, plan_for


def fmt(version: str, cat: str, name: str) -> TracepointFormat:
    f = read_format(cat, name, FORMATS / version)
    assert f is not None
    return f


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.load()


def test_record_switches_say_which_fields_the_record_has() -> None:
    new = cgen.record_switches(fmt("6.18", "tcp", "tcp_send_reset"))
    assert new[0] == "#define HAS_TP_TCP_SEND_RESET 1"
    assert "#define HAS_TCP_SEND_RESET_SOCKADDR 1" in new and "#define HAS_TCP_SEND_RESET_REASON 1" in new
    assert "#define HAS_TCP_SEND_RESET_FAMILY 1" not in new
    old = cgen.record_switches(fmt("5.4", "tcp", "tcp_retransmit_skb"))
    assert "#define HAS_TCP_RETRANSMIT_SKB_STATE 1" in old
    assert not [s for s in old if s.endswith(("_FAMILY 1", "_SOCKADDR 1", "_COMMON_TYPE 1"))]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_switch_is_defined_as_1(version: str, btf: Btf) -> None:
    """bpf/compat.h's IF_HAS(flag, ...) picks its branch only for a flag defined as exactly 1."""
    text = plan_for(version, btf, events=ALL).preamble()
    switches = [line for line in text.splitlines() if line.startswith("#define HAS_")]
    assert switches and all(re.fullmatch(r"#define HAS_[A-Z0-9_]+ 1", s) for s in switches)


def test_port_match() -> None:
    assert cgen.port_match((80, 443)) == "#define PORT_MATCH(p) ((p) == 80 || (p) == 443)"
    assert cgen.port_match(()) is None


def test_filter_flags() -> None:
    assert cgen.filter_flags(netns_inum=None, cgroup_id=None, cgroup_level=None) == []
    assert cgen.filter_flags(netns_inum=4026531840, cgroup_id=None, cgroup_level=None) == ["-DFILTER_NETNS=4026531840"]
    assert cgen.filter_flags(netns_inum=None, cgroup_id=7, cgroup_level=2) == [
        "-DFILTER_CGROUP_ID=7ULL",
        "-DFILTER_CGROUP_LEVEL=2",
    ]


def test_offset_flags_derive_the_socket_cgroup_offset_and_the_layout_switches() -> None:
    offsets = [
        ("OFF_SK_CGRP_DATA", 600),
        ("OFF_SCD_CGROUP", 0),
        ("_SOCK_CGROUP_UNION", 1),
        ("_KN_ID_SIZE", 4),
        ("_OFF_CGROUP_ANCESTORS", 200),
        ("_CGROUP_ANCESTOR_IDS", 1),
        ("_SOCK_DONE", 3),
    ]
    assert cgen.offset_flags(offsets) == [
        "-DOFF_SK_CGRP_DATA=600",
        "-DOFF_SCD_CGROUP=0",
        "-DOFF_SK_CGROUP=600",
        "-DKN_ID_SIZE=4",
        "-DSOCK_DONE_BIT=3",
        "-DOFF_CGROUP_ANCESTORS=200",
        "-DCGROUP_ANCESTOR_IDS=1",
        "-DSOCK_CGROUP_UNION=1",
    ]


def test_map_and_flow_flags() -> None:
    common = {"socket_key": 0x1234, "max_sockets": 100000, "probe_sample": 10}
    assert cgen.map_flags(**common, ringbuf_pages=None) == [
        "-DSOCKET_KEY=0x1234ULL",
        "-DMAX_SOCKETS=100000",
        "-DMAX_LISTENERS=16384",
        "-DPROBE_SAMPLE=10",
    ]
    assert cgen.map_flags(**common, ringbuf_pages=64)[-2:] == ["-DUSE_RINGBUF=1", "-DRINGBUF_PAGES=64"]
    assert cgen.flow_flags(connections="aggregate", max_flows=100, spill_per_cpu=0) == [
        "-DMAX_FLOWS=100",
        "-DAGGREGATE=1",
    ]
    assert cgen.flow_flags(connections="each", max_flows=100, spill_per_cpu=5) == [
        "-DMAX_FLOWS=100",
        "-DSPILL_PER_CPU=5",
    ]


def test_plan_renders_flows_only_when_they_are_on(btf: Btf) -> None:
    assert not [f for f in plan_for("6.18", btf, max_connection_events=0).cflags() if "FLOWS" in f]
    assert "-DAGGREGATE=1" in plan_for("6.18", btf, connections="aggregate").cflags()


def test_c_struct_pads_converts_and_packs_as_the_record_needs() -> None:
    """Pointers become __u64, __data_loc slots __u32, gaps explicit padding; a field off its natural
    alignment makes the struct packed (none of the recorded kernels has one: a made-up record)."""
    made_up = TracepointFormat(
        "tcp",
        "made_up",
        0,
        (
            Field("common_type", "unsigned short", 0, 2, False, None),
            Field("skaddr", "const void *", 8, 8, False, None),
            Field("name", "__data_loc char[]", 16, 4, False, None),
            Field("odd", "__u32", 22, 4, False, None),
        ),
    )
    assert cgen.c_struct(made_up).split("\n")[:7] == [
        "struct tp_made_up {",
        "    __u16 common_type;",
        "    __u8 __pad_2[6];",
        "    __u64 skaddr;",
        "    __u32 name;",
        "    __u8 __pad_20[2];",
        "    __u32 odd;",
    ]
    assert "} __attribute__((packed));" in cgen.c_struct(made_up)
    assert "packed" not in cgen.c_struct(fmt("6.18", "tcp", "tcp_send_reset"))


def test_if_has_picks_the_field_only_for_a_switch_defined_as_1() -> None:
    """bpf/compat.h chooses between a record's field and a fallback by the switches rendered above."""
    src = "\n".join(
        [
            '#include "compat.h"',
            "#define HAS_NEW_FAMILY 1",
            "#define HAS_NEW_STATE 1",
            "state: IF_HAS(HAS_NEW_STATE, r->state, 0) IF_HAS(HAS_OLD_STATE, r->state, 0)",
            "family: RECORD_FAMILY(r, NEW) RECORD_FAMILY(r, OLD)",
            "commas: IF_HAS(HAS_NEW_STATE, f(1, 2), g) IF_HAS(HAS_OLD_STATE, f, g(1, 2))",
        ]
    )
    res = subprocess.run(
        ["gcc", "-E", "-P", "-I", str(BPF_DIR), "-"], input=src, capture_output=True, text=True, check=True
    )
    # compat.h includes what it uses (tuples.h ...): only the probe lines are this test's
    probes = [ln for ln in res.stdout.splitlines() if ln.startswith(("state: ", "family: ", "commas: "))]
    assert probes == [
        "state: r->state 0",
        "family: (r)->family guess_family((r)->saddr_v6)",
        "commas: f(1, 2) g(1, 2)",
    ]


def test_the_close_counters_are_read_as_one_span_when_they_lie_close() -> None:
    """6.8+ keeps tcp_sock's counters in a few cache-line groups: one read of 256 bytes at most."""
    near = {"OFF_WRITE_SEQ": 1576, "OFF_SND_UNA": 1672, "OFF_RCV_NXT": 1664, "OFF_BYTES_RECEIVED": 1752}
    assert cgen.tcp_span_flags({**near, "OFF_BYTES_ACKED": 1824}) == ["-DTCP_SPAN_OFF=1576", "-DTCP_SPAN_LEN=256"]
    # spread further (older layouts): one read each
    assert cgen.tcp_span_flags({**near, "OFF_BYTES_ACKED": 1900}) == []
    assert cgen.tcp_span_flags(near) == []


def test_the_span_takes_in_the_rtts_when_they_lie_close() -> None:
    """6.18's layout: srtt_us among the counters, rtt_min 80 bytes before them: one read of 336."""
    counters = {"OFF_WRITE_SEQ": 1576, "OFF_SND_UNA": 1672, "OFF_RCV_NXT": 1664, "OFF_BYTES_RECEIVED": 1752}
    counters["OFF_BYTES_ACKED"] = 1824
    rtts = {"OFF_SRTT_US": 1680, "OFF_RTT_MIN": 1496}
    assert cgen.tcp_span_flags(counters, rtts) == ["-DTCP_SPAN_OFF=1496", "-DTCP_SPAN_LEN=336", "-DTCP_SPAN_RTT=1"]
    # one too far away: neither comes in (both or neither); no RTTs read: the counters alone
    assert cgen.tcp_span_flags(counters, {"OFF_SRTT_US": 1680, "OFF_RTT_MIN": 1000}) == [
        "-DTCP_SPAN_OFF=1576",
        "-DTCP_SPAN_LEN=256",
    ]
    assert cgen.tcp_span_flags(counters, {}) == ["-DTCP_SPAN_OFF=1576", "-DTCP_SPAN_LEN=256"]
    # the counters too far apart: no span, whatever the RTTs
    assert cgen.tcp_span_flags({**counters, "OFF_BYTES_ACKED": 1900}, rtts) == []
