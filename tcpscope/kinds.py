"""The event kinds, in one table: each kind's name (the agent's `--events`, the readers' `--kind`),
the `TcpEvent.kind` oneof field it fills, whether the agent's kernel program reports it (and does
by default), and whether the readers' live view shows it by default.

The agent validates `--events` against it (agent/config.py), the decoder maps the kernel's record
kinds (bpf/events.h EV_*) onto its kinds (agent/kernel/decode.py), and tcpscope-tail `--kind` and
tcpscope-sim `--show` parse their lists with `parse_view` (tail/live.py, the live view).

State changes (several events per connection) and probes are on request only, in the agent and in
the view; retransmits and SYN-ACK retransmits are reported by default but shown on request; flows
are no agent `--events` kind: ordinary connections become flows by `--connections`, and the view
shows them by default; nor are anomaly aggregates (`anomalies`), made past the agent's
`--anomaly-budget`, shown by default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str  # the --events / --kind name
    field: str  # the TcpEvent `kind` oneof field
    agent: bool  # an agent --events kind (the kernel reports it); else made in user space (flows)
    agent_default: bool  # in the agent's default --events
    view_default: bool  # in the live view by default (tcpscope-tail, tcpscope-sim)
    connection_rows: bool = False  # the live view's connection rows can show it (tail/connections.py)


LIFECYCLE = Kind("lifecycle", "lifecycle", agent=True, agent_default=True, view_default=True, connection_rows=True)
STATE = Kind("state", "state_change", agent=True, agent_default=False, view_default=False)
RETRANSMIT = Kind("retransmit", "retransmit", agent=True, agent_default=True, view_default=False)
SYNACK = Kind("synack", "synack_retransmit", agent=True, agent_default=True, view_default=False)
RESET = Kind("reset", "reset", agent=True, agent_default=True, view_default=True, connection_rows=True)
ERROR = Kind("error", "socket_error", agent=True, agent_default=True, view_default=True, connection_rows=True)
PROBE = Kind("probe", "probe", agent=True, agent_default=False, view_default=False)
FLOW = Kind("flow", "flow", agent=False, agent_default=False, view_default=True, connection_rows=True)
# anomalies past the agent's budget (bpf/anomaly.h), counted in the kernel per key: made by the budgets,
# not by an --events kind; shown by default, in connection rows as rows of their own
ANOMALIES = Kind("anomalies", "anomalies", agent=False, agent_default=False, view_default=True, connection_rows=True)

KINDS: tuple[Kind, ...] = (LIFECYCLE, STATE, RETRANSMIT, SYNACK, RESET, ERROR, PROBE, FLOW, ANOMALIES)
"""Every kind, in the order help texts list them."""

FIELDS: dict[str, str] = {k.name: k.field for k in KINDS}
"""name -> TcpEvent oneof field."""

AGENT_KINDS: tuple[str, ...] = tuple(k.name for k in KINDS if k.agent)
AGENT_DEFAULTS: tuple[str, ...] = tuple(k.name for k in KINDS if k.agent_default)
VIEW_DEFAULTS: tuple[str, ...] = tuple(k.name for k in KINDS if k.view_default)
CONNECTION_VIEW: frozenset[str] = frozenset(k.name for k in KINDS if k.connection_rows)
"""The --kind names connection rows can show: lifecycle (every connection), reset (those a reset
ended), error (those with an errno), flow; the others need socket rows (tail/live.py)."""

VIEW_HELP = (
    f"event kinds, comma separated, or 'all': {','.join(FIELDS)} (default: {','.join(VIEW_DEFAULTS)}, what an SRE "
    "watches)"
)
"""The help of every flag that takes `parse_view`'s text (tcpscope-tail --kind, tcpscope-sim --show)."""


def parse_view(text: str) -> frozenset[str]:
    """'lifecycle,reset' -> oneof field names; '' -> the live view's defaults; 'all' -> every kind
    (the empty set: no filter). ValueError names the unknown kinds."""
    names = [k.strip() for k in text.split(",") if k.strip()] or list(VIEW_DEFAULTS)
    if "all" in names:
        return frozenset()
    unknown = [k for k in names if k not in FIELDS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; known: {', '.join(FIELDS)}, all")
    return frozenset(FIELDS[k] for k in names)
