"""Pure parts of the harness: the agent loss-summary parser and the per-row statistics."""

from __future__ import annotations

from pathlib import Path

from bench.runner import (
    OverheadRow,
    RoundResult,
    count_agent_sockets,
    count_tcplife,
    loss_total,
    parse_loss_summary,
)


def test_loss_summary_json_line_is_flattened() -> None:
    err = 'INFO attached 8 tracepoints\nlosses: {"kernel.ringbuf_full": 3, "agent.buffer": {"overflow": 2}}\n'
    assert parse_loss_summary(err) == {"kernel.ringbuf_full": 3, "agent.buffer.overflow": 2}
    assert loss_total({"kernel.ringbuf_full": 3, "agent.buffer.overflow": 2}) == 5


def test_loss_summary_key_value_line_and_totals() -> None:
    err = "started\nevents lost: total=7 kernel.ringbuf_full=7\n"
    counts = parse_loss_summary(err)
    assert counts == {"total": 7, "kernel.ringbuf_full": 7}
    assert counts is not None and loss_total(counts) == 7


def test_loss_summary_absent_or_none() -> None:
    assert parse_loss_summary("INFO attached\nINFO bye\n") is None
    assert parse_loss_summary("no events lost\n") == {}


def test_overhead_summary_median_min_max() -> None:
    row = OverheadRow("loopback", "tcplife", "tcplife-bpfcc")
    for i, (rate, ratio, cpu) in enumerate([(800.0, 0.8, 0.016), (700.0, 0.7, 0.014), (900.0, 0.9, 0.027)]):
        row.rounds.append(RoundResult(i, rate, int(rate), 0, ratio=ratio, cpu_s=cpu, hwm_kb=2048 * (i + 1)))
    s = row.summary()
    assert (s["ratio_min"], s["ratio_median"], s["ratio_max"]) == (0.7, 0.8, 0.9)
    assert s["rate_median"] == 800.0
    # CPU µs per connection: 20, 20, 30 -> median 20
    assert round(s["cpu_us_per_conn_median"], 6) == 20.0
    assert s["hwm_mb_max"] == 6.0


def test_loss_summary_of_the_agent_itself() -> None:
    from agent.__main__ import loss_summary

    err = (
        "tcpscope-agent: attached: sock:inet_sock_set_state (ring buffer)\n"
        + loss_summary({"kernel.ringbuf_full": 4, "kernel.socket_map_full": 0}, 1200)
        + "\n"
    )
    counts = parse_loss_summary(err)
    assert counts == {"events_out": 1200, "total": 4, "kernel.ringbuf_full": 4, "kernel.socket_map_full": 0}
    assert loss_total(counts) == 4
    clean = parse_loss_summary(loss_summary({"kernel.ringbuf_full": 0}, 10))
    assert clean is not None and loss_total(clean) == 0


def test_agent_sockets_count_lifecycles_and_flow_connections_on_the_port(tmp_path: Path) -> None:
    out = tmp_path / "agent.jsonl"
    out.write_text(
        "\n".join(
            [
                '{"local": {"ip": "127.0.0.1", "port": 8080}, "remote": {"ip": "127.0.0.1", "port": 4000}, '
                '"lifecycle": {"role": "PASSIVE"}}',
                '{"local": {"ip": "127.0.0.1", "port": 80800}, "remote": {"ip": "127.0.0.1"}, "lifecycle": {}}',
                '{"local": {"ip": "127.0.0.1", "port": 8080}, "lifecycle": {"last_state": "LISTEN"}}',
                '{"local": {"ip": "127.0.0.1"}, "remote": {"ip": "127.0.0.1", "port": 8080}, '
                '"flow": {"role": "ACTIVE", "connections": "41"}}',
                '{"local": {"ip": "127.0.0.1", "port": 9090}, "flow": {"connections": "7"}}',
            ]
        )
        + "\n"
    )
    assert count_agent_sockets(out, 8080) == 42


def test_tcplife_lines_on_the_port(tmp_path: Path) -> None:
    out = tmp_path / "tcplife.txt"
    out.write_text(
        "PID   COMM  LADDR LPORT RADDR RPORT TX_KB RX_KB MS\n"
        "1 a 127.0.0.1 8080 127.0.0.1 5000 0 0 0.1\n"
        "2 b 127.0.0.1 5001 127.0.0.1 8080 0 0 0.1\n"
        "3 c 127.0.0.1 5002 127.0.0.1 9999 0 0 0.1\n"
    )
    assert count_tcplife(out, 8080) == 2
