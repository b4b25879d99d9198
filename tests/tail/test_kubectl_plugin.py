"""kubectl-tcpscope against the API stand-in serving the objects the real chart renders: what it
reads (only GETs of the collector Deployment and its Secrets), what it hands tcpscope-tail, and a
real run against a broker."""

from __future__ import annotations

import base64
import copy
import io
import os
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tail import kubectl_plugin
from tcpscope import render
from tcpscope.v1.events_pb2 import EventBatch, TcpEvent
from tcpscope_sim.fakeapi import FakeApiServer
from tests.support.events import make_event
from tests.support.helm import KAFKA, NAMESPACE, SASL, find, merge
from tests.support.helm import render as render_chart
from tests.support.kafka import Broker, publish_batches

VENV_BIN = Path(sys.executable).parent


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Path]]:
    with FakeApiServer() as srv:
        yield srv, srv.write_kubeconfig(tmp_path / "kubeconfig")


def _install(srv: FakeApiServer, values: Mapping[str, Any]) -> None:
    """What `helm install` would leave in the API: the collector Deployment the chart renders."""
    srv.add(find(render_chart(values), "Deployment"))


def _release_with_events(srv: FakeApiServer, broker: Broker, topic: str) -> list[TcpEvent]:
    """A release whose collector publishes to `topic` on the test broker, and three events there."""
    _install(srv, {"collector": {"enabled": True, "kafka": {"bootstrap": broker.bootstrap, "topic": topic}}})
    broker.create_topic(topic, partitions=1)
    events = [make_event(i) for i in range(3)]
    batch = EventBatch(schema_version=1, node="n", agent_id="a", sequence=1, events=events)
    publish_batches(broker.bootstrap, topic, [batch])
    return events


