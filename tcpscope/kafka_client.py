"""The Kafka security settings, defined once for the collector that publishes and the readers
(`tcpscope-tail`, `kubectl-tcpscope`) that consume: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; SASL
PLAIN or SCRAM; a CA bundle for the brokers. `KafkaSecurity` is a documented settings dataclass
(tcpscope/settings.py): the collector's config holds it (`settings_of`), tcpscope-tail adds its
flags (`add_arguments`), so both have the same flags, environment variables, help, choices and
checks, and both hand kafka-python the same client settings (`client_kwargs`). The chart sets them
from `collector.kafka.*`. Secrets come from files or the environment, never from a flag (a flag
shows in `ps`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from tcpscope.settings import ConfigError, add_flags, check, flag_name, read_values, setting

KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How to reach Kafka securely: each field a documented setting (flag, environment variable)."""

    protocol: str = setting(
        "TCPSCOPE_KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        flag="--kafka-security-protocol",
        default="PLAINTEXT",
        choices=KAFKA_SECURITY_PROTOCOLS,
    )
    sasl_mechanism: str | None = setting(
        "TCPSCOPE_KAFKA_SASL_MECHANISM",
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        flag="--kafka-sasl-mechanism",
        default=None,
        choices=KAFKA_SASL_MECHANISMS,
    )
    username: str | None = setting(
        "TCPSCOPE_KAFKA_USERNAME", "SASL user name (or --kafka-username-file)", flag=False, default=None
    )
    username_file: str | None = setting(
        "TCPSCOPE_KAFKA_USERNAME_FILE",
        "file holding the SASL user name (or TCPSCOPE_KAFKA_USERNAME)",
        flag="--kafka-username-file",
        default=None,
    )
    password: str | None = setting(
        "TCPSCOPE_KAFKA_PASSWORD",
        "SASL password (environment only; or --kafka-password-file)",
        flag=False,
        default=None,
        repr=False,  # never in a log line or a traceback's locals
    )
    password_file: str | None = setting(
        "TCPSCOPE_KAFKA_PASSWORD_FILE",
        "file holding the SASL password (or TCPSCOPE_KAFKA_PASSWORD)",
        flag="--kafka-password-file",
        default=None,
    )
    ssl_cafile: str | None = setting(
        "TCPSCOPE_KAFKA_SSL_CAFILE", "CA bundle for the Kafka brokers", flag="--kafka-ssl-cafile", default=None
    )

    def __post_init__(self) -> None:
        check(self)  # the choices: a value from the environment is checked as a flag's is
        if self.protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ConfigError("SASL security protocols need --kafka-sasl-mechanism")
        if self.ssl_cafile and self.protocol not in ("SSL", "SASL_SSL"):
            raise ConfigError("--kafka-ssl-cafile needs --kafka-security-protocol SSL or SASL_SSL")
        if self.protocol.startswith("SASL") and not (
            (self.username or self.username_file) and (self.password is not None or self.password_file)
        ):
            raise ConfigError(_NO_CREDENTIALS)

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
                raise ConfigError(_NO_CREDENTIALS)
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=user, sasl_plain_password=password)
        return kw


FILE_FLAGS: dict[str, str] = {
    f.metadata["env"]: flag_name(f)
    for f in fields(KafkaSecurity)
    if f.name in ("ssl_cafile", "username_file", "password_file")
}
"""The settings that name a file (a Secret's key in a cluster): environment variable -> flag."""

_NO_CREDENTIALS = (
    "SASL needs a user name and a password: --kafka-username-file and "
    "--kafka-password-file (or TCPSCOPE_KAFKA_USERNAME / TCPSCOPE_KAFKA_PASSWORD)"
)

_DEST = "kafka_security."  # where add_arguments puts the flags' values in the parsed namespace


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `KafkaSecurity`, as the collector's (a reader's command line)."""
    add_flags(p.add_argument_group("Kafka security (as the collector's)"), KafkaSecurity, _DEST)


def from_args(a: argparse.Namespace, env: Mapping[str, str]) -> KafkaSecurity:
    """The settings from `add_arguments`' flags, else the environment; ConfigError if unusable."""
    return KafkaSecurity(**read_values(KafkaSecurity, a, env, _DEST))
