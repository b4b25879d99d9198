"""How readers (`tcpscope-tail`, `kubectl-tcpscope`) connect to Kafka: the same security settings
the collector publishes with (collector/config.py; the chart sets them from `collector.kafka.*`):
PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; SASL PLAIN or SCRAM; a CA bundle for the brokers.
Flags and environment variables have the collector's names. Secrets come from files or the
environment, never from a flag (a flag shows in `ps`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# the collector's lists (collector/config.py); a test keeps them equal
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    ssl_cafile: str | None = None
    username: str | None = None  # TCPSCOPE_KAFKA_USERNAME, or read from username_file
    username_file: str | None = None
    password: str | None = None  # TCPSCOPE_KAFKA_PASSWORD (environment only), or password_file
    password_file: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ValueError(f"--kafka-security-protocol must be one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}")
        if self.sasl_mechanism is not None and self.sasl_mechanism not in KAFKA_SASL_MECHANISMS:
            raise ValueError(f"--kafka-sasl-mechanism must be one of {', '.join(KAFKA_SASL_MECHANISMS)}")
        if self.protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ValueError("SASL security protocols need --kafka-sasl-mechanism")
        if self.ssl_cafile and self.protocol not in ("SSL", "SASL_SSL"):
            raise ValueError("--kafka-ssl-cafile needs --kafka-security-protocol SSL or SASL_SSL")

    def credentials(self) -> tuple[str | None, str | None]:
        """User name and password, from the environment or their files (read now)."""
        user, password = self.username, self.password
        if self.username_file:
            with open(self.username_file) as f:
                user = f.read().strip()
        if self.password_file:
            with open(self.password_file) as f:
                password = f.read().strip()
        return user, password

    def client_kwargs(self) -> dict[str, Any]:
        """kafka-python client settings (KafkaConsumer, KafkaAdminClient)."""
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.ssl_cafile:
            kw["ssl_cafile"] = self.ssl_cafile
        if self.protocol.startswith("SASL"):
            user, password = self.credentials()
            if not user or password is None:
                raise ValueError(
                    "SASL needs a user name and a password: --kafka-username-file and "
                    "--kafka-password-file (or TCPSCOPE_KAFKA_USERNAME / TCPSCOPE_KAFKA_PASSWORD)"
                )
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=user, sasl_plain_password=password)
        return kw


def add_arguments(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    g = p.add_argument_group("Kafka security (as the collector's)")
    g.add_argument(
        "--kafka-security-protocol",
        default=env.get("TCPSCOPE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        choices=KAFKA_SECURITY_PROTOCOLS,
        help="[TCPSCOPE_KAFKA_SECURITY_PROTOCOL]",
    )
    g.add_argument(
        "--kafka-sasl-mechanism",
        default=env.get("TCPSCOPE_KAFKA_SASL_MECHANISM"),
        choices=KAFKA_SASL_MECHANISMS,
        help="[TCPSCOPE_KAFKA_SASL_MECHANISM]",
    )
    g.add_argument(
        "--kafka-username-file",
        default=env.get("TCPSCOPE_KAFKA_USERNAME_FILE"),
        help="file holding the SASL user name [TCPSCOPE_KAFKA_USERNAME_FILE; or TCPSCOPE_KAFKA_USERNAME]",
    )
    g.add_argument(
        "--kafka-password-file",
        default=env.get("TCPSCOPE_KAFKA_PASSWORD_FILE"),
        help="file holding the SASL password [TCPSCOPE_KAFKA_PASSWORD_FILE; or TCPSCOPE_KAFKA_PASSWORD]",
    )
    g.add_argument(
        "--kafka-ssl-cafile",
        default=env.get("TCPSCOPE_KAFKA_SSL_CAFILE"),
        help="CA bundle for the Kafka brokers [TCPSCOPE_KAFKA_SSL_CAFILE]",
    )


def from_args(a: argparse.Namespace, env: Mapping[str, str]) -> KafkaSecurity:
    return KafkaSecurity(
        a.kafka_security_protocol,
        a.kafka_sasl_mechanism,
        a.kafka_ssl_cafile,
        env.get("TCPSCOPE_KAFKA_USERNAME"),
        a.kafka_username_file,
        env.get("TCPSCOPE_KAFKA_PASSWORD"),
        a.kafka_password_file,
    )
