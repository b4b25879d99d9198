"""tcpscope-tail's live view against a real broker: a received reset is held until the join
decides who sent it, then printed marked with its cause."""

from __future__ import annotations

import json
import subprocess

from tcpscope import render
from tcpscope.v1 import events_pb2 as pb
from tests.support.kafka import Broker, publish_batches, run_tail
from tests.tail.test_resetcause import MS, T0, C, S, handshake, received, sent

TOPIC = "tail-resets"


def _tail(b: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tail(b.bootstrap, TOPIC, "--from-beginning", "--duration", "2", "--rows", "socket", *args)


def test_live_view_marks_network_injected_and_app_resets(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC, partitions=1)
    c2 = ("198.18.1.2", 40001)
    ok = handshake("node-1", C, S, T0 - 80 * MS)  # node-1 sees its own socket: its address is known
    peer_saw = handshake("node-2", S, C, T0 - 50 * MS)  # node-2's agent saw the server's socket
    injected = received("node-1", C, S, T0)  # ... and sent no RST: the network did
    app_sent = sent("node-2", S, c2, T0 + 10 * MS, "TCP_STATE")
    app_recv = received("node-1", c2, S, T0 + 11 * MS, socket_id=9)
    n1 = pb.EventBatch(schema_version=1, node="node-1", agent_id="n1", sequence=1, events=[ok, injected, app_recv])
    n2 = pb.EventBatch(schema_version=1, node="node-2", agent_id="n2", sequence=1, events=[peer_saw, app_sent])
    publish_batches(kafka_broker.bootstrap, TOPIC, [n2, n1])

    out = _tail(kafka_broker, "--format", "json", "--kind", "all")  # the handshakes' state changes too
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    by_port = {(d["local"]["port"], "reset" in d, d.get("reset", {}).get("direction")): d for d in lines}
    assert len(lines) == 5
    # the app reset was decided as soon as its send was there; the injected one after the hold
    assert by_port[(40001, True, "RECEIVED")]["reset_cause"] == {
        "cause": "app",
        "detail": "TCP_STATE",
        "peer_node": "node-2",
    }
    assert by_port[(40000, True, "RECEIVED")]["reset_cause"] == {
        "cause": "network",
        "detail": "no_send_seen",
        "peer_node": "node-2",
    }
    assert "reset_cause" not in by_port[(9000, True, "SENT")]  # only received resets are judged

    table = _tail(kafka_broker, "--kind", "reset")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[1:] == [
        render.table_line(app_sent),
        render.table_line(app_recv) + " cause=app/TCP_STATE",
        render.table_line(injected) + " cause=network/no_send_seen",
    ]


def test_connection_rows_join_both_ends_and_name_the_sender(kafka_broker: Broker) -> None:
    """The default live view: one row per connection, both nodes' events joined, with who sent the RST."""
    from tests.tail.test_resetcause import life

    kafka_broker.create_topic(TOPIC, partitions=2)
    c2 = ("198.18.1.2", 40001)
    killed = [  # the network reset C <-> S: both ends received one, neither sent one
        (received("node-1", C, S, T0), life("node-1", C, S, T0 - 80 * MS, T0, pb.RESET_RECEIVED, pb.ACTIVE)),
        (received("node-2", S, C, T0), life("node-2", S, C, T0 - 79 * MS, T0, pb.RESET_RECEIVED, pb.PASSIVE)),
    ]
    app = [  # the server's application aborted c2 <-> S
        life("node-2", S, c2, T0, T0 + 10 * MS, pb.RESET_SENT, pb.PASSIVE, socket_id=3, reason="TCP_ABORT_ON_CLOSE"),
        received("node-1", c2, S, T0 + 11 * MS, socket_id=9),
        life("node-1", c2, S, T0 - MS, T0 + 11 * MS, pb.RESET_RECEIVED, pb.ACTIVE, socket_id=9),
    ]
    n1 = pb.EventBatch(schema_version=1, node="node-1", agent_id="n1", sequence=1, events=[*killed[0], app[1], app[2]])
    n2 = pb.EventBatch(schema_version=1, node="node-2", agent_id="n2", sequence=1, events=[*killed[1], app[0]])
    publish_batches(kafka_broker.bootstrap, TOPIC, [n1], partition=0)
    publish_batches(kafka_broker.bootstrap, TOPIC, [n2], partition=1)

    out = run_tail(kafka_broker.bootstrap, TOPIC, "--from-beginning", "--duration", "2", "--format", "json")
    assert out.returncode == 0, out.stderr
    # the app reset is decided as soon as both ends are there; the network one after the reset hold
    rows = sorted((json.loads(x) for x in out.stdout.splitlines()), key=lambda r: r["client"]["port"])
    assert [(r["row"], r["client"]["port"], r["ended"]) for r in rows] == [
        ("connection", 40000, "network_reset"),
        ("connection", 40001, "server_reset"),
    ]
    # both ends received a RST and neither sent one: both_ends, whichever arrived first
    assert {k: rows[0]["reset_by"][k] for k in ("side", "cause", "detail")} == {
        "side": "network",
        "cause": "network",
        "detail": "both_ends",
    }
    assert rows[1]["reset_by"] == {
        "side": "server",
        "cause": "app",
        "detail": "TCP_ABORT_ON_CLOSE",
        "peer_node": "node-2",
    }
    assert sorted(rows[1]["sockets"]) == ["client", "server"]
    assert out.stderr.splitlines()[-1] == (
        "# 2 connection rows: 2 joined from both ends, 0 from the client's agent only, 0 from the server's "
        "agent only; 3 reset and error events folded into them, 0 shown on their own"
    )
    table = run_tail(kafka_broker.bootstrap, TOPIC, "--from-beginning", "--duration", "2", "--kind", "reset")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["TIME", "CLIENT", "SERVER", "ENDED", "RESET"]
    assert sorted(x.split()[3:6] for x in lines[1:]) == [
        ["network_reset", "network", "(both_ends)"],
        ["server_reset", "server", "app"],
    ]
