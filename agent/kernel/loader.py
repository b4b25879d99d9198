"""Compile the BPF programs with bcc and attach them, as the plan says."""

from __future__ import annotations

import ctypes
import errno
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.kernel.headers import HeadersError, ensure_headers
from agent.kernel.listeners import ListenerScan, scan_listeners
from agent.kernel.probe import BPF_DIR, KernelSupportError, Plan

log = logging.getLogger(__name__)

_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.]+)"\s*$', re.M)


def inline_headers(text: str, bpf_dir: Path = BPF_DIR, seen: set[str] | None = None) -> str:
    """C text with our own `#include "x.h"` lines replaced by the header's text, recursively, each
    header once, where it is first included (bcc rewrites map calls only in its main buffer, not in
    included files). Every header includes what it uses, so any order of includes compiles."""
    done: set[str] = set() if seen is None else seen

    def inline(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in done:
            return ""
        done.add(name)
        return _INCLUDE.sub(inline, (bpf_dir / name).read_text())

    return _INCLUDE.sub(inline, text)


def program_text(plan: Plan, bpf_dir: Path = BPF_DIR) -> str:
    """The full C source: the plan's preamble and bpf/tcpscope.bpf.c with our own headers inlined."""
    return plan.preamble() + inline_headers((bpf_dir / "tcpscope.bpf.c").read_text(), bpf_dir, {"tcpscope.bpf.c"})


@dataclass
class Loaded:
    """A compiled, attached program set."""

    bpf: Any  # bcc.BPF
    plan: Plan
    attached: tuple[str, ...]
    listeners_seeded: int = 0  # owners of pre-existing listeners written into the listener map

    def detach(self) -> None:
        """Detach every program, keeping the maps and the buffer readable."""
        for kind, tp, fn in self.plan.attach:
            if tp not in self.attached:
                continue
            try:
                if kind == "raw_tracepoint":
                    self.bpf.detach_raw_tracepoint(tp=tp.split(":", 1)[1].encode())
                else:
                    self.bpf.detach_tracepoint(tp=tp.encode())
            except Exception as e:  # already gone: cleanup() copes
                log.debug("detaching %s (%s): %s", tp, fn, e)
        self.attached = ()

    def close(self) -> None:
        self.bpf.cleanup()


def load(plan: Plan, bpf_dir: Path = BPF_DIR) -> Loaded:
    """Compile and attach. Raises KernelSupportError with one clear message on failure."""
    try:
        ensure_headers()
    except HeadersError as e:
        raise KernelSupportError(str(e)) from e
    except PermissionError as e:
        raise KernelSupportError(f"cannot prepare kernel headers ({e}); run as root") from e
    try:
        from bcc import BPF
    except ImportError as e:
        raise KernelSupportError(
            "the bcc Python module is missing; install it with `apt-get install python3-bpfcc` "
            "(the PyPI package named bcc is unrelated)"
        ) from e
    text = program_text(plan, bpf_dir)
    try:
        bpf = BPF(text=text.encode(), cflags=plan.cflags())
    except Exception as e:
        raise KernelSupportError(f"compiling or loading the BPF programs failed: {e}") from e
    attached = []
    try:
        for kind, tp, fn in plan.attach:
            if kind == "raw_tracepoint":
                bpf.attach_raw_tracepoint(tp=tp.split(":", 1)[1].encode(), fn_name=fn.encode())
            else:
                bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
            attached.append(tp)
    except Exception as e:
        bpf.cleanup()
        raise KernelSupportError(f"attaching {tp} failed: {e}") from e
    loaded = Loaded(bpf=bpf, plan=plan, attached=tuple(attached))
    # after attaching: a listen() during the scan is recorded by the kernel, and seeding never
    # overwrites what the kernel wrote
    started = time.monotonic()
    scan = scan_listeners(netns_only=plan.filters.netns_inum)
    added, known, full = seed_listeners(bpf, scan)
    loaded.listeners_seeded = added
    log.info(
        "found %d listening sockets held before start in %d network namespaces (%d processes, %.0f ms); "
        "owners seeded %d, already known %d%s",
        len(scan.listeners),
        scan.namespaces,
        scan.processes,
        (time.monotonic() - started) * 1000,
        added,
        known,
        f", map full {full}" if full else "",
    )
    return loaded


BPF_NOEXIST = 1  # include/uapi/linux/bpf.h


def seed_listeners(bpf: Any, scan: ListenerScan) -> tuple[int, int, int]:
    """Write the scan's owners into the `listeners` map without replacing entries the kernel made.

    Returns (added, already present, not added because the map is full)."""
    from bcc.libbcc import lib

    table = bpf[b"listeners"]
    added = known = full = 0
    for ln in scan.listeners:
        key = table.Key()
        key.netns = ln.netns
        key.port = ln.port
        key.family = ln.family
        ctypes.memmove(key.addr, ln.addr, 16)
        leaf = table.Leaf()
        leaf.pid = ln.pid
        leaf.refs = ln.refs
        leaf.comm = ln.comm.encode()[:15]
        res = lib.bpf_update_elem(table.map_fd, ctypes.byref(key), ctypes.byref(leaf), BPF_NOEXIST)
        if res == 0:
            added += 1
            continue
        err = ctypes.get_errno() or -res
        if err == errno.EEXIST:
            known += 1
        elif err == errno.E2BIG:
            full += 1
        else:
            raise KernelSupportError(f"writing the listener map failed: {errno.errorcode.get(err, err)}")
    return added, known, full
