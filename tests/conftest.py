"""Test tiers for the whole suite: each test is marked `root`, `broker` or `slow` from what it uses.

`make unit` runs `-m "not root and not slow and not broker"`, as uid 65534 when started as root
(scripts/unit.sh), so the tests it selects must need no root, no BPF and no Kafka broker. A test gets
its markers, in this order:

1. explicitly, `@pytest.mark.root` (or slow, broker), where nothing it uses says so;
2. by directory: `tests/e2e` is slow, `tests/containers` (podman) is root and slow;
3. from what its code names, and the code of every fixture it uses (transitively) and of the
   helpers its own module defines: an entry point in `tests/support` that needs root or a broker
   (`ROOT_SIGNALS`, `BROKER_SIGNALS`), a product entry point that needs root (`ROOT_CALLABLES`),
   or a root check written out (`assert os.geteuid() == 0`, `if os.geteuid() != 0: pytest.fail(...)`).

A test that needs root and says none of this fails in `make unit`, because that run has no root:
the kernel refuses its BPF, cgroups, namespaces and tracefs, and the report says what to add.
`pytest --collect-only -q --tiers` prints each test's markers and the reason for them.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from collections.abc import Callable, Generator, Iterator
from functools import cache
from pathlib import Path
from types import FunctionType
from typing import Any

import pytest

# Names that, when a test, a fixture or a module helper uses them, mean the test needs root.
ROOT_SIGNALS: dict[str, str] = {
    "require_root": "asserts root (tests/support/kernel.py)",
    "kernel_harness": "loads the agent's BPF programs",
    "bcc": "uses bcc (BPF)",
    "kubepods_root": "creates cgroups",
    "pod_cgroup": "creates cgroups",
    "enter_cgroup": "moves a process between cgroups",
    "CgroupTree": "creates cgroups",
    "spawn_in_cgroup": "moves a process between cgroups",
    "netns_pair": "creates network namespaces",
    "enter_netns": "enters a network namespace",
    "VethPods": "creates network namespaces",
    "nft_drop": "adds nftables rules",
    "routed_pods": "creates network namespaces and nftables NAT rules",
    "syn_capture": "captures packets (AF_PACKET)",
    "PodCluster": "builds the simulator's cluster (namespaces, cgroups)",
    "tracefs_root": "reads the live tracefs",
    "through_view": "runs in a private mount namespace",
}

# Product entry points that need root, by module and name, for the names too common to be signals.
ROOT_CALLABLES: dict[str, str] = {
    "tcpscope_sim.__main__.main": "runs tcpscope-sim, which needs root before it reads its arguments",
}

# Names that mean the test talks to a real Kafka-protocol broker (tests/support/kafka.py).
BROKER_SIGNALS: dict[str, str] = {
    "kafka_broker": "starts a broker",
    "Broker": "starts a broker",
    "KafkaProducer": "talks to a broker",
    "KafkaConsumer": "talks to a broker",
    "consume_all": "reads a broker",
    "publish_batches": "talks to a broker",
}

# Directories whose tests are in a tier whatever they use.
DIRECTORY_TIERS: dict[str, tuple[tuple[str, str], ...]] = {
    "e2e": (("slow", "end-to-end (tests/e2e)"),),
    "containers": (("root", "tests/containers (podman; make test-images)"), ("slow", "tests/containers")),
}

TIERS = ("root", "slow", "broker")
UNIT_HINT = (
    "This test ran in the unit tier (`make unit`: no root, no BPF, no broker). If it needs any of them, "
    "say so where tests/conftest.py can see it: use a fixture or a tests/support helper that needs it, "
    "add that helper to ROOT_SIGNALS or BROKER_SIGNALS in tests/conftest.py, or mark the test "
    "@pytest.mark.root (slow, broker)."
)

TESTS = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--tiers", action="store_true", help="print each test's tier markers and why (tests/conftest.py)")


def _is_euid_call(node: ast.expr) -> bool:
    if not isinstance(node, ast.Call):
        return False
    fn = node.func
    return (isinstance(fn, ast.Attribute) and fn.attr == "geteuid") or (isinstance(fn, ast.Name) and fn.id == "geteuid")


def _compares_euid_to_zero(node: ast.expr, op: type[ast.cmpop]) -> bool:
    return (
        isinstance(node, ast.Compare)
        and _is_euid_call(node.left)
        and len(node.ops) == 1
        and isinstance(node.ops[0], op)
        and isinstance(node.comparators[0], ast.Constant)
        and node.comparators[0].value == 0
    )


def _checks_root(tree: ast.AST) -> bool:
    """`assert os.geteuid() == 0` or `if os.geteuid() != 0:` followed by pytest.fail / raise."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and _compares_euid_to_zero(node.test, ast.Eq):
            return True
        if isinstance(node, ast.If) and _compares_euid_to_zero(node.test, ast.NotEq):
            return True
    return False


