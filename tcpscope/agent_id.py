"""Agent ids: one per agent incarnation, carrying the node it speaks for. Pure code.

An agent id is `[PREFIX/]NODE/INCARNATION`:

- `PREFIX` is the operator's `--agent-id` (optional, may itself contain `/`);
- `NODE` is the node name; Kubernetes node names are DNS subdomains, which cannot hold `/`, so the
  node is always the second-to-last component and a collector can check it against the node the
  client authenticated as (certificate or ServiceAccount token) without keeping any state;
- `INCARNATION` is unique per process start (UTC start time and 48 random bits): a restarted agent
  never reuses an id, so `(agent id, batch sequence)` never names two different batches even when
  its sequences start again at 1.
"""

from __future__ import annotations

import datetime as dt
import secrets

SEPARATOR = "/"


def new_incarnation(now: dt.datetime | None = None, random_hex: str | None = None) -> str:
    """`20261130T111500Z-3f9a2c1b0d4e`: sortable by start time, unique by its random part."""
    t = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{t}-{random_hex or secrets.token_hex(6)}"


def make_agent_id(node: str, prefix: str = "", incarnation: str | None = None) -> str:
    """The id of one agent incarnation on `node` (a fresh incarnation unless one is given)."""
    if not node or SEPARATOR in node:
        raise ValueError(f"node name {node!r} must be non-empty and hold no {SEPARATOR!r}")
    prefix = prefix.strip(SEPARATOR)
    parts = [prefix] if prefix else []
    return SEPARATOR.join([*parts, node, incarnation or new_incarnation()])


def node_of(agent_id: str) -> str | None:
    """The node an agent id speaks for, or None when the id does not have the shape above."""
    parts = agent_id.split(SEPARATOR)
    if len(parts) < 2 or not parts[-1] or not parts[-2]:
        return None
    return parts[-2]


def prefix_of(agent_id: str) -> str:
    """The operator's prefix of an agent id ('' when it has none or does not have the shape above)."""
    parts = agent_id.split(SEPARATOR)
    return SEPARATOR.join(parts[:-2]) if len(parts) > 2 else ""


def belongs_to(agent_id: str, node: str) -> bool:
    """Whether `agent_id` names an incarnation of an agent for `node`."""
    return bool(node) and node_of(agent_id) == node
