"""End to end with real kernel events: loopback traffic -> BPF source -> exporter -> gRPC ->
collector -> tansu; the Kafka records are byte-identical to what the kernel source produced."""

from __future__ import annotations

import time

import pytest

from agent.config import AgentConfig
from agent.pipeline import Pipeline
from tests.support import traffic
from tests.support.collector import collector
from tests.support.kafka import Broker, consume_all, free_port
from tests.support.kernel import kernel_harness
from tests.support.streaming import collector_cfg, decode_all, make_exporter

TOPIC = "kernel-events"


@pytest.mark.root
def test_real_kernel_events_reach_kafka_exactly(kafka_broker: Broker) -> None:
    kafka_broker.create_topic(TOPIC)
    port = free_port()
    cfg = AgentConfig(events=("lifecycle", "state"), ports=(port,), kubernetes=False, node_name="e2e-node")
    with kernel_harness(cfg) as h, collector(collector_cfg(kafka_broker.bootstrap, TOPIC)) as col:
        exp = make_exporter(col.target, node="e2e-node", agent_id="e2e-agent", batch=50)
        pipe = Pipeline(source=h.source, enrichers=[], sink=exp, poll_timeout_ms=20)
        seen = []

        class Tee:
            """Records what the pipeline handed to the exporter, then passes it on."""

            def emit(self, events, upstream):
                seen.extend(events)
                exp.emit(events, upstream)

            def close(self, grace_s: float) -> None:
                exp.close(grace_s)

            def losses(self) -> dict[str, int]:
                return exp.losses()

        pipe.sink = Tee()
        ex = traffic.tcp_exchange(client_bytes=5000, server_bytes=321, port=port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(e.HasField("lifecycle") for e in seen) < 2:
            pipe.step()
        pipe.shutdown(10)
        assert all(v == 0 for v in pipe.all_losses().values()), pipe.all_losses()
    lifecycles = [e for e in seen if e.HasField("lifecycle")]
    assert sorted((e.lifecycle.tx_bytes, e.lifecycle.rx_bytes) for e in lifecycles) == [(321, 5000), (5000, 321)]
    assert ex.server_port == port
    records = consume_all(kafka_broker.bootstrap, TOPIC, want=len(seen) + 1)
    evs, sums = decode_all(records)
    got = [d.event for d in sorted(evs, key=lambda d: (d.sequence, d.index))]
    assert got == seen
    assert sum(s.summary.lost.kernel for s in sums if s.summary) == 0
    # every event of the connection's two sockets, their first state changes included, has the
    # connection's key, so one partition
    conn_sockets = {e.socket_id for e in lifecycles}
    keys = {
        rec.key
        for rec in records
        for d in decode_all([rec])[0]
        if d.event is not None and d.event.socket_id in conn_sockets
    }
    ends = sorted([("127.0.0.1", ex.client_port), ("127.0.0.1", port)])  # the lower end first
    assert keys == {"-".join(f"{ip}:{p}" for ip, p in ends).encode()}
    firsts = {
        (e.state_change.old_state, e.state_change.new_state)
        for e in seen
        if e.socket_id in conn_sockets and e.HasField("state_change")
    }
    assert {(7, 2), (10, 3)} <= firsts  # CLOSE->SYN_SENT, LISTEN->SYN_RECV
