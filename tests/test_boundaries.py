"""The package graph: the agent and the collector share `tcpscope` and never import each other, and
`tcpscope` imports neither (the collector image ships collector/ and tcpscope/ only).

Checked twice: on the source, every import statement of every module (also inside functions and
under TYPE_CHECKING, which a plain import would not reach), and by importing every collector module
in a fresh interpreter. `make lint` checks the same graph with lint-imports ([tool.importlinter]);
this keeps it in the test suite, and the second half checks what actually gets loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the top-level packages it must never import
FORBIDDEN = {"collector": {"agent"}, "agent": {"collector"}, "tcpscope": {"agent", "collector"}}


def imports_of(source: str, filename: str = "<string>") -> set[str]:
    """Every absolute module name the source imports, wherever the statement is (relative imports
    stay inside their own package and are left out)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.add(node.args[0].value)
    return out


def test_imports_of_finds_imports_anywhere() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import a.b as ab, c\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from d.e import F\n"
        "def f():\n"
        "    from g import h\n"
        "    return importlib.import_module('i.j'), __import__('k')\n"
    )
    assert imports_of(source) == {"typing", "a.b", "c", "d.e", "g", "i.j", "k"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_arrow_between_agent_and_collector(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    bad = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in files
        for name in sorted(imports_of(path.read_text(), str(path)))
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert bad == [], f"{package} must not import {sorted(FORBIDDEN[package])}"


def test_every_collector_module_imports_without_the_agent() -> None:
    check = (
        "import importlib, pkgutil, sys, collector\n"
        "for m in pkgutil.walk_packages(collector.__path__, 'collector.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'agent'))\n"
    )
    res = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
