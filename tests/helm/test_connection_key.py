"""The connection id key as the chart deploys it: one random key per release in a Secret, kept by
upgrades, mounted read-only into the agents alone, and handed to them as a file they accept."""

from __future__ import annotations

import base64
import shutil
import string
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from agent.kernel.connid import read_key_file
from tests.support.helm import CHART_DIR, KAFKA, VALUE_SETS, containers, env_of, find, render

MOUNT = "/etc/tcpscope/connection-key"


def _key(objects: list[dict[str, Any]]) -> bytes:
    secret = find(objects, "Secret", "-connection-key")
    assert secret["type"] == "Opaque" and set(secret["data"]) == {"key"}
    return base64.b64decode(secret["data"]["key"])


def test_the_chart_makes_a_random_key_and_gives_it_to_every_agent_as_a_file(tmp_path: Path) -> None:
    objects = render()
    key = _key(objects)
    assert len(key) == 48 and set(key.decode()) <= set(string.ascii_letters + string.digits)
    # an offline render cannot look the Secret up: each makes its own key (hence the lookup)
    assert _key(render()) != key
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["connection-key"]["secret"] == {
        "secretName": "tcpscope-connection-key",
        "defaultMode": 0o400,
        "items": [{"key": "key", "path": "key"}],
    }
    (agent,) = pod["containers"]
    assert {"name": "connection-key", "mountPath": MOUNT, "readOnly": True} in agent["volumeMounts"]
    assert env_of(agent)["TCPSCOPE_CONNECTION_KEY_FILE"] == f"{MOUNT}/key"
    # the agent takes the key as it is mounted
    f = tmp_path / "key"
    f.write_bytes(key)
    assert read_key_file(str(f)) == key


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_only_the_agent_container_reads_the_key_and_no_role_reaches_it(name: str) -> None:
    objects = render(VALUE_SETS[name])
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "Role"):
            assert all("secrets" not in rule.get("resources", []) for rule in obj["rules"]), obj["metadata"]
        if obj["kind"] not in ("DaemonSet", "Deployment"):
            continue
        for c in containers(obj["spec"]["template"]["spec"]):
            reads = [m for m in c.get("volumeMounts", []) if m["name"] == "connection-key"]
            assert reads == (
                [{"name": "connection-key", "mountPath": MOUNT, "readOnly": True}] if c["name"] == "agent" else []
            )


def test_an_upgrade_keeps_the_key_it_finds(tmp_path: Path) -> None:
    """What `lookup` returns on an upgrade is the Secret as the API serves it: its key is kept. Helm
    renders offline here, so the chart's helper is handed such an object directly, in a copy of the
    chart, and the real template is checked to hand it lookup's answer."""
    template = (CHART_DIR / "templates" / "agent-connection-key.yaml").read_text()
    assert '(dict "existing" (lookup "v1" "Secret" .Release.Namespace $name))' in template
    chart_dir = tmp_path / "tcpscope"
    shutil.copytree(CHART_DIR, chart_dir)
    kept = base64.b64encode(b"the key this release made at install").decode()
    (chart_dir / "templates" / "probe-key.yaml").write_text(
        'kept: {{ include "tcpscope.agent.connectionKeyData" (dict "existing" (dict "apiVersion" "v1" '
        f'"kind" "Secret" "data" (dict "key" "{kept}"))) }}}}\n'
        'fresh: {{ include "tcpscope.agent.connectionKeyData" (dict "existing" (dict)) }}\n'
    )
    out = helm.Chart.load(chart_dir).render(values={}, name="tcpscope", namespace="observability", is_upgrade=True)
    lines = dict(line.split(": ", 1) for line in out["tcpscope/templates/probe-key.yaml"].strip().splitlines())
    assert lines["kept"] == kept
    assert len(base64.b64decode(lines["fresh"])) == 48


def test_a_secret_of_ones_own_replaces_the_charts() -> None:
    objects = render(VALUE_SETS["existing-connection-key"])
    assert not [o for o in objects if o["kind"] == "Secret"]
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["connection-key"]["secret"]["secretName"] == "cluster-ids"
    assert vols["connection-key"]["secret"]["items"] == [{"key": "k", "path": "key"}]
    # the collector never sees it
    coll = find(render(KAFKA), "Deployment")["spec"]["template"]["spec"]
    assert "connection-key" not in {v["name"] for v in coll["volumes"]}


def test_schema_rejects_a_secret_name_kubernetes_would() -> None:
    with pytest.raises(helm.HelmError, match="existingSecret"):
        helm.Chart.load(CHART_DIR).validate_schema({"agent": {"connectionKey": {"existingSecret": "Not_A_Name"}}})
