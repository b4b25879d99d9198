"""Find or prepare the kernel header tree bcc compiles against.

bcc includes a few kernel headers for its own helper definitions, from
/lib/modules/$(uname -r)/build. When the running kernel has no headers installed (a distribution
kernel's headers for another version, or a custom kernel), the nearest installed Debian header tree
works: the programs take no struct layout from headers (tracepoint records come from tracefs,
kernel struct offsets from BTF), so a version mismatch cannot make them read wrong fields.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class HeadersError(Exception):
    """No usable kernel header tree; the message says how to install one."""


@dataclass(frozen=True)
class HeaderTree:
    build: Path
    actions: tuple[str, ...]  # what was done to make it usable (empty when it was already there)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def nearest_debian_headers(release: str, src: Path = Path("/usr/src")) -> tuple[Path, Path | None] | None:
    """The installed linux-headers-*-amd64 tree closest in version to `release` (and its -common)."""
    if not src.is_dir():
        return None
    candidates = [p for p in src.glob("linux-headers-*-amd64") if (p / "include").is_dir() or (p / "Makefile").exists()]
    if not candidates:
        return None
    want = _version_key(release)[:3]

    def distance(p: Path) -> tuple[int, ...]:
        have = _version_key(p.name.removeprefix("linux-headers-"))[:3]
        return tuple(abs(a - b) for a, b in zip((*want, 0, 0, 0), (*have, 0, 0, 0), strict=False))

    best = min(candidates, key=lambda p: (distance(p), p.name))
    common = src / best.name.replace("-amd64", "-common")
    return best, common if common.is_dir() else None


def ensure_headers(
    release: str | None = None, modules: Path = Path("/lib/modules"), src: Path = Path("/usr/src")
) -> HeaderTree:
    """Make /lib/modules/<release>/build usable, linking the nearest installed tree if needed."""
    release = release or os.uname().release
    moddir = modules / release
    build = moddir / "build"
    if build.exists():
        return HeaderTree(build=build, actions=())
    found = nearest_debian_headers(release, src)
    if found is None:
        raise HeadersError(
            f"no kernel headers: {build} does not exist and no {src}/linux-headers-*-amd64 is installed; "
            "install them with `apt-get install linux-headers-amd64`"
        )
    tree, common = found
    actions = []
    moddir.mkdir(parents=True, exist_ok=True)
    if build.is_symlink():  # dangling link: replace it
        build.unlink()
    build.symlink_to(tree)
    actions.append(f"linked {build} -> {tree}")
    source = moddir / "source"
    if common is not None and not source.exists():
        if source.is_symlink():
            source.unlink()
        source.symlink_to(common)
        actions.append(f"linked {source} -> {common}")
    for a in actions:
        log.info("kernel headers for %s not installed; %s (safe: no struct layouts come from headers)", release, a)
    return HeaderTree(build=build, actions=tuple(actions))
