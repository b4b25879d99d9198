"""In-kernel filters: cgroup subtree, ports, network namespace. Filtered sockets produce nothing."""

from __future__ import annotations

import pytest

from agent.config import AgentConfig
from tcpscope.v1.events_pb2 import ACTIVE
from tests.support import traffic
from tests.support.kernel import (
    ALL_BUT_PROBE,
    kernel_harness,
    kind,
    lifecycle_on,
    on_port,
    reports_recursion_misses,
    require_root,
)


@pytest.mark.root
def test_cgroup_subtree_filter() -> None:
    require_root()
    with traffic.kubepods_root() as root:
        inside = traffic.pod_cgroup(root)
        inside_id = inside.id
        with kernel_harness(AgentConfig(cgroup_root=str(root), events=ALL_BUT_PROBE)) as h:
            assert h.plan.filters.cgroup_id == root.stat().st_ino and h.plan.filters.cgroup_level == 1
            # the server runs outside the subtree (in this test's own cgroup), the client inside
            ex = traffic.tcp_exchange(client_bytes=5000, server_bytes=50, client_cgroup=inside.container)
            lcs = h.wait(lifecycle_on(ex.server_port), count=1, settle=0.5)
            mine = [e for e in h.seen if on_port(ex.server_port)(e)]
    assert len(lcs) == 1 and lcs[0].lifecycle.role == ACTIVE
    assert (lcs[0].lifecycle.tx_bytes, lcs[0].lifecycle.rx_bytes) == (5000, 50)
    assert {e.socket_id for e in mine} == {lcs[0].socket_id}
    assert {e.process.cgroup_id for e in mine} == {inside_id}


@pytest.mark.root
def test_port_filter() -> None:
    wanted, other = traffic.free_port(), traffic.free_port()
    with kernel_harness(AgentConfig(ports=(wanted,), events=ALL_BUT_PROBE)) as h:
        ex_other = traffic.tcp_exchange(port=other, client_bytes=10, server_bytes=10)
        ex = traffic.tcp_exchange(port=wanted, client_bytes=10, server_bytes=20)
        lcs = h.wait(lifecycle_on(wanted), count=2)
        assert not [e for e in h.seen if on_port(ex_other.server_port)(e)]
        assert not [e for e in h.seen if not on_port(wanted)(e)]
    assert sorted((e.lifecycle.tx_bytes, e.lifecycle.rx_bytes) for e in lcs) == [(10, 20), (20, 10)]
    assert ex.server_port == wanted


@pytest.mark.root
def test_netns_filter() -> None:
    require_root()
    with traffic.netns_pair() as pair, kernel_harness(AgentConfig(netns=pair.path("a"), events=ALL_BUT_PROBE)) as h:
        ex = traffic.tcp_exchange(
            server_addr=pair.b_addr, server_netns=pair.b, client_netns=pair.a, client_bytes=300_000, server_bytes=777
        )
        lcs = h.wait(lambda e: kind(e) == "lifecycle" and e.remote.ip == pair.b_addr, count=1, settle=0.5)
        seen = list(h.seen)
    # only the client's namespace is reported: its socket, none of the server's (in namespace b)
    assert len(lcs) == 1
    lc = lcs[0]
    assert (lc.local.ip, lc.local.port, lc.remote.ip, lc.remote.port) == (
        pair.a_addr,
        ex.client_port,
        pair.b_addr,
        ex.server_port,
    )
    assert (lc.lifecycle.role, lc.lifecycle.tx_bytes, lc.lifecycle.rx_bytes) == (ACTIVE, 300_000, 777)
    assert lc.process.pid == ex.client_pid
    assert {e.socket_id for e in seen} == {lc.socket_id}


@pytest.mark.root
def test_socket_map_full_is_counted_not_evicted() -> None:
    port = traffic.free_port()
    with kernel_harness(AgentConfig(ports=(port,), max_sockets=2, events=ALL_BUT_PROBE)) as h:
        # listener + client + passive child: the third socket does not fit
        traffic.tcp_exchange(port=port, client_bytes=10, server_bytes=10)
        h.wait(lambda e: kind(e) == "lifecycle", count=1, settle=0.5)
        losses = h.source.losses()
    assert losses["kernel.socket_map_full"] >= 1
    assert losses["kernel.ringbuf_full"] == 0


@pytest.mark.root
def test_tcp_probe_sampled_in_kernel() -> None:
    port = traffic.free_port()
    with kernel_harness(AgentConfig(ports=(port,), events=("probe",), probe_sample=1)) as h:
        assert "tcp:tcp_probe" in [tp for _k, tp, _f in h.plan.attach]
        ex = traffic.tcp_exchange(port=port, client_bytes=200_000, server_bytes=10)
        probes = h.wait(lambda e: kind(e) == "probe", count=1)
        assert not [e for e in h.seen if kind(e) != "probe"]  # the other kinds are compiled out
    assert probes and all(p.probe.snd_cwnd > 0 for p in probes)
    assert {p.local.port for p in probes} <= {port, ex.client_port}


@pytest.mark.root
def test_perf_buffer_path_on_kernels_without_ring_buffer() -> None:
    """Before 5.8 there is no BPF ring buffer: the same program runs over the perf buffer."""
    require_root()
    from dataclasses import replace

    from agent.kernel.decode import Decoder
    from agent.kernel.loader import load
    from agent.kernel.probe import build_plan
    from agent.kernel.source import KernelSource, boot_to_wall_offset_ns

    port = traffic.free_port()
    plan = replace(build_plan(AgentConfig(ports=(port,), events=("lifecycle",))), use_ringbuf=False)
    assert "-DUSE_RINGBUF=1" not in plan.cflags()
    source = KernelSource(load(plan), Decoder("n", boot_to_wall_offset_ns(), plan.rst_reasons))
    try:
        traffic.tcp_exchange(port=port, client_bytes=4321, server_bytes=12)
        got: list[object] = []
        for _ in range(40):
            got += source.poll(50)
            if len(got) >= 2:
                break
        losses = source.losses()
    finally:
        source.close()
    assert sorted((e.lifecycle.tx_bytes, e.lifecycle.rx_bytes) for e in got) == [(12, 4321), (4321, 12)]  # type: ignore[attr-defined]
    expected = {
        "kernel.perfbuf_full": 0,
        "kernel.socket_map_full": 0,
        "kernel.listener_map_full": 0,
        "kernel.perf_lost": 0,
    }
    if reports_recursion_misses():
        expected["kernel.recursion_misses"] = 0
    assert losses == expected