def _secret(srv: FakeApiServer, name: str, data: Mapping[str, bytes]) -> None:
    srv.add(
        {
            "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
    )


def test_config_follows_the_chart_to_its_secrets_and_only_reads(api: tuple[FakeApiServer, Path]) -> None:
    srv, kubeconfig = api
    _install(srv, merge(KAFKA, SASL))
    out = io.StringIO()
    assert kubectl_plugin.run(["--kubeconfig", str(kubeconfig), "config"], out=out) == 0
    assert out.getvalue() == (
        "release tcpscope in namespace observability (collector Deployment tcpscope-collector)\n"
        "kafka bootstrap: kafka-0.kafka:9092,kafka-1.kafka:9092\n"
        "topic: tcpscope-events\n"
        "security protocol: SASL_SSL\n"
        "sasl mechanism: SCRAM-SHA-512\n"
        "TCPSCOPE_KAFKA_PASSWORD_FILE: Secret kafka-user key password\n"
        "TCPSCOPE_KAFKA_SSL_CAFILE: Secret kafka-ca key ca.crt\n"
        "TCPSCOPE_KAFKA_USERNAME_FILE: Secret kafka-user key username\n"
    )
    assert srv.requests == [
        "GET /apis/apps/v1/deployments?labelSelector=app.kubernetes.io/name%3Dtcpscope%2C"
        "app.kubernetes.io/component%3Dcollector"
    ]


def test_tail_gets_the_release_settings_and_secret_files_for_the_run_only(api: tuple[FakeApiServer, Path]) -> None:
    srv, kubeconfig = api
    _install(srv, merge(KAFKA, SASL))
    _secret(srv, "kafka-user", {"username": b"tcpscope-reader", "password": b"s3cret"})
    _secret(srv, "kafka-ca", {"ca.crt": b"-----BEGIN CERTIFICATE-----\n"})
    seen: dict[str, Any] = {}

    def fake_tail(args: list[str], env: Mapping[str, str]) -> int:
        files = {
            args[i]: Path(args[i + 1])
            for i, a in enumerate(args)
            if a in ("--kafka-ssl-cafile", "--kafka-username-file", "--kafka-password-file")
        }
        seen["args"] = args
        seen["files"] = {flag: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for flag, p in files.items()}
        seen["dir"] = next(iter(files.values())).parent
        seen["dir_mode"] = stat.S_IMODE(seen["dir"].stat().st_mode)
        return 0

    rc = kubectl_plugin.run(
        ["--kubeconfig", str(kubeconfig), "-n", NAMESPACE, "--release", "tcpscope", "summary", "--by", "workload"],
        run_tail=fake_tail,
    )
    assert rc == 0
    args = seen["args"]
    assert args[:8] == [
        "--kafka-bootstrap",
        "kafka-0.kafka:9092,kafka-1.kafka:9092",
        "--topic",
        "tcpscope-events",
        "--kafka-security-protocol",
        "SASL_SSL",
        "--kafka-sasl-mechanism",
        "SCRAM-SHA-512",
    ]
    assert args[-3:] == ["--summary", "--by", "workload"]
    assert seen["files"] == {
        "--kafka-password-file": (b"s3cret", 0o600),
        "--kafka-ssl-cafile": (b"-----BEGIN CERTIFICATE-----\n", 0o600),
        "--kafka-username-file": (b"tcpscope-reader", 0o600),
    }
    assert seen["dir_mode"] == 0o700 and not seen["dir"].exists()  # gone after the run
    assert all(r.startswith("GET ") for r in srv.requests)  # it creates nothing
    assert sorted(r.split("?")[0] for r in srv.requests) == [
        "GET /api/v1/namespaces/observability/secrets/kafka-ca",
        "GET /api/v1/namespaces/observability/secrets/kafka-user",
        "GET /api/v1/namespaces/observability/secrets/kafka-user",
        "GET /apis/apps/v1/namespaces/observability/deployments",
    ]


def test_clear_errors(api: tuple[FakeApiServer, Path]) -> None:
    srv, kubeconfig = api
    err = io.StringIO()
    assert kubectl_plugin.run(["--kubeconfig", str(kubeconfig), "config"], err=err) == 2
    assert err.getvalue().startswith(
        "kubectl-tcpscope: no tcpscope collector found for a tcpscope release in any namespace"
    )
    _install(srv, merge(KAFKA, SASL))  # its Secrets were never created
    err = io.StringIO()
    assert kubectl_plugin.run(["--kubeconfig", str(kubeconfig), "tail"], err=err, run_tail=lambda a, e: 0) == 2
    assert err.getvalue() == (
        "kubectl-tcpscope: Secret observability/kafka-user (for TCPSCOPE_KAFKA_PASSWORD_FILE) not found\n"
    )
    other = find(render_chart(KAFKA), "Deployment")
    other["metadata"]["namespace"] = "staging"
    srv.add(other)
    err = io.StringIO()
    assert kubectl_plugin.run(["--kubeconfig", str(kubeconfig), "config"], err=err) == 2
    assert err.getvalue() == (
        "kubectl-tcpscope: several tcpscope releases in any namespace: observability/tcpscope, "
        "staging/tcpscope; choose with -n and/or --release\n"
    )


def test_kubectl_tcpscope_tails_the_release_kafka(api: tuple[FakeApiServer, Path], kafka_broker: Broker) -> None:
    srv, kubeconfig = api
    events = _release_with_events(srv, kafka_broker, "release-events")
    res = subprocess.run(
        [
            str(VENV_BIN / "kubectl-tcpscope"),
            "--kubeconfig",
            str(kubeconfig),
            "tail",
            "--from-beginning",
            "--duration",
            "2",
            "--format",
            "json",
            "--rows",
            "socket",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": os.environ["PATH"]},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [render.json_line(e) for e in events]
    # every mode of the tail: one connection's timeline too
    ev = events[1]
    spec = f"{ev.local.ip}:{ev.local.port}-{ev.remote.ip}:{ev.remote.port}"
    argv = ["--kubeconfig", str(kubeconfig), "tail", "--from-beginning", "--connection", spec]
    one = subprocess.run(
        [str(VENV_BIN / "kubectl-tcpscope"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert one.returncode == 0, one.stderr
    assert f":{ev.local.port}" in one.stdout and f":{events[0].local.port}" not in one.stdout


def test_in_cluster_pod_carries_only_the_collector_kafka_settings(api: tuple[FakeApiServer, Path]) -> None:
    srv, kubeconfig = api
    _install(srv, merge(KAFKA, SASL))
    k8s = kubectl_plugin.Api(str(kubeconfig), None)
    try:
        found = kubectl_plugin.discover(k8s, None, None)
    finally:
        k8s.close()
    pod = kubectl_plugin.tail_pod(found, ["--since", "15m"], "abc123")
    collector = found.collector["spec"]["template"]["spec"]
    c = pod["spec"]["containers"][0]
    assert pod["metadata"] == {
        "name": "tcpscope-tail-abc123",
        "namespace": NAMESPACE,
        "labels": {
            "app.kubernetes.io/name": "tcpscope",
            "app.kubernetes.io/instance": "tcpscope",
            "app.kubernetes.io/component": "tail",
        },
    }
    assert (c["image"], c["command"], c["args"]) == (
        collector["containers"][0]["image"],
        ["tcpscope-tail"],
        ["--since", "15m"],
    )
    assert [e["name"] for e in c["env"]] == [
        "TCPSCOPE_KAFKA_BOOTSTRAP",
        "TCPSCOPE_TOPIC",
        "TCPSCOPE_KAFKA_SECURITY_PROTOCOL",
        "TCPSCOPE_KAFKA_SASL_MECHANISM",
        "TCPSCOPE_KAFKA_USERNAME_FILE",
        "TCPSCOPE_KAFKA_PASSWORD_FILE",
        "TCPSCOPE_KAFKA_SSL_CAFILE",
    ]
    assert (
        sorted(m["name"] for m in c["volumeMounts"])
        == sorted(v["name"] for v in pod["spec"]["volumes"])
        == ["kafka-ca", "kafka-sasl"]
    )
    assert c["securityContext"] == collector["containers"][0]["securityContext"]
    assert pod["spec"]["securityContext"] == collector["securityContext"]
    assert (pod["spec"]["restartPolicy"], pod["spec"]["automountServiceAccountToken"]) == ("Never", False)


def _kubelet(srv: FakeApiServer, stop: Any) -> None:
    """Runs each tail Pod the plugin creates the way a kubelet would: status Running, the container's
    command with its environment (the real tcpscope-tail), its output as the Pod's log, then
    Succeeded/Failed with the exit code."""
    import time

    while not stop.is_set():
        with srv.store.cond:
            pending = [
                copy.deepcopy(o)
                for o in srv.store.objects["pods"].values()
                if o.get("status", {}).get("phase") == "Pending"
            ]
        for pod in pending:
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            pod["status"] = {"phase": "Running"}
            srv.update(pod)
            c = pod["spec"]["containers"][0]
            env = {**os.environ, **{e["name"]: e["value"] for e in c["env"]}}
            res = subprocess.run(
                [str(VENV_BIN / c["command"][0]), *c["args"]], env=env, capture_output=True, timeout=60
            )
            srv.append_log(name, res.stdout, ns)
            pod = srv.get("pods", name, ns) or pod
            pod["status"] = {
                "phase": "Succeeded" if res.returncode == 0 else "Failed",
                "containerStatuses": [{"name": "tail", "state": {"terminated": {"exitCode": res.returncode}}}],
            }
            srv.update(pod)
        time.sleep(0.05)


def test_in_cluster_runs_the_tail_in_a_pod_streams_it_and_deletes_it(
    api: tuple[FakeApiServer, Path], kafka_broker: Broker
) -> None:
    import threading

    srv, kubeconfig = api
    events = _release_with_events(srv, kafka_broker, "in-cluster")
    stop = threading.Event()
    kubelet = threading.Thread(target=_kubelet, args=(srv, stop), daemon=True)
    kubelet.start()
    out, err = io.StringIO(), io.StringIO()
    try:
        rc = kubectl_plugin.run(
            [
                "--kubeconfig",
                str(kubeconfig),
                "--in-cluster",
                "tail",
                "--from-beginning",
                "--duration",
                "2",
                "--format",
                "json",
                "--rows",
                "socket",
            ],
            out=out,
            err=err,
        )
    finally:
        stop.set()
        kubelet.join(10)
    assert rc == 0, err.getvalue()
    assert out.getvalue().splitlines() == [render.json_line(e) for e in events]
    writes = [r for r in srv.requests if not r.startswith("GET ")]
    assert len(writes) == 2 and writes[0] == f"POST /api/v1/namespaces/{NAMESPACE}/pods"
    assert writes[1].startswith(f"DELETE /api/v1/namespaces/{NAMESPACE}/pods/tcpscope-tail-")
    assert srv.store.objects["pods"] == {}  # nothing left behind
