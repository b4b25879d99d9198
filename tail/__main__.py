"""`python -m tail`: the same as the tcpscope-tail command."""

from __future__ import annotations

from tail.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
