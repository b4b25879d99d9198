"""The agent's seccomp profile: a runtime's default profile plus one reviewed delta.

containers-common's default profile (podman, and CRI-O, which builds in the same file) allows
`bpf` and `perf_event_open` only to containers holding CAP_SYS_ADMIN, and answers EPERM to the
rest. Moby's profile (Docker; containerd generates the same rules) also allows `bpf` to holders
of CAP_BPF and `perf_event_open` to holders of CAP_PERFMON, the capabilities Linux 5.8 split out
of CAP_SYS_ADMIN for exactly these calls. The agent holds only CAP_BPF and CAP_PERFMON, so under
containers-common's profile it fails with "could not open bpf map: ... Operation not permitted".

`with_bpf_caps(profile)` applies moby's two rules to any profile in the containers/moby JSON
format, and nothing else:
  1. allow `bpf` when the container has CAP_BPF, `perf_event_open` when it has CAP_PERFMON;
  2. drop those two calls from explicit "deny unless CAP_SYS_ADMIN" rules, and deny each again
     unless CAP_SYS_ADMIN *or* its own capability is held (containers-common lists the denial
     explicitly to return EPERM rather than the default ENOSYS; that errno is kept).
Every other rule, the default action and the architectures are the input's, unchanged.

Used by the container test (tests/containers/test_containers.py) as the moby-equivalent profile, and
by operators to make the Localhost profile for CRI-O nodes (docs/deployment.md):

    python3 scripts/seccomp_profile.py /usr/share/containers/seccomp.json > tcpscope-agent.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

# syscall -> the capability Linux >= 5.8 checks for it besides CAP_SYS_ADMIN
SPLIT_CAPS = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}
CONTAINERS_COMMON_DEFAULT = Path("/usr/share/containers/seccomp.json")


def _caps(rule: dict[str, Any], key: str) -> list[str]:
    caps: list[str] = (rule.get(key) or {}).get("caps") or []
    return caps


def with_bpf_caps(profile: dict[str, Any]) -> dict[str, Any]:
    """A copy of `profile` that also allows bpf/perf_event_open with CAP_BPF/CAP_PERFMON."""
    out = copy.deepcopy(profile)
    rules: list[dict[str, Any]] = []
    denied: dict[str, dict[str, Any]] = {}  # syscall -> the explicit deny rule it was taken out of
    for rule in out["syscalls"]:
        split = [n for n in rule["names"] if n in SPLIT_CAPS]
        excluded = _caps(rule, "excludes")
        if (
            split
            and rule["action"] != "SCMP_ACT_ALLOW"
            and "CAP_SYS_ADMIN" in excluded
            and not any(SPLIT_CAPS[n] in excluded for n in split)
        ):
            for name in split:
                denied[name] = rule
            rule = {**rule, "names": [n for n in rule["names"] if n not in SPLIT_CAPS]}
            if not rule["names"]:
                continue
        rules.append(rule)
    for name, cap in SPLIT_CAPS.items():
        if any(
            r["action"] == "SCMP_ACT_ALLOW"
            and name in r["names"]
            and _caps(r, "includes") == [cap]
            and not r.get("args")
            for r in rules
        ):
            continue  # already there (moby's own profile, or a profile made by this script)
        rules.append(
            {
                "names": [name],
                "action": "SCMP_ACT_ALLOW",
                "args": [],
                "comment": f"tcpscope: {name} with {cap} (Linux >= 5.8), as moby's profile",
                "includes": {"caps": [cap]},
                "excludes": {},
            }
        )
        if name in denied:
            deny = copy.deepcopy(denied[name])
            deny.update(
                names=[name],
                comment=f"tcpscope: EPERM for {name} without CAP_SYS_ADMIN or {cap}",
                excludes={**deny.get("excludes", {}), "caps": [*_caps(deny, "excludes"), cap]},
            )
            rules.append(deny)
    out["syscalls"] = rules
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "base",
        nargs="?",
        type=Path,
        default=CONTAINERS_COMMON_DEFAULT,
        help=f"the runtime's default profile (default {CONTAINERS_COMMON_DEFAULT})",
    )
    args = ap.parse_args(argv)
    json.dump(with_bpf_caps(json.loads(args.base.read_text())), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
