"""`kubectl tcpscope`: tcpscope-tail and its summary against an installed release, without copying
Kafka addresses and secrets by hand.

    kubectl tcpscope [-n NAMESPACE] [--release NAME] [--kubeconfig K] [--context C] tail [tail flags]
    kubectl tcpscope ... summary [summary flags]     # = tail --summary
    kubectl tcpscope ... config                      # what it found (never the secret values)

kubectl runs it as `kubectl-tcpscope` from PATH. It finds the release's collector Deployment (labels
`app.kubernetes.io/name=tcpscope`, `app.kubernetes.io/component=collector`, and
`app.kubernetes.io/instance=NAME` with --release; in every namespace unless -n), and reads from its
`collector` container what the chart put there: `TCPSCOPE_KAFKA_BOOTSTRAP`, `TCPSCOPE_TOPIC`,
`TCPSCOPE_KAFKA_SECURITY_PROTOCOL`, `TCPSCOPE_KAFKA_SASL_MECHANISM`, and the files
`TCPSCOPE_KAFKA_SSL_CAFILE` / `_USERNAME_FILE` / `_PASSWORD_FILE` name, followed to the Secret
volumes that hold them. The Secrets' keys are written to a private temporary directory (0700, files
0600) for the run and removed after it. It reads Deployments and Secrets and creates nothing; the
Kafka brokers must be reachable from where it runs.

With --in-cluster (a Kafka reachable only inside the cluster, the usual case) it instead creates a
Pod beside the collector, from the collector's image with its Kafka environment and Secret volumes,
running tcpscope-tail with the given flags; it streams the Pod's output and deletes it at the end
(Ctrl-C included). No secret leaves the cluster then.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import posixpath
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcpscope import kafka_client

JsonObj = dict[str, Any]
SELECTOR = "app.kubernetes.io/name=tcpscope,app.kubernetes.io/component=collector"
FILE_SETTINGS = kafka_client.FILE_FLAGS  # the collector's file settings -> tcpscope-tail's flags


class PluginError(Exception):
    """Something the user must fix (no release, two releases, a Secret missing): one line, exit 2."""


class Api:
    """The two reads the plugin makes, over the real `kubernetes` client (raw JSON)."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        import kubernetes

        k8s: Any = kubernetes  # the raw-JSON calls below (_preload_content=False) are outside its stubs
        try:
            self._client: Any = k8s.config.new_client_from_config(config_file=kubeconfig, context=context)
        except Exception as e:  # kubeconfig missing or invalid: say which
            raise PluginError(f"cannot load kubeconfig {kubeconfig or '~/.kube/config'}: {e}") from e
        self._apps: Any = k8s.client.AppsV1Api(self._client)
        self._core: Any = k8s.client.CoreV1Api(self._client)

    def deployments(self, namespace: str | None, selector: str) -> list[JsonObj]:
        if namespace:
            r = self._apps.list_namespaced_deployment(namespace, label_selector=selector, _preload_content=False)
        else:
            r = self._apps.list_deployment_for_all_namespaces(label_selector=selector, _preload_content=False)
        items: list[JsonObj] = json.loads(r.data)["items"]
        return items

    def secret(self, namespace: str, name: str) -> JsonObj | None:
        from kubernetes.client.exceptions import ApiException

        try:
            r = self._core.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        obj: JsonObj = json.loads(r.data)
        return obj

    def create_pod(self, namespace: str, body: JsonObj) -> JsonObj:
        r = self._core.create_namespaced_pod(namespace, body, _preload_content=False)
        obj: JsonObj = json.loads(r.data)
        return obj

    def read_pod(self, namespace: str, name: str) -> JsonObj:
        r = self._core.read_namespaced_pod(name, namespace, _preload_content=False)
        obj: JsonObj = json.loads(r.data)
        return obj

    def delete_pod(self, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._core.delete_namespaced_pod(name, namespace, grace_period_seconds=0, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise

    def follow_log(self, namespace: str, name: str) -> Iterator[bytes]:
        r = self._core.read_namespaced_pod_log(name, namespace, follow=True, _preload_content=False)
        try:
            yield from r.stream(4096, decode_content=True)
        finally:
            r.release_conn()

    def close(self) -> None:
        self._client.close()


@dataclass
class Found:
    """What the release says about its Kafka."""

    namespace: str
    release: str
    deployment: str
    bootstrap: str
    topic: str
    security_protocol: str
    sasl_mechanism: str | None
    files: dict[str, tuple[str, str]] = field(default_factory=dict)  # env name -> (secret, key)
    collector: JsonObj = field(default_factory=dict, repr=False)  # the Deployment itself

    def describe(self) -> str:
        lines = [
            f"release {self.release} in namespace {self.namespace} (collector Deployment {self.deployment})",
            f"kafka bootstrap: {self.bootstrap}",
            f"topic: {self.topic}",
            f"security protocol: {self.security_protocol}",
        ]
        if self.sasl_mechanism:
            lines.append(f"sasl mechanism: {self.sasl_mechanism}")
        lines += [f"{env}: Secret {s} key {k}" for env, (s, k) in sorted(self.files.items())]
        return "\n".join(lines) + "\n"


def find_collector(api: Api, namespace: str | None, release: str | None) -> JsonObj:
    selector = SELECTOR + (f",app.kubernetes.io/instance={release}" if release else "")
    found = api.deployments(namespace, selector)
    where = f"namespace {namespace}" if namespace else "any namespace"
    if not found:
        what = f"release {release!r}" if release else "a tcpscope release"
        raise PluginError(
            f"no tcpscope collector found for {what} in {where} (Deployments labelled {selector}); "
            "a release without collector.enabled=true sends events only to the agents' logs"
        )
    if len(found) > 1:
        names = ", ".join(
            sorted(
                f"{d['metadata']['namespace']}/{d['metadata'].get('labels', {}).get('app.kubernetes.io/instance', '?')}"
                for d in found
            )
        )
        raise PluginError(f"several tcpscope releases in {where}: {names}; choose with -n and/or --release")
    dep: JsonObj = found[0]
    return dep


def _container(dep: JsonObj) -> JsonObj:
    containers: list[JsonObj] = dep["spec"]["template"]["spec"].get("containers", [])
    c = next((c for c in containers if c.get("name") == "collector"), None)
    if c is None:
        raise PluginError(f"Deployment {dep['metadata']['name']} has no container named collector")
    return c


def _secret_file(dep: JsonObj, container: JsonObj, path: str) -> tuple[str, str]:
    """The (Secret, key) mounted at `path` in the collector container."""
    pod = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if posixpath.dirname(path) != mount:
            continue
        secret = volumes.get(m["name"], {}).get("secret")
        if secret is None:
            break
        rel = posixpath.basename(path)
        items = secret.get("items")
        key = next((i["key"] for i in items if i["path"] == rel), None) if items else rel
        if key is not None:
            return secret["secretName"], key
    raise PluginError(f"{path} is not a file from a Secret volume of the collector; cannot read it from here")


def discover(api: Api, namespace: str | None, release: str | None) -> Found:
    dep = find_collector(api, namespace, release)
    c = _container(dep)
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
    meta = dep["metadata"]
    if not env.get("TCPSCOPE_KAFKA_BOOTSTRAP"):
        raise PluginError(f"collector {meta['namespace']}/{meta['name']} has no TCPSCOPE_KAFKA_BOOTSTRAP")
    found = Found(
        meta["namespace"],
        meta.get("labels", {}).get("app.kubernetes.io/instance", ""),
        meta["name"],
        env["TCPSCOPE_KAFKA_BOOTSTRAP"],
        env.get("TCPSCOPE_TOPIC", "tcpscope-events"),
        env.get("TCPSCOPE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        env.get("TCPSCOPE_KAFKA_SASL_MECHANISM"),
        collector=dep,
    )
    for name in FILE_SETTINGS:
        if env.get(name):
            found.files[name] = _secret_file(dep, c, env[name])
    return found


def materialize(api: Api, found: Found, workdir: Path) -> list[str]:
    """tcpscope-tail flags for the found settings, Secret keys written under workdir (0600)."""
    args = [
        "--kafka-bootstrap",
        found.bootstrap,
        "--topic",
        found.topic,
        "--kafka-security-protocol",
        found.security_protocol,
    ]
    if found.sasl_mechanism:
        args += ["--kafka-sasl-mechanism", found.sasl_mechanism]
    for env, (secret, key) in sorted(found.files.items()):
        obj = api.secret(found.namespace, secret)
        if obj is None:
            raise PluginError(f"Secret {found.namespace}/{secret} (for {env}) not found")
        data = (obj.get("data") or {}).get(key)
        if data is None:
            raise PluginError(f"Secret {found.namespace}/{secret} has no key {key!r} (for {env})")
        path = workdir / env.lower()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(data))
        args += [FILE_SETTINGS[env], str(path)]
    return args


TAIL_ENV = (
    "TCPSCOPE_KAFKA_BOOTSTRAP",
    "TCPSCOPE_TOPIC",
    "TCPSCOPE_KAFKA_SECURITY_PROTOCOL",
    "TCPSCOPE_KAFKA_SASL_MECHANISM",
    *FILE_SETTINGS,
)


def tail_pod(found: Found, args: list[str], suffix: str) -> JsonObj:
    """A Pod that runs tcpscope-tail next to the collector: the collector's image, pod and container
    security settings, Kafka environment and Kafka Secret volumes (nothing else: no service account
    token, no gRPC TLS), so it reaches the Kafka the collector reaches, as the collector does."""
    tpl = found.collector["spec"]["template"]["spec"]
    c = _container(found.collector)
    env = [e for e in c.get("env", []) if e.get("name") in TAIL_ENV]
    file_dirs = {posixpath.dirname(e["value"]) for e in env if e["name"] in FILE_SETTINGS and "value" in e}
    mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") in file_dirs]
    names = {m["name"] for m in mounts}
    container: JsonObj = {
        "name": "tail",
        "image": c["image"],
        "command": ["tcpscope-tail"],
        "args": args,
        "env": env,
        "volumeMounts": mounts,
    }
    for k in ("imagePullPolicy", "securityContext", "resources"):
        if k in c:
            container[k] = c[k]
    spec: JsonObj = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [v for v in tpl.get("volumes", []) if v["name"] in names],
    }
    for k in ("securityContext", "imagePullSecrets", "nodeSelector", "tolerations", "priorityClassName"):
        if k in tpl:
            spec[k] = tpl[k]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"tcpscope-tail-{suffix}",
            "namespace": found.namespace,
            "labels": {
                "app.kubernetes.io/name": "tcpscope",
                "app.kubernetes.io/instance": found.release,
                "app.kubernetes.io/component": "tail",
            },
        },
        "spec": spec,
    }


