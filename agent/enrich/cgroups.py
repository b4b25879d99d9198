"""cgroup v2 id -> cgroup path -> (pod uid, container id).

The kernel gives each event the cgroup v2 id of the socket's cgroup, which is the inode number of
that cgroup's directory in the cgroup2 filesystem. `CgroupMap` keeps inode -> path by walking the
cgroup2 tree; it rescans when an id is missing (rate-limited, so a burst of misses costs one walk)
and periodically, and keeps paths of cgroups that disappeared for a while so late events from an
exited container still resolve. `parse_cgroup_path` is pure: it recognises the kubelet's naming for
both cgroup drivers, every QoS class and the common runtimes, under any prefix (kind and other
nested kubelets put their tree below their own cgroup).
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# pod<uid>: the systemd driver writes the uid with '_' for '-', the cgroupfs driver with '-'.
_UID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
# systemd names the pod slice after its parents ('kubepods-burstable-pod<uid>.slice'); nested kubelets
# add their own prefix ('kubelet-kubepods-besteffort-pod<uid>.slice'); cgroupfs uses 'pod<uid>'.
_POD_SEG = re.compile(rf"^(?:[\w.-]*-)?pod({_UID})(?:\.slice)?$")
# container segment: systemd driver '<runtime>-<64hex>.scope' (cri-containerd, crio, docker);
# cgroupfs driver '<64hex>' or 'crio-<64hex>' / 'docker-<64hex>'; crio may add a '-conmon-' scope
# for its monitor process, which is not the container.
_CTR_SEG = re.compile(r"^(?:(?:cri-containerd|crio|docker|containerd|cri-o)-)?([0-9a-f]{64})(?:\.scope)?$")


@dataclass(frozen=True)
class CgroupIdentity:
    """What a cgroup path says about its owner; pod_uid is '' for host cgroups."""

    pod_uid: str = ""
    container_id: str = ""

    @property
    def in_pod(self) -> bool:
        return bool(self.pod_uid)


HOST = CgroupIdentity()


def parse_cgroup_path(path: str) -> CgroupIdentity:
    """Pod uid (dashed, lower case) and container id (64 hex, '' for the pod-level cgroup) from a path.

    Accepts cgroup v1 and v2 paths, the systemd driver
    (`.../kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`)
    and the cgroupfs driver (`.../kubepods/besteffort/pod<uid>/<id>`), guaranteed pods directly under
    kubepods, and any prefix before the kubepods segment. Anything else is a host cgroup.
    """
    parts = [p for p in path.split("/") if p]
    seen_kubepods = False
    for i, seg in enumerate(parts):
        if not seen_kubepods:
            if "kubepods" in seg:
                seen_kubepods = True
            else:
                continue
        m = _POD_SEG.match(seg)
        if not m:
            continue
        uid = m.group(1).replace("_", "-").lower()
        cid = ""
        if i + 1 < len(parts):
            c = _CTR_SEG.match(parts[i + 1])
            if c:
                cid = c.group(1)
        return CgroupIdentity(uid, cid)
    return HOST


def find_cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str:
    """The cgroup2 mount point: /sys/fs/cgroup on pure v2 hosts, /sys/fs/cgroup/unified on hybrid ones."""
    with open(mountinfo) as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split(" ", 1)[0] == "cgroup2":
                return pre.split(" ")[4].replace("\\040", " ")
    raise FileNotFoundError("no cgroup2 filesystem mounted (see /proc/self/mountinfo)")


class CgroupMap:
    """inode -> path for the cgroup2 tree, current within `min_rescan_interval` of a miss.

    `lookup` returns the path relative to the mount ('/kubepods.slice/...'), or None. Bounded to
    `max_entries` live entries (the rest of a walk is skipped and counted) plus `max_gone` paths of
    removed cgroups kept for `gone_ttl` seconds.
    """

    def __init__(
        self,
        root: str | None = None,
        *,
        max_entries: int = 65536,
        max_gone: int = 8192,
        gone_ttl: float = 120.0,
        min_rescan_interval: float = 0.25,
        periodic_rescan: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = (root or find_cgroup2_mount()).rstrip("/") or "/"
        self.max_entries = max_entries
        self.max_gone = max_gone
        self.gone_ttl = gone_ttl
        self.min_rescan_interval = min_rescan_interval
        self.periodic_rescan = periodic_rescan
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._gone: OrderedDict[int, tuple[str, float]] = OrderedDict()
        self._last_scan = -1e18
        self.counters: dict[str, int] = {
            "cgroup.scans": 0,
            "cgroup.hits": 0,
            "cgroup.misses": 0,
            "cgroup.gone_hits": 0,
            "cgroup.skipped_over_capacity": 0,
            "cgroup.gone_evicted": 0,
        }
        self.rescan()

    def __len__(self) -> int:
        return len(self._paths)

    def rescan(self) -> None:
        """Walk the tree; cgroups that vanished move to the 'gone' LRU."""
        now = self._clock()
        self._last_scan = now
        self.counters["cgroup.scans"] += 1
        fresh: dict[int, str] = {}
        skipped = 0
        stack = [self.root]
        while stack:
            d = stack.pop()
            try:
                st_ino = os.stat(d).st_ino
                it = os.scandir(d)
            except OSError:
                continue  # removed while we walked
            if len(fresh) < self.max_entries:
                rel = d[len(self.root) :] or "/"
                fresh[st_ino] = rel if rel.startswith("/") else "/" + rel
            else:
                skipped += 1
            with it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                    except OSError:
                        continue
        self.counters["cgroup.skipped_over_capacity"] += skipped
        for ino, path in self._paths.items():
            if ino not in fresh:
                self._gone[ino] = (path, now)
                self._gone.move_to_end(ino)
        for ino in fresh:
            self._gone.pop(ino, None)
        self._paths = fresh
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._gone:
            _ino, (_, t) = next(iter(self._gone.items()))
            if len(self._gone) > self.max_gone or now - t > self.gone_ttl:
                self._gone.popitem(last=False)
                self.counters["cgroup.gone_evicted"] += 1
            else:
                break

    def lookup(self, cgroup_id: int) -> str | None:
        now = self._clock()
        if now - self._last_scan >= self.periodic_rescan:
            self.rescan()
        p = self._paths.get(cgroup_id)
        if p is None and now - self._last_scan >= self.min_rescan_interval:
            self.rescan()
            p = self._paths.get(cgroup_id)
        if p is not None:
            self.counters["cgroup.hits"] += 1
            return p
        g = self._gone.get(cgroup_id)
        if g is not None:
            self.counters["cgroup.gone_hits"] += 1
            return g[0]
        self.counters["cgroup.misses"] += 1
        return None

    def stats(self) -> dict[str, int]:
        return {**self.counters, "cgroup.entries": len(self._paths), "cgroup.gone_entries": len(self._gone)}
