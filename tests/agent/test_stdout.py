"""The stdout sink writes one line per event (a header first in table mode) and loses nothing."""

from __future__ import annotations

import io
import json

from agent.stdout import StdoutSink
from tcpscope.render import TABLE_HEADER
from tcpscope.v1.events_pb2 import TcpEvent


def _events(n: int) -> list[TcpEvent]:
    out = []
    for i in range(n):
        ev = TcpEvent(node="n", socket_id=i + 1)
        ev.local.ip, ev.local.port = "127.0.0.1", 1000 + i
        ev.lifecycle.tx_bytes = i
        out.append(ev)
    return out


def test_json_lines() -> None:
    buf = io.StringIO()
    sink = StdoutSink("json", buf)
    sink.emit([], {})
    sink.emit(_events(3), {"kernel.ringbuf_full": 0})
    sink.close(1.0)
    lines = buf.getvalue().splitlines()
    assert [json.loads(x)["socket_id"] for x in lines] == ["1", "2", "3"]
    assert json.loads(lines[2])["lifecycle"] == {"tx_bytes": "2"}
    assert sink.written == 3 and sink.losses() == {}


def test_table_has_header_once() -> None:
    buf = io.StringIO()
    sink = StdoutSink("table", buf)
    sink.emit(_events(2), {})
    sink.emit(_events(1), {})
    lines = buf.getvalue().splitlines()
    assert lines[0] == TABLE_HEADER and len(lines) == 4
    assert lines.count(TABLE_HEADER) == 1
