"""Kernel struct layouts older than the host's, as the plan reads them from BTF: the sock_cgroup_data
union of 4.5-5.14 and the kernfs_node id union before 5.5. The host's BTF stands in for everything
else; only the members those kernels lay out differently are replaced, with the values of Debian's
5.10 (5.10.0-32) and of 5.4's include/linux/kernfs.h. The real 5.10 runs in `make test-kernels`."""

from __future__ import annotations

import pytest

from agent.config import AgentConfig
from agent.kernel.btf import Btf
from agent.kernel.loader import program_text
from agent.kernel.probe import _OFFSETS, KernelSupportError, Plan, build_plan, struct_offsets
from agent.kernel.tracefs import TracepointFormat, read_format
from tests.agent.kernel.test_probe import ALL, FORMATS
from tests.support.kernel import require_root

Member = tuple[str, str]
# (offset, size, present): absent members are (None, None)
Layout = dict[Member, tuple[int | None, int | None]]

# 4.5-5.14: union { struct { u8 is_data:1, no_refcnt:1, unused:6; u8 padding; u16 prioidx; u32 classid; };
# u64 val; } (Debian 5.10: sock.sk_cgrp_data at 664, val at 0)
UNION_SCD: Layout = {("sock_cgroup_data", "cgroup"): (None, None), ("sock_cgroup_data", "val"): (0, 8)}
# before 5.5: kernfs_node.id is union kernfs_node_id { struct { u32 ino; u32 generation; }; u64 id; }
UNION_KN_ID: Layout = {("kernfs_node", "id.ino"): (96, 4)}
# before 6.1: cgroup.ancestor_ids[] (an array of ids) instead of cgroup.ancestors[] (pointers); offset made up
ANCESTOR_IDS: Layout = {("cgroup", "ancestors"): (None, None), ("cgroup", "ancestor_ids"): (200, 4)}


class _Patched(Btf):
    layout: Layout

    def member_offset(self, struct: str, path: str) -> int | None:
        if (struct, path) in self.layout:
            return self.layout[(struct, path)][0]
        return super().member_offset(struct, path)

    def member_size(self, struct: str, path: str) -> int | None:
        if (struct, path) in self.layout:
            return self.layout[(struct, path)][1]
        return super().member_size(struct, path)

    def has_member(self, struct: str, path: str) -> bool:
        if (struct, path) in self.layout:
            return self.layout[(struct, path)][0] is not None
        return super().has_member(struct, path)


def patched(base: Btf, layout: Layout) -> Btf:
    """`base` with some members laid out as on an older kernel."""
    b = _Patched.__new__(_Patched)
    b.__dict__.update(base.__dict__)
    b.layout = layout
    return b


@pytest.fixture(scope="module")
def host_btf() -> Btf:
    return Btf.load()


def plan(btf: Btf, version: str = "5.4", **cfg: object) -> Plan:
    def reader(cat: str, name: str) -> TracepointFormat | None:
        return read_format(cat, name, FORMATS / version)

    config = AgentConfig(**cfg)  # type: ignore[arg-type]
    return build_plan(config, btf=btf, format_reader=reader, kernel=version, socket_key=0x1234)


def test_host_layout_reads_the_cgroup_pointer_directly(host_btf: Btf) -> None:
    flags = plan(host_btf, "6.18").cflags()
    assert not [f for f in flags if f.startswith("-DSOCK_CGROUP_UNION")]
    assert f"-DOFF_SK_CGROUP={host_btf.member_offset('sock', 'sk_cgrp_data')}" in flags
    assert "-DKN_ID_SIZE=8" in flags


def test_sock_cgroup_data_union_before_5_15(host_btf: Btf) -> None:
    p = plan(patched(host_btf, UNION_SCD))
    flags = p.cflags()
    assert "-DSOCK_CGROUP_UNION=1" in flags
    # the pointer is `val`, at the start of sk_cgrp_data
    assert f"-DOFF_SK_CGROUP={host_btf.member_offset('sock', 'sk_cgrp_data')}" in flags
    assert "SOCK_CGROUP_UNION = 1" in p.describe()


