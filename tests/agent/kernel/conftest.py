"""Fixtures for the kernel tests: a kubelet-like cgroup tree and an agent source filtered to it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import AgentConfig
from tests.support import traffic
from tests.support.kernel import ALL_BUT_PROBE, Harness, kernel_harness, require_root


@dataclass(frozen=True)
class Pods:
    root: Path
    server: traffic.PodCgroup
    client: traffic.PodCgroup


@pytest.fixture(scope="module")
def pods() -> Iterator[Pods]:
    require_root()
    with traffic.kubepods_root() as root:
        yield Pods(root=root, server=traffic.pod_cgroup(root, "burstable"), client=traffic.pod_cgroup(root))


@pytest.fixture(scope="module")
def subtree(pods: Pods) -> Iterator[Harness]:
    """The agent's programs, loaded once per module, seeing only sockets under pods.root."""
    with kernel_harness(AgentConfig(cgroup_root=str(pods.root), events=ALL_BUT_PROBE)) as h:
        yield h


@pytest.fixture(scope="module")
def ports() -> list[int]:
    """Three free ports for a module's traffic; its `agent` is filtered to them."""
    return [traffic.free_port() for _ in range(3)]


@pytest.fixture(scope="module")
def agent(ports: list[int]) -> Iterator[Harness]:
    """The agent's programs, loaded once per module, seeing only sockets on `ports`."""
    with kernel_harness(AgentConfig(ports=tuple(ports), events=ALL_BUT_PROBE)) as h:
        yield h
