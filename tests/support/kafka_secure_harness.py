"""A real Kafka broker with a second, secured listener: SASL_SSL with SCRAM-SHA-512 (the user made by the
StorageTool's `format --add-scram`) and a server certificate from a test CA (PEM keystore, made with
`cryptography` through headrace.tls_server). The PLAINTEXT listener stays for the broker itself and for tests
reading topics back. Only the modules that need it start one: the session's plain `kafka` broker is unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness import free_port
from headrace.tls_server import issue, make_ca
from kafka_harness import KafkaBroker

SCRAM_USER = "relay"
SCRAM_PASSWORD = "relay-secret-5f1c"


@dataclass
class SecureKafkaBroker(KafkaBroker):
    secure_port: int = field(default_factory=free_port)

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    @property
    def ca(self) -> Path:
        return self.workdir / "tls" / "ca.pem"

    def _certificates(self) -> Path:
        tls = self.workdir / "tls"
        ca, ca_key = make_ca(tls, "kafka test CA")
        cert, key = tls / "broker.pem", tls / "broker-key.pem"
        issue(ca, ca_key, cert, key, ["localhost", "127.0.0.1"])
        keystore = tls / "keystore.pem"  # Kafka's PEM keystore: the PKCS#8 key and the certificate chain
        keystore.write_bytes(key.read_bytes() + cert.read_bytes())
        return keystore

    def _settings(self) -> dict[str, str]:
        """The plain broker's, with the SECURE listener (SASL_SSL, SCRAM-SHA-512, the PEM keystore made here)."""
        keystore = self._certificates()
        secure = "listener.name.secure."
        return {
            **super()._settings(),
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},SECURE://127.0.0.1:{self.secure_port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port},SECURE://127.0.0.1:{self.secure_port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SECURE:SASL_SSL,CONTROLLER:PLAINTEXT",
            f"{secure}sasl.enabled.mechanisms": "SCRAM-SHA-512",
            f"{secure}scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            f"{secure}ssl.keystore.type": "PEM",
            f"{secure}ssl.keystore.location": str(keystore),
        }

    def _format_args(self) -> list[str]:
        return ["--add-scram", f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"]


def secure_env(broker: SecureKafkaBroker, password: str = SCRAM_PASSWORD) -> dict[str, str]:
    """The HEADRACE_KAFKA_* environment of a headrace process using the secured listener."""
    return {
        "HEADRACE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "HEADRACE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "HEADRACE_KAFKA_SASL_USERNAME": SCRAM_USER,
        "HEADRACE_KAFKA_SASL_PASSWORD": password,
        "HEADRACE_KAFKA_CA_FILE": str(broker.ca),
    }
