"""Fixtures for tests that talk to the Kubernetes API: the stand-in server and a real client for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpscope.kube import ClientKubeApi, load_api_client
from tcpscope_sim.fakeapi import FakeApiServer


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
