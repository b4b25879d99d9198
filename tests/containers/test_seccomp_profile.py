"""scripts/seccomp_profile.py: the agent's delta over a runtime's default seccomp profile.

Checked against containers-common's real profile (the one CRI-O and podman use), by evaluating the
rules the way podman and CRI-O pick them (a rule applies when the container holds every `includes`
cap and none of the `excludes` caps), then comparing the applicable actions call by call.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from scripts.seccomp_profile import CONTAINERS_COMMON_DEFAULT, with_bpf_caps

AGENT_CAPS = {"CAP_BPF", "CAP_PERFMON"}


@pytest.fixture(scope="module")
def default() -> dict[str, Any]:
    assert CONTAINERS_COMMON_DEFAULT.is_file(), "containers-common's seccomp.json is missing (make images)"
    profile: dict[str, Any] = json.loads(CONTAINERS_COMMON_DEFAULT.read_text())
    return profile


def verdict(profile: dict[str, Any], syscall: str, caps: set[str]) -> str:
    """The actions of the rules that apply to an argument-less call of `syscall` by a container
    holding `caps` (the default action when none does), e.g. "SCMP_ACT_ERRNO:1" for EPERM."""
    actions = set()
    for r in profile["syscalls"]:
        if syscall not in r["names"] or r.get("args"):
            continue
        inc, exc = (r.get("includes") or {}), (r.get("excludes") or {})
        if set(inc.get("caps") or []) - caps or set(exc.get("caps") or []) & caps:
            continue
        actions.add(r["action"] if r["action"] == "SCMP_ACT_ALLOW" else f"{r['action']}:{r.get('errnoRet')}")
    return "|".join(sorted(actions)) or f"{profile['defaultAction']}:{profile.get('defaultErrnoRet')}"


def test_containers_common_denies_the_agent_and_the_delta_allows_it(default: dict[str, Any]) -> None:
    ours = with_bpf_caps(default)
    for call, cap in (("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")):
        assert verdict(default, call, AGENT_CAPS) == "SCMP_ACT_ERRNO:1"  # the bug: EPERM
        assert verdict(ours, call, AGENT_CAPS) == "SCMP_ACT_ALLOW"
        assert verdict(ours, call, {cap}) == "SCMP_ACT_ALLOW"
        assert verdict(ours, call, AGENT_CAPS - {cap}) == "SCMP_ACT_ERRNO:1"  # still EPERM, not ENOSYS
        assert verdict(ours, call, set()) == "SCMP_ACT_ERRNO:1"
        assert verdict(ours, call, {"CAP_SYS_ADMIN"}) == verdict(default, call, {"CAP_SYS_ADMIN"}) == "SCMP_ACT_ALLOW"


def test_nothing_else_changes(default: dict[str, Any]) -> None:
    ours = with_bpf_caps(default)
    assert {k: v for k, v in ours.items() if k != "syscalls"} == {k: v for k, v in default.items() if k != "syscalls"}
    calls = {n for r in default["syscalls"] for n in r["names"]}
    caps_seen = {
        c for r in default["syscalls"] for k in ("includes", "excludes") for c in ((r.get(k) or {}).get("caps") or [])
    }
    for call in sorted(calls - {"bpf", "perf_event_open"}):
        for caps in (set(), AGENT_CAPS, caps_seen):
            assert verdict(ours, call, caps) == verdict(default, call, caps), (call, caps)
    # the delta is four rules: two allows, two EPERM denials taken out of the CAP_SYS_ADMIN one
    added = [r for r in ours["syscalls"] if r["comment"].startswith("tcpscope:")]
    assert [(r["names"], r["action"], r["includes"], r["excludes"].get("caps")) for r in added] == [
        (["bpf"], "SCMP_ACT_ALLOW", {"caps": ["CAP_BPF"]}, None),
        (["bpf"], "SCMP_ACT_ERRNO", {}, ["CAP_SYS_ADMIN", "CAP_BPF"]),
        (["perf_event_open"], "SCMP_ACT_ALLOW", {"caps": ["CAP_PERFMON"]}, None),
        (["perf_event_open"], "SCMP_ACT_ERRNO", {}, ["CAP_SYS_ADMIN", "CAP_PERFMON"]),
    ]
    assert len(ours["syscalls"]) == len(default["syscalls"]) + 4


def test_idempotent_and_input_untouched(default: dict[str, Any]) -> None:
    before = copy.deepcopy(default)
    once = with_bpf_caps(default)
    assert default == before
    assert with_bpf_caps(once) == once


def test_a_moby_shaped_profile_is_left_as_it_is() -> None:
    moby = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_BPF"]}},
            {"names": ["perf_event_open"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_PERFMON"]}},
        ],
    }
    assert with_bpf_caps(moby) == moby
    assert verdict(moby, "bpf", AGENT_CAPS) == "SCMP_ACT_ALLOW"
