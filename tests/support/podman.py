"""Run a container of a rendered pod spec with podman, the way a kubelet would.

`run_args(pod, container, ...)` turns the chart's own rendered objects into `podman run` flags:
user and group, capabilities, privileged / no-new-privileges, read-only root, seccomp, resource
limits, env and every volume mount. It refuses any field it does not translate, so a security
setting added to the chart later fails the container test instead of being silently dropped.
Ports and probes are read but not acted on: they are no privilege, and nothing here runs a kubelet.

What a runtime decides itself is passed in, not guessed: what `RuntimeDefault` seccomp means
(containers-common's profile on CRI-O, moby's on Docker and containerd), where `Localhost`
profiles live (the kubelet's seccomp directory), which host directory backs each emptyDir, and
the pod's network namespace. AppArmor is not enabled on these machines' kernel, so an
`appArmorProfile` of RuntimeDefault changes nothing here and is accepted as such.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# This machine's podman settings (/work/shared/ENVIRONMENT.md "Containers"); the same as
# scripts/images.sh passes when building.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
ULIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]
CONTAINERS_COMMON_SECCOMP = Path("/usr/share/containers/seccomp.json")

_SC_KEYS = {
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "capabilities",
    "seccompProfile",
    "appArmorProfile",
}
_POD_SC_KEYS = {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "seccompProfile"}
_CONTAINER_KEYS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "ports",
    "securityContext",
    "resources",
    "volumeMounts",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
}


@dataclass
class Runtime:
    """What the container runtime of the simulated node decides.

    default_seccomp: the file `RuntimeDefault` means; seccomp_root: the kubelet's directory that
    `Localhost` profile names are relative to; empty_dirs: the pod's emptyDir name -> host dir;
    secrets: the pod's secret volume name -> host dir holding its files (pod_secret_dirs).
    """

    default_seccomp: Path
    seccomp_root: Path
    empty_dirs: dict[str, Path] = field(default_factory=dict)
    secrets: dict[str, Path] = field(default_factory=dict)


def _cpus(value: str | int | float) -> str:
    s = str(value)
    return str(int(s[:-1]) / 1000) if s.endswith("m") else s


def _bytes(value: str | int) -> str:
    s = str(value)
    for suffix, mult in (("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)):
        if s.endswith(suffix):
            return str(int(s[: -len(suffix)]) * mult)
    return s


def _seccomp(profile: Mapping[str, Any], rt: Runtime) -> str:
    kind = profile["type"]
    if kind == "RuntimeDefault":
        return str(rt.default_seccomp)
    if kind == "Unconfined":
        return "unconfined"
    if kind == "Localhost":
        path = rt.seccomp_root / profile["localhostProfile"]
        if not path.is_file():  # the kubelet refuses to start the container then, too
            raise FileNotFoundError(f"Localhost seccomp profile {path} is not installed on the node")
        return str(path)
    raise ValueError(f"seccomp profile type {kind!r} not translated")


def run_args(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    rt: Runtime,
    *,
    node_name: str,
    host_paths: Mapping[str, str] | None = None,
) -> list[str]:
    """`podman run` flags (without the image) for one container of a rendered pod spec.

    host_paths substitutes the host directory of a hostPath volume (by volume name), to simulate
    a node laid out differently from this machine."""
    unknown = set(container) - _CONTAINER_KEYS
    assert not unknown, f"container fields not translated: {unknown}"
    pod_sc: dict[str, Any] = dict(pod.get("securityContext") or {})
    assert set(pod_sc) <= _POD_SC_KEYS, f"pod securityContext fields not translated: {set(pod_sc) - _POD_SC_KEYS}"
    sc: dict[str, Any] = dict(container.get("securityContext") or {})
    assert set(sc) <= _SC_KEYS, f"securityContext fields not translated: {set(sc) - _SC_KEYS}"
    eff = {**pod_sc, **sc}
    args: list[str] = [*ULIMITS]

    uid, gid = eff.get("runAsUser"), eff.get("runAsGroup")
    if uid is not None:
        args += ["--user", f"{uid}:{gid if gid is not None else 0}"]
    if eff.get("runAsNonRoot"):
        assert uid not in (None, 0), f"{container['name']}: runAsNonRoot with uid {uid} (the kubelet refuses it)"
    if "fsGroup" in pod_sc:
        args += ["--group-add", str(pod_sc["fsGroup"])]

    if sc.get("privileged"):
        args.append("--privileged")
    caps = sc.get("capabilities") or {}
    assert set(caps) <= {"add", "drop"}, caps
    for cap in caps.get("drop", []):
        args += ["--cap-drop", cap.lower()]
    for cap in caps.get("add", []):
        args += ["--cap-add", f"CAP_{cap}"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]  # only the pod's own volumes are writable
    if not sc.get("privileged"):  # a privileged container runs unconfined whatever is set
        args += ["--security-opt", f"seccomp={_seccomp(eff.get('seccompProfile', {'type': 'RuntimeDefault'}), rt)}"]
    apparmor = eff.get("appArmorProfile", {"type": "RuntimeDefault"})
    assert apparmor == {"type": "RuntimeDefault"}, f"appArmorProfile {apparmor} not translated"

    limits = (container.get("resources") or {}).get("limits") or {}
    assert set(limits) <= {"cpu", "memory"}, limits
    if "memory" in limits:
        args += ["--memory", _bytes(limits["memory"])]
    if "cpu" in limits:
        args += ["--cpus", _cpus(limits["cpu"])]

    for env in container.get("env", []):
        if "value" in env:
            args += ["--env", f"{env['name']}={env['value']}"]
        else:
            ref = env["valueFrom"]["fieldRef"]["fieldPath"]
            assert ref == "spec.nodeName", f"env {env['name']}: valueFrom {ref} not translated"
            args += ["--env", f"{env['name']}={node_name}"]

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        assert set(m) <= {"name", "mountPath", "readOnly"}, m
        vol = volumes[m["name"]]
        if "hostPath" in vol:
            src = (host_paths or {}).get(m["name"], vol["hostPath"]["path"])
            if vol["hostPath"].get("type") == "Directory":
                assert Path(src).is_dir(), f"hostPath {src} (type Directory) is missing on the node"
            elif vol["hostPath"].get("type") == "DirectoryOrCreate":
                Path(src).mkdir(parents=True, exist_ok=True)  # as the kubelet does
        elif "emptyDir" in vol:
            src = str(rt.empty_dirs[m["name"]])
        elif "secret" in vol:
            assert m.get("readOnly"), f"secret volume {m['name']} mounted writable"
            src = str(rt.secrets[m["name"]])
        else:
            raise AssertionError(f"volume {m['name']}: {sorted(vol)} not translated")
        args += ["--volume", f"{src}:{m['mountPath']}:{'ro' if m.get('readOnly') else 'rw'}"]

    if "command" in container:
        args += ["--entrypoint", json.dumps(container["command"])]
    return args


def pod_empty_dirs(pod: Mapping[str, Any], root: Path) -> dict[str, Path]:
    """A host directory for each emptyDir of the pod, mode 0777 like the kubelet makes them."""
    out: dict[str, Path] = {}
    for v in pod.get("volumes", []):
        if "emptyDir" in v:
            d = root / v["name"]
            d.mkdir(parents=True)
            os.chmod(d, 0o777)
            out[v["name"]] = d
    return out


def pod_secret_dirs(pod: Mapping[str, Any], objects: list[dict[str, Any]], root: Path) -> dict[str, Path]:
    """A host directory for each secret volume of the pod, holding the files the kubelet would
    project from the Secret the chart rendered (its items, or every key; defaultMode). A Secret the
    chart does not render (a user's existing one) cannot be made up here."""
    import base64

    out: dict[str, Path] = {}
    for v in pod.get("volumes", []):
        if "secret" not in v:
            continue
        sv = v["secret"]
        found = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == sv["secretName"]]
        assert found, f"secret volume {v['name']}: Secret {sv['secretName']} is not rendered by the chart"
        data = found[0].get("data") or {}
        items = sv.get("items") or [{"key": k, "path": k} for k in data]
        d = root / v["name"]
        d.mkdir(parents=True)
        for item in items:
            f = d / item["path"]
            f.write_bytes(base64.b64decode(data[item["key"]]))
            os.chmod(f, item.get("mode", sv.get("defaultMode", 0o644)))
        out[v["name"]] = d
    return out


