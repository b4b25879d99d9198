"""The order of a flush of the swapping maps (agent/kernel/flows.py, agent/kernel/anomalies.py):
flip the index, wait for the programs through the map-in-map update (synchronize_rcu in the
kernel), and only then read and clear the old map. Pure: the bcc tables are stand-ins that log what
is done to them; the real maps are exercised by test_flows.py and test_storms.py."""

from __future__ import annotations

import ctypes
from typing import Any

from agent.kernel.anomalies import AnomalyMaps
from agent.kernel.decode import Decoder
from agent.kernel.flows import FlowMaps


class _Table:
    def __init__(self, name: str, log: list[tuple[str, ...]], fd: int = 0) -> None:
        self.name, self.log, self.map_fd = name, log, fd

    def __setitem__(self, key: Any, value: Any) -> None:
        self.log.append(("set", self.name, str(key.value), str(value.value)))

    def __getitem__(self, key: Any) -> Any:
        return [ctypes.c_uint64(0)]

    def items_lookup_and_delete_batch(self) -> list[tuple[bytes, bytes]]:
        self.log.append(("drain", self.name))
        return []

    def keys(self) -> list[Any]:
        return []

    def clear(self) -> None:
        self.log.append(("clear", self.name))


class _Bpf:
    def __init__(self, log: list[tuple[str, ...]]) -> None:
        fds = {b"flows0": 10, b"flows1": 11, b"anom0": 20, b"anom1": 21}
        self.tables = {}
        for name in (b"flows0", b"flows1", b"flow_maps", b"flow_ctl", b"flow_counts"):
            self.tables[name] = _Table(name.decode(), log, fds.get(name, 0))
        for name in (b"anom0", b"anom1", b"anom_maps", b"anom_ctl", b"anom_keys", b"anomaly_counts"):
            self.tables[name] = _Table(name.decode(), log, fds.get(name, 0))

    def __getitem__(self, name: bytes) -> _Table:
        return self.tables[name]


def test_a_flow_flush_waits_for_the_programs_before_it_reads_the_old_map() -> None:
    log: list[tuple[str, ...]] = []
    maps = FlowMaps(_Bpf(log), Decoder("n", 0, {}), 1.0, aggregate=True)
    log.clear()
    assert maps.flush() == []
    # flip to map 1, rewrite slot 0 with the map it holds (the kernel waits a grace period), drain 0
    assert log == [("set", "flow_ctl", "0", "1"), ("set", "flow_maps", "0", "10"), ("drain", "flows0")]
    log.clear()
    maps.flush()
    assert log == [("set", "flow_ctl", "0", "0"), ("set", "flow_maps", "1", "11"), ("drain", "flows1")]


def test_an_anomaly_flush_waits_for_the_programs_before_it_reads_the_old_map() -> None:
    log: list[tuple[str, ...]] = []
    maps = AnomalyMaps(_Bpf(log), Decoder("n", 0, {}), 1.0)
    log.clear()
    maps.flush()
    assert log[:3] == [("set", "anom_ctl", "0", "1"), ("set", "anom_maps", "0", "20"), ("drain", "anom0")]
