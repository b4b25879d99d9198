"""Least privilege as rendered: capabilities, root filesystem, host mounts, RBAC, and schema guards."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.support.helm import CHART_DIR, KAFKA, VALUE_SETS, containers, env_of, find, merge, render

# The list tests/agent/test_capabilities.py proves on a real kernel.
AGENT_CAPS = ["BPF", "PERFMON"]


def _agent_pod(values: dict[str, Any] | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = find(render(values), "DaemonSet")["spec"]["template"]["spec"]
    return pod


def _agent(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return next(c for c in _agent_pod(values)["containers"] if c["name"] == "agent")


@pytest.mark.parametrize("name", sorted(n for n in VALUE_SETS if n != "privileged"))
def test_no_container_is_privileged_unless_asked(name: str) -> None:
    for obj in render(VALUE_SETS[name]):
        if obj["kind"] not in ("DaemonSet", "Deployment"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod.get("hostPID", False) is False
        assert pod.get("hostNetwork", False) is False
        assert pod.get("hostIPC", False) is False
        for c in containers(pod):
            sc = c["securityContext"]
            assert sc["privileged"] is False, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]


def test_agent_has_exactly_the_proven_capabilities() -> None:
    sc = _agent()["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": AGENT_CAPS}
    assert sc["runAsUser"] == 0  # added capabilities are only effective for uid 0 in Kubernetes
    # the one default every runtime accepts (tests/containers/test_containers.py runs each choice)
    assert sc["seccompProfile"] == {"type": "Unconfined"}
    assert sc["appArmorProfile"] == {"type": "RuntimeDefault"}


def test_unconfined_seccomp_is_the_agent_containers_alone() -> None:
    pod = _agent_pod(KAFKA)
    assert "seccompProfile" not in pod.get("securityContext", {})  # not pod-wide
    init = pod["initContainers"][0]
    assert init["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    coll = find(render(KAFKA), "Deployment")["spec"]["template"]["spec"]
    assert coll["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all("seccompProfile" not in c["securityContext"] for c in coll["containers"])


@pytest.mark.parametrize(
    "profile", [{"type": "RuntimeDefault"}, {"type": "Localhost", "localhostProfile": "tcpscope-agent.json"}]
)
def test_documented_seccomp_choices_render_as_given(profile: dict[str, str]) -> None:
    assert _agent({"agent": {"seccompProfile": profile}})["securityContext"]["seccompProfile"] == profile


def test_init_and_collector_containers_have_no_capabilities_and_run_as_non_root() -> None:
    init = _agent_pod()["initContainers"][0]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert init["securityContext"]["runAsNonRoot"] is True
    no_api = merge(KAFKA, NO_SA_TOKEN, {"enrichment": {"serviceBackends": False}})
    coll = find(render(no_api), "Deployment")["spec"]["template"]["spec"]
    assert coll["securityContext"]["runAsNonRoot"] is True
    assert coll["securityContext"]["runAsUser"] == 10001
    assert coll["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # no API access unless remote=collector, Service backends or TokenReview
    assert coll["automountServiceAccountToken"] is False
    coll = find(render(merge(KAFKA, NO_SA_TOKEN)), "Deployment")["spec"]["template"]["spec"]
    assert coll["automountServiceAccountToken"] is True  # serviceBackends, the default


def test_privileged_fallback_is_explicit_and_replaces_the_list() -> None:
    sc = _agent(VALUE_SETS["privileged"])["securityContext"]
    assert sc["privileged"] is True
    assert sc["allowPrivilegeEscalation"] is True  # the API rejects privileged with it false
    assert "capabilities" not in sc
    assert sc["readOnlyRootFilesystem"] is True


def test_every_host_mount_is_read_only_and_only_the_expected_ones() -> None:
    pod = _agent_pod()
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {
        "tracefs": "/sys/kernel/tracing",
        "cgroup": "/sys/fs/cgroup",
        "btf": "/sys/kernel/btf",
        "host-modules": "/lib/modules",
        "host-usr-src": "/usr/src",
    }
    for c in containers(pod):
        for m in c["volumeMounts"]:
            if m["name"] in host:
                assert m.get("readOnly") is True, (c["name"], m)
    agent_mounts = {m["mountPath"]: m for m in _agent()["volumeMounts"]}
    # the header links live in an emptyDir: the host's /lib/modules is never written
    assert agent_mounts["/lib/modules"]["name"] == "modules"
    assert {v["name"]: v for v in pod["volumes"]}["modules"]["emptyDir"] == {"sizeLimit": "1Mi"}
    # writable scratch only in emptyDirs
    writable = {p for p, m in agent_mounts.items() if not m.get("readOnly")}
    assert writable == {"/tmp", "/var/tmp"}


def test_debugfs_only_on_request() -> None:
    pod = _agent_pod(VALUE_SETS["minimal-mounts"])
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {
        "tracefs": "/sys/kernel/tracing",
        "debugfs": "/sys/kernel/debug",
        "cgroup": "/sys/fs/cgroup",
        "btf": "/sys/kernel/btf",
    }
    assert "initContainers" not in pod


def test_agent_runs_everywhere_with_a_node_priority() -> None:
    pod = _agent_pod()
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    res = _agent()["resources"]
    assert set(res) == {"requests", "limits"}
    assert set(res["limits"]) == {"cpu", "memory"}
    node_name = next(e for e in _agent()["env"] if e["name"] == "NODE_NAME")
    assert node_name["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


Rule = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def _rules(objects: list[dict[str, Any]], suffix: str) -> list[Rule]:
    role = find(objects, "ClusterRole", suffix)
    return [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]]


READ = ("get", "list", "watch")
NO_SA_TOKEN = {"auth": {"serviceAccountToken": {"enabled": False}}}
REVIEW: list[Rule] = [(("authentication.k8s.io",), ("tokenreviews",), ("create",))]
# enrichment.serviceBackends (the default): the collector reads Services and EndpointSlices
SLICES: list[Rule] = [(("discovery.k8s.io",), ("endpointslices",), READ)]
BACKENDS: list[Rule] = [(("",), ("services",), READ), *SLICES]


@pytest.mark.parametrize(
    ("remote", "backends", "agent_rules", "collector_rules"),
    [
        (
            "agent",
            True,
            [(("",), ("pods",), READ), (("",), ("services", "nodes"), READ)],
            [(("",), ("pods",), ("get",)), *BACKENDS, *REVIEW],
        ),
        (
            "agent",
            False,
            [(("",), ("pods",), READ), (("",), ("services", "nodes"), READ)],
            [(("",), ("pods",), ("get",)), *REVIEW],
        ),
        (
            "collector",
            True,
            [(("",), ("pods",), READ)],
            [(("",), ("pods", "services", "nodes"), READ), *SLICES, *REVIEW],
        ),
        ("collector", False, [(("",), ("pods",), READ)], [(("",), ("pods", "services", "nodes"), READ), *REVIEW]),
        ("off", True, [(("",), ("pods",), READ)], [(("",), ("pods",), ("get",)), *BACKENDS, *REVIEW]),
        ("off", False, [(("",), ("pods",), READ)], [(("",), ("pods",), ("get",)), *REVIEW]),
    ],
)
def test_rbac_is_read_only_and_follows_remote_enrichment(
    remote: str, backends: bool, agent_rules: list[Any], collector_rules: list[Any] | None
) -> None:
    # the agents' rules never depend on serviceBackends: the collector alone reads EndpointSlices
    objects = render(merge(KAFKA, {"enrichment": {"remote": remote, "serviceBackends": backends}}))
    assert _rules(objects, "agent") == agent_rules
    roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role")]
    if collector_rules is None:
        assert [r["metadata"]["name"] for r in roles] == ["tcpscope-agent"]
    else:
        assert _rules(objects, "collector") == collector_rules
        dep = find(objects, "Deployment")["spec"]["template"]["spec"]
        assert dep["automountServiceAccountToken"] is True
    for b in (o for o in objects if o["kind"] == "ClusterRoleBinding"):
        assert b["roleRef"]["name"] == b["metadata"]["name"]
        assert [s["name"] for s in b["subjects"]] == [b["metadata"]["name"]]
    agent_env = {
        e["name"]: e.get("value")
        for e in find(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert agent_env["TCPSCOPE_RESOLVE_REMOTE"] == ("true" if remote == "agent" else "false")
    coll_env = {
        e["name"]: e.get("value")
        for e in find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    # exactly one side resolves remote ends: the collector only with remote=collector, with the same labels
    assert coll_env["TCPSCOPE_RESOLVE_REMOTE"] == ("true" if remote == "collector" else "false")
    assert coll_env["TCPSCOPE_RESOLVE_BACKENDS"] == ("true" if backends else "false")
    if remote == "collector":
        assert (
            coll_env["TCPSCOPE_LABELS"]
            == agent_env["TCPSCOPE_LABELS"]
            == "app,app.kubernetes.io/name,app.kubernetes.io/component,version"
        )
    else:
        assert "TCPSCOPE_LABELS" not in coll_env


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"agent": {"capabilities": ["SYS_PTRACE"]}}, "capabilities"),
        ({"agent": {"capabilities": ["ALL"]}}, "capabilities"),
        ({"agent": {"privileged": "yes"}}, "privileged"),
        ({"agent": {"stdout": "yaml"}}, "stdout"),
        ({"agent": {"events": ["lifecycle", "bogus"]}}, "events"),
        ({"agent": {"events": []}}, "events"),
        ({"agent": {"ports": [0]}}, "ports"),
        ({"agent": {"ringBufferKB": 1000}}, "ringBufferKB"),
        ({"agent": {"readOnlyRootFileSystem": False}}, "readOnlyRootFileSystem"),
        ({"enrichment": {"remote": "both"}}, "remote"),
        ({"enrichment": {"remote": "agent", "serviceBackends": "yes"}}, "serviceBackends"),
        ({"metrics": {"traffic": {"watchedPeers": ["pod", "host"]}}}, "watchedPeers"),
        ({"collector": {"enabled": True}}, "bootstrap"),
        ({"collector": {"kafka": {"bootstrap": "no-port"}}}, "bootstrap"),
        ({"collector": {"kafka": {"securityProtocol": "TLS"}}}, "securityProtocol"),
        (merge(KAFKA, {"collector": {"kafka": {"securityProtocol": "SASL_SSL"}}}), "saslMechanism"),
        ({"tls": {"enabled": True}}, "Secret"),
        ({"auth": {"token": {"enabled": True}}}, "secretName"),
        ({"collector": {"hpa": {"targetCPUUtilizationPercentage": 150}}}, "targetCPUUtilizationPercentage"),
        (merge(KAFKA, {"collector": {"kafka": {"recordLayout": "batch"}}}), "recordLayout"),
        ({"agent": {"seccompProfile": {"type": "Localhost"}}}, "localhostProfile"),
        ({"agent": {"seccompProfile": {"type": "Localhost", "localhostProfile": ""}}}, "localhostProfile"),
        ({"agent": {"seccompProfile": {"type": "RuntimeDefault", "localhostProfile": "x.json"}}}, "seccompProfile"),
        ({"agent": {"seccompProfile": {"type": "unconfined"}}}, "seccompProfile"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], needle: str) -> None:
    chart = helm.Chart.load(CHART_DIR)
    with pytest.raises(helm.HelmError) as err:
        chart.validate_schema(values)
    assert needle in str(err.value)
    with pytest.raises(helm.HelmError):
        chart.render(values=values, name="tcpscope", namespace="x")


def test_schema_accepts_every_tested_value_set() -> None:
    chart = helm.Chart.load(CHART_DIR)
    for values in VALUE_SETS.values():
        chart.validate_schema(values)


@pytest.mark.parametrize("layout", ["event", "packed"])
def test_kafka_record_layout_reaches_the_collector(layout: str) -> None:
    values = merge(KAFKA, {"collector": {"kafka": {"recordLayout": layout}}})
    deployment = find(render(values), "Deployment", "collector")
    (container,) = [c for c in containers(deployment["spec"]["template"]["spec"]) if c["name"] == "collector"]
    assert env_of(container)["TCPSCOPE_RECORD_LAYOUT"] == layout
