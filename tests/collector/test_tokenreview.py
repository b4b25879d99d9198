"""Kubernetes-native agent identity: projected ServiceAccount tokens checked by
TokenReview against the API stand-in (real HTTP, the real kubernetes client), each stream bound to
the node of the token's pod. The impersonation to refuse: a client with a valid token
publishing under another agent's id is refused, and nothing of it reaches Kafka."""

from __future__ import annotations

from pathlib import Path

import grpc

from tcpscope.agent_id import make_agent_id
from tcpscope.v1.events_pb2 import EventBatch
from tcpscope_sim.fakeapi import FakeApiServer, make_pod
from tests.collector.test_stream import _raw_stream
from tests.support.collector import collector
from tests.support.events import make_event
from tests.support.kafka import Broker, consume_all
from tests.support.streaming import collector_cfg, decode_all, make_exporter

TOPIC = "tokenreview-events"
NS, SA = "tcpscope", "tcpscope-agent"


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _batch(node: str, agent_id: str, seq: int, first: int) -> bytes:
    b = EventBatch(schema_version=1, node=node, agent_id=agent_id, sequence=seq)
    b.events.extend(make_event(first + i, node=node) for i in range(2))
    return b.SerializeToString()


def test_tokens_bind_streams_to_their_pods_node_and_impersonation_is_refused(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    kafka_broker.create_topic(TOPIC)
    with FakeApiServer() as api:
        api.add(make_pod("tcpscope-agent-aaaaa", NS, "node-a"))
        api.add(make_pod("tcpscope-agent-bbbbb", NS, "node-b"))
        api.add(make_pod("curious", "default", "node-a"))
        api.add(make_pod("gone", NS, "node-a"))
        token_a = api.issue_token(NS, SA, "tcpscope-agent-aaaaa")
        token_other_sa = api.issue_token("default", "default", "curious")
        token_wrong_aud = api.issue_token(NS, SA, "tcpscope-agent-aaaaa", audiences=("https://kubernetes.default",))
        token_gone = api.issue_token(NS, SA, "gone")
        api.delete("pods", "gone", NS)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        api.reviewers = {"fake-token"}  # the collector's own credentials may create TokenReviews (RBAC)
        (tmp_path / "token-a").write_text(token_a + "\n")
        cfg = collector_cfg(
            kafka_broker.bootstrap,
            TOPIC,
            tokenreview=True,
            kubeconfig=str(kubeconfig),
            agent_service_accounts=(f"{NS}/{SA}",),
        )
        with collector(cfg) as col:
            # the real agent of node-a, with its projected token: every event delivered
            real_id = make_agent_id("node-a", "agents")
            real = make_exporter(
                col.target, node="node-a", agent_id=real_id, batch=5, token_file=str(tmp_path / "token-a")
            )
            real.emit([make_event(i, node="node-a") for i in range(20)], {})
            real.close(10)
            assert real.metrics.value("tcpscope_agent_events_acked_total") == 20
            node_b_agent = make_agent_id("node-b", "agents")
            with grpc.insecure_channel(col.target) as ch:
                # the impersonation: node-a's valid token, 200 batches under node-b's agent id at sequences
                # it has not reached yet; claiming node-b, or claiming node-a with node-b's agent id
                for seq in range(1, 101):
                    assert _raw_stream(ch, [_batch("node-b", node_b_agent, seq, 1000)], _md(token_a)) == (
                        grpc.StatusCode.PERMISSION_DENIED,
                        [],
                    )
                    assert _raw_stream(ch, [_batch("node-a", node_b_agent, seq, 2000)], _md(token_a)) == (
                        grpc.StatusCode.PERMISSION_DENIED,
                        [],
                    )
                # and under the real agent's own id from another ServiceAccount's pod on the same node
                assert _raw_stream(ch, [_batch("node-a", real_id, 5, 3000)], _md(token_other_sa)) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    [],
                )
                assert _raw_stream(ch, [_batch("node-a", real_id, 5, 3000)], _md(token_wrong_aud)) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    [],
                )
                assert _raw_stream(ch, [_batch("node-a", real_id, 5, 3000)], _md(token_gone)) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    [],
                )
                assert _raw_stream(ch, [_batch("node-a", real_id, 5, 3000)], _md("not-a-token")) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    [],
                )
                assert _raw_stream(ch, [_batch("node-a", real_id, 5, 3000)]) == (grpc.StatusCode.UNAUTHENTICATED, [])
            m = col.metrics
            rejected = {
                r: m.value("tcpscope_collector_rejected_total", reason=r)
                for r in (
                    "node_mismatch",
                    "agent_id_mismatch",
                    "service_account_not_allowed",
                    "bad_token",
                    "pod_not_found",
                    "no_token",
                )
            }
            assert rejected == {
                "node_mismatch": 100,
                "agent_id_mismatch": 100,
                "service_account_not_allowed": 1,
                "bad_token": 2,
                "pod_not_found": 1,
                "no_token": 1,
            }
            assert m.value("tcpscope_collector_events_received_total") == 20
            # one review per distinct token: streams reuse the cached answer
            assert api.reviews == 5
    evs, sums = decode_all(consume_all(kafka_broker.bootstrap, TOPIC, want=24, timeout=5))
    assert len(evs) == 20 and {d.agent_id for d in evs} == {real_id} and len(sums) == 4
    assert sorted(d.event.socket_id for d in evs if d.event) == list(range(1, 21))


def test_without_rbac_for_tokenreviews_agents_are_told_to_retry(kafka_broker: Broker, tmp_path: Path) -> None:
    kafka_broker.create_topic(TOPIC)
    with FakeApiServer() as api:
        api.add(make_pod("tcpscope-agent-aaaaa", NS, "node-a"))
        token = api.issue_token(NS, SA, "tcpscope-agent-aaaaa")
        api.reviewers = {"someone-else"}
        cfg = collector_cfg(
            kafka_broker.bootstrap,
            TOPIC,
            tokenreview=True,
            kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        )
        with collector(cfg) as col, grpc.insecure_channel(col.target) as ch:
            assert _raw_stream(ch, [_batch("node-a", make_agent_id("node-a"), 1, 0)], _md(token)) == (
                grpc.StatusCode.UNAVAILABLE,
                [],
            )
            assert col.metrics.value("tcpscope_collector_rejected_total", reason="tokenreview_unavailable") == 1
