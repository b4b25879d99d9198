"""Build hook: ship the BPF C sources (bpf/*.c, bpf/*.h) inside the `agent` package as agent/bpf/.

pyproject.toml holds all metadata; this file only extends build_py. The repository's bpf/ stays the
one source of truth: a source checkout or editable install reads it directly, and an installed wheel
reads the copy made here (agent.kernel.probe.find_bpf_dir()).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent / "bpf"


class BuildPyWithBpf(build_py):
    """build_py, then copy bpf/*.c and bpf/*.h into <build>/agent/bpf."""

    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "agent" / "bpf"
        shutil.rmtree(dest, ignore_errors=True)  # in-tree builds reuse build/: no stale headers
        dest.mkdir(parents=True)
        for src in sorted(SOURCE.iterdir()):
            if src.suffix in (".c", ".h"):
                shutil.copy2(src, dest / src.name)


setup(cmdclass={"build_py": BuildPyWithBpf})
