"""AgentConfig: flags over environment over defaults, validation with clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import AgentConfig, ConfigError, build_parser
from tcpscope.agent_id import node_of, prefix_of


def test_defaults_fill_node_name_and_agent_id() -> None:
    cfg = AgentConfig.from_args([], env={})
    assert cfg.node_name
    assert cfg.agent_id.startswith(cfg.node_name + "/")
    assert cfg.events == ("lifecycle", "retransmit", "synack", "reset", "error")
    assert cfg.stdout is None and cfg.kubernetes is True


def test_agent_id_is_a_prefix_and_unique_per_start() -> None:
    """Reusing --agent-id after a restart must not reuse batch ids."""
    a = AgentConfig.from_args(["--agent-id", "team-x", "--node-name", "node-1"], env={})
    b = AgentConfig.from_args(["--agent-id", "team-x", "--node-name", "node-1"], env={})
    assert a.agent_id != b.agent_id
    assert a.agent_id.startswith("team-x/node-1/") and b.agent_id.startswith("team-x/node-1/")
    assert node_of(a.agent_id) == "node-1" and prefix_of(a.agent_id) == "team-x"
    with pytest.raises(SystemExit):
        AgentConfig.from_args(["--node-name", "a/b"], env={})


def test_state_dir_must_be_writable(tmp_path: Path) -> None:
    assert AgentConfig.from_args(["--state-dir", str(tmp_path / "new")], env={}).state_dir == str(tmp_path / "new")
    (tmp_path / "file").write_text("")
    for bad in (str(tmp_path / "file"), str(tmp_path / "missing" / "deeper")):
        with pytest.raises(SystemExit):
            AgentConfig.from_args(["--state-dir", bad], env={})


def test_flags_override_environment() -> None:
    env = {"NODE_NAME": "env-node", "TCPSCOPE_EVENTS": "reset,error", "TCPSCOPE_PORTS": "80,443"}
    cfg = AgentConfig.from_args(["--node-name", "flag-node"], env=env)
    assert cfg.node_name == "flag-node"
    assert cfg.events == ("reset", "error")
    assert cfg.ports == (80, 443)
    cfg = AgentConfig.from_args(["--port", "8080", "--port", "9090", "--events", "lifecycle"], env=env)
    assert cfg.ports == (8080, 9090)
    assert cfg.events == ("lifecycle",)


def test_boolean_flags_and_env() -> None:
    assert AgentConfig.from_args(["--no-kubernetes"], env={}).kubernetes is False
    assert AgentConfig.from_args([], env={"TCPSCOPE_KUBERNETES": "false"}).kubernetes is False
    assert AgentConfig.from_args([], env={"TCPSCOPE_DUMP_BPF": "1"}).dump_bpf is True
    assert AgentConfig.from_args(["--no-resolve-remote"], env={}).resolve_remote is False


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"events": ("lifecycle", "bogus")}, "unknown event kinds"),
        ({"ports": (0,)}, "out of range"),
        ({"ring_buffer_kb": 1000}, "power of two"),
        ({"tls_cert": "c.pem"}, "go together"),
        ({"batch_max_events": 10, "buffer_max_events": 5}, "batch-max-events"),
        ({"stdout": "xml"}, "table"),
        # a client certificate or server name without a CA would mean plaintext with a token in the clear
        ({"tls_cert": "/etc/hostname", "tls_key": "/etc/hostname"}, "need --tls-ca"),
        ({"tls_server_name": "collector"}, "need --tls-ca"),
        ({"tls_ca": "/nonexistent/ca.pem"}, "--tls-ca /nonexistent/ca.pem: not a readable file"),
        ({"token_file": "/nonexistent/token"}, "--token-file /nonexistent/token: not a readable file"),
        ({"connection_key_file": "/nonexistent/key"}, "--connection-key-file /nonexistent/key: not a readable file"),
        ({"log_level": "LOUD"}, "--log-level"),
        ({"metrics_port": 99999}, "--metrics-port"),
        ({"duration": -1.0}, "--duration"),
        ({"max_sockets": 0}, "--max-sockets"),
        ({"drain_grace": -1.0}, "must be >= 0"),
    ],
)
def test_invalid_values_raise_clear_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AgentConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_env_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        AgentConfig.from_args([], env={"TCPSCOPE_EVENTS": "nope"})
    assert exc.value.code == 2
    assert "unknown event kinds" in capsys.readouterr().err


def test_every_field_is_documented_with_an_env_var() -> None:
    from dataclasses import fields

    for f in fields(AgentConfig):
        assert f.metadata.get("env"), f.name
        assert f.metadata.get("help"), f.name


# The command line as it was written by hand before it was generated from AgentConfig: every
# spelling keeps working (tcpscope/settings.py:add_flags), and every variable.
FLAGS = {
    "--stdout", "--events", "--duration", "--dump-bpf", "--port", "--cgroup-root", "--netns", "--tracefs",
    "--btf", "--probe-sample", "--max-sockets", "--connections", "--flow-interval", "--max-flows",
    "--max-connection-events", "--anomaly-budget", "--max-anomaly-events", "--max-anomaly-keys",
    "--ring-buffer-kb", "--node-name", "--connection-key-file", "--kubernetes", "--no-kubernetes",
    "--kubeconfig", "--resolve-remote", "--no-resolve-remote", "--labels", "--pod-cache-ttl",
    "--pending-max-wait", "--collector", "--agent-id", "--tls-ca", "--tls-cert", "--tls-key",
    "--tls-server-name", "--token-file", "--compression", "--batch-max-events", "--batch-max-age",
    "--buffer-max-events", "--drain-grace", "--state-dir", "--metrics-port", "--metrics-address", "--log-level",
}  # fmt: skip


def test_every_field_has_a_flag_and_a_variable_and_help_lists_them() -> None:
    from dataclasses import fields

    from tcpscope.settings import flag_name

    parser = build_parser()
    text = parser.format_help()
    options = {s: a for a in parser._actions for s in a.option_strings}
    assert set(options) - {"-h", "--help"} == FLAGS
    envs = [f.metadata["env"] for f in fields(AgentConfig)]
    assert len(set(envs)) == len(envs) == len(fields(AgentConfig))
    for f in fields(AgentConfig):
        assert options[flag_name(f)].dest == f.name, f.name
        assert f"[{f.metadata['env']}]" in text, f.name
    for flag in FLAGS:
        assert re.search(rf"^  (.*, )?{flag}\b", text, re.M), flag  # its own line in the options list
    for flag, spelling in (("--stdout", "{table,json}"), ("--connections", "{each,aggregate}"), ("--port", "PORT")):
        assert f"{flag} {spelling}" in text
    assert "(repeatable)" in text and "run with cgroup-level identity only" in text


@pytest.mark.parametrize(
    ("argv", "env", "field", "value"),
    [
        (["--port", "80", "--port", "443"], {}, "ports", (80, 443)),
        ([], {"TCPSCOPE_PORTS": "80,443"}, "ports", (80, 443)),
        (["--labels", "app,team"], {}, "label_allowlist", ("app", "team")),
        ([], {"TCPSCOPE_LABELS": "tier"}, "label_allowlist", ("tier",)),
        (["--kubernetes"], {"TCPSCOPE_KUBERNETES": "0"}, "kubernetes", True),
        (["--resolve-remote"], {"TCPSCOPE_RESOLVE_REMOTE": "false"}, "resolve_remote", True),
        (["--dump-bpf"], {}, "dump_bpf", True),
        (["--stdout", "table", "--connections", "aggregate"], {}, "connections", "aggregate"),
        (["--compression", "none"], {}, "compression", "none"),
        (["--duration", "2.5"], {}, "duration", 2.5),
        (["--max-flows", "7"], {"TCPSCOPE_MAX_FLOWS": "9"}, "max_flows", 7),
        (["--log-level", "debug"], {}, "log_level", "DEBUG"),
        ([], {"TCPSCOPE_CONNECTION_KEY_FILE": "/etc/hostname"}, "connection_key_file", "/etc/hostname"),
    ],
)
def test_each_spelling_reaches_its_field(argv: list[str], env: dict[str, str], field: str, value: object) -> None:
    assert getattr(AgentConfig.from_args(argv, env=env), field) == value


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--stdout", "xml"], "argument --stdout: invalid choice: 'xml'"),
        (["--connections", "some"], "argument --connections: invalid choice: 'some'"),
        (["--port", "http"], "argument --port: invalid int value: 'http'"),
        (["--no-dump-bpf"], "unrecognized arguments: --no-dump-bpf"),
    ],
)
def test_bad_flags_are_argparse_errors(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        AgentConfig.from_args(argv, env={})
    assert exc.value.code == 2
    assert said in capsys.readouterr().err


def test_unreadable_env_values_name_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    for env, said in (
        ({"TCPSCOPE_KUBERNETES": "maybe"}, "--kubernetes / TCPSCOPE_KUBERNETES: cannot use 'maybe'"),
        ({"TCPSCOPE_PORTS": "80,http"}, "--port / TCPSCOPE_PORTS: cannot use"),  # the flag as spelt
    ):
        with pytest.raises(SystemExit) as exc:
            AgentConfig.from_args([], env=env)
        assert exc.value.code == 2
        assert capsys.readouterr().err.startswith(f"tcpscope-agent: error: {said}")
    assert AgentConfig.from_args([], env={"TCPSCOPE_DURATION": "2.5"}).duration == 2.5


@pytest.mark.parametrize(
    ("argv", "mode"),
    [
        (["--stdout", "table"], "each"),  # tcplife-like on a terminal
        (["--collector", "c:4317"], "aggregate"),  # streaming: ordinary connections become flows
        (["--collector", "c:4317", "--stdout", "json"], "each"),
        (["--collector", "c:4317", "--connections", "each"], "each"),
        (["--stdout", "json", "--connections", "aggregate"], "aggregate"),
    ],
)
def test_connections_mode_defaults_by_sink(argv: list[str], mode: str) -> None:
    assert AgentConfig.from_args(argv, env={}).connections == mode


def test_connections_mode_from_env_and_bad_values() -> None:
    assert AgentConfig.from_args(["--stdout", "json"], env={"TCPSCOPE_CONNECTIONS": "aggregate"}).connections == (
        "aggregate"
    )
    for kwargs, message in (
        ({"connections": "some"}, "--connections"),
        ({"flow_interval": 0.0}, "--flow-interval"),
        ({"max_flows": 0}, "--max-flows"),
        ({"max_connection_events": -1}, "--max-connection"),
    ):
        with pytest.raises(ConfigError, match=message):
            AgentConfig(**kwargs)
