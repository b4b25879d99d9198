"""The standalone agent's promise: `tcpscope-agent --stdout json --kubeconfig K --node-name N` prints pod
namespace and name on both ends of pod-to-pod traffic (two netns pods on a veth pair)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tcpscope_sim.fakeapi import FakeApiServer, make_pod
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

PORT = 8080


def test_agent_cli_shows_both_pods(
    fakeapi: FakeApiServer, kubeconfig: Path, cgtree: CgroupTree, veth: VethPods
) -> None:
    uid_a, cid_a, uid_b, cid_b = new_uid(), new_container_id(), new_uid(), new_container_id()
    cg_a, cg_b = cgtree.container(uid_a, cid_a), cgtree.container(uid_b, cid_b)
    fakeapi.add(
        make_pod(
            "api-0",
            "payments",
            "node-x",
            uid=uid_a,
            containers={"api": cid_a},
            ips=[veth.ip_a],
            owner=("StatefulSet", "api"),
        )
    )
    fakeapi.add(make_pod("web-0", "checkout", "node-x", uid=uid_b, containers={"web": cid_b}, ips=[veth.ip_b]))
    agent = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "tcpscope-agent"),
            "--stdout",
            "json",
            "--kubeconfig",
            str(kubeconfig),
            "--node-name",
            "node-x",
            "--events",
            "lifecycle",
            "--cgroup-root",
            os.path.join(cgtree.mount, cgtree.prefix),
            "--duration",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs = []
    try:
        assert agent.stderr is not None
        for line in agent.stderr:
            if "attached" in line:
                break
        else:
            raise AssertionError(f"agent did not attach: rc={agent.wait()}")
        srv = spawn_in_cgroup(cg_a, python_argv(SERVER, veth.ip_a, str(PORT)), netns=veth.ns_a)
        procs.append(srv)
        assert srv.stdout is not None and srv.stdout.readline().startswith("LISTEN")
        cli = spawn_in_cgroup(cg_b, python_argv(CLIENT, veth.ip_a, str(PORT)), netns=veth.ns_b)
        procs.append(cli)
        read_conn(cli)
        read_conn(srv)
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
            p.wait(5)
        time.sleep(0.5)
        agent.send_signal(signal.SIGINT)
        out, err = agent.communicate(timeout=20)
        assert agent.returncode == 0, err
        events: list[dict[str, Any]] = [json.loads(x) for x in out.splitlines() if x.strip()]
        ends = {
            (e["local"].get("namespace"), e["local"].get("name"), e["remote"].get("namespace"), e["remote"].get("name"))
            for e in events
            if "lifecycle" in e
        }
        assert ends == {("payments", "api-0", "checkout", "web-0"), ("checkout", "web-0", "payments", "api-0")}
        assert {e["local"]["kind"] for e in events} == {"POD"}
    finally:
        for p in procs:
            stop(p)
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
