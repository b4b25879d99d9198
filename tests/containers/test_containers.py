"""The built images, run by podman exactly as the chart's rendered pods run them.

Every container's flags come from the chart rendered with the real Helm engine
(tests/support/podman.py translates securityContext, resources, env and volumes, and refuses any
field it does not know). Each pod gets its own network namespace (hostNetwork is false), and the
traffic is real TCP on the host's loopback, which the agent sees through the kernel's tracepoints.

Seccomp is what differs between runtimes, so each case names the runtime whose default profile
stands behind `RuntimeDefault`:
  - crio: containers-common's /usr/share/containers/seccomp.json (CRI-O and podman);
  - moby: that profile plus scripts/seccomp_profile.py's delta (bpf with CAP_BPF,
    perf_event_open with CAP_PERFMON), which is what Docker's and containerd's defaults allow.
`Localhost` profiles are read from a kubelet-like seccomp directory, filled with the documented
command (`python3 scripts/seccomp_profile.py`).

Both images must exist (`make images`, which `make test-images` runs first); podman and root are
required: the test fails, never skips, without them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tcpscope_sim.broker import tansu_command
from tests.support import podman, traffic
from tests.support.helm import find, render
from tests.support.kafka import free_port

ROOT = Path(__file__).resolve().parents[2]
TAG = os.environ.get("TCPSCOPE_IMAGE_TAG", "dev")
AGENT_IMAGE = f"localhost/tcpscope-agent:{TAG}"
COLLECTOR_IMAGE = f"localhost/tcpscope-collector:{TAG}"
NODE = "container-test-node"
LOCALHOST_PROFILE = "tcpscope-agent.json"
# The one env value changed from the render: no Kubernetes API server can run here, so the agent
# does not enrich from it. Everything else (ports filter, stdout mode, collector address) is rendered.
NO_API = {"TCPSCOPE_KUBERNETES": "false"}

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def seccomp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Default profiles per runtime, and the kubelet seccomp directory with the Localhost profile."""
    podman.require_podman()
    for ref in (AGENT_IMAGE, COLLECTOR_IMAGE):
        assert podman.image_exists(ref), f"{ref} is missing: run `make images` first"
    assert podman.CONTAINERS_COMMON_SECCOMP.is_file(), "containers-common's seccomp.json is missing (make images)"
    d = tmp_path_factory.mktemp("seccomp")
    root = d / "kubelet-seccomp"
    root.mkdir()
    made = subprocess.run(
        [sys.executable, "scripts/seccomp_profile.py", str(podman.CONTAINERS_COMMON_SECCOMP)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    (root / LOCALHOST_PROFILE).write_text(made.stdout)
    (d / "moby.json").write_text(made.stdout)
    return {"crio": podman.CONTAINERS_COMMON_SECCOMP, "moby": d / "moby.json", "root": root}


@pytest.fixture
def netns() -> Iterator[str]:
    """The pod's network namespace, loopback up (a stand-in for the pod network)."""
    name = traffic.unique("tsc-pod")
    traffic.run("ip", "netns", "add", name)
    try:
        traffic.run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        traffic.run("ip", "netns", "del", name, check=False)


def _pod(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    pod: dict[str, Any] = find(objects, kind)["spec"]["template"]["spec"]
    return pod


def _env_overridden(args: list[str], env: dict[str, str]) -> list[str]:
    """Replace rendered env values (each key must be rendered: nothing is invented here)."""
    out = list(args)
    for k, v in env.items():
        i = next(i for i, a in enumerate(out) if a.startswith(f"{k}=") and out[i - 1] == "--env")
        out[i] = f"{k}={v}"
    return out


class AgentPod:
    """The agent DaemonSet's pod: the kernel-headers init container, then the agent."""

    def __init__(
        self,
        values: dict[str, Any],
        runtime_default: Path,
        profiles: dict[str, Path],
        tmp: Path,
        netns: str,
        host_paths: dict[str, str] | None = None,
    ) -> None:
        self.objects = render(values)
        self.pod = _pod(self.objects, "DaemonSet")
        self.rt = podman.Runtime(
            runtime_default,
            profiles["root"],
            podman.pod_empty_dirs(self.pod, tmp / "pod"),
            podman.pod_secret_dirs(self.pod, self.objects, tmp / "secrets"),
        )
        self.tmp, self.network, self.host_paths = tmp, f"ns:/run/netns/{netns}", host_paths
        self.name = traffic.unique("tsc-agent")

    def init(self) -> str:
        """Run the init container to completion; its one line of output."""
        (init,) = self.pod["initContainers"]
        assert init["name"] == "kernel-headers"
        args = podman.run_args(self.pod, init, self.rt, node_name=NODE, host_paths=self.host_paths)
        res = podman.run_to_end(f"{self.name}-init", AGENT_IMAGE, args, [], self.network)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def agent_args(self, extra: list[str] | None = None) -> list[str]:
        (agent,) = self.pod["containers"]
        args = podman.run_args(self.pod, agent, self.rt, node_name=NODE, host_paths=self.host_paths)
        return [*_env_overridden(args, NO_API), *(extra or [])]


def _summary(stderr: str) -> str:
    """The agent's loss summary line ("tcpscope-agent: N events out, lost M (...)")."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("tcpscope-agent: ") and " events out, lost " in ln]
    assert len(lines) == 1, stderr
    return lines[0]


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


Fact = tuple[str, str, int, int, int, int]  # kind, role, tx bytes, rx bytes, pid, port


def _expected(ex: traffic.Exchange, connections: str) -> list[Fact]:
    """What the agent reports for one exchange, per agent.connections mode, exactly.

    each: one Lifecycle per socket (port = its local port). aggregate: one Flow per role with
    connections 1, keyed by the server port (the client's ephemeral port is not in the key)."""
    if connections == "each":
        return sorted(
            [
                ("lifecycle", "ACTIVE", ex.client_bytes, ex.server_bytes, ex.client_pid, ex.client_port),
                ("lifecycle", "PASSIVE", ex.server_bytes, ex.client_bytes, ex.server_pid, ex.server_port),
            ]
        )
    assert connections == "aggregate", connections
    return sorted(
        [
            ("flow", "ACTIVE", ex.client_bytes, ex.server_bytes, ex.client_pid, ex.server_port),
            ("flow", "PASSIVE", ex.server_bytes, ex.client_bytes, ex.server_pid, ex.server_port),
        ]
    )


def _facts_json(events: list[dict[str, Any]]) -> list[Fact]:
    """Facts from the agent's JSON lines (proto3 JSON: 64-bit numbers are strings, zeros omitted)."""
    out: list[Fact] = []
    for e in events:
        if "lifecycle" in e:
            lc = e["lifecycle"]
            out.append(
                (
                    "lifecycle",
                    lc["role"],
                    int(lc.get("tx_bytes", 0)),
                    int(lc.get("rx_bytes", 0)),
                    e["process"]["pid"],
                    e["local"]["port"],
                )
            )
        elif "flow" in e:
            f = e["flow"]
            assert int(f["connections"]) == 1, e
            port = e["local"].get("port") or e["remote"]["port"]
            out.append(
                ("flow", f["role"], int(f.get("tx_bytes", 0)), int(f.get("rx_bytes", 0)), e["process"]["pid"], port)
            )
    return sorted(out)


def _agent_run(pod: AgentPod, port: int) -> tuple[int, str, str, traffic.Exchange | None]:
    """Start the agent container; if it attaches, make one exchange and stop it with SIGTERM."""
    with podman.run(pod.name, AGENT_IMAGE, pod.agent_args(), [], pod.tmp, pod.network) as c:
        try:
            c.wait_for("tcpscope-agent: attached:", timeout=120)
        except AssertionError:
            c.proc.wait(30)
            return c.proc.returncode, c.out(), c.err(), None
        ex = traffic.tcp_exchange(port=port, client_bytes=300_000, server_bytes=777)
        rc = c.stop()
        return rc, c.out(), c.err(), ex


def _values(port: int, seccomp_profile: dict[str, str] | None = None, connections: str | None = None) -> dict[str, Any]:
    """The chart's defaults except: only the test's port (so nothing else on the machine is
    reported), no remote-end enrichment and no Service-backend watch (both need the API server)."""
    agent: dict[str, Any] = {"ports": [port]}
    if seccomp_profile is not None:
        agent["seccompProfile"] = seccomp_profile
    if connections is not None:
        agent["connections"] = connections
    return {"agent": agent, "enrichment": {"remote": "off", "serviceBackends": False}}


def _connections(pod: AgentPod) -> str:
    (agent,) = pod.pod["containers"]
    mode: str = next(e["value"] for e in agent["env"] if e["name"] == "TCPSCOPE_CONNECTIONS")
    return mode


# (case id, seccompProfile value (None = the chart's default), runtime behind RuntimeDefault,
#  node has its own kernel headers, agent.connections (None = the chart's default))
WORKING = [
    ("chart-default-on-crio", None, "crio", True, None),
    ("chart-default-on-moby", None, "moby", False, None),
    ("runtime-default-on-moby", {"type": "RuntimeDefault"}, "moby", True, "each"),
    ("localhost-on-crio", {"type": "Localhost", "localhostProfile": LOCALHOST_PROFILE}, "crio", False, None),
]


@pytest.mark.parametrize(
    ("profile", "runtime", "host_headers", "connections"), [w[1:] for w in WORKING], ids=[w[0] for w in WORKING]
)
def test_agent_container_reports_exact_bytes(
    seccomp: dict[str, Path],
    netns: str,
    tmp_path: Path,
    profile: dict[str, str] | None,
    runtime: str,
    host_headers: bool,
    connections: str | None,
) -> None:
    port = traffic.free_port()
    empty = tmp_path / "bare-node"  # a node without headers: empty /lib/modules and /usr/src
    (empty / "modules").mkdir(parents=True)
    (empty / "src").mkdir()
    host_paths = None if host_headers else {"host-modules": str(empty / "modules"), "host-usr-src": str(empty / "src")}
    pod = AgentPod(_values(port, profile, connections), seccomp[runtime], seccomp, tmp_path, netns, host_paths)
    if profile is None:  # the chart's default must be one every runtime accepts
        assert pod.pod["containers"][0]["securityContext"]["seccompProfile"] == {"type": "Unconfined"}

    line = pod.init()
    release = os.uname().release
    if host_headers:
        build = os.readlink(f"/lib/modules/{release}/build")
        assert line == f"tcpscope: kernel headers for {release} from the host: /host{build}"
    else:
        assert line.startswith(f"tcpscope: no host headers for {release}; using the image's linux-headers-"), line

    rc, out, err, ex = _agent_run(pod, port)
    assert ex is not None, f"the agent did not attach (rc={rc}):\n{err}"
    assert rc == 0, err
    events = _events(out)
    assert all(e["node"] == NODE for e in events)
    assert _facts_json(events) == _expected(ex, _connections(pod))
    assert _summary(err).startswith(f"tcpscope-agent: {len(events)} events out, lost 0 (")


def test_runtime_default_on_crio_is_refused_by_seccomp(seccomp: dict[str, Path], netns: str, tmp_path: Path) -> None:
    """Why the chart does not default to RuntimeDefault: containers-common's profile allows bpf()
    only with CAP_SYS_ADMIN, so the agent, holding CAP_BPF and CAP_PERFMON, cannot create a map."""
    port = traffic.free_port()
    pod = AgentPod(_values(port, {"type": "RuntimeDefault"}), seccomp["crio"], seccomp, tmp_path, netns)
    pod.init()
    rc, out, err, ex = _agent_run(pod, port)
    assert ex is None and rc == 2, err
    assert re.search(r"^could not open bpf map: \w+, error: Operation not permitted$", err, re.M), err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tcpscope-agent: error: compiling or loading the BPF programs failed"), err
    assert out == ""


def _create_topic(port: int, topic: str) -> None:
    from tests.support.kafka import Broker

    Broker(port=port).create_topic(topic)


def _consume(port: int, topic: str, sent: int) -> list[tuple[list[tuple[str, bytes]], bytes]]:
    """The topic's records once they hold `sent` events and the summary of every batch: each
    agent batch is its event records plus one summary record saying how many events it had."""
    from tcpscope.kafka_layout import H_BATCH_EVENTS, H_RECORD, RECORD_SUMMARY, header_map
    from tests.support.kafka import consume_all

    out: list[tuple[list[tuple[str, bytes]], bytes]] = []
    for batches in range(1, 4):
        out = [(list(r.headers), r.value) for r in consume_all(f"127.0.0.1:{port}", topic, sent + batches)]
        summaries = [h for h in (header_map(hs) for hs, _v in out) if h.get(H_RECORD) == RECORD_SUMMARY]
        if sum(int(h[H_BATCH_EVENTS]) for h in summaries) == sent:
            break
    return out


def test_agent_streams_through_the_collector_container_to_kafka(
    seccomp: dict[str, Path], netns: str, tmp_path: Path
) -> None:
    from tcpscope.kafka_layout import RECORD_EVENT, RECORD_SUMMARY, decode_records, to_json
    from tcpscope.losses import definite_total

    port, kafka_port = traffic.free_port(), free_port()
    values = _values(port)
    values["collector"] = {"enabled": True, "kafka": {"bootstrap": f"127.0.0.1:{kafka_port}"}}
    # the chart's default authentication reviews each agent's projected ServiceAccount token with the
    # API server (TokenReview), which cannot run here: that path is tested against the API stand-in
    # (tests/collector/test_tokenreview.py); this test is about the images and their privileges
    values["auth"] = {"serviceAccountToken": {"enabled": False}}
    objects = render(values)
    coll_pod = _pod(objects, "Deployment")
    (coll,) = coll_pod["containers"]
    topic = next(e["value"] for e in coll["env"] if e["name"] == "TCPSCOPE_TOPIC")
    coll_rt = podman.Runtime(seccomp["crio"], seccomp["root"], podman.pod_empty_dirs(coll_pod, tmp_path / "coll"))
    coll_args = podman.run_args(coll_pod, coll, coll_rt, node_name=NODE)
    # the agent's state directory (a DirectoryOrCreate hostPath) lives in the test's directory
    pod = AgentPod(values, seccomp["crio"], seccomp, tmp_path, netns, {"state": str(tmp_path / "node-state")})
    service = next(e["value"] for e in pod.pod["containers"][0]["env"] if e["name"] == "TCPSCOPE_COLLECTOR")
    # the cluster DNS stand-in: the rendered Service name resolves to the pod network's collector
    agent_args = pod.agent_args(["--add-host", f"{service.rsplit(':', 1)[0]}:127.0.0.1"])

    broker = subprocess.Popen(
        ["ip", "netns", "exec", netns, *tansu_command("127.0.0.1", kafka_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        traffic.Child(_create_topic, kafka_port, topic, netns=netns).result(30)
        with podman.run(
            traffic.unique("tsc-collector"), COLLECTOR_IMAGE, coll_args, [], tmp_path, pod.network
        ) as collector:
            collector.wait_for("collector listening on", timeout=60)
            pod.init()
            with podman.run(pod.name, AGENT_IMAGE, agent_args, [], tmp_path, pod.network) as agent:
                agent.wait_for("tcpscope-agent: attached:", timeout=120)
                ex = traffic.tcp_exchange(port=port, client_bytes=300_000, server_bytes=777)
                assert agent.stop() == 0, agent.err()
                summary = _summary(agent.err())
            assert ", lost 0 (" in summary, agent.err()
            sent = int(summary.split()[1])
            assert agent.out() == ""  # stdout is off when the collector is on (agent.stdout: auto)
            assert collector.stop() == 0, collector.err()
        records = traffic.Child(_consume, kafka_port, topic, sent, netns=netns).result(90)
    finally:
        broker.kill()
        broker.wait(10)
    decoded = [d for headers, value in records for d in decode_records(headers, value)]
    events = [d.event for d in decoded if d.kind == RECORD_EVENT and d.event is not None]
    summaries = [d.summary for d in decoded if d.kind == RECORD_SUMMARY and d.summary is not None]
    assert len(events) + len(summaries) == len(decoded)
    assert len(events) == sent  # every event the agent sent, once, and nothing else
    assert sum(definite_total(s.lost) for s in summaries) == 0
    assert {e.node for e in events} == {s.node for s in summaries} == {NODE}
    assert _facts_json([json.loads(to_json(e)) for e in events]) == _expected(ex, _connections(pod))


@pytest.mark.parametrize(("profile", "mode"), [(None, "0"), ({"type": "RuntimeDefault"}, "2")])
def test_the_agent_container_gets_exactly_the_rendered_privileges(
    seccomp: dict[str, Path], netns: str, tmp_path: Path, profile: dict[str, str] | None, mode: str
) -> None:
    """The translation is not vacuous: inside the agent container, as the kernel reports it."""
    pod = AgentPod(_values(traffic.free_port(), profile), seccomp["moby"], seccomp, tmp_path, netns)
    probe = (
        "grep -E '^(Uid|Gid|CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; "
        "touch /opt/x 2>/dev/null && echo root-writable; touch /tmp/x && echo tmp-writable; "
        "touch /lib/modules/x 2>/dev/null && echo modules-writable; cat /proc/self/uid_map"
    )
    res = podman.run_to_end(
        pod.name, AGENT_IMAGE, pod.agent_args(["--entrypoint", "/bin/sh"]), ["-c", probe], pod.network
    )
    assert res.returncode == 0, res.stderr
    status = dict(line.split(":", 1) for line in res.stdout.splitlines() if ":" in line)
    caps = (1 << 38) | (1 << 39)  # CAP_PERFMON, CAP_BPF: the chart's list, nothing else
    assert status["Uid"].split() == ["0"] * 4 and status["Gid"].split() == ["0"] * 4
    assert [int(status[k], 16) for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")] == [caps, caps, caps, 0]
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == mode  # 0: Unconfined, 2: a filter
    lines = res.stdout.splitlines()
    assert "root-writable" not in lines and "modules-writable" not in lines and "tmp-writable" in lines
    assert lines[-1].split() == ["0", "0", "4294967295"]  # no user namespace: real uid 0, as in the chart


@pytest.mark.parametrize(("image", "agent"), [(AGENT_IMAGE, True), (COLLECTOR_IMAGE, False)])
def test_the_images_hold_the_product_and_not_the_simulator(seccomp: dict[str, Path], image: str, agent: bool) -> None:
    """The simulator and the API server stand-in are their own distribution (sim/): never shipped. The
    collector needs nothing of the agent and the agent nothing of the collector (the package graph:
    lint-imports), so each image holds its own process only."""
    python = "/opt/tcpscope/venv/bin/python"
    check = (
        "import importlib.util as u, importlib.metadata as m\n"
        "print(sorted({d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].startswith('tcpscope')}))\n"
        "print(u.find_spec('tcpscope_sim'), u.find_spec('tcpscope.fakeapi'), u.find_spec('tcpscope.sim'))\n"
        "print(u.find_spec('tcpscope.kafka_layout') is not None, u.find_spec('agent') is not None,"
        " u.find_spec('collector') is not None)"
    )
    res = subprocess.run(
        [
            *podman.PODMAN,
            "run",
            "--rm",
            *podman.ULIMITS,
            "--network",
            "none",
            "--entrypoint",
            python,
            image,
            "-c",
            check,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["['tcpscope']", "None None None", f"True {agent} {not agent}"]
