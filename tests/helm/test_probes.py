"""The chart binds what the bare commands keep on loopback, and probes what the processes report:
agent /healthz and /readyz, collector gRPC health (or its /readyz with TLS on)."""

from __future__ import annotations

from tests.support.helm import KAFKA, TLS, VALUE_SETS, env_of, find, merge, render


def _container(values: dict, kind: str) -> dict:  # type: ignore[type-arg]
    return find(render(values), kind)["spec"]["template"]["spec"]["containers"][0]


def test_agent_probes_use_its_health_endpoints_on_the_pod_address() -> None:
    agent = _container(KAFKA, "DaemonSet")
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = env_of(agent)
    assert env["TCPSCOPE_METRICS_ADDRESS"] == "0.0.0.0"
    assert env["TCPSCOPE_METRICS_PORT"] == "9500"


def test_agent_without_metrics_server_has_no_probes_and_binds_nothing() -> None:
    agent = _container(VALUE_SETS["minimal-mounts"], "DaemonSet")
    assert "livenessProbe" not in agent and "readinessProbe" not in agent
    assert "TCPSCOPE_METRICS_ADDRESS" not in env_of(agent)


def test_collector_listens_on_the_pod_address_and_is_ready_by_grpc_health() -> None:
    col = _container(KAFKA, "Deployment")
    env = env_of(col)
    assert env["TCPSCOPE_LISTEN"] == "0.0.0.0:4317"  # set explicitly: the command's default is loopback
    assert env["TCPSCOPE_METRICS_ADDRESS"] == "0.0.0.0"
    assert col["readinessProbe"]["grpc"] == {"port": 4317, "service": "tcpscope.v1.Collector"}
    assert col["livenessProbe"]["tcpSocket"] == {"port": "grpc"}  # Kafka down is no reason to restart


def test_collector_with_tls_is_ready_by_its_http_readyz() -> None:
    """The kubelet's gRPC probe speaks no TLS: the same health, over plain HTTP on the metrics port."""
    col = _container(merge(KAFKA, TLS), "Deployment")
    assert col["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "grpc" not in col["readinessProbe"] and "tcpSocket" not in col["readinessProbe"]
    # without a metrics server, only the port can be checked
    bare = _container(merge(KAFKA, TLS, {"collector": {"metrics": {"enabled": False}}}), "Deployment")
    assert bare["readinessProbe"]["tcpSocket"] == {"port": "grpc"}
