"""Rate-limited warnings: a failure that repeats (a broker down, a collector unreachable) is logged
once, then at most once per interval with how many were held back, instead of a line per attempt."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Throttle:
    """`ready(key)` says whether to log now; it returns the number of calls held back since the last
    line (to append, e.g. "(12 more since)"), or None when this one is held back too."""

    def __init__(self, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def ready(self, key: str = "") -> int | None:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)

    def reset(self, key: str | None = None) -> None:
        """The condition cleared (for key, or for every key): the next failure is logged at once."""
        with self._lock:
            if key is None:
                self._last.clear()
                self._held.clear()
            else:
                self._last.pop(key, None)
                self._held.pop(key, None)


def held_note(held: int) -> str:
    return f" ({held} more like it since the last report)" if held else ""
