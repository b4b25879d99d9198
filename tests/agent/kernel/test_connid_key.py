"""The connection id's key and hash (agent/kernel/connid.py): pure, no kernel."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.kernel import decode
from agent.kernel.connid import KEY_MIN_BYTES, ConnectionIds, connection_ids, derive_key, read_key_file
from agent.kernel.decode import EVENT, EVENT_FIELDS, Decoder
from tcpscope.settings import ConfigError
from tcpscope.v1.events_pb2 import TcpEvent


def _record(**kw: object) -> bytes:
    values: dict[str, object] = {n: (b"" if code.endswith("s") else 0) for n, code in EVENT_FIELDS}
    values.update(kw)
    return EVENT.pack(*(values[n] for n, _ in EVENT_FIELDS))


def test_the_id_is_the_documented_keyed_blake2b_of_the_pair() -> None:
    material = b"a cluster's key, 32 bytes long!!"
    key = hashlib.blake2b(material, digest_size=32, person=b"tcpscope-connid").digest()
    assert derive_key(material) == key
    pair = struct.pack("<II", 0xDEADBEEF, 7)
    want = int.from_bytes(hashlib.blake2b(pair, digest_size=8, key=key).digest(), "little")
    ids = ConnectionIds(material)
    assert ids.of(0xDEADBEEF, 7) == want
    assert ids.of(0xDEADBEEF, 7) == want  # the keyed state is reused, not consumed
    assert ids.of(7, 0xDEADBEEF) != want  # client first: the pair is ordered
    assert ConnectionIds(material + b"x").of(0xDEADBEEF, 7) != want
    assert not ids.random


def test_the_unknown_pair_is_zero_and_a_zero_isn_is_not_unknown() -> None:
    ids = ConnectionIds(b"k" * KEY_MIN_BYTES)
    assert ids.of(0, 0) == 0
    assert ids.of(0, 5) != 0 and ids.of(5, 0) != 0


def test_without_a_key_each_instance_draws_its_own() -> None:
    a, b = ConnectionIds(), ConnectionIds()
    assert a.random and b.random
    assert a.of(1, 2) != b.of(1, 2)


def test_decode_publishes_the_hash_never_the_numbers() -> None:
    ids = ConnectionIds(b"k" * 32)
    d = Decoder("n", 0, {}, ids)
    ev = d.decode(_record(kind=decode.EV_LIFECYCLE, family=2, role=1, isn_client=0x11223344, isn_server=0x55667788))
    assert ev.connection_id == ids.of(0x11223344, 0x55667788) != 0
    raw = ev.SerializeToString()
    for isn in (0x11223344, 0x55667788):
        assert struct.pack("<I", isn) not in raw and struct.pack(">I", isn) not in raw
    assert not [f.name for f in TcpEvent.DESCRIPTOR.fields if "isn" in f.name or "seq" in f.name]
    assert d.decode(_record(kind=decode.EV_RESET_SENT, family=2)).connection_id == 0


def test_key_file_whitespace_is_not_key_and_short_keys_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_bytes(b"  0123456789abcdef0123\n")
    assert read_key_file(str(f)) == b"0123456789abcdef0123"
    f.write_bytes(b"short\n")
    with pytest.raises(ConfigError, match=r"^--connection-key-file .*/key: 5 bytes, a key needs at least 16 "):
        read_key_file(str(f))
    with pytest.raises(ConfigError, match=r"--connection-key-file .*/absent: No such file"):
        read_key_file(str(tmp_path / "absent"))


def test_without_a_key_file_the_agent_draws_one_and_with_one_it_reads_it(tmp_path: Path) -> None:
    assert connection_ids(AgentConfig()).random  # the agent then logs NO_KEY_NOTICE (tests/agent/test_main.py)
    f = tmp_path / "key"
    f.write_text("x" * 32 + "\n")
    ids = connection_ids(AgentConfig(connection_key_file=str(f)))
    assert not ids.random and ids.of(1, 2) == ConnectionIds(b"x" * 32).of(1, 2)
