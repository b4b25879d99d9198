"""tail.backend_split on counts alone: shares, the lower bound with lone client lifecycles, and what
is left unsplit (module docstring)."""

from __future__ import annotations

from tail.backend_split import SplitCounts, split

SVC = ("shop", "api", 80)
CANARY = ("shop", "api-canary", 80)
C = "198.18.1.2"
K1, K2 = (C, "198.18.2.2", 9000), (C, "198.18.3.2", 9000)


def _counts(t: int, b1: int, b2: int, lone: int = 0, direct1: int = 0) -> SplitCounts:
    c = SplitCounts()
    c.add_service_flow(C, SVC, t)
    c.add_backend(K1, b1, [SVC])
    c.add_backend(K2, b2, [SVC])
    for _ in range(lone):
        c.add_client_socket(C, SVC, lone_established=True)
    if direct1:
        c.add_direct(K1, direct1)
    return c


def test_shares_are_the_backends_own_counts_when_every_connection_was_alike_at_both_ends() -> None:
    out = split(_counts(9, 5, 4))
    assert out.shares == {K1: (SVC, 5), K2: (SVC, 4)}
    assert out.moved == {(C, SVC): 9} and out.via == {K1: SVC, K2: SVC} and out.unsplit == 0


def test_lone_client_lifecycles_lower_each_share_and_direct_traffic_is_taken_out() -> None:
    out = split(_counts(9, 7, 4, lone=2, direct1=1))  # api-1's 7: 1 straight from C, up to 2 lone ones
    assert out.shares == {K1: (SVC, 4), K2: (SVC, 2)}
    assert out.moved == {(C, SVC): 6}
    assert K1 not in out.via  # C also connects to api-1 straight: its lone lifecycles could be either


def test_shares_beyond_the_clients_count_leave_the_service_unsplit() -> None:
    # a --window edge that kept more of the backends' flows than of the client's
    out = split(_counts(3, 5, 4))
    assert out.shares == {} and out.moved == {} and out.unsplit == 1


def test_a_backend_of_two_services_the_client_used_is_nobodys() -> None:
    c = _counts(9, 5, 4)
    c.add_service_flow(C, CANARY, 2)
    c.add_backend(K1, 0, [CANARY])
    out = split(c)
    assert out.shares == {K2: (SVC, 4)} and out.moved == {(C, SVC): 4} and K1 not in out.via
