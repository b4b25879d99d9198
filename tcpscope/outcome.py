"""How one connection ended, from one socket's lifecycle: the outcome words and the reset reason
that the readers' summary (tail/summary.py) and the collector's traffic metrics
(collector/pair_metrics.py) both count. Pure: no Kafka, no gRPC, no readers."""

from __future__ import annotations

from tcpscope.v1.events_pb2 import (
    CLOSE,
    ERROR,
    NORMAL,
    PASSIVE,
    RESET_RECEIVED,
    RESET_SENT,
    SYN_RECV,
    SYN_SENT,
    TCP_STATE_UNSPECIFIED,
    AnomalyAggregate,
    Lifecycle,
)

ECONNREFUSED = 111
ETIMEDOUT = 110


def is_duplicate_child(lc: Lifecycle) -> bool:
    """A server-side child socket that died in SYN_RECV having carried nothing: the kernel made two
    children for one handshake (two ACKs of one request handled on two CPUs at once; the loser of
    inet_ehash_nolisten() is set to CLOSE and destroyed). Not a connection: counting it would add a
    second, server-only connection beside the real one (docs/resets.md)."""
    return (
        lc.role == PASSIVE and lc.last_state == SYN_RECV and lc.ending == NORMAL and not lc.tx_bytes and not lc.rx_bytes
    )


def _reason(name: str, code: int) -> str:
    return name or (f"reason_{code}" if code else "UNKNOWN")


OUTCOMES: tuple[str, ...] = ("ok", "client_reset", "server_reset", "refused", "timeout", "failed")
"""How a connection ended, one word each, with the meanings of the counters above (the collector's
traffic metrics use them as their `outcome` label)."""


def classify(lc: Lifecycle, client_view: bool, peer_seen: bool = False) -> tuple[bool, str]:
    """(established, outcome) of one connection from one socket's lifecycle: the client's when
    client_view, else the server's. peer_seen: the other end's socket was seen too (so the handshake
    completed even if the client's last state says otherwise). A server socket exists only for a
    connection that got past the SYN, so a server's view is always established."""
    if client_view:
        established = lc.last_state not in (SYN_SENT, TCP_STATE_UNSPECIFIED, CLOSE) or peer_seen
        if not established:
            if lc.errno == ECONNREFUSED or lc.ending == RESET_RECEIVED:
                return False, "refused"
            if lc.errno == ETIMEDOUT:
                return False, "timeout"
            return False, "failed"
        client_sent_rst, server_sent_rst = lc.ending == RESET_SENT, lc.ending == RESET_RECEIVED
    else:
        client_sent_rst, server_sent_rst = lc.ending == RESET_RECEIVED, lc.ending == RESET_SENT
    if client_sent_rst:
        return True, "client_reset"
    if server_sent_rst:
        return True, "server_reset"
    if lc.ending == ERROR and lc.errno == ETIMEDOUT:
        return True, "timeout"
    return True, "ok"


def aggregate_lifecycle(a: AnomalyAggregate) -> Lifecycle:
    """The Lifecycle every connection of an AnomalyAggregate of lifecycles shares (its key: role,
    ending, errno, last state, reset reason, whether it retransmitted), for `classify`."""
    return Lifecycle(
        role=a.role,
        ending=a.ending,
        errno=a.errno,
        errno_name=a.errno_name,
        last_state=a.state,
        retransmits=1 if a.retransmitted else 0,
        reset_reason=a.reason,
        reset_reason_name=a.reason_name,
    )


def reset_reason(lc: Lifecycle) -> str:
    """The kernel's reason name for the RST this socket sent ("UNKNOWN" when it has none)."""
    return _reason(lc.reset_reason_name, lc.reset_reason)
