"""The stdout Sink: one line per event, as a table or as JSON lines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TextIO

from tcpscope.render import TABLE_HEADER, json_line, table_line
from tcpscope.v1.events_pb2 import TcpEvent


class StdoutSink:
    """Writes events to a text stream (stdout): 'table' (with a header line) or 'json'.

    Writing never drops: if the reader is slow, the agent blocks and the kernel's ring buffer
    absorbs the burst (and counts what it cannot absorb). A closed pipe ends the run."""

    def __init__(self, mode: str, out: TextIO) -> None:
        if mode not in ("table", "json"):
            raise ValueError(f"stdout mode must be table or json, not {mode!r}")
        self._out = out
        self._render: Callable[[TcpEvent], str] = json_line if mode == "json" else table_line
        self._header = TABLE_HEADER if mode == "table" else None
        self.written = 0

    def emit(self, events: Sequence[TcpEvent], upstream_losses: dict[str, int]) -> None:
        if not events:
            return
        if self._header is not None:
            self._out.write(self._header + "\n")
            self._header = None
        render = self._render
        self._out.write("".join([render(ev) + "\n" for ev in events]))
        self._out.flush()
        self.written += len(events)

    def close(self, grace_s: float) -> None:
        self._out.flush()

    def losses(self) -> dict[str, int]:
        return {}
