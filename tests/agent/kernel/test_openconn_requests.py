"""agent/kernel/openconn.py without the kernel: the seeding requests (struct seed_req) and the
roles the listeners give to connections older than the agent."""

from __future__ import annotations

import socket

from agent.kernel.listeners import Connection
from agent.kernel.openconn import ROLE_ACTIVE, ROLE_PASSIVE, SEED_REQ, PassStats, SeedResult, role_of, seed_request

V4, V6 = int(socket.AF_INET), int(socket.AF_INET6)
LOCAL = socket.inet_aton("198.18.1.2") + bytes(12)
REMOTE = socket.inet_aton("198.18.2.2") + bytes(12)


def conn(**kw: object) -> Connection:
    base: dict[str, object] = {
        "netns": 7,
        "family": V4,
        "laddr": LOCAL,
        "lport": 40001,
        "raddr": REMOTE,
        "rport": 5432,
        "inode": 99,
    }
    return Connection(**{**base, **kw})  # type: ignore[arg-type]


def test_role_comes_from_the_listeners_of_its_namespace() -> None:
    listening = {(7, V4, LOCAL, 8080), (7, V6, bytes(16), 9000), (8, V4, bytes(16), 40001)}
    assert role_of(conn(lport=8080), listening) == ROLE_PASSIVE  # bound to its address
    assert role_of(conn(family=V6, lport=9000), listening) == ROLE_PASSIVE  # the family's wildcard
    assert role_of(conn(), listening) == ROLE_ACTIVE  # 40001 listens in another namespace only
    assert role_of(conn(lport=9000), listening) == ROLE_ACTIVE  # an IPv6 listener is not an IPv4 one


def test_seed_request_bytes() -> None:
    raw = seed_request(conn(), ROLE_ACTIVE, 4242, "pool-client-with-a-long-name")
    laddr, raddr, lport, rport, family, role, v4, pid, _pad, comm = SEED_REQ.unpack(raw)
    assert (laddr, raddr, lport, rport, family, role, v4, pid) == (LOCAL, REMOTE, 40001, 5432, V4, ROLE_ACTIVE, 1, 4242)
    assert comm == b"pool-client-wit\0"  # 15 bytes and the terminator, as the kernel keeps comm
    # an IPv6 socket holding v4-mapped addresses is looked up as IPv4; a native IPv6 one as IPv6
    mapped = bytes(10) + b"\xff\xff" + socket.inet_aton("198.18.1.2")
    mapped_r = bytes(10) + b"\xff\xff" + socket.inet_aton("198.18.2.2")
    assert SEED_REQ.unpack(seed_request(conn(family=V6, laddr=mapped, raddr=mapped_r), ROLE_PASSIVE, 0, ""))[6] == 1
    native = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert SEED_REQ.unpack(seed_request(conn(family=V6, laddr=native, raddr=native), ROLE_PASSIVE, 0, ""))[6] == 0


def test_counters_are_named_as_the_agent_exports_them() -> None:
    stats = PassStats(passes=3, sockets=600, seconds=0.0012, skipped=1)
    assert stats.counters() == {
        "open.passes": 3,
        "open.sockets_visited": 600,
        "open.pass_us": 1200,
        "open.passes_skipped": 1,
    }
    seeded = SeedResult()
    seeded.by_result["added"] = 4
    assert seeded.counters()["open.seed_added"] == 4 and seeded.counters()["open.seed_map_full"] == 0
