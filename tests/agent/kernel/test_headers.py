"""headers.ensure_headers: links the nearest installed Debian header tree when the running
kernel has none, says what it did, and fails with the apt-get hint when there is none."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.kernel.headers import HeadersError, ensure_headers, nearest_debian_headers


def _tree(src: Path, name: str) -> Path:
    p = src / name
    (p / "include").mkdir(parents=True)
    return p


def test_links_nearest_tree_and_common(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, modules = tmp_path / "src", tmp_path / "modules"
    _tree(src, "linux-headers-5.10.0-30-amd64")
    near = _tree(src, "linux-headers-6.1.0-56-amd64")
    common = _tree(src, "linux-headers-6.1.0-56-common")
    with caplog.at_level(logging.INFO, logger="agent.kernel.headers"):
        tree = ensure_headers("6.18.44-custom", modules=modules, src=src)
    build = modules / "6.18.44-custom" / "build"
    assert tree.build == build and build.resolve() == near
    assert (modules / "6.18.44-custom" / "source").resolve() == common
    assert tree.actions == (f"linked {build} -> {near}", f"linked {modules / '6.18.44-custom' / 'source'} -> {common}")
    assert len(caplog.records) == 2 and "safe: no struct layouts come from headers" in caplog.records[0].getMessage()
    # idempotent: a second call finds the tree and does nothing
    assert ensure_headers("6.18.44-custom", modules=modules, src=src).actions == ()


def test_nearest_by_version(tmp_path: Path) -> None:
    for v in ("4.19.0-20", "5.10.0-30", "6.1.0-56"):
        _tree(tmp_path, f"linux-headers-{v}-amd64")
    found = nearest_debian_headers("5.15.0", tmp_path)
    assert found is not None and found[0].name == "linux-headers-5.10.0-30-amd64" and found[1] is None


def test_no_headers_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(HeadersError, match=r"apt-get install linux-headers-amd64"):
        ensure_headers("6.18.0", modules=tmp_path / "m", src=tmp_path / "none")
