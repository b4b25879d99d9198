"""cgroup path parsing (pure) and the inode -> path map over a real cgroup2 tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.enrich.cgroups import CgroupIdentity, CgroupMap, find_cgroup2_mount, parse_cgroup_path
from tests.support.kubepods import CgroupTree, new_container_id, new_uid

UID = "3f1b2c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
U_ = UID.replace("-", "_")
CID = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "path",
    [
        # systemd driver, v2, each QoS class and runtime
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/cri-containerd-{CID}.scope",
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice/crio-{CID}.scope",
        f"/kubepods.slice/kubepods-pod{U_}.slice/docker-{CID}.scope",  # guaranteed: directly under kubepods
        # cgroupfs driver (v1 and v2 look the same below the mount)
        f"/kubepods/burstable/pod{UID}/{CID}",
        f"/kubepods/besteffort/pod{UID}/{CID}",
        f"/kubepods/pod{UID}/{CID}",
        f"/kubepods/pod{UID}/crio-{CID}",
        # nested kubelets (kind, the simulator): any prefix before kubepods
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{U_}.slice/cri-containerd-{CID}.scope",
        f"/tcpscope-sim-ab12/node-1/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{U_}.slice/cri-containerd-{CID}.scope",
        f"/system.slice/docker-{'f' * 64}.scope/kubepods/burstable/pod{UID}/{CID}",
    ],
)
def test_parse_pod_container_paths(path: str) -> None:
    assert parse_cgroup_path(path) == CgroupIdentity(UID, CID)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice", CgroupIdentity(UID, "")),
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/crio-conmon-{CID}.scope",
            CgroupIdentity(UID, ""),
        ),
        (f"/kubepods/burstable/pod{UID.upper()}/{CID}", CgroupIdentity(UID, CID)),
        ("/", CgroupIdentity()),
        ("/system.slice/sshd.service", CgroupIdentity()),
        ("/user.slice/user-0.slice/session-1.scope", CgroupIdentity()),
        ("/kubepods.slice/kubepods-burstable.slice", CgroupIdentity()),
        (f"/system.slice/pod{UID}/{CID}", CgroupIdentity()),  # a pod-looking name outside kubepods
    ],
)
def test_parse_non_container_paths(path: str, expected: CgroupIdentity) -> None:
    assert parse_cgroup_path(path) == expected


def test_find_cgroup2_mount(tmp_path: Path) -> None:
    hybrid = tmp_path / "hybrid"
    hybrid.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert find_cgroup2_mount(str(hybrid)) == "/sys/fs/cgroup/unified"
    pure = tmp_path / "pure"
    pure.write_text("35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n")
    assert find_cgroup2_mount(str(pure)) == "/sys/fs/cgroup"
    assert os.path.exists(os.path.join(find_cgroup2_mount(), "cgroup.procs"))


def test_map_finds_new_cgroups_by_inode_and_keeps_removed_ones(cgtree: CgroupTree) -> None:
    t = [0.0]
    m = CgroupMap(min_rescan_interval=0.5, periodic_rescan=60, gone_ttl=10, clock=lambda: t[0])
    uid, cid = new_uid(), new_container_id()
    d = cgtree.container(uid, cid, qos="burstable")
    ino = os.stat(d).st_ino
    # created after the first scan: still within the rescan rate limit -> a miss, no walk
    scans = m.counters["cgroup.scans"]
    assert m.lookup(ino) is None
    assert m.counters["cgroup.scans"] == scans
    t[0] = 1.0  # past the rate limit: the miss triggers a rescan
    path = m.lookup(ino)
    assert path == cgtree.rel(d)
    assert m.counters["cgroup.scans"] == scans + 1
    assert parse_cgroup_path(path) == CgroupIdentity(uid, cid)
    cgtree.remove(d)
    t[0] = 2.0
    m.rescan()
    assert m.lookup(ino) == cgtree.rel(d)  # gone, but a late event still resolves
    assert m.stats()["cgroup.gone_hits"] == 1
    t[0] = 13.0
    m.rescan()
    assert m.lookup(ino) is None
    assert m.stats()["cgroup.gone_evicted"] >= 1


def test_map_is_bounded_and_counts_what_it_skips(cgtree: CgroupTree) -> None:
    for _ in range(3):
        cgtree.container(new_uid(), new_container_id())
    full = CgroupMap()
    small = CgroupMap(max_entries=5)
    assert len(small) == 5
    assert small.stats()["cgroup.skipped_over_capacity"] == len(full) - 5
