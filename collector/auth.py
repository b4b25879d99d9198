"""Who a Collector.Stream call speaks for: the shared bearer token (constant-time compare), the client
certificate's names under mTLS, and with --tokenreview the node of the token's pod
(collector/node_binding.py). The answer is the set of nodes the stream may send batches of, None when
nothing binds it, or a Refusal."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Sequence

import grpc

from collector.node_binding import AuthFailure, ClientIdentity, TokenReviewer
from collector.validation import Refusal
from tcpscope.v1.collector_pb2 import BatchAck

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]


def peer_identities(context: grpc.aio.ServicerContext[bytes, BatchAck]) -> frozenset[str]:
    """The client certificate's CN and SAN entries, from gRPC's auth context."""
    auth = context.auth_context()
    names: set[str] = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for v in auth.get(key, []):
            names.add(v.decode() if isinstance(v, bytes) else str(v))
    return frozenset(names)


def check_token(token: str | None, metadata: Metadata | None) -> Refusal | None:
    """Check the bearer token in the `authorization` metadata (constant-time compare); None: accepted
    (or no token configured)."""
    if token is None:
        return None
    want = f"Bearer {token}".encode()
    for k, v in metadata or ():
        if k.lower() == "authorization":
            got = v if isinstance(v, bytes) else v.encode()
            if hmac.compare_digest(got, want):
                return None
            return Refusal(grpc.StatusCode.UNAUTHENTICATED, "bad_token", "invalid bearer token")
    return Refusal(grpc.StatusCode.UNAUTHENTICATED, "no_token", "missing bearer token")


async def review(reviewer: TokenReviewer, metadata: Metadata) -> ClientIdentity | Refusal:
    """--tokenreview: who the bearer token's pod is, and so which node the stream speaks for."""
    token = next(
        (
            (v if isinstance(v, str) else v.decode(errors="replace"))
            for k, v in metadata
            if k.lower() == "authorization"
        ),
        "",
    )
    if not token.startswith("Bearer ") or not token.removeprefix("Bearer ").strip():
        return Refusal(grpc.StatusCode.UNAUTHENTICATED, "no_token", "missing bearer token")
    loop = asyncio.get_running_loop()
    got = await loop.run_in_executor(None, reviewer.review, token.removeprefix("Bearer ").strip())
    if isinstance(got, AuthFailure):
        code = grpc.StatusCode.UNAVAILABLE if got.retry else grpc.StatusCode.UNAUTHENTICATED
        return Refusal(code, got.reason, got.details)
    log.debug("stream authenticated as %s", got.who)
    return got


class Authenticator:
    """The collector's authentication settings, applied to each new stream."""

    def __init__(self, token: str | None, mtls: bool, reviewer: TokenReviewer | None) -> None:
        self._token = token
        self._mtls = mtls
        self._reviewer = reviewer

    def check_token(self, metadata: Metadata | None) -> Refusal | None:
        """The shared token, checked before anything else (cheap, no I/O)."""
        return check_token(self._token, metadata)

    async def nodes(
        self, context: grpc.aio.ServicerContext[bytes, BatchAck], metadata: Metadata
    ) -> frozenset[str] | Refusal | None:
        """The nodes the stream may speak for: the certificate's names under mTLS, intersected with
        the token's pod's node under --tokenreview; None when nothing binds it."""
        names = peer_identities(context) if self._mtls else None
        if self._reviewer is None:
            return names
        bound = await review(self._reviewer, metadata)
        if isinstance(bound, Refusal):
            return bound
        return bound.nodes if names is None else names & bound.nodes
