"""The chart renders, lints and validates against the Kubernetes schemas for every supported value set."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest

from tests.support.helm import (
    CHART_DIR,
    KAFKA,
    NAMESPACE,
    VALUE_SETS,
    env_of,
    find,
    kinds,
    notes,
    render,
)

# Kinds kubernetes-validate has no schema for: the Prometheus Operator's CRDs.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# Validate against the oldest release the chart supports (Chart.yaml kubeVersion) and the newest
# schema kubernetes-validate ships.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_renders_and_validates_against_kubernetes_schemas(name: str) -> None:
    objects = render(VALUE_SETS[name])
    assert objects
    for obj in objects:
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE
        if obj["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            # strict: unknown fields are errors too (a typo like `readOnlyRootFileSystem` fails)
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lints_clean(name: str) -> None:
    report = helm.lint(CHART_DIR, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    assert report["errors"] == []
    # severity 1 is informational ("icon is recommended"); nothing at warning (2) or error (3)
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_install_is_agents_printing_json() -> None:
    objects = render()
    assert kinds(objects) == [
        "ClusterRole/tcpscope-agent",
        "ClusterRoleBinding/tcpscope-agent",
        "DaemonSet/tcpscope-agent",
        "NetworkPolicy/tcpscope-agent",
        "Secret/tcpscope-connection-key",
        "ServiceAccount/tcpscope-agent",
    ]
    env = env_of(find(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0])
    assert env["TCPSCOPE_STDOUT"] == "json"
    assert "TCPSCOPE_COLLECTOR" not in env
    assert "kubectl -n observability logs -f daemonset/tcpscope-agent -c agent" in notes()


def test_collector_set_renders_collector_objects_and_wires_agents() -> None:
    objects = render(KAFKA)
    assert kinds(objects) == [
        "ClusterRole/tcpscope-agent",
        "ClusterRole/tcpscope-collector",  # TokenReviews of the agents' tokens (auth.serviceAccountToken)
        "ClusterRoleBinding/tcpscope-agent",
        "ClusterRoleBinding/tcpscope-collector",
        "DaemonSet/tcpscope-agent",
        "Deployment/tcpscope-collector",
        "NetworkPolicy/tcpscope-agent",
        "NetworkPolicy/tcpscope-collector",
        "Secret/tcpscope-connection-key",
        "Service/tcpscope-collector",
        "ServiceAccount/tcpscope-agent",
        "ServiceAccount/tcpscope-collector",
    ]
    agent_env = env_of(find(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0])
    assert agent_env["TCPSCOPE_COLLECTOR"] == "tcpscope-collector.observability.svc:4317"
    assert "TCPSCOPE_STDOUT" not in agent_env
    coll = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(coll)
    assert env["TCPSCOPE_LISTEN"] == "0.0.0.0:4317"
    assert env["TCPSCOPE_KAFKA_BOOTSTRAP"] == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert env["TCPSCOPE_TOPIC"] == "tcpscope-events"
    assert env["TCPSCOPE_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    svc = find(objects, "Service")
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("grpc", 4317), ("metrics", 9501)]
    assert "tcpscope-tail --kafka-bootstrap kafka-0.kafka:9092,kafka-1.kafka:9092 --topic tcpscope-events" in (
        notes(KAFKA)
    )


def test_tls_and_token_are_files_from_secrets_on_both_sides() -> None:
    objects = render(VALUE_SETS["tls"])
    agent = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    a_env = env_of(agent["containers"][0])
    assert a_env["TCPSCOPE_TLS_CA"] == "/etc/tcpscope/tls/ca.crt"
    assert a_env["TCPSCOPE_TLS_CERT"] == "/etc/tcpscope/tls/tls.crt"
    assert a_env["TCPSCOPE_TLS_KEY"] == "/etc/tcpscope/tls/tls.key"
    assert a_env["TCPSCOPE_TOKEN_FILE"] == "/etc/tcpscope/token/token"
    a_secrets = {v["name"]: v["secret"]["secretName"] for v in agent["volumes"] if "secret" in v}
    assert a_secrets == {"tls": "agent-tls", "token": "tcpscope-token", "connection-key": "tcpscope-connection-key"}
    coll = find(objects, "Deployment")["spec"]["template"]["spec"]
    c_env = env_of(coll["containers"][0])
    assert c_env["TCPSCOPE_TLS_CERT"] == "/etc/tcpscope/tls/tls.crt"
    assert c_env["TCPSCOPE_TLS_KEY"] == "/etc/tcpscope/tls/tls.key"
    assert c_env["TCPSCOPE_TLS_CLIENT_CA"] == "/etc/tcpscope/tls/ca.crt"
    assert c_env["TCPSCOPE_TOKEN_FILE"] == "/etc/tcpscope/token/token"
    c_secrets = {v["name"]: v["secret"]["secretName"] for v in coll["volumes"] if "secret" in v}
    assert c_secrets == {"tls": "collector-tls", "token": "tcpscope-token"}
    # no secret material in the environment
    for c in (agent["containers"][0], coll["containers"][0]):
        assert all("valueFrom" not in e or "secretKeyRef" not in e["valueFrom"] for e in c["env"])


def test_kafka_sasl_ssl_reads_credentials_and_ca_from_secret_files() -> None:
    coll = find(render(VALUE_SETS["kafka-sasl-ssl"]), "Deployment")["spec"]["template"]["spec"]
    env = env_of(coll["containers"][0])
    assert env["TCPSCOPE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["TCPSCOPE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["TCPSCOPE_KAFKA_USERNAME_FILE"] == "/etc/tcpscope/kafka-sasl/username"
    assert env["TCPSCOPE_KAFKA_PASSWORD_FILE"] == "/etc/tcpscope/kafka-sasl/password"
    assert env["TCPSCOPE_KAFKA_SSL_CAFILE"] == "/etc/tcpscope/kafka-ca/ca.crt"
    assert "TCPSCOPE_KAFKA_PASSWORD" not in env
    vols = {v["name"]: v["secret"] for v in coll["volumes"] if "secret" in v}
    assert vols["kafka-sasl"]["secretName"] == "kafka-user"
    assert vols["kafka-sasl"]["items"] == [
        {"key": "username", "path": "username"},
        {"key": "password", "path": "password"},
    ]
    assert vols["kafka-ca"] == {
        "secretName": "kafka-ca",
        "defaultMode": 0o440,
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }


def test_hpa_replaces_fixed_replicas_and_pdb_selects_collectors() -> None:
    objects = render(VALUE_SETS["hpa-pdb"])
    dep = find(objects, "Deployment")
    assert "replicas" not in dep["spec"]
    hpa = find(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tcpscope-collector",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    pdb = find(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] == 1


def test_monitors_target_the_metrics_ports() -> None:
    objects = render(VALUE_SETS["servicemonitor"])
    pm = find(objects, "PodMonitor")
    sm = find(objects, "ServiceMonitor")
    assert pm["apiVersion"] == sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    ds = find(objects, "DaemonSet")
    assert pm["spec"]["selector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    assert sm["spec"]["selector"]["matchLabels"] == find(objects, "Deployment")["spec"]["selector"]["matchLabels"]


def test_collector_network_policy_admits_only_agents_on_grpc() -> None:
    objects = render(KAFKA)
    np = find(objects, "NetworkPolicy", "collector")
    grpc_rule = np["spec"]["ingress"][0]
    agent_labels = find(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    selector = grpc_rule["from"][0]["podSelector"]["matchLabels"]
    assert selector.items() <= agent_labels.items()
    assert selector["app.kubernetes.io/component"] == "agent"
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert np["spec"]["ingress"][1]["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def test_agent_settings_become_its_environment_variables() -> None:
    env = env_of(find(render(VALUE_SETS["minimal-mounts"]), "DaemonSet")["spec"]["template"]["spec"]["containers"][0])
    assert env["TCPSCOPE_PORTS"] == "80,443"
    assert env["TCPSCOPE_STDOUT"] == "table"
    assert env["TCPSCOPE_CGROUP_ROOT"] == "/sys/fs/cgroup/unified/kubepods.slice"
    assert env["TCPSCOPE_METRICS_PORT"] == "0"
    assert env["TCPSCOPE_EVENTS"] == "lifecycle,retransmit,synack,reset,error"
    # the chart deploys in-kernel aggregation of ordinary connections
    assert (env["TCPSCOPE_CONNECTIONS"], env["TCPSCOPE_FLOW_INTERVAL"], env["TCPSCOPE_MAX_FLOWS"]) == (
        "aggregate",
        "10",
        "4096",
    )
    # and of anomalies past their budget (bpf/anomaly.h)
    budgets = ("TCPSCOPE_ANOMALY_BUDGET", "TCPSCOPE_MAX_ANOMALY_EVENTS", "TCPSCOPE_MAX_ANOMALY_KEYS")
    assert tuple(env[k] for k in budgets) == ("100", "2000", "8192")
    assert env["NODE_NAME"] == "<from>"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_agent_variable_is_a_setting_the_agent_accepts(name: str, tmp_path: Path) -> None:
    """The chart speaks the agent's language: each variable it sets is an AgentConfig setting, and
    the agent accepts the whole environment as rendered (files the pod mounts from secrets are
    stood in for by readable files here)."""
    import dataclasses

    from agent.config import AgentConfig

    ds = find(render(VALUE_SETS[name]), "DaemonSet")
    env = env_of(ds["spec"]["template"]["spec"]["containers"][0])
    known = {f.metadata["env"] for f in dataclasses.fields(AgentConfig)}
    ours = {k for k in env if k.startswith("TCPSCOPE_") or k == "NODE_NAME"}
    assert ours <= known, ours - known
    files = (
        "TCPSCOPE_TLS_CA",
        "TCPSCOPE_TLS_CERT",
        "TCPSCOPE_TLS_KEY",
        "TCPSCOPE_TOKEN_FILE",
        "TCPSCOPE_CONNECTION_KEY_FILE",
    )
    for k in files:
        if k in env:
            stand_in = tmp_path / k
            stand_in.write_text("x")
            env[k] = str(stand_in)
    if "TCPSCOPE_STATE_DIR" in env:  # the pod's hostPath: a directory the agent may write, here too
        env["TCPSCOPE_STATE_DIR"] = str(tmp_path / "state")
    config = AgentConfig.from_args([], env={k: v for k, v in env.items() if k in ours and v != "<from>"})
    assert config.ring_buffer_kb == int(env["TCPSCOPE_RING_BUFFER_KB"])