def run_in_cluster(
    api: Api,
    found: Found,
    args: list[str],
    out: Any,
    err: Any,
    start_timeout: float = 120.0,
    sleep: Callable[[float], None] | None = None,
) -> int:
    """Create the tail Pod, stream its output, delete it (also on Ctrl-C); its exit code."""
    import secrets as _secrets
    import time

    nap = sleep or time.sleep
    pod = api.create_pod(found.namespace, tail_pod(found, args, _secrets.token_hex(3)))
    name = pod["metadata"]["name"]
    err.write(f"kubectl-tcpscope: running tcpscope-tail in pod {found.namespace}/{name}\n")
    err.flush()
    try:
        deadline = time.monotonic() + start_timeout
        while pod.get("status", {}).get("phase", "Pending") == "Pending":
            if time.monotonic() > deadline:
                raise PluginError(
                    f"pod {found.namespace}/{name} did not start within {start_timeout:.0f}s "
                    "(kubectl describe pod shows why)"
                )
            nap(0.5)
            pod = api.read_pod(found.namespace, name)
        for chunk in api.follow_log(found.namespace, name):
            out.write(chunk.decode("utf-8", "replace"))
            out.flush()
        for _ in range(20):  # the log ends as the container exits; the status follows shortly
            pod = api.read_pod(found.namespace, name)
            statuses = pod.get("status", {}).get("containerStatuses", [])
            states = [cs.get("state", {}).get("terminated") for cs in statuses]
            if states and states[0] is not None:
                return int(states[0].get("exitCode", 1))
            nap(0.5)
        return 1
    finally:
        api.delete_pod(found.namespace, name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl tcpscope",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Flags after the command go to tcpscope-tail (see tcpscope-tail --help).",
    )
    p.add_argument("-n", "--namespace", help="the release's namespace (default: search every namespace)")
    p.add_argument("--release", help="the Helm release name (default: the only one found)")
    p.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        help="the kubeconfig file (default: $KUBECONFIG, ~/.kube/config)",
    )
    p.add_argument("--context", help="the kubeconfig context (default: its current context)")
    p.add_argument(
        "--in-cluster",
        action="store_true",
        help="run tcpscope-tail in a Pod beside the collector (for a Kafka reachable only inside the "
        "cluster): creates it, streams its output, deletes it",
    )
    p.add_argument(
        "command",
        choices=("tail", "summary", "config"),
        help="tail: live events (tcpscope-tail); summary: per-pair counters (tcpscope-tail --summary); "
        "config: print the Kafka settings found",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="flags for tcpscope-tail (tcpscope-tail --help)")
    return p


