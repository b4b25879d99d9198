"""Debian kernel images and matching headers, downloaded and extracted into a cache outside the repo.

Nothing is installed on the host: a private apt configuration (its own sources.list, lists and
archive directories under the cache) is used with `apt-get download`, and each .deb is unpacked
with `dpkg-deb -x` into a per-kernel tree. The system's apt sources, /boot and /lib/modules are
never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path("/var/cache/tcpscope-kernels")
MIRROR = "http://deb.debian.org/debian"
FLAVOUR = "cloud-amd64"


@dataclass(frozen=True)
class KernelSpec:
    """One kernel of the matrix: a Debian suite and the upstream series whose newest ABI is used."""

    name: str  # "5.10"
    suite: str  # "bullseye"
    series: str  # the image package's prefix: linux-image-<series>...-cloud-amd64-unsigned


MATRIX: tuple[KernelSpec, ...] = (
    KernelSpec("5.10", "bullseye", "5.10."),
    KernelSpec("6.1", "bookworm", "6.1."),
    KernelSpec("6.12", "bookworm-backports", "6.12."),
)


@dataclass(frozen=True)
class KernelTree:
    """An extracted kernel: boot/vmlinuz-<release>, lib/modules/<release>, usr/src/linux-headers-*."""

    spec: KernelSpec
    root: Path
    release: str  # uname -r, e.g. 5.10.0-32-cloud-amd64

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


class FetchError(Exception):
    """A kernel could not be resolved, downloaded or extracted; the message says which and why."""


def cache_dir() -> Path:
    """The cache root: $TCPSCOPE_KERNEL_CACHE, else /var/cache/tcpscope-kernels."""
    return Path(os.environ.get("TCPSCOPE_KERNEL_CACHE") or DEFAULT_CACHE)


class Apt:
    """apt-get/apt-cache with a private configuration under `<cache>/apt` (never the system's)."""

    def __init__(self, cache: Path) -> None:
        self.base = cache / "apt"
        self._updated = False

    def _opts(self) -> list[str]:
        b = self.base
        return [
            "-o",
            f"Dir::Etc::sourcelist={b / 'sources.list'}",
            "-o",
            "Dir::Etc::sourceparts=/dev/null",
            "-o",
            f"Dir::State::Lists={b / 'lists'}",
            "-o",
            f"Dir::Cache={b / 'cache'}",
            "-o",
            "Dir::Etc::preferences=/dev/null",
            "-o",
            "Dir::Etc::preferencesparts=/dev/null",
            "-o",
            "APT::Get::List-Cleanup=0",
            "-o",
            "Acquire::Retries=3",
        ]

    def update(self) -> None:
        if self._updated:
            return
        (self.base / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (self.base / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        suites = sorted({s.suite for s in MATRIX})
        (self.base / "sources.list").write_text("".join(f"deb {MIRROR} {s} main\n" for s in suites))
        _run(["apt-get", *self._opts(), "-q", "update"], "apt-get update (private sources)")
        self._updated = True

    def newest_image(self, spec: KernelSpec) -> tuple[str, str]:
        """(package, version) of the newest `linux-image-<series>*-cloud-amd64-unsigned` in the suite."""
        self.update()
        out = _run(
            [
                "apt-cache",
                *self._opts(),
                "search",
                "--names-only",
                f"^linux-image-{re.escape(spec.series)}.*-{FLAVOUR}-unsigned$",
            ],
            "apt-cache search",
        )
        pkgs = [line.split(" ", 1)[0] for line in out.splitlines() if line.strip()]
        best: tuple[str, str] | None = None
        for pkg in pkgs:
            for ver in self._versions(pkg, spec.suite):
                if best is None or _dpkg_gt(ver, best[1]):
                    best = (pkg, ver)
        if best is None:
            raise FetchError(f"no linux-image-{spec.series}*-{FLAVOUR}-unsigned in Debian {spec.suite}")
        return best

    def _versions(self, pkg: str, suite: str) -> list[str]:
        out = _run(["apt-cache", *self._opts(), "madison", pkg], f"apt-cache madison {pkg}")
        vers = []
        for line in out.splitlines():  # "pkg | version | http://... bullseye/main amd64 Packages"
            parts = [p.strip() for p in line.split("|")]
            words = parts[2].split() if len(parts) >= 3 else []
            if len(words) >= 2 and words[1].split("/")[0] == suite:
                vers.append(parts[1])
        return vers

    def download(self, pkgs: list[str], dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        os.chmod(dest, 0o755)  # apt drops to the _apt user for downloads
        _run(["apt-get", *self._opts(), "-q", "download", *pkgs], "apt-get download " + " ".join(pkgs), cwd=dest)
        return sorted(dest.glob("*.deb"))


def _dpkg_gt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b], check=False).returncode == 0


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise FetchError(f"{what} failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-800:]}")
    return p.stdout


def cached(spec: KernelSpec, cache: Path) -> KernelTree | None:
    """The tree already extracted for this kernel (marked complete), if any."""
    for root in sorted((cache / "trees").glob(f"{spec.name}_*")):
        marker = root / ".complete"
        if marker.is_file():
            return KernelTree(spec, root, marker.read_text().strip())
    return None


def fetch(spec: KernelSpec, cache: Path, *, refresh: bool = False) -> KernelTree:
    """The kernel's extracted tree: from the cache, or downloaded (image, headers, kbuild) and unpacked.

    With a tree in the cache no network is used, unless `refresh` asks for the newest ABI."""
    have = cached(spec, cache)
    if have is not None and not refresh:
        return have
    apt = Apt(cache)
    image, version = apt.newest_image(spec)
    release = image.removeprefix("linux-image-").removesuffix("-unsigned")  # 5.10.0-32-cloud-amd64
    abi = release.removesuffix(f"-{FLAVOUR}")  # 5.10.0-32 or 6.12.95+deb12
    root = cache / "trees" / f"{spec.name}_{release}"
    if (root / ".complete").is_file():
        return KernelTree(spec, root, release)
    kbuild = f"linux-kbuild-{'.'.join(abi.split('.')[:2])}={version}"
    pkgs = [f"{image}={version}", f"linux-headers-{release}={version}", f"linux-headers-{abi}-common={version}", kbuild]
    debs = cache / "debs" / release
    shutil.rmtree(debs, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    files = apt.download(pkgs, debs)
    root.mkdir(parents=True)
    if len(files) != len(pkgs):
        raise FetchError(f"expected {len(pkgs)} packages for {release}, got {[f.name for f in files]}")
    for deb in files:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
    tree = KernelTree(spec, root, release)
    if not tree.vmlinuz.is_file() or not tree.modules.is_dir():
        raise FetchError(f"{root}: no boot/vmlinuz-{release} or lib/modules/{release} after extraction")
    # modules.dep/modules.alias are made by the package's postinst, which never runs here: the
    # guest's modprobe (and the kernel's request_module, e.g. for nf_tables or veth) needs them
    _run(["depmod", "-b", str(root), release], f"depmod {release}")
    (root / ".complete").write_text(release + "\n")
    shutil.rmtree(debs, ignore_errors=True)
    return tree
