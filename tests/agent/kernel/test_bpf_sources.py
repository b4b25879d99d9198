"""bpf/: every header includes what it uses. Each one compiles with bcc on its own after the plan's
preamble, every kind and in-kernel aggregation on, so no header works only in one include order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.kernel.btf import Btf
from agent.kernel.loader import inline_headers
from agent.kernel.probe import BPF_DIR, build_plan
from agent.kernel.tracefs import TracepointFormat, read_format
from tests.support.kernel import require_root

FORMATS = Path(__file__).parent / "formats"
ALL = ("lifecycle", "state", "retransmit", "synack", "reset", "error", "probe")
HEADERS = sorted(p.name for p in BPF_DIR.glob("*.h"))


def test_every_header_has_its_own_guard_and_includes_only_our_headers() -> None:
    for name in HEADERS:
        text = (BPF_DIR / name).read_text()
        guard = "TCPSCOPE_" + name.removesuffix(".h").upper() + "_H"
        assert f"#ifndef {guard}\n#define {guard}\n" in text, name
        for inc in re.findall(r'^#include "([^"]+)"', text, re.M):
            assert (BPF_DIR / inc).is_file(), f"{name} includes {inc}, which is not in bpf/"


def test_inlining_puts_each_header_once_where_first_included() -> None:
    text = inline_headers('#include "state.h"\n#include "maps.h"\n', BPF_DIR)
    assert text.count("#define TCPSCOPE_MAPS_H") == 1
    assert text.count("#define TCPSCOPE_LIFECYCLE_H") == 1  # state.h uses emit_lifecycle: brought along
    assert "#include" not in text.replace("#include <", "")


@pytest.mark.root
@pytest.mark.parametrize("header", HEADERS)
def test_header_compiles_on_its_own(header: str) -> None:
    require_root()
    from bcc import BPF

    root = FORMATS / "6.18"

    def reader(cat: str, name: str) -> TracepointFormat | None:
        return read_format(cat, name, root)

    plan = build_plan(
        AgentConfig(events=ALL, ports=(1,), connections="aggregate"),
        btf=Btf.load(),
        socket_key=1,
        format_reader=reader,
    )
    text = plan.preamble() + inline_headers(f'#include "{header}"\n', BPF_DIR)
    # C lets a call to an undeclared function through with a warning: make it the error it is here
    strict = ["-Werror=implicit-function-declaration", "-Werror=implicit-int"]
    bpf = BPF(text=text.encode(), cflags=[*plan.cflags(), *strict])
    bpf.cleanup()
