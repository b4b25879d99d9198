"""The mmap ring buffer reader against the real kernel: it delivers exactly what bcc's callback
delivers, wraps around a small buffer without loss, and refuses records of a size it was not told."""

from __future__ import annotations

import struct

import pytest

from agent.config import AgentConfig
from agent.kernel.ringbuf import RingBufError, RingBufReader, supported
from tcpscope.v1.events_pb2 import TcpEvent
from tests.support import traffic
from tests.support.kernel import ALL_BUT_PROBE, kernel_harness, kind, on_port


def _lifecycles(reader: str, port: int, sizes: list[tuple[int, int]]) -> list[tuple[object, ...]]:
    with kernel_harness(AgentConfig(ports=(port,), events=ALL_BUT_PROBE, ring_buffer_reader=reader)) as h:
        assert h.source.reader == reader
        ex = [traffic.tcp_exchange(port=port, client_bytes=c, server_bytes=s) for c, s in sizes]
        got = h.wait(lambda e: kind(e) == "lifecycle" and on_port(port)(e), count=2 * len(sizes))
        assert sum(h.source.losses().values()) == 0
    pids = {x.client_pid for x in ex} | {x.server_pid for x in ex}
    assert {e.process.pid for e in got} == pids

    def view(e: TcpEvent) -> tuple[object, ...]:
        lc = e.lifecycle
        role = "client" if e.remote.port == port else "server"
        return (role, lc.role, lc.tx_bytes, lc.rx_bytes, lc.ending, e.process.comm)

    return sorted(view(e) for e in got)


def test_mmap_and_bcc_readers_deliver_the_same_exact_events() -> None:
    assert supported(), "this machine is x86: the mmap reader must be available"
    sizes = [(1234, 56), (70_001, 3), (9, 999_999)]
    mmap_view = _lifecycles("mmap", traffic.free_port(), sizes)
    bcc_view = _lifecycles("bcc", traffic.free_port(), sizes)
    assert mmap_view == bcc_view
    want = sorted([("client", 1, c, s, 1, "tsc-client") for c, s in sizes]
                  + [("server", 2, s, c, 1, "tsc-server") for c, s in sizes])
    assert mmap_view == want


def test_mmap_reader_wraps_around_a_small_buffer_and_loses_nothing() -> None:
    port = traffic.free_port()
    # 4 KiB holds 26 records of 152 bytes: 30 exchanges (~13 records each) wrap it about 15 times
    with kernel_harness(AgentConfig(ports=(port,), events=ALL_BUT_PROBE, ring_buffer_kb=4)) as h:
        assert h.source.reader == "mmap"
        for i in range(30):
            traffic.tcp_exchange(port=port, client_bytes=100 + i, server_bytes=10)
            h.pump()
        got = h.wait(lambda e: kind(e) == "lifecycle" and on_port(port)(e), count=60)
        losses = h.source.losses()
    assert losses.get("kernel.ringbuf_full") == 0 and sum(losses.values()) == 0
    clients = sorted(e.lifecycle.tx_bytes for e in got if e.remote.port == port)
    assert clients == [100 + i for i in range(30)]
    assert len(got) == 60


def test_reader_refuses_records_of_another_size_and_consumes_nothing() -> None:
    port = traffic.free_port()
    with kernel_harness(AgentConfig(ports=(port,), events=("lifecycle",))) as h:
        traffic.tcp_exchange(port=port, client_bytes=10, server_bytes=10)
        table = h.source._bpf[b"events"]  # the agent's own map, read by a second, wrong reader
        wrong = RingBufReader(int(table.map_fd), int(table.max_entries), struct.Struct("<100s"))
        try:
            with pytest.raises(RingBufError, match=r"record of 144 bytes .* expected 100"):
                wrong.consume(10)
        finally:
            wrong.close()
        got = h.wait(lambda e: kind(e) == "lifecycle" and on_port(port)(e), count=2)
    assert len(got) == 2  # the refused records were left for the right reader


def test_size_must_be_a_power_of_two_pages() -> None:
    with pytest.raises(RingBufError, match="power-of-two"):
        RingBufReader(-1, 3 * 4096, struct.Struct("<Q"))
