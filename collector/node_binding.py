"""Who a client is, and what it may publish as: batches are bound to the authenticated node.

Two ways to authenticate an agent as a node:

- mutual TLS: the client certificate's CN/SAN names are the nodes it may speak for;
- Kubernetes-native (`--tokenreview`): the agent sends its projected ServiceAccount token (audience
  `--token-audience`); the collector asks the API server (TokenReview) who it is, requires the
  ServiceAccount to be one of `--agent-service-accounts`, reads the pod named in the token from the
  API, checks its uid against the token's, and takes the pod's `spec.nodeName`.

A shared static token (`--token-file`) authenticates no node: every holder is trusted to speak for
every node (docs/deployment.md).

Once a stream's nodes are known, every batch on it must name one of them as `node`, carry an agent
id of that node (tcpscope/agent_id.py: `[PREFIX/]NODE/INCARNATION`), events of no other node, and
unobserved windows of that node only. So a client cannot publish under another node's agent id,
and its batches can never collide with that agent's dedup keys.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tcpscope.agent_id import belongs_to
from tcpscope.v1.events_pb2 import EventBatch

log = logging.getLogger(__name__)

EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"  # Kubernetes 1.30+ (ServiceAccountTokenPodNodeInfo)
SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class ClientIdentity:
    """The nodes an authenticated client may publish for, and a description for logs."""

    nodes: frozenset[str]
    who: str


@dataclass(frozen=True)
class AuthFailure:
    """Why a client was not authenticated: a metrics reason, a message, and whether to retry
    (the API server could not be asked: the agent should come back, not give up)."""

    reason: str
    details: str
    retry: bool = False


def check_binding(batch: EventBatch, nodes: frozenset[str]) -> tuple[str, str] | None:
    """(reason, details) when the batch claims something its client is not, else None."""
    if batch.node not in nodes:
        return ("node_mismatch", f"node {batch.node!r} is not the authenticated node")
    if any(ev.node and ev.node != batch.node for ev in batch.events):
        return ("node_mismatch", "an event claims another node than the batch")
    if not belongs_to(batch.agent_id, batch.node):
        return (
            "agent_id_mismatch",
            f"agent id {batch.agent_id!r} is not an agent id of node {batch.node!r} ([PREFIX/]NODE/INCARNATION)",
        )
    for w in batch.unobserved:
        # a window may have been passed on by an incarnation that died before reporting it: its
        # agent ids need only be of this node
        if (
            w.node != batch.node
            or not belongs_to(w.agent_id, batch.node)
            or (w.previous_agent_id and not belongs_to(w.previous_agent_id, batch.node))
        ):
            return ("agent_id_mismatch", "an unobserved window names another node or agent")
    return None


class TokenReviewer:
    """Authenticates projected ServiceAccount tokens with TokenReview; results are cached per token
    for `ttl_s` (a stream authenticates once, at its start; reconnects reuse the answer)."""

    def __init__(
        self,
        api_client: Any,
        audience: str,
        service_accounts: frozenset[str],
        ttl_s: float = 60.0,
        max_cached: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self._auth = client.AuthenticationV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._models = client
        self._audience = audience
        self._accounts = service_accounts
        self._ttl = ttl_s
        self._max = max_cached
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, tuple[float, ClientIdentity | AuthFailure]] = OrderedDict()

    def review(self, token: str) -> ClientIdentity | AuthFailure:
        """Blocking (API calls): run it off the event loop."""
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        result = self._review(token)
        if not (isinstance(result, AuthFailure) and result.retry):
            with self._lock:
                self._cache[key] = (now + self._ttl, result)
                self._cache.move_to_end(key)
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        return result

    def _review(self, token: str) -> ClientIdentity | AuthFailure:
        from kubernetes.client.exceptions import ApiException

        m = self._models
        body = m.V1TokenReview(spec=m.V1TokenReviewSpec(token=token, audiences=[self._audience]))
        try:
            status = self._auth.create_token_review(body).status
        except ApiException as e:
            log.warning("TokenReview failed: HTTP %s %s", e.status, e.reason)
            return AuthFailure(
                "tokenreview_unavailable", f"cannot verify the token (TokenReview: HTTP {e.status})", retry=True
            )
        except Exception as e:  # API unreachable: the agent retries
            log.warning("TokenReview failed: %s", e)
            return AuthFailure(
                "tokenreview_unavailable", "cannot verify the token (API server unreachable)", retry=True
            )
        if status is None or not status.authenticated:
            return AuthFailure("bad_token", f"token not authenticated: {getattr(status, 'error', '') or 'no reason'}")
        user = status.user
        if user is None:
            return AuthFailure("bad_token", "TokenReview names no user")
        name = str(user.username or "")
        if not name.startswith(SA_PREFIX):
            return AuthFailure("not_a_service_account", f"{name!r} is not a ServiceAccount")
        account = name.removeprefix(SA_PREFIX).replace(":", "/", 1)
        if self._accounts and account not in self._accounts:
            return AuthFailure(
                "service_account_not_allowed", f"ServiceAccount {account} is not an agent's (--agent-service-accounts)"
            )
        extra = user.extra or {}
        pod = (extra.get(EXTRA_POD_NAME) or [""])[0]
        pod_uid = (extra.get(EXTRA_POD_UID) or [""])[0]
        if not pod:
            return AuthFailure("no_pod", "the token is not bound to a pod (use a projected ServiceAccount token)")
        namespace = account.split("/", 1)[0]
        try:
            obj = self._core.read_namespaced_pod(pod, namespace)
        except ApiException as e:
            if e.status == 404:
                return AuthFailure("pod_not_found", f"pod {namespace}/{pod} of the token does not exist")
            return AuthFailure(
                "tokenreview_unavailable", f"cannot read pod {namespace}/{pod}: HTTP {e.status}", retry=True
            )
        except Exception as e:
            log.warning("reading pod %s/%s failed: %s", namespace, pod, e)
            return AuthFailure(
                "tokenreview_unavailable", "cannot read the token's pod (API server unreachable)", retry=True
            )
        if pod_uid and (obj.metadata is None or obj.metadata.uid != pod_uid):
            return AuthFailure("pod_not_found", f"pod {namespace}/{pod} was replaced (uid differs from the token's)")
        node = obj.spec.node_name if obj.spec is not None else None
        if not node:
            return AuthFailure("pod_not_scheduled", f"pod {namespace}/{pod} has no node")
        token_node = (extra.get(EXTRA_NODE_NAME) or [""])[0]
        if token_node and token_node != node:
            return AuthFailure("pod_not_found", f"pod {namespace}/{pod} runs on {node}, the token says {token_node}")
        return ClientIdentity(frozenset({node}), f"{account} pod {namespace}/{pod} on {node}")