def test_kernfs_id_union_before_5_5(host_btf: Btf) -> None:
    p = plan(patched(host_btf, {**UNION_SCD, **UNION_KN_ID}))
    # the inode number of a cgroupfs directory is the u32 ino, not the u64 with the generation
    assert "-DKN_ID_SIZE=4" in p.cflags()
    assert f"-DOFF_KN_ID={host_btf.member_offset('kernfs_node', 'id')}" in p.cflags()


def test_cgroup_root_filter_refused_before_5_5_with_the_reason(host_btf: Btf) -> None:
    with pytest.raises(KernelSupportError, match=r"--cgroup-root needs Linux 5\.5\+: .*ancestor_ids"):
        plan(patched(host_btf, UNION_KN_ID), cgroup_root="/sys/fs/cgroup/unified")


def test_neither_layout_names_both(host_btf: Btf) -> None:
    gone: Layout = {("sock_cgroup_data", "cgroup"): (None, None), ("sock_cgroup_data", "val"): (None, None)}
    with pytest.raises(KernelSupportError, match=r"sock_cgroup_data\.cgroup \(5\.15\+\) or sock_cgroup_data\.val"):
        plan(patched(host_btf, gone))


def test_struct_offsets_are_the_offsets_then_the_layout_facts(host_btf: Btf) -> None:
    names = [name for name, _off in struct_offsets(host_btf)]
    assert names == [m for m, _s, _p in _OFFSETS] + [
        "OFF_SCD_CGROUP",
        "_KN_ID_SIZE",
        "_OFF_CGROUP_ANCESTORS",
        "_SOCK_DONE",
    ]
    old = dict(struct_offsets(patched(host_btf, {**UNION_SCD, **UNION_KN_ID, **ANCESTOR_IDS})))
    assert (old["_SOCK_CGROUP_UNION"], old["_KN_ID_SIZE"], old["_CGROUP_ANCESTOR_IDS"]) == (1, 4, 1)
    assert old["_OFF_CGROUP_ANCESTORS"] == 200


def test_struct_offsets_name_every_member_btf_lacks(host_btf: Btf) -> None:
    gone: Layout = {
        ("tcp_sock", "bytes_acked"): (None, None),
        ("sock", "sk_flags"): (None, None),
        ("sock", "__sk_common.skc_flags"): (None, None),
        ("cgroup", "ancestors"): (None, None),
    }
    with pytest.raises(KernelSupportError, match=r"lacks tcp_sock\.bytes_acked, sock\.sk_flags, cgroup\.ancestors;"):
        struct_offsets(patched(host_btf, gone))


def test_sk_flags_found_under_its_other_name(host_btf: Btf) -> None:
    """sk_flags is `#define sk_flags __sk_common.skc_flags` on newer kernels: the second path is taken."""
    offsets = dict(struct_offsets(patched(host_btf, {("sock", "sk_flags"): (None, None)})))
    assert offsets["OFF_SK_FLAGS"] == host_btf.member_offset("sock", "__sk_common.skc_flags")


@pytest.mark.root
@pytest.mark.parametrize("version", ["4.16", "5.4"])
def test_program_loads_with_the_old_layouts(version: str, host_btf: Btf) -> None:
    """The whole program, every kind on, compiles and passes the verifier with both unions in use."""
    require_root()
    from bcc import BPF

    p = plan(patched(host_btf, {**UNION_SCD, **UNION_KN_ID}), version, events=ALL, ports=(1,))
    bpf = BPF(text=program_text(p).encode(), cflags=p.cflags())
    try:
        for kind, _tp, fn in p.attach:
            bpf.load_func(fn.encode(), BPF.RAW_TRACEPOINT if kind == "raw_tracepoint" else BPF.TRACEPOINT)
    finally:
        bpf.cleanup()
