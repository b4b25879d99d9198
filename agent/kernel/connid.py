"""TcpEvent.connection_id: a keyed hash of a connection's two initial sequence numbers.

The kernel records the client's and the server's ISN on each socket of a connection when it reaches
ESTABLISHED (bpf/connid.h); NAT never rewrites them, so both sockets of one connection carry the same
pair whatever kube-proxy did to their addresses. Agents that share the key give both the same id. The
numbers themselves never leave the agent: they are what it takes to inject into the live connection.

The id: BLAKE2b with an 8-byte digest over the pair (two little-endian u32, client first), keyed with
BLAKE2b-256 of the key file's bytes (surrounding whitespace stripped, at least 16 bytes left; person
"tcpscope-connid"), read little-endian. 0 means unknown.
"""

from __future__ import annotations

import hashlib
import secrets
import struct

from agent.config import AgentConfig
from tcpscope.settings import ConfigError

KEY_MIN_BYTES = 16
_PERSON = b"tcpscope-connid"
_PAIR = struct.Struct("<II")


def derive_key(material: bytes) -> bytes:
    """The hashing key from a key file's bytes (any length from KEY_MIN_BYTES on)."""
    return hashlib.blake2b(material, digest_size=32, person=_PERSON).digest()


def read_key_file(path: str) -> bytes:
    """The key material in a key file, surrounding whitespace (a trailing newline) stripped.

    Raises ConfigError with one line when it cannot be read or is too short to be a secret."""
    try:
        with open(path, "rb") as fh:
            material = fh.read().strip()
    except OSError as e:
        raise ConfigError(f"--connection-key-file {path}: {e.strerror or e}") from e
    if len(material) < KEY_MIN_BYTES:
        raise ConfigError(
            f"--connection-key-file {path}: {len(material)} bytes, a key needs at least {KEY_MIN_BYTES} "
            "(e.g. `head -c 32 /dev/urandom | base64 > FILE`; the chart generates one)"
        )
    return material


class ConnectionIds:
    """Computes connection ids with one key: the cluster's, or a random one of this process."""

    def __init__(self, material: bytes | None = None) -> None:
        """`material`: the key file's bytes; None for a random key (ids join within this process only)."""
        self.random = material is None
        key = derive_key(secrets.token_bytes(32) if material is None else material)
        self._keyed = hashlib.blake2b(digest_size=8, key=key)

    def of(self, isn_client: int, isn_server: int) -> int:
        """The id of the connection with these initial sequence numbers; 0 for the unknown pair (0, 0)."""
        if not (isn_client or isn_server):
            return 0
        h = self._keyed.copy()
        h.update(_PAIR.pack(isn_client, isn_server))
        return int.from_bytes(h.digest(), "little")


# what the agent logs, once attached, when it has no key file
NO_KEY_NOTICE = (
    "no --connection-key-file: connection ids use a random key of this process, so they join the two "
    "ends of a connection only when this agent sees both (give every agent the same key file)"
)


def connection_ids(config: AgentConfig) -> ConnectionIds:
    """The agent's connection ids: with the cluster's key (--connection-key-file), else with a random key
    of this process (`random`: the caller says so, NO_KEY_NOTICE). Raises ConfigError for a key file
    unreadable or too short."""
    if config.connection_key_file:
        return ConnectionIds(read_key_file(config.connection_key_file))
    return ConnectionIds()