def _names(tree: ast.AST) -> set[str]:
    """Every identifier the code names: variables, attributes, imported modules and names."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            out.update((node.module or "").split("."))
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                out.update(a.name.split("."))
    return out


@cache
def _own_signals(fn: Callable[..., Any]) -> tuple[frozenset[tuple[str, str]], frozenset[str]]:
    """(marker, reason) pairs from fn's own source, and the names it uses."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return frozenset(), frozenset()
    names = _names(tree)
    found = {("root", f"{fn.__qualname__} {why}: {name}") for name, why in ROOT_SIGNALS.items() if name in names}
    found |= {("broker", f"{fn.__qualname__} {why}: {name}") for name, why in BROKER_SIGNALS.items() if name in names}
    if _checks_root(tree):
        found.add(("root", f"{fn.__qualname__} checks for root"))
    namespace = getattr(fn, "__globals__", {})
    for name in names & namespace.keys():
        obj = namespace[name]
        where = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        if where in ROOT_CALLABLES:
            found.add(("root", f"{fn.__qualname__} {ROOT_CALLABLES[where]}"))
    return frozenset(found), frozenset(names)


def _local_helpers(fn: Callable[..., Any], names: frozenset[str]) -> Iterator[Callable[..., Any]]:
    """The functions and classes' methods that fn names and its own module defines."""
    module = getattr(fn, "__module__", None)
    namespace = getattr(fn, "__globals__", {})
    for name in names:
        obj = namespace.get(name)
        if getattr(obj, "__module__", None) != module:
            continue
        if isinstance(obj, FunctionType):
            yield obj
        elif isinstance(obj, type):
            yield from (v for v in vars(obj).values() if isinstance(v, FunctionType))


def _signals(fn: Callable[..., Any]) -> set[tuple[str, str]]:
    """Signals of fn and of the helpers of its own module it uses, transitively."""
    seen: set[Callable[..., Any]] = set()
    out: set[tuple[str, str]] = set()
    todo = [fn]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        found, names = _own_signals(f)
        out |= found
        todo.extend(_local_helpers(f, names))
    return out


def _tiers(item: pytest.Item) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
    if parts and parts[0] in DIRECTORY_TIERS:
        out |= set(DIRECTORY_TIERS[parts[0]])
    for name in getattr(item, "fixturenames", ()):
        if name in BROKER_SIGNALS:
            out.add(("broker", f"fixture {name} {BROKER_SIGNALS[name]}"))
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    if fixtureinfo is not None:
        for name, defs in fixtureinfo.name2fixturedefs.items():
            for d in defs:
                func = inspect.unwrap(getattr(d.func, "__func__", d.func))
                # fixtures of tests/ only (not pytest's), and not this file's own guard below
                if (
                    isinstance(func, FunctionType)
                    and func.__module__.startswith("tests")
                    and func.__code__.co_filename != __file__
                ):
                    out |= {(tier, f"fixture {name}: {why}") for tier, why in _signals(func)}
    test_fn = getattr(item, "function", None)
    if isinstance(test_fn, FunctionType):
        out |= _signals(test_fn)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    show = config.getoption("--tiers")
    for item in items:
        found = _tiers(item)
        for tier in sorted({t for t, _ in found}):
            if item.get_closest_marker(tier) is None:
                item.add_marker(getattr(pytest.mark, tier))
        if show:
            explicit = [t for t in TIERS if item.get_closest_marker(t) is not None and t not in {x for x, _ in found}]
            why = sorted(f"{t}: {r}" for t, r in found) + [f"{t}: explicit marker" for t in explicit]
            print(f"\n{item.nodeid}\n    " + ("\n    ".join(why) if why else "unit"), end="")
    if show:
        print()


def _unit_tier(config: pytest.Config) -> bool:
    """True when the marker expression deselects root tests (make unit, or -m "not root ...")."""
    return "not root" in (config.getoption("markexpr") or "")


def pytest_report_header(config: pytest.Config) -> str | None:
    if _unit_tier(config) and os.geteuid() == 0:
        return (
            "tiers: unit tier as root: a test that needs root but is not marked would pass here; "
            "`make unit` runs it as uid 65534"
        )
    if _unit_tier(config):
        return f"tiers: unit tier as uid {os.geteuid()}"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed and _unit_tier(item.config):
        report.sections.append(("tiers", UNIT_HINT))
    return report


@pytest.fixture(autouse=True, scope="session")
def _no_bpf_in_the_unit_tier(request: pytest.FixtureRequest) -> Iterator[None]:
    """As root, the unit tier cannot rely on the kernel refusing BPF: refuse it here, loudly."""
    if not (_unit_tier(request.config) and os.geteuid() == 0):
        yield
        return
    import bcc

    real = bcc.BPF.__init__

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"a unit-tier test loaded BPF. {UNIT_HINT}")

    bcc.BPF.__init__ = refuse
    try:
        yield
    finally:
        bcc.BPF.__init__ = real
