"""The chart turns agent authentication on by default with no user setup: projected
ServiceAccount tokens on the agents, TokenReview with the RBAC it needs on the collector, and a
hostPath state directory so a crashed agent's window is reported by the next one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.helm import KAFKA, env_of, find, merge, render, render_raw


def _pods(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    objects = render(values)
    agent = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    coll = find(objects, "Deployment")["spec"]["template"]["spec"]
    return agent, coll, objects


def test_default_stream_authenticates_agents_by_projected_token_and_tokenreview(tmp_path: Path) -> None:
    agent, coll, objects = _pods(KAFKA)
    a = agent["containers"][0]
    a_env = env_of(a)
    assert a_env["TCPSCOPE_TOKEN_FILE"] == "/var/run/secrets/tcpscope/token"
    vols = {v["name"]: v for v in agent["volumes"]}
    assert vols["collector-token"]["projected"] == {
        "defaultMode": 0o400,
        "sources": [
            {"serviceAccountToken": {"audience": "tcpscope-collector", "expirationSeconds": 3600, "path": "token"}}
        ],
    }
    mounts = {m["name"]: m for m in a["volumeMounts"]}
    assert mounts["collector-token"] == {
        "name": "collector-token",
        "mountPath": "/var/run/secrets/tcpscope",
        "readOnly": True,
    }
    c_env = env_of(coll["containers"][0])
    assert (
        c_env["TCPSCOPE_TOKENREVIEW"],
        c_env["TCPSCOPE_TOKEN_AUDIENCE"],
        c_env["TCPSCOPE_AGENT_SERVICE_ACCOUNTS"],
    ) == ("true", "tcpscope-collector", "observability/tcpscope-agent")
    assert "TCPSCOPE_TOKEN_FILE" not in c_env  # no shared secret anywhere
    assert coll["automountServiceAccountToken"] is True
    role = find(objects, "ClusterRole", "collector")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        # enrichment.serviceBackends: Services and EndpointSlices, read-only (docs/services.md)
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    ]
    binding = find(objects, "ClusterRoleBinding", "collector")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tcpscope-collector", "namespace": "observability"}
    ]
    # the collector accepts the environment the chart gives it
    from collector.config import CollectorConfig

    cfg = CollectorConfig.from_args([], env={k: v for k, v in c_env.items() if k.startswith("TCPSCOPE_")})
    assert cfg.tokenreview and cfg.agent_service_accounts == ("observability/tcpscope-agent",)


def test_state_dir_is_the_one_writable_host_directory() -> None:
    agent, _, _ = _pods(KAFKA)
    a = agent["containers"][0]
    assert env_of(a)["TCPSCOPE_STATE_DIR"] == "/var/lib/tcpscope"
    vols = {v["name"]: v for v in agent["volumes"]}
    assert vols["state"]["hostPath"] == {"path": "/var/lib/tcpscope", "type": "DirectoryOrCreate"}
    host = {v["name"] for v in agent["volumes"] if "hostPath" in v}
    writable_host = {m["name"] for m in a["volumeMounts"] if m["name"] in host and not m.get("readOnly")}
    assert writable_host == {"state"}
    agent, _, _ = _pods(merge(KAFKA, {"agent": {"stateDir": ""}}))
    assert "TCPSCOPE_STATE_DIR" not in env_of(agent["containers"][0])
    assert "state" not in {v["name"] for v in agent["volumes"]}


def test_shared_token_is_an_explicit_alternative() -> None:
    shared = merge(
        KAFKA,
        {
            "auth": {"token": {"enabled": True, "secretName": "s"}, "serviceAccountToken": {"enabled": False}},
            "enrichment": {"serviceBackends": False},  # else the collector reads Services and EndpointSlices
        },
    )
    agent, coll, objects = _pods(shared)
    assert env_of(agent["containers"][0])["TCPSCOPE_TOKEN_FILE"] == "/etc/tcpscope/token/token"
    assert "TCPSCOPE_TOKENREVIEW" not in env_of(coll["containers"][0])
    assert "collector-token" not in {v["name"] for v in agent["volumes"]}
    assert not [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("collector")]
    with pytest.raises(Exception, match="alternatives"):
        render_raw(merge(KAFKA, {"auth": {"token": {"enabled": True, "secretName": "s"}}}))
