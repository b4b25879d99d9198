"""End to end through the kernel: two "pods" in network namespaces joined by a veth pair, each a real
process in a kubelet-style cgroup, talking TCP; the agent's BPF source sees the connection and the
enrichers name both ends of both sockets from the API server stand-in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.config import AgentConfig
from agent.enrich import build_enrichers
from tcpscope.v1.events_pb2 import POD, SERVICE, TcpEvent
from tcpscope_sim.fakeapi import FakeApiServer, make_node, make_pod, make_service
from tests.support.kernel import kernel_harness
from tests.support.kubepods import (
    CLIENT,
    SERVER,
    CgroupTree,
    VethPods,
    new_container_id,
    new_uid,
    python_argv,
    read_conn,
    spawn_in_cgroup,
    stop,
)

NODE_NAME = "node-1"
PORT = 8080


def test_both_ends_of_a_pod_to_pod_connection_resolved_from_kernel_events(
    fakeapi: FakeApiServer, kubeconfig: Path, cgtree: CgroupTree, veth: VethPods
) -> None:
    uid_a, cid_a, uid_b, cid_b = new_uid(), new_container_id(), new_uid(), new_container_id()
    cg_a = cgtree.container(uid_a, cid_a, qos="burstable")
    cg_b = cgtree.container(uid_b, cid_b)
    fakeapi.add(
        make_pod(
            "api-7f9c-x",
            "payments",
            NODE_NAME,
            uid=uid_a,
            containers={"api": cid_a},
            ips=[veth.ip_a],
            labels={"app": "api", "pod-template-hash": "7f9c"},
            owner=("ReplicaSet", "api-7f9c"),
        )
    )
    fakeapi.add(
        make_pod(
            "web-5d2a-y",
            "checkout",
            NODE_NAME,
            uid=uid_b,
            containers={"web": cid_b},
            ips=[veth.ip_b],
            labels={"app": "web"},
            owner=("DaemonSet", "web"),
        )
    )
    fakeapi.add(make_service("api", "payments", ["198.19.0.10"]))
    fakeapi.add(make_node(NODE_NAME, ["198.18.255.1"]))
    config = AgentConfig(
        kubeconfig=str(kubeconfig),
        node_name=NODE_NAME,
        stdout="json",
        cgroup_root=os.path.join(cgtree.mount, cgtree.prefix),
        events=("lifecycle", "state"),
    )
    enrichers = build_enrichers(config)
    procs = []
    try:
        with kernel_harness(config) as h:
            srv = spawn_in_cgroup(cg_a, python_argv(SERVER, veth.ip_a, str(PORT)), netns=veth.ns_a)
            procs.append(srv)
            assert srv.stdout is not None and srv.stdout.readline().startswith("LISTEN")
            cli = spawn_in_cgroup(cg_b, python_argv(CLIENT, veth.ip_a, str(PORT)), netns=veth.ns_b)
            procs.append(cli)
            cli_end, srv_end = read_conn(cli), read_conn(srv)
            assert cli_end == (veth.ip_b, srv_end[3], veth.ip_a, PORT)
            for p in procs:
                assert p.stdin is not None
                p.stdin.close()  # both close: lifecycle events on both sides

            def ours(e: TcpEvent) -> bool:
                return e.WhichOneof("kind") == "lifecycle" and PORT in (e.local.port, e.remote.port)

            events = h.wait(ours, count=2, timeout=10)
        now = time.monotonic()
        for enr in enrichers:
            events = enr.process(events, now)
        by_port = {e.local.port: e for e in events if ours(e)}
        assert sorted(by_port) == sorted([PORT, cli_end[1]])
        server_ev, client_ev = by_port[PORT], by_port[cli_end[1]]
        for ev, me, peer in (
            (server_ev, ("payments", "api-7f9c-x"), ("checkout", "web-5d2a-y")),
            (client_ev, ("checkout", "web-5d2a-y"), ("payments", "api-7f9c-x")),
        ):
            assert (ev.local.kind, ev.local.namespace, ev.local.name) == (POD, *me)
            assert (ev.remote.kind, ev.remote.namespace, ev.remote.name) == (POD, *peer)
        assert (server_ev.local.container, server_ev.local.container_id) == ("api", cid_a)
        assert (server_ev.local.workload.kind, server_ev.local.workload.name) == ("Deployment", "api")
        assert (client_ev.remote.workload.kind, client_ev.remote.workload.name) == ("Deployment", "api")
        assert server_ev.process.cgroup_path == cgtree.rel(cg_a)
        assert server_ev.remote.ip == veth.ip_b and client_ev.remote.ip == veth.ip_a
        stats: dict[str, int] = {}
        for enr in enrichers:
            stats.update(enr.stats())
        assert stats["local.pod_hits"] == 2 and stats["remote.pod"] == 2 and stats["local.pod_misses"] == 0
        # a ClusterIP service address resolves to the service
        probe = TcpEvent()
        probe.remote.ip = "198.19.0.10"
        (out,) = enrichers[1].process([probe], now)
        assert (out.remote.kind, out.remote.namespace, out.remote.name) == (SERVICE, "payments", "api")
    finally:
        for p in procs:
            stop(p)
        for enr in enrichers:
            enr.close()
