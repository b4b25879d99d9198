"""Fixtures for enrichment tests: the API server stand-in, a client for it, a private cgroup tree."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enrich.kube import ClientKubeApi, load_api_client
from tcpscope_sim.fakeapi import FakeApiServer
from tests.support.kernel import require_root
from tests.support.kubepods import CgroupTree, VethPods


@pytest.fixture
def fakeapi() -> Iterator[FakeApiServer]:
    srv = FakeApiServer(bookmark_interval=0.2).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def kubeconfig(fakeapi: FakeApiServer, tmp_path: Path) -> Path:
    return fakeapi.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kube_api(kubeconfig: Path) -> ClientKubeApi:
    return ClientKubeApi(load_api_client(str(kubeconfig)), read_timeout=10.0)


@pytest.fixture
def cgtree() -> Iterator[CgroupTree]:
    # the tests create real cgroups: they need root and a cgroup2 mount, and fail (not skip) otherwise
    assert os.geteuid() == 0, "enrichment tests need root to create cgroups"
    tree = CgroupTree()
    try:
        yield tree
    finally:
        tree.close()


@pytest.fixture
def veth() -> Iterator[VethPods]:
    """Two "pods" in network namespaces joined by a veth pair (198.18.x.x), removed afterwards."""
    require_root()
    v = VethPods()
    try:
        yield v.up()
    finally:
        v.close()
