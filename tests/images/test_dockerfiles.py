"""Static checks of the Dockerfiles (no Docker engine here): bases pinned, COPY sources exist and are
not ignored, entrypoints are the project's console scripts, and each image matches the chart."""

from __future__ import annotations

import fnmatch
import importlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.helm import KAFKA, find, render

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"agent": ROOT / "Dockerfile.agent", "collector": ROOT / "Dockerfile.collector"}


@dataclass(frozen=True)
class Instruction:
    op: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile, with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf = f"{buf} {line}" if buf else line
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        op, _, args = buf.partition(" ")
        out.append(Instruction(op.upper(), args.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling continuation"
    return out


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(rel: str) -> bool:
    """True if `rel` (or a parent of it) matches a .dockerignore pattern."""
    parts = rel.rstrip("/").split("/")
    for pattern in dockerignore():
        pat = pattern.removeprefix("**/")
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatch("/".join(parts[:i]), pattern) or fnmatch.fnmatch(parts[i - 1], pat):
                return True
    return False


def scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["scripts"])


def global_args(ins: list[Instruction]) -> dict[str, str]:
    """ARG defaults declared before the first FROM (the only ones a FROM line can use)."""
    out: dict[str, str] = {}
    for i in ins:
        if i.op == "FROM":
            break
        if i.op == "ARG" and "=" in i.args:
            k, _, v = i.args.partition("=")
            out[k] = v
    return out


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_images_are_pinned_by_tag(image: str) -> None:
    ins = parse(IMAGES[image])
    defaults = global_args(ins)
    stages = {i.args.split()[2] for i in ins if i.op == "FROM" and " AS " in i.args.upper()}
    froms = [i.args.split()[0] for i in ins if i.op == "FROM"]
    assert froms
    # one base for both images, overridable (make images passes a locally built one)
    assert set(froms) - stages == {"${BASE_IMAGE}"}
    ref = defaults["BASE_IMAGE"]
    _name, _, tag = ref.partition(":")
    assert tag and tag != "latest", f"{image}: {ref} is not pinned by tag"
    assert ref == "debian:bookworm-slim"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_copy_source_exists_and_reaches_the_build_context(image: str) -> None:
    copies = [i for i in parse(IMAGES[image]) if i.op == "COPY" and "--from=" not in i.args]
    assert copies
    for ins in copies:
        *sources, _dest = ins.args.split()
        for src in sources:
            assert (ROOT / src).exists(), f"{image}: COPY {src}: no such path in the repository"
            assert not ignored(src), f"{image}: COPY {src} is excluded by .dockerignore"
    # the generated protobuf code must never be copied stale: it is regenerated in the image
    assert ignored("tcpscope/v1/events_pb2.py")
    assert ignored(".venv") and ignored(".git")


def test_agent_copies_what_the_agent_reads_at_run_time() -> None:
    copied = {
        src.rstrip("/")
        for i in parse(IMAGES["agent"])
        if i.op == "COPY" and "--from=" not in i.args
        for src in i.args.split()[:-1]
    }
    # the agent compiles bpf/*.c at start-up (agent/kernel/probe.py BPF_DIR = <source root>/bpf)
    assert {"bpf", "agent", "tcpscope", "proto", "scripts", "pyproject.toml", "README.md"} <= copied
    assert "collector" not in copied  # the agent imports agent and tcpscope only (lint-imports)
    probe = importlib.import_module("agent.kernel.probe")
    assert Path(probe.BPF_DIR) == ROOT / "bpf"


def test_collector_copies_the_collector_and_tcpscope_but_not_the_agent() -> None:
    copied = {
        src.rstrip("/")
        for i in parse(IMAGES["collector"])
        if i.op == "COPY" and "--from=" not in i.args
        for src in i.args.split()[:-1]
    }
    # the collector imports collector and tcpscope only (tests/test_boundaries.py)
    assert {"collector", "tcpscope", "proto", "scripts", "pyproject.toml", "README.md"} <= copied
    assert "agent" not in copied and "bpf" not in copied


@pytest.mark.parametrize(("image", "script"), [("agent", "tcpscope-agent"), ("collector", "tcpscope-collector")])
def test_entrypoint_is_the_declared_console_script(image: str, script: str) -> None:
    entry = [i.args for i in parse(IMAGES[image]) if i.op == "ENTRYPOINT"]
    assert entry == [f'["{script}"]']  # exec form: the script is PID 1 and receives SIGTERM
    target = scripts()[script]
    module, _, func = target.partition(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"{target}: module missing"
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert re.search(rf"^def {func}\(", source, re.M), f"{target}: no function {func}"


def test_agent_image_uses_debian_bcc_in_a_system_site_packages_venv() -> None:
    text = " ".join(i.args for i in parse(IMAGES["agent"]) if i.op == "RUN")
    assert "python3-bpfcc" in text
    assert "venv --system-site-packages" in text
    assert "scripts.genproto" in text
    assert not re.search(r"pip install[^&]*\bbcc\b", text)  # never PyPI's unrelated "bcc"


def test_collector_image_is_non_root_and_matches_the_chart() -> None:
    ins = parse(IMAGES["collector"])
    users = [i.args for i in ins if i.op == "USER"]
    assert users == ["10001:10001"]
    pod = find(render(KAFKA), "Deployment")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (10001, 10001)
    exposed = {int(p) for i in ins if i.op == "EXPOSE" for p in i.args.split()}
    ports = {p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert ports == exposed == {4317, 9501}


def test_python_of_the_images_satisfies_requires_python() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"  # both images run bookworm's python3, 3.11


def test_make_images_tags_what_the_chart_pulls() -> None:
    """scripts/images.sh tags each image as the chart's default image (repository + appVersion) too."""
    import subprocess

    script = (ROOT / "scripts" / "images.sh").read_text()
    repo = re.search(r"^CHART_REPO=(\S+)", script, re.M)
    assert repo, "scripts/images.sh: CHART_REPO"
    values = (ROOT / "helm" / "tcpscope" / "values.yaml").read_text()
    repos = set(re.findall(r"repository: (\S+)/tcpscope-(agent|collector)\n", values))
    assert repos == {(repo.group(1), "agent"), (repo.group(1), "collector")}
    line = next(x for x in script.splitlines() if x.startswith("APP_VERSION="))
    got = subprocess.run(["bash", "-c", line + '; echo "$APP_VERSION"'], cwd=ROOT, capture_output=True, text=True)
    chart = re.search(r'^appVersion: "([^"]+)"', (ROOT / "helm" / "tcpscope" / "Chart.yaml").read_text(), re.M)
    assert chart and got.stdout.strip() == chart.group(1)
    assert '"${PODMAN[@]}" tag "localhost/$name:$TAG" "$CHART_REPO/$name:$APP_VERSION"' in script
