"""`tcpscope-tail --connection`: both ends' events of one connection, in one time-ordered view.

Pure selection and rendering: which events belong to the connection named on the command line
(`IP:PORT-IP:PORT` in either order, `[v6]:PORT` for IPv6, or a socket id, `ID` or `NODE/ID`), and
one line per event: the node that saw it, then the agent's table line; received resets end with who
sent them (tail/resetcause.py). A 4-tuple is reused over time, so every connection of that
tuple in what was read is shown, in order. Events that carry the connection_id of a selected event
are shown too: through a Service, the backend's socket (`backend:targetPort <- client`) has another
tuple than the client's (`client -> ClusterIP:port`), one connection all the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tail import resetcause
from tcpscope import render
from tcpscope.v1.events_pb2 import RECEIVED, RESET_RECEIVED, EventBatch, TcpEvent

Addr = tuple[str, int]


def _addr(text: str) -> Addr:
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not IP:PORT: {text!r}")
    return (host, int(port))


@dataclass(frozen=True)
class ConnectionSpec:
    """What --connection names: a pair of ends, or a socket id (optionally on one node)."""

    ends: frozenset[Addr] | None = None
    socket_id: int = 0
    node: str = ""

    @staticmethod
    def parse(text: str) -> ConnectionSpec:
        t = text.strip()
        if t.isdigit() or ("/" in t and t.rpartition("/")[2].isdigit()):
            node, _, sid = t.rpartition("/")
            return ConnectionSpec(None, int(sid), node)
        for sep in ("-", ",", " "):
            # an IPv6 address has no '-' or ',' and is bracketed, so the first separator that
            # splits the text in two addresses is the one
            left, found, right = t.partition(sep)
            if found:
                try:
                    a, b = _addr(left), _addr(right)
                except ValueError:
                    continue
                if a == b:
                    raise ValueError("the two ends are the same")
                return ConnectionSpec(frozenset((a, b)))
        raise ValueError(f"--connection wants IP:PORT-IP:PORT or a socket id ([NODE/]ID), got {text!r}")


def _ends(ev: TcpEvent) -> frozenset[Addr]:
    return frozenset(((ev.local.ip, ev.local.port), (ev.remote.ip, ev.remote.port)))


def select(spec: ConnectionSpec, events: Iterable[TcpEvent]) -> list[TcpEvent]:
    """The connection's events from both ends, ordered by time (then node)."""
    evs = [e for e in events if e.WhichOneof("kind") not in (None, "flow")]
    if spec.ends is not None:
        ends = {spec.ends}
    else:
        ends = {_ends(e) for e in evs if e.socket_id == spec.socket_id and (not spec.node or e.node == spec.node)}
    ids = {e.connection_id for e in evs if e.connection_id and _ends(e) in ends}
    if spec.ends is None:
        ids |= {e.connection_id for e in evs if e.connection_id and e.socket_id == spec.socket_id}
    # the other socket of each connection by its id: through a Service (kube-proxy's DNAT) the
    # backend's socket has another tuple (backend:targetPort <- client) than the client's
    picked = [e for e in evs if _ends(e) in ends or (e.connection_id and e.connection_id in ids)]
    return sorted(picked, key=lambda e: (e.time.ToNanoseconds(), e.node))


def render_timeline(
    events: list[TcpEvent], evidence: Sequence[TcpEvent] = (), batches: Iterable[tuple[str, EventBatch]] = ()
) -> str:
    """One line per event: NODE then the agent's table line; a received reset says who sent it,
    judged over `evidence` (everything read, which includes `events`: the peer's sends, which
    nodes are watched) and the batches' loss counters."""
    join = resetcause.ResetJoin()
    for agent_id, b in batches:
        join.add_batch(agent_id, b)
    received: dict[int, resetcause.ReceivedReset] = {}
    for e in evidence or events:
        r = join.add(e)
        if r is not None and _is_received(e):
            received[id(e)] = r
    width = max([len("NODE"), *(len(e.node) for e in events)])
    lines = [f"{'NODE':<{width}} {render.TABLE_HEADER}"]
    for e in events:
        r = received.get(id(e))
        lines.append(f"{e.node:<{width}} {render.event_line(e, cause=None if r is None else join.classify(r))}")
    return "\n".join(lines) + "\n"


def _is_received(e: TcpEvent) -> bool:
    kind = e.WhichOneof("kind")
    return (kind == "reset" and e.reset.direction == RECEIVED) or (
        kind == "lifecycle" and e.lifecycle.ending == RESET_RECEIVED
    )
