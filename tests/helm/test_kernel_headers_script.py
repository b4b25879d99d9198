"""The agent pod's init step (files/link-kernel-headers.sh) links bcc's header tree correctly.

Run with /bin/sh (dash, like the image) against host layouts built in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.helm import CHART_DIR, render

SCRIPT = CHART_DIR / "files" / "link-kernel-headers.sh"
REL = "6.18.44-test"


def _tree(path: Path) -> Path:
    (path / "include" / "linux").mkdir(parents=True)
    return path


def _run(tmp: Path, host: Path, fallback: Path) -> tuple[Path, str]:
    modules = tmp / "modules"
    modules.mkdir(exist_ok=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOST_ROOT": str(host),
        "MODULES_DIR": str(modules),
        "FALLBACK_SRC": str(fallback),
        "KERNEL_RELEASE": REL,
    }
    out = subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return modules / REL, out.stdout


def test_debian_host_split_tree_with_absolute_links(tmp_path: Path) -> None:
    host = tmp_path / "host"
    build = _tree(host / "usr/src" / f"linux-headers-{REL}-amd64")
    source = _tree(host / "usr/src" / f"linux-headers-{REL}-common")
    (host / "lib/modules" / REL).mkdir(parents=True)
    os.symlink(f"/usr/src/linux-headers-{REL}-amd64", host / "lib/modules" / REL / "build")
    os.symlink(f"/usr/src/linux-headers-{REL}-common", host / "lib/modules" / REL / "source")
    dst, out = _run(tmp_path, host, _tree(tmp_path / "image-src" / "linux-headers-6.1.0-56-amd64").parent)
    assert os.readlink(dst / "build") == str(build)
    assert os.readlink(dst / "source") == str(source)
    assert "from the host" in out


def test_single_tree_host_and_chained_relative_links(tmp_path: Path) -> None:
    host = tmp_path / "host"
    tree = _tree(host / "usr/src/kernels" / REL)
    (host / "lib/modules" / REL).mkdir(parents=True)
    os.symlink("../../../usr/src/kernels/current", host / "lib/modules" / REL / "build")
    os.symlink(REL, host / "usr/src/kernels/current")
    dst, _ = _run(tmp_path, host, tmp_path / "no-image-src")
    assert Path(os.readlink(dst / "build")).resolve() == tree.resolve()
    assert os.readlink(dst / "source") == os.readlink(dst / "build")


def test_falls_back_to_the_image_headers_when_the_host_has_none(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "lib/modules/6.1.0-old").mkdir(parents=True)  # headers for another kernel only
    image = tmp_path / "image-src"
    common = _tree(image / "linux-headers-6.1.0-56-common")
    arch = _tree(image / "linux-headers-6.1.0-56-amd64")
    (image / "linux-kbuild-6.1").mkdir()
    dst, out = _run(tmp_path, host, image)
    assert os.readlink(dst / "build") == str(arch)
    assert os.readlink(dst / "source") == str(common)
    assert "using the image's linux-headers-6.1.0-56-amd64" in out


def test_leaves_bcc_to_kheaders_when_nothing_exists_and_is_idempotent(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    dst, out = _run(tmp_path, host, tmp_path / "none")
    assert sorted(os.listdir(dst)) == []
    assert "kheaders" in out
    image = tmp_path / "image-src"
    _tree(image / "linux-headers-6.1.0-56-amd64")
    for _ in range(2):  # a restarted init container finds its old links
        dst, _ = _run(tmp_path, host, image)
    assert sorted(os.listdir(dst)) == ["build", "source"]


def test_the_chart_runs_this_exact_script() -> None:
    ds = next(o for o in render() if o["kind"] == "DaemonSet")
    init = ds["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["/bin/sh", "-c", SCRIPT.read_text()]
