"""The local-end enricher over real processes in real kubelet-style cgroups, pods from the stand-in.

Events are built from what the kernel reports about real processes and real connections: the
cgroup id is the inode of the cgroup directory named in /proc/PID/cgroup, addresses and ports come
from the sockets themselves. (test_pod_to_pod.py runs the BPF source too.)
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.enrich import build_enrichers
from agent.enrich.cgroups import CgroupMap
from agent.enrich.local_stage import LocalEnricher
from agent.enrich.pods import PodIndex
from agent.pipeline import Enricher
from tcpscope.v1.events_pb2 import ESTABLISHED, HOST, NODE, POD, TcpEvent
from tcpscope_sim.fakeapi import FakeApiServer, make_pod
from tests.support.kubepods import (
    CLIENT,
    SERVER,
    CgroupTree,
    new_container_id,
    new_uid,
    proc_cgroup_path,
    python_argv,
    read_conn,
    spawn_in_cgroup,
    stop,
)
from tests.support.streaming import wait_until

NODE_NAME = "node-1"


class Conn:
    """A real loopback TCP connection between a server and a client process, each in its own cgroup."""

    def __init__(self, server_cg: str, client_cg: str) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        srv = spawn_in_cgroup(server_cg, python_argv(SERVER, "127.0.0.1", "0"))
        self.procs.append(srv)
        assert srv.stdout is not None
        port = srv.stdout.readline().split()[1]
        cli = spawn_in_cgroup(client_cg, python_argv(CLIENT, "127.0.0.1", port))
        self.procs.append(cli)
        self.server, self.client = srv, cli
        self.server_end = read_conn(srv)
        self.client_end = read_conn(cli)

    def event(self, side: str, mount: str) -> TcpEvent:
        p = self.server if side == "server" else self.client
        lip, lport, rip, rport = self.server_end if side == "server" else self.client_end
        ev = TcpEvent(node=NODE_NAME, socket_id=lport)
        ev.time.GetCurrentTime()
        ev.process.pid = p.pid
        ev.process.comm = "python3"
        ev.process.cgroup_id = os.stat(mount + proc_cgroup_path(p.pid)).st_ino
        ev.local.ip, ev.local.port, ev.remote.ip, ev.remote.port = lip, lport, rip, rport
        ev.state_change.new_state = ESTABLISHED
        return ev

    def close(self) -> None:
        for p in self.procs:
            stop(p)


@pytest.fixture
def conns() -> Iterator[list[Conn]]:
    made: list[Conn] = []
    try:
        yield made
    finally:
        for c in made:
            c.close()


def config(kubeconfig: Path, **kw: object) -> AgentConfig:
    return AgentConfig(kubeconfig=str(kubeconfig), node_name=NODE_NAME, stdout="json", **kw)  # type: ignore[arg-type]


def run(enrichers: list[Enricher], events: list[TcpEvent]) -> list[TcpEvent]:
    now = time.monotonic()
    for e in enrichers:
        events = e.process(events, now)
    return events


def stats(enrichers: list[Enricher]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in enrichers:
        out.update(e.stats())
    return out


def close_all(enrichers: list[Enricher]) -> None:
    for e in enrichers:
        e.close()


def test_pod_process_and_host_process(
    fakeapi: FakeApiServer, kubeconfig: Path, cgtree: CgroupTree, conns: list[Conn]
) -> None:
    uid, cid = new_uid(), new_container_id()
    pod_cg = cgtree.container(uid, cid, qos="burstable")
    host_cg = cgtree.host()
    fakeapi.add(
        make_pod(
            "api-7f9c-x",
            "payments",
            NODE_NAME,
            uid=uid,
            containers={"api": cid},
            labels={"app": "api", "secret-ish": "no"},
            owner=("StatefulSet", "api"),
        )
    )
    c = Conn(server_cg=pod_cg, client_cg=host_cg)
    conns.append(c)
    enrichers = build_enrichers(config(kubeconfig), cgroup_root=cgtree.mount)
    try:
        srv_ev, cli_ev = run(enrichers, [c.event("server", cgtree.mount), c.event("client", cgtree.mount)])
        loc = srv_ev.local
        assert (loc.kind, loc.namespace, loc.name, loc.uid) == (POD, "payments", "api-7f9c-x", uid)
        assert (loc.container, loc.container_id, loc.node) == ("api", cid, NODE_NAME)
        assert dict(loc.labels) == {"app": "api"}
        assert (loc.workload.kind, loc.workload.name) == ("StatefulSet", "api")
        assert srv_ev.process.cgroup_path == cgtree.rel(pod_cg)
        # loopback: the peer is in the same network namespace as this end
        assert (srv_ev.remote.kind, srv_ev.remote.name) == (POD, "api-7f9c-x")
        assert (cli_ev.local.kind, cli_ev.local.node, cli_ev.local.name) == (HOST, NODE_NAME, "")
        assert cli_ev.process.cgroup_path == cgtree.rel(host_cg)
        assert (cli_ev.remote.kind, cli_ev.remote.name) == (NODE, NODE_NAME)
        s = stats(enrichers)
        assert (s["local.pod_hits"], s["local.host"], s["local.held"], s["local.pod_misses"]) == (1, 1, 0, 0)
        assert s["pods.cached"] == 1 and s["cgroup.entries"] >= 3
        assert all(not e.losses() for e in enrichers)
    finally:
        close_all(enrichers)


def test_pod_created_after_its_traffic_started_is_held_then_resolved(
    fakeapi: FakeApiServer, kubeconfig: Path, cgtree: CgroupTree, conns: list[Conn]
) -> None:
    uid, cid = new_uid(), new_container_id()
    cg = cgtree.container(uid, cid)
    c = Conn(cg, cg)
    conns.append(c)
    enrichers = build_enrichers(
        config(kubeconfig, pending_max_wait=5.0, resolve_remote=False), cgroup_root=cgtree.mount
    )
    try:
        assert run(enrichers, [c.event("client", cgtree.mount)]) == []  # held: pod unknown yet
        fakeapi.add(make_pod("late", "shop", NODE_NAME, uid=uid, containers={"app": cid}))
        out: list[TcpEvent] = []

        def released() -> bool:
            out.extend(run(enrichers, []))
            return bool(out)

        wait_until(released)
        assert len(out) == 1 and (out[0].local.namespace, out[0].local.name) == ("shop", "late")
        s = stats(enrichers)
        assert (s["local.held"], s["local.released_resolved"], s["local.released_unresolved"]) == (1, 1, 0)
    finally:
        close_all(enrichers)


def test_unknown_pod_released_without_pod_fields_after_the_wait(
    fakeapi: FakeApiServer, kubeconfig: Path, cgtree: CgroupTree, conns: list[Conn]
) -> None:
    uid, cid = new_uid(), new_container_id()
    cg = cgtree.container(uid, cid)
    c = Conn(cg, cg)
    conns.append(c)
    enrichers = build_enrichers(
        config(kubeconfig, pending_max_wait=0.3, resolve_remote=False), cgroup_root=cgtree.mount
    )
    try:
        t0 = time.monotonic()
        assert run(enrichers, [c.event("client", cgtree.mount)]) == []
        out: list[TcpEvent] = []

        def released() -> bool:
            out.extend(run(enrichers, []))
            return bool(out)

        wait_until(released)
        assert time.monotonic() - t0 >= 0.3
        ev = out[0]
        assert (ev.local.kind, ev.local.uid, ev.local.container_id, ev.local.name) == (POD, uid, cid, "")
        # the same container again: not held a second time (negative cache), just counted
        assert len(run(enrichers, [c.event("server", cgtree.mount)])) == 1
        s = stats(enrichers)
        assert (s["local.held"], s["local.released_unresolved"], s["local.pod_misses"]) == (1, 1, 2)
    finally:
        close_all(enrichers)


def test_holding_buffer_is_bounded_and_flush_releases_everything(cgtree: CgroupTree) -> None:
    uid, cid = new_uid(), new_container_id()
    cg = cgtree.container(uid, cid)
    enr = LocalEnricher(CgroupMap(cgtree.mount), PodIndex(), NODE_NAME, max_pending=2, pending_max_wait=60)
    events = [TcpEvent(socket_id=i) for i in range(3)]
    for e in events:
        e.process.cgroup_id = os.stat(cg).st_ino
    out = enr.process(events, time.monotonic())
    assert [e.socket_id for e in out] == [0]  # the oldest made room
    assert [e.socket_id for e in enr.flush()] == [1, 2]
    s = enr.stats()
    assert (s["local.held"], s["local.released_overflow"], s["local.released_unresolved"]) == (3, 1, 2)
    assert enr.losses() == {}


def test_pod_deleted_while_its_connection_lives_still_resolves(
    fakeapi: FakeApiServer, kubeconfig: Path, cgtree: CgroupTree, conns: list[Conn]
) -> None:
    uid, cid = new_uid(), new_container_id()
    cg = cgtree.container(uid, cid)
    fakeapi.add(make_pod("going", "shop", NODE_NAME, uid=uid, containers={"app": cid}))
    c = Conn(cg, cg)
    conns.append(c)
    enrichers = build_enrichers(config(kubeconfig, resolve_remote=False), cgroup_root=cgtree.mount)
    try:
        fakeapi.delete("pods", "going", "shop")
        wait_until(lambda: stats(enrichers)["pods.deleted_cached"] == 1)
        (ev,) = run(enrichers, [c.event("client", cgtree.mount)])
        assert (ev.local.kind, ev.local.name, ev.local.container) == (POD, "going", "app")
        assert stats(enrichers)["pods.cached"] == 0
    finally:
        close_all(enrichers)


def test_api_server_down_from_the_start_events_flow_and_misses_are_counted(
    fakeapi: FakeApiServer, kubeconfig: Path, cgtree: CgroupTree, conns: list[Conn]
) -> None:
    uid, cid = new_uid(), new_container_id()
    cg = cgtree.container(uid, cid)
    fakeapi.add(make_pod("web", "shop", NODE_NAME, uid=uid, containers={"app": cid}, ips=["198.18.7.7"]))
    fakeapi.stop()
    c = Conn(cg, cg)
    conns.append(c)
    enrichers = build_enrichers(config(kubeconfig), cgroup_root=cgtree.mount, initial_sync_timeout=0.3)
    try:
        ev = c.event("client", cgtree.mount)
        ev.remote.ip = "198.18.7.7"
        (out,) = run(enrichers, [ev])  # not held: nothing to wait for while the API is away
        assert (out.local.kind, out.local.uid, out.local.container_id, out.local.name) == (POD, uid, cid, "")
        assert out.remote.kind == 0  # unresolved, not 'external': we do not know
        s = stats(enrichers)
        assert s["local.miss_api_unavailable"] == 1 and s["remote.miss_api_unavailable"] == 1
        assert s["local.watch.pods.api_errors"] >= 1 and s["local.watch.pods.synced"] == 0
        fakeapi.start()  # it comes back: the watch's backoff finds it and events resolve again
        wait_until(lambda: all(v == 1 for k, v in stats(enrichers).items() if k.endswith(".synced")), timeout=10)
        ev = c.event("client", cgtree.mount)
        ev.remote.ip = "198.18.7.7"
        (out,) = run(enrichers, [ev])
        assert (out.local.name, out.remote.kind, out.remote.name) == ("web", POD, "web")
    finally:
        close_all(enrichers)


def test_no_kubernetes_gives_cgroup_level_identity(cgtree: CgroupTree) -> None:
    uid, cid = new_uid(), new_container_id()
    cg = cgtree.container(uid, cid, driver="cgroupfs", qos="guaranteed")
    (enr,) = build_enrichers(
        AgentConfig(kubernetes=False, node_name=NODE_NAME, stdout="json"), cgroup_root=cgtree.mount
    )
    ev = TcpEvent()
    ev.process.cgroup_id = os.stat(cg).st_ino
    (out,) = enr.process([ev], time.monotonic())
    assert (out.local.kind, out.local.uid, out.local.container_id) == (POD, uid, cid)
    assert enr.stats()["local.miss_no_api"] == 1
