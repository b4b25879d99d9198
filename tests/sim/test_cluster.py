"""The simulated nodes and pods with real namespaces, cgroups and sockets (root; fails without it).

One cluster per module (building it takes ~1 s): pods on different nodes reach each other, every
traffic kind behaves as its name says (real errnos), sockets are charged to the pod's cgroup, and
stopping leaves no namespace, cgroup, process or state file behind.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tcpscope_sim import net
from tcpscope_sim.cgroups import PREFIX as CG_PREFIX
from tcpscope_sim.cgroups import cgroup2_mount, pod_uid
from tcpscope_sim.cluster import STATE_DIR, PodCluster, RunState, cleanup_leftovers
from tcpscope_sim.driver import Driver, TrafficError
from tcpscope_sim.plan import Plan, TrafficSpec, parse_plan

PLAN = {
    "pods": [
        {"namespace": "shop", "name": "web-1", "node": "node-a", "listen": [8080]},
        {"namespace": "shop", "name": "api-1", "node": "node-b", "listen": [9000, 9001]},
        {"namespace": "data", "name": "db-1", "node": "node-b", "listen": [5432]},
    ],
    "traffic": [],
}


def _plan() -> Plan:
    return parse_plan(PLAN)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PodCluster]:
    assert os.geteuid() == 0, "the simulator needs root (netns, cgroups)"
    c = PodCluster(_plan())
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _entry(src: str, dst: str, port: int, kind: str, count: int) -> TrafficSpec:
    return TrafficSpec(src, dst, port, kind, count)


def _gone(pid: int) -> bool:
    """Dead (a zombie until its parent, this test, reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_layout_names_and_addresses(cluster: PodCluster) -> None:
    rid = cluster.run_id
    assert net.netns_names(rid) == sorted([f"tss-{rid}-fabric", f"tss-{rid}-p1", f"tss-{rid}-p2", f"tss-{rid}-p3"])
    web = cluster.pods["shop/web-1"]
    uid = pod_uid(rid, "shop", "web-1")
    assert web.cgroup.path == os.path.join(
        cgroup2_mount(),
        f"tcpscope-sim-{rid}",
        "node-a",
        "kubepods.slice",
        "kubepods-besteffort.slice",
        f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice",
        f"cri-containerd-{web.cgroup.container_id}.scope",
    )
    with open(os.path.join(web.cgroup.path, "cgroup.procs")) as f:
        assert f.read().split() == [str(web.proc.pid)]
    out = subprocess.run(
        ["ip", "-n", web.netns.netns, "-4", "-o", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "inet 198.18.1.2/32" in out
    # the pod's netns really is the one named: its sockets live there, not in the root namespace
    assert os.readlink(f"/proc/{web.proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")


def test_every_kind_across_nodes_with_real_errnos(cluster: PodCluster) -> None:
    d = Driver(cluster)
    assert d.run_entry(_entry("shop/web-1", "shop/api-1", 9000, "ok", 5)) == {"ok": 5}
    assert d.run_entry(_entry("shop/web-1", "shop/api-1", 9002, "refused", 2)) == {"ok": 2}
    assert d.run_entry(_entry("shop/web-1", "shop/api-1", 9001, "client_reset", 3)) == {"ok": 3}
    assert d.run_entry(_entry("data/db-1", "shop/web-1", 8080, "server_reset", 2)) == {"ok": 2}
    t0 = time.monotonic()
    assert d.run_entry(_entry("shop/web-1", "data/db-1", 5432, "timeout", 2)) == {"ok": 2}
    took = time.monotonic() - t0
    assert 2.5 < took < 6, f"TCP_SYNCNT=1 should time out in ~3 s, took {took:.1f}"
    # the drop rule was scoped to that entry: the same pair connects normally right after
    assert d.run_entry(_entry("shop/web-1", "data/db-1", 5432, "ok", 1)) == {"ok": 1}
    # the check is real: asking for a refusal where something listens fails loudly
    with pytest.raises(TrafficError, match="connected"):
        d.run_entry(_entry("shop/web-1", "shop/api-1", 9000, "refused", 1))


def test_raw_outcomes_name_the_errno(cluster: PodCluster) -> None:
    web = cluster.pods["shop/web-1"]
    reply = web.call("connect", ip="198.18.2.2", port=9009, kind="ok", count=2)
    assert reply["outcomes"] == {"ECONNREFUSED": 2}
    # same node (node-b): db-1 -> api-1
    db = cluster.pods["data/db-1"]
    assert db.call("connect", ip="198.18.2.2", port=9000, kind="client_reset", count=1)["outcomes"] == {"ok": 1}


def test_stalled_server_still_serves_later(cluster: PodCluster) -> None:
    d = Driver(cluster)
    got = d.stalled_server(_entry("shop/web-1", "shop/api-1", 9001, "ok", 3), stall_s=1.0)
    assert got == {"ok": 3}


def test_stop_leaves_nothing_and_cleanup_spares_live_runs() -> None:
    c = PodCluster(parse_plan({"pods": PLAN["pods"][:2], "traffic": []}))
    try:
        c.start()
        pids = [p.proc.pid for p in c.pods.values()]
        # a live run is never cleaned by another process's --cleanup
        assert c.run_id not in cleanup_leftovers(only=c.run_id)
        assert net.netns_names(c.run_id)
    finally:
        c.stop()
    assert net.netns_names(c.run_id) == []
    assert not os.path.exists(os.path.join(cgroup2_mount(), f"{CG_PREFIX}{c.run_id}"))
    assert not os.path.exists(os.path.join(STATE_DIR, f"{c.run_id}.json"))
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")


def test_cleanup_removes_a_crashed_runs_leftovers() -> None:
    # simulate a crash: resources exist, the state file names an owner that is gone
    c = PodCluster(parse_plan({"pods": PLAN["pods"][:2], "traffic": []}))
    try:
        c.start()
        worker_pids = [p.proc.pid for p in c.pods.values()]
        dead = subprocess.Popen(["true"])
        dead.wait()
        st = RunState(c.run_id, owner_pid=dead.pid, procs=c.state.procs)
        st.save()
        assert cleanup_leftovers(only=c.run_id) == [c.run_id]
        assert net.netns_names(c.run_id) == []
        assert not os.path.exists(os.path.join(cgroup2_mount(), f"{CG_PREFIX}{c.run_id}"))
        for pid in worker_pids:
            for _ in range(100):
                if _gone(pid):
                    break
                time.sleep(0.02)
            else:
                pytest.fail(f"worker {pid} survived cleanup")
    finally:
        c.stop()


def _tcp_mib(netns: str) -> dict[str, int]:
    snmp = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    head, values = (line.split() for line in snmp if line.startswith("Tcp:"))
    return {k: int(v) for k, v in zip(head[1:], values[1:], strict=True)}


def _retrans_segs(netns: str) -> int:
    return _tcp_mib(netns)["RetransSegs"]


def test_network_reset_is_forged_by_the_router_not_sent_by_either_pod(cluster: PodCluster) -> None:
    d = Driver(cluster)
    client, server = cluster.pods["shop/web-1"], cluster.pods["shop/api-1"]
    before = {p.spec.ref: _tcp_mib(p.netns.netns) for p in (client, server)}
    assert d.run_entry(_entry("shop/web-1", "shop/api-1", 9000, "network_reset", 3)) == {"ok": 3}
    for p in (client, server):
        after = _tcp_mib(p.netns.netns)
        # OutRsts counts every RST the pod's kernel sent (tcp_v4_send_reset, tcp_send_active_reset)
        assert after["OutRsts"] == before[p.spec.ref]["OutRsts"], f"{p.spec.ref} sent a RST"
        # EstabResets: established connections that went to CLOSE by a RST (here: received ones)
        assert after["EstabResets"] - before[p.spec.ref]["EstabResets"] == 3, p.spec.ref
    tables = subprocess.run(
        ["ip", "netns", "exec", cluster.fabric.netns, "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tables.strip() == "", "the router's reset rules outlived their entry"
    # only that pair and port was hit: the same pair on another port, and the same port from
    # another pod, still work
    assert d.run_entry(_entry("shop/web-1", "shop/api-1", 9000, "ok", 2)) == {"ok": 2}
    assert d.run_entry(_entry("data/db-1", "shop/api-1", 9000, "ok", 1)) == {"ok": 1}


def test_lossy_bulk_makes_the_server_retransmit_and_the_rule_goes_away(cluster: PodCluster) -> None:
    d = Driver(cluster)
    server = cluster.pods["shop/api-1"]
    before = _retrans_segs(server.netns.netns)
    assert d.lossy_bulk(_entry("shop/web-1", "shop/api-1", 9000, "ok", 2), size=64 * 1024) == {"ok": 2}
    assert _retrans_segs(server.netns.netns) > before
    client = cluster.pods["shop/web-1"]
    tables = subprocess.run(
        ["ip", "netns", "exec", client.netns.netns, "nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert tables.strip() == ""
