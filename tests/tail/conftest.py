"""A real Kafka-protocol broker per test (tests/support/kafka.py), for the readers' tests."""

from __future__ import annotations

from tests.support.kafka import kafka_broker

__all__ = ["kafka_broker"]