def run(
    argv: Sequence[str] | None,
    make_api: Callable[[str | None, str | None], Api] = Api,
    out: Any = None,
    err: Any = None,
    run_tail: Callable[[list[str], Mapping[str, str]], int] | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    a = build_parser().parse_args(argv)
    try:
        api = make_api(a.kubeconfig, a.context)
        try:
            found = discover(api, a.namespace, a.release)
            if a.command == "config":
                out.write(found.describe())
                return 0
            if a.in_cluster:
                return run_in_cluster(
                    api, found, [*(["--summary"] if a.command == "summary" else []), *a.rest], out, err
                )
            with tempfile.TemporaryDirectory(prefix="kubectl-tcpscope-") as tmp:
                os.chmod(tmp, 0o700)
                args = materialize(api, found, Path(tmp))
                args += ["--summary"] if a.command == "summary" else []
                # the release's settings, then the user's flags (which win); the user's own
                # TCPSCOPE_KAFKA_* environment is not mixed in
                env = {k: v for k, v in os.environ.items() if not k.startswith("TCPSCOPE_KAFKA_")}
                return (run_tail or _run_tail)([*args, *a.rest], env)
        finally:
            api.close()
    except PluginError as e:
        err.write(f"kubectl-tcpscope: {e}\n")
        return 2


def _run_tail(args: list[str], env: Mapping[str, str]) -> int:
    from tail import cli as tail

    return tail.run_options(tail.parse_args(args, env=dict(env)))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
