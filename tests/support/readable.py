"""Run project code as another uid from any checkout location.

A checkout under a 0700 directory (a root user's first clone goes to /root) cannot be entered by
uid 65534, so `.venv/bin/python -m agent` run as that uid fails with "No module named agent" before
the code under test runs at all. The tests that need another uid must not depend on where the
checkout lives, so they run the same venv and the same sources through a readable *view*: inside a
private mount namespace (gone with the process, nothing to clean up on the host), the checkout is
bind-mounted onto an empty directory under a world-readable temporary directory, and the command
starts there. The files are the checkout's own (no copy that could go stale), and the uid switch
happens after the mount, so what the test proves about that uid is unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# $1 = checkout, $2 = mount point; then the command. Runs as root in a fresh mount namespace.
_BIND = 'set -e; mount --bind "$1" "$2"; cd "$2"; shift 2; exec "$@"'


@contextmanager
def readable_view() -> Iterator[Path]:
    """An empty mount point for the checkout, under a fresh directory every user may traverse."""
    top = Path(tempfile.mkdtemp(prefix="tcpscope-view-"))
    try:
        os.chmod(top, 0o755)
        (top / "repo").mkdir()
        yield top / "repo"
    finally:
        shutil.rmtree(top)


def in_view(path: str | Path, view: Path) -> str:
    """`path` as seen through the view when it lies inside the checkout, else unchanged."""
    p = Path(path).absolute()
    try:
        return str(view / p.relative_to(REPO))
    except ValueError:
        return str(p)


def through_view(view: Path, argv: Sequence[str]) -> list[str]:
    """argv run in a private mount namespace with the checkout bound at `view` and cwd there. Paths
    inside the checkout in argv are rewritten to their view paths."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed for this test"
    rewritten = [in_view(a, view) if a.startswith(str(REPO) + os.sep) else a for a in argv]
    return [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        _BIND,
        "sh",
        str(REPO),
        str(view),
        *rewritten,
    ]


def venv_python() -> str:
    """The interpreter running the tests (the venv's), as a path: rewritten by through_view."""
    return sys.executable
