"""Fixtures for enrichment tests: the API server stand-in, a client for it, a private cgroup tree."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.kernel import require_root
from tests.support.kubeapi import fakeapi, kube_api, kubeconfig
from tests.support.kubepods import CgroupTree, VethPods

__all__ = ["fakeapi", "kube_api", "kubeconfig"]


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
