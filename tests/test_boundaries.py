"""What the collector loads at run time: none of the agent (the collector image ships collector/ and
tcpscope/ only). The source's import graph is `make lint`'s (lint-imports, [tool.importlinter]);
this checks what an interpreter actually loads, lazy imports included.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
