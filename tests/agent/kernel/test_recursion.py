"""Runs of our programs that the kernel skipped (another BPF program already running on that CPU)
are reported as kernel losses, with the same count the kernel gives bpftool."""

from __future__ import annotations

import ctypes
import json
import subprocess

from agent.kernel.source import recursion_misses
from tests.support import traffic
from tests.support.kernel import Harness


def prog_ids(h: Harness) -> list[int]:
    from bcc.libbcc import lib

    ids = []
    for fn in h.source._bpf.funcs.values():
        buf = ctypes.create_string_buffer(256)
        size = ctypes.c_uint32(256)
        assert lib.bpf_obj_get_info(int(fn.fd), buf, ctypes.byref(size)) == 0
        ids.append(int.from_bytes(buf.raw[4:8], "little"))
    return ids


def test_recursion_misses_are_a_loss_reason_matching_the_kernel(subtree: Harness) -> None:
    port = traffic.free_port()
    for _ in range(3):
        traffic.tcp_exchange(port=port, client_bytes=1000, server_bytes=10)
    subtree.pump()
    losses = subtree.source.losses()
    assert "kernel.recursion_misses" in losses  # this kernel (6.18) reports them
    ids = set(prog_ids(subtree))
    assert len(ids) == len(subtree.plan.attach)
    shown = json.loads(
        subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True).stdout
    )
    kernel_says = sum(p.get("recursion_misses", 0) for p in shown if p["id"] in ids)
    ours = recursion_misses([int(fn.fd) for fn in subtree.source._bpf.funcs.values()])
    assert ours == kernel_says
    assert losses["kernel.recursion_misses"] <= kernel_says
