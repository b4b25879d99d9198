"""A BPF ring buffer consumer that reads the map's memory directly, without a callback per record.

bcc (and libbpf under it) hand each record to a Python callback through ctypes: about a third of the
agent's CPU per event went there. This reader follows the kernel's user-space ring buffer protocol
(kernel/bpf/ringbuf.c; the same one libbpf's ring_buffer__consume follows) on mmap'ed pages:

- page 0 of the map (read-write): `consumer_pos`, which only user space advances;
- from page 1 (read-only): `producer_pos`, then the data area mapped twice in a row, so a record
  that wraps around the end is still contiguous;
- each record: an 8-byte header (u32 length with BUSY and DISCARD bits, u32 page offset), then the
  data, padded to 8 bytes. A BUSY record is reserved but not committed yet: reading stops there.

Every record tcpscope's programs submit is one `struct tcpscope_event`, so a run of committed records
is unpacked by one `struct.iter_unpack` over [consumer, producer). A record of any other length is
an error (a program and this reader disagree), raised, never skipped.

Memory ordering: the protocol needs acquire loads of producer_pos and of each header, and a release
store of consumer_pos. Plain loads and stores give exactly that on x86 (TSO), so `supported()` is
true only there; elsewhere the agent keeps bcc's consumer.
"""

from __future__ import annotations

import mmap
import platform
import select
import struct

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER = 8
_POS = struct.Struct("<Q")


class RingBufError(RuntimeError):
    """The ring buffer holds something this reader cannot read."""


def supported() -> bool:
    """True where plain loads and stores order as the ring buffer protocol needs (x86)."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


class RingBufReader:
    """Consumes fixed-size records of one ring buffer map; `record` is the data's layout (no header)."""

    def __init__(self, map_fd: int, size_bytes: int, record: struct.Struct) -> None:
        page = mmap.PAGESIZE
        if size_bytes <= 0 or size_bytes & (size_bytes - 1) or size_bytes % page:
            raise RingBufError(f"ring buffer size {size_bytes} is not a power-of-two multiple of {page}")
        self._record = record
        self.stride = (HEADER + record.size + 7) & ~7
        pad = self.stride - HEADER - record.size
        fmt = record.format.lstrip("<=!>@")
        # header (length, page offset) + the record + padding: one stride per tuple
        self._strided = struct.Struct(f"<II{fmt}{pad}x")
        self._mask = size_bytes - 1
        self._size = size_bytes
        self._data_off = page  # the data area starts one page into the second mapping
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._producer = mmap.mmap(map_fd, page + 2 * size_bytes, mmap.MAP_SHARED, mmap.PROT_READ,
                                       offset=page)
        except BaseException:
            self._consumer.close()
            raise
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def pending_bytes(self) -> int:
        """Bytes between consumer and producer (committed or not)."""
        return int(_POS.unpack_from(self._producer, 0)[0] - _POS.unpack_from(self._consumer, 0)[0])

    def consume(self, limit: int) -> list[tuple[object, ...]]:
        """Up to `limit` committed records, each as the record's fields; advances consumer_pos past
        them (and past discarded ones)."""
        cons = _POS.unpack_from(self._consumer, 0)[0]
        prod = _POS.unpack_from(self._producer, 0)[0]
        avail = prod - cons
        if avail <= 0 or limit <= 0:
            return []
        stride, want = self.stride, self._record.size
        n = min(avail // stride, limit)
        if n == 0:
            raise RingBufError(f"{avail} bytes pending, less than one {stride}-byte record")
        start = self._data_off + (cons & self._mask)
        out: list[tuple[object, ...]] = []
        done = 0
        view = memoryview(self._producer)[start:start + n * stride]
        try:
            for t in self._strided.iter_unpack(view):
                hdr = t[0]
                if hdr & BUSY_BIT:
                    break  # reserved, not committed yet: the rest waits for the next call
                length = hdr & ~(BUSY_BIT | DISCARD_BIT)
                if length != want:
                    raise RingBufError(f"record of {length} bytes at position {cons + done * stride}, "
                                       f"expected {want}: the BPF programs and the reader disagree")
                done += 1
                if not hdr & DISCARD_BIT:
                    out.append(t[2:])
        finally:
            view.release()
        if done:
            _POS.pack_into(self._consumer, 0, cons + done * stride)
        return out

    def poll(self, timeout_ms: int, limit: int) -> list[tuple[object, ...]]:
        """consume(limit); if nothing was ready, wait up to timeout_ms for the kernel's wakeup first."""
        got = self.consume(limit)
        if got or timeout_ms == 0:
            return got
        self._epoll.poll(max(0.0, timeout_ms / 1000.0))
        return self.consume(limit)

    def close(self) -> None:
        self._epoll.close()
        self._producer.close()
        self._consumer.close()