def require_podman() -> None:
    """Fail (never skip) without root and podman."""
    assert os.geteuid() == 0, "the container test needs root (it runs podman and loads BPF programs)"
    assert shutil.which("podman"), "podman is missing: run `make images` (it installs podman, buildah, runc)"


def image_exists(ref: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", ref], check=False).returncode == 0


@dataclass
class Container:
    """A `podman run` in the background, its stdout and stderr in files."""

    name: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> None:
        """Until `needle` appears in stderr; fails if the container exits first or it takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.err():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited (rc={self.proc.returncode}) before {needle!r}:\n{self.err()}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {needle!r} within {timeout}s:\n{self.err()}")

    def stop(self, timeout: int = 20) -> int:
        """SIGTERM (podman stop), then the exit code."""
        subprocess.run([*PODMAN, "stop", "-t", str(timeout), self.name], capture_output=True, check=False)
        return self.proc.wait(timeout + 10)


@contextlib.contextmanager
def run(name: str, image: str, args: list[str], argv: list[str], logs: Path, network: str) -> Iterator[Container]:
    """Start a container in the background; always removed at the end."""
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    cmd = [*PODMAN, "run", "--rm", "--name", name, "--network", network, *args, image, *argv]
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    c = Container(name, proc, out, err)
    try:
        yield c
    finally:
        if proc.poll() is None:
            subprocess.run([*PODMAN, "rm", "-f", "-t", "2", name], capture_output=True, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        subprocess.run([*PODMAN, "rm", "-f", "--ignore", name], capture_output=True, check=False)


def run_to_end(
    name: str, image: str, args: list[str], argv: list[str], network: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a container to completion (an init container)."""
    cmd = [*PODMAN, "run", "--rm", "--name", name, "--network", network, *args, image, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
