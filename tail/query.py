"""What an SRE asks `tcpscope-tail`: which events (by pod, label, service, workload, node, port,
reset reason, errno, direction) and over which time range. Pure code, no Kafka.

`Query` is a predicate over TcpEvents; every filter given must hold (AND), and a filter on an end
holds when either end matches, except the direction filters:

- `from_pod` / `to_pod` follow the connection: client -> server. Lifecycle and flow rows carry the
  socket's role, so the client is the local end of an ACTIVE socket and the remote end of a
  PASSIVE one. Rows without a role (resets, errors, state changes, retransmits) are read from the
  reporting socket: from = its local end, to = its peer.
- `since_ns` / `until_ns` bound the event's own time (the kernel's clock), inclusive. Reading Kafka
  from the right offsets (consume.Reader) only saves work: this filter decides.

`parse_time` reads `--since`/`--until`: a duration back from now (`90s`, `15m`, `1h30m`, `2d`,
`500ms`) or an RFC 3339 time (`2026-11-30T10:00:00Z`, `...+01:00`).
"""

from __future__ import annotations

import datetime as dt
import errno as errno_mod
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tcpscope.v1.events_pb2 import ACTIVE, PASSIVE, SERVICE, TcpEvent

_UNITS_NS = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration_ns(text: str) -> int | None:
    """'1h30m' -> nanoseconds; None when the text is not a duration."""
    t = text.strip()
    if not t or _DURATION.sub("", t):
        return None
    return int(sum(float(n) * _UNITS_NS[u] for n, u in _DURATION.findall(t)))


def parse_time(text: str, now_ns: int) -> int:
    """A --since/--until value -> wall-clock nanoseconds (a duration counts back from now_ns)."""
    d = parse_duration_ns(text)
    if d is not None:
        return now_ns - d
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 15m, 1h30m, 2d) nor an RFC 3339 time (2026-11-30T10:00:00Z)"
        ) from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z or an offset such as +01:00")
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def parse_errno(text: str) -> int:
    """'ECONNREFUSED' or '111' -> 111."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    code = getattr(errno_mod, t.upper(), None)
    if not isinstance(code, int):
        raise ValueError(f"unknown errno {text!r} (a name such as ECONNRESET, or a number)")
    return code


def parse_reason(text: str) -> str:
    """'no_socket' or 'SK_RST_REASON_NO_SOCKET' -> 'NO_SOCKET' (the agent's reason names)."""
    return text.strip().upper().removeprefix("SK_RST_REASON_")


def parse_label(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k.strip():
        raise ValueError(f"--label wants KEY=VALUE, not {text!r}")
    return k.strip(), v.strip()


def _names(ns: str, name: str, spec: str) -> bool:
    """Does 'name' or 'ns/name' name this (ns, name)?"""
    if not name:
        return False
    if "/" in spec:
        return spec == f"{ns}/{name}"
    return spec == name


def _ep_is_pod(ep: Any, spec: str) -> bool:
    return _names(ep.namespace, ep.name, spec)


@dataclass(frozen=True)
class Query:
    labels: tuple[tuple[str, str], ...] = ()
    service: str | None = None
    workload: str | None = None
    node: str | None = None
    ports: frozenset[int] = frozenset()
    reasons: frozenset[str] = frozenset()
    errnos: frozenset[int] = frozenset()
    from_pod: str | None = None
    to_pod: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None

    @property
    def empty(self) -> bool:
        return self == Query()

    def __call__(self, ev: TcpEvent) -> bool:
        if self.since_ns is not None or self.until_ns is not None:
            t = ev.time.seconds * 1_000_000_000 + ev.time.nanos
            if (self.since_ns is not None and t < self.since_ns) or (self.until_ns is not None and t > self.until_ns):
                return False
        ends = (ev.local, ev.remote)
        if self.labels and not any(all(e.labels.get(k) == v for k, v in self.labels) for e in ends):
            return False
        if self.service is not None and not any(e.kind == SERVICE and _ep_is_pod(e, self.service) for e in ends):
            return False
        if self.workload is not None and not any(_names(e.namespace, e.workload.name, self.workload) for e in ends):
            return False
        if self.node is not None and self.node not in (ev.node, ev.local.node, ev.remote.node):
            return False
        if self.ports and ev.local.port not in self.ports and ev.remote.port not in self.ports:
            return False
        if self.reasons and _reason(ev) not in self.reasons:
            return False
        if self.errnos and _errno(ev) not in self.errnos:
            return False
        if self.from_pod is not None or self.to_pod is not None:
            client, server = direction(ev)
            if self.from_pod is not None and not _ep_is_pod(client, self.from_pod):
                return False
            if self.to_pod is not None and not _ep_is_pod(server, self.to_pod):
                return False
        return True


def direction(ev: TcpEvent) -> tuple[Any, Any]:
    """(from end, to end): client -> server where the row says its role, else local -> remote."""
    kind = ev.WhichOneof("kind")
    role = ev.lifecycle.role if kind == "lifecycle" else ev.flow.role if kind == "flow" else 0
    if role == PASSIVE:
        return ev.remote, ev.local
    if role == ACTIVE:
        return ev.local, ev.remote
    return ev.local, ev.remote


def _reason(ev: TcpEvent) -> str:
    kind = ev.WhichOneof("kind")
    if kind == "reset":
        return ev.reset.reason_name
    if kind == "lifecycle":
        return ev.lifecycle.reset_reason_name
    return ""


def _errno(ev: TcpEvent) -> int:
    kind = ev.WhichOneof("kind")
    if kind == "socket_error":
        return int(ev.socket_error.errno)
    if kind == "lifecycle":
        return int(ev.lifecycle.errno)
    return 0


def split_list(values: Iterable[str]) -> list[str]:
    """Repeated and comma-separated flag values, flattened."""
    return [x.strip() for v in values for x in v.split(",") if x.strip()]
