"""Render the tcpscope chart with the real Helm engine (helm-python-sdk) and parse the manifests.

Shared by the chart tests: `render(values)` returns every object as a dict, parsed with a YAML
loader that refuses duplicate keys (Helm itself would silently keep the last one).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "tcpscope"
RELEASE = "tcpscope"
NAMESPACE = "observability"

# A value set that turns the collector on: the one value it requires.
KAFKA = {"collector": {"enabled": True, "kafka": {"bootstrap": "kafka-0.kafka:9092,kafka-1.kafka:9092"}}}


def merge(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge value dicts, later ones winning (like repeated `-f` files)."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, Mapping) and isinstance(out.get(k), dict):
                out[k] = merge(out[k], v)
            else:
                out[k] = dict(v) if isinstance(v, Mapping) else v
    return out


TLS = {
    "tls": {"enabled": True, "mutual": True, "serverSecret": "collector-tls", "clientSecret": "agent-tls"},
    "auth": {"token": {"enabled": True, "secretName": "tcpscope-token"}, "serviceAccountToken": {"enabled": False}},
}
SASL = {
    "collector": {
        "kafka": {
            "securityProtocol": "SASL_SSL",
            "saslMechanism": "SCRAM-SHA-512",
            "tls": {"caSecret": "kafka-ca"},
            "sasl": {"secretName": "kafka-user"},
        }
    }
}

# The value sets every chart test renders: defaults and each documented choice.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "collector": KAFKA,
    "tls": merge(KAFKA, TLS),
    "kafka-sasl-ssl": merge(KAFKA, SASL),
    "privileged": {"agent": {"privileged": True}},
    "remote-agent": merge(KAFKA, {"enrichment": {"remote": "agent"}}),
    "remote-collector": merge(KAFKA, {"enrichment": {"remote": "collector"}}),
    "remote-off": merge(KAFKA, {"enrichment": {"remote": "off"}}),
    "hpa-pdb": merge(KAFKA, {"collector": {"hpa": {"enabled": True}, "pdb": {"enabled": True}}}),
    "servicemonitor": merge(KAFKA, {"metrics": {"serviceMonitor": {"enabled": True}}}),
    "dashboards-alerts": merge(
        KAFKA, {"metrics": {"dashboards": {"enabled": True}, "prometheusRule": {"enabled": True}}}
    ),
    "existing-connection-key": {
        "agent": {"connectionKey": {"existingSecret": "cluster-ids", "existingSecretKey": "k"}}
    },
    "minimal-mounts": {
        "agent": {
            "hostMounts": {"kernelHeaders": False, "debugfs": True},
            "metrics": {"enabled": False},
            "ports": [80, 443],
            "stdout": "table",
            "cgroupRoot": "/sys/fs/cgroup/unified/kubepods.slice",
        },
        "networkPolicy": {"enabled": False},
    },
}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that raises on duplicate mapping keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return dict(loader.construct_pairs(node, deep=deep))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def render_raw(values: Mapping[str, Any] | None = None) -> dict[str, str]:
    """{template path: rendered text}, as `helm template` would produce offline."""
    chart = helm.Chart.load(CHART_DIR)
    return dict(chart.render(values=dict(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True))


def render(values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for these values (NOTES.txt excluded)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_raw(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.load_all(text, Loader=_StrictLoader):
            if doc:
                objects.append(doc)
    return objects


def notes(values: Mapping[str, Any] | None = None) -> str:
    """The rendered NOTES.txt."""
    return next(t for p, t in render_raw(values).items() if p.endswith("NOTES.txt"))


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The one object of `kind` whose name ends with `name_suffix`."""
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(hits) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in hits]}"
    return hits[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    """Sorted 'Kind/name' of each object."""
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)


def containers(pod_spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Init containers then containers of a pod spec."""
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    """A container's plain env values (valueFrom entries map to '<from>')."""
    return {e["name"]: e.get("value", "<from>") for e in container.get("env", [])}
