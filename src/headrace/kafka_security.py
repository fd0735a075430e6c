"""How every Kafka client headrace runs (the relay, the activation transport, kafka sources) authenticates to
the brokers and encrypts its connections: SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and TLS, from

  HEADRACE_KAFKA_SECURITY_PROTOCOL   PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL
  HEADRACE_KAFKA_SASL_MECHANISM      PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL_ protocol)
  HEADRACE_KAFKA_SASL_USERNAME
  HEADRACE_KAFKA_SASL_PASSWORD       or HEADRACE_KAFKA_SASL_PASSWORD_FILE (read at each client's start)
  HEADRACE_KAFKA_CA_FILE             the CA bundle the brokers' certificates are verified against (SSL, SASL_SSL;
                                     default: the system's)

`client_config(security)` turns them into librdkafka's properties (headrace's clients are confluent-kafka's),
the one place a client's configuration gets them; brokers' certificates are verified, host name included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(ValueError):
    """Kafka security settings that cannot work (the message names the variable)."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    mechanism: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    password_file: str = ""
    ca_file: str = ""

    @classmethod
    def from_env(cls) -> KafkaSecurity:
        env = os.environ.get
        return cls(
            protocol=(env("HEADRACE_KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").strip().upper(),
            mechanism=(env("HEADRACE_KAFKA_SASL_MECHANISM") or "").strip().upper(),
            username=env("HEADRACE_KAFKA_SASL_USERNAME") or "",
            password=env("HEADRACE_KAFKA_SASL_PASSWORD") or "",
            password_file=env("HEADRACE_KAFKA_SASL_PASSWORD_FILE") or "",
            ca_file=env("HEADRACE_KAFKA_CA_FILE") or "",
        )

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    def secret(self) -> str:
        """The SASL password (the password file's first line when one is named)."""
        if self.password_file:
            try:
                return Path(self.password_file).read_text(encoding="utf-8").splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise KafkaSecurityError(
                    f"HEADRACE_KAFKA_SASL_PASSWORD_FILE {self.password_file}: "
                    f"{getattr(exc, 'strerror', None) or 'empty'}"
                ) from exc
        return self.password

    def check(self) -> None:
        """Refuse settings that cannot work, naming the variable."""
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"HEADRACE_KAFKA_SECURITY_PROTOCOL is one of {', '.join(PROTOCOLS)}, not {self.protocol!r}"
            )
        if self.sasl:
            if self.mechanism not in MECHANISMS:
                raise KafkaSecurityError(
                    f"HEADRACE_KAFKA_SASL_MECHANISM is one of {', '.join(MECHANISMS)} with {self.protocol}, "
                    f"not {self.mechanism or 'unset'!r}"
                )
            if not self.username:
                raise KafkaSecurityError(f"{self.protocol} needs HEADRACE_KAFKA_SASL_USERNAME")
            if self.password and self.password_file:
                raise KafkaSecurityError(
                    "give HEADRACE_KAFKA_SASL_PASSWORD or HEADRACE_KAFKA_SASL_PASSWORD_FILE, not both"
                )
            if not self.secret():
                raise KafkaSecurityError(
                    f"{self.protocol} needs HEADRACE_KAFKA_SASL_PASSWORD or HEADRACE_KAFKA_SASL_PASSWORD_FILE"
                )
        elif self.mechanism or self.username:
            raise KafkaSecurityError(
                "HEADRACE_KAFKA_SASL_* need HEADRACE_KAFKA_SECURITY_PROTOCOL SASL_SSL or SASL_PLAINTEXT"
            )
        if self.ca_file:
            if not self.tls:
                raise KafkaSecurityError(
                    "HEADRACE_KAFKA_CA_FILE needs HEADRACE_KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL"
                )
            if not os.access(self.ca_file, os.R_OK):
                raise KafkaSecurityError(f"HEADRACE_KAFKA_CA_FILE {self.ca_file}: cannot be read")


def client_config(security: KafkaSecurity | None = None) -> dict[str, Any]:
    """librdkafka's security properties for `security` (None: this process's environment), to merge into any
    Producer/Consumer/AdminClient configuration. Empty for PLAINTEXT."""
    s = KafkaSecurity.from_env() if security is None else security
    s.check()
    if s.protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security.protocol": s.protocol.lower()}
    if s.sasl:
        out.update({"sasl.mechanism": s.mechanism, "sasl.username": s.username, "sasl.password": s.secret()})
    if s.tls:
        out["ssl.endpoint.identification.algorithm"] = "https"
        if s.ca_file:
            out["ssl.ca.location"] = s.ca_file
    return out


def is_auth_failure(message: str) -> bool:
    """A librdkafka error text that says the brokers refused the credentials or the certificate (no retry
    will help): what a Kafka client logs as an error rather than as a broker being away."""
    m = message.lower()
    return "authentication" in m or "sasl" in m or "certificate verify failed" in m or "ssl handshake failed" in m
