"""A private broker with the secured listeners of ``tools/kafka/kafka.sh``: SASL_SSL
(``KAFKA_SECURE_PORT``) and mutual TLS (``KAFKA_TLS_PORT``), and the ``[kafka.librdkafka]``
tables a consumer needs to use them.

The broker keeps its PLAINTEXT listener too: tests produce their input and read the consumer's
output topics through it (``bootstrap``), while the consumer under test only gets a secured
address (``secure_bootstrap``, ``tls_bootstrap``), so everything it does goes through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.kafka_broker import LocalBroker, free_port

SASL_USERNAME = "ghl-consumer"
# The SCRAM user's password on the session's secured broker (tests/integration/conftest.py);
# distinctive, with characters URL and base64 encodings change, for the leak checks.
SASL_PASSWORD = "kafka-CanarySasl/6Qv+Lx9="


class SecuredBroker(LocalBroker):
    """A ``LocalBroker`` that also serves SASL_SSL on ``secure_port`` (one SCRAM-SHA-512 user,
    ``SASL_USERNAME`` with ``password``) and SSL with client certificates on ``tls_port``; its
    certificates are signed by the CA at ``ca``."""

    def __init__(self, password: str) -> None:
        super().__init__()
        self.secure_port = free_port()
        self.tls_port = free_port()
        self._env["KAFKA_SECURE_PORT"] = str(self.secure_port)
        self._env["KAFKA_TLS_PORT"] = str(self.tls_port)
        self._env["KAFKA_SASL_PASSWORD"] = password

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    @property
    def tls_bootstrap(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    @property
    def ca(self) -> Path:
        """The CA certificate clients must trust (``ssl.ca.location``)."""
        return self.state / "tls" / "ca.pem"

    def librdkafka_table(self, password: str) -> str:
        """The TOML ``[kafka.librdkafka]`` table for this broker; ``password`` is the TOML value
        of ``sasl.password``, e.g. ``{ env = "KAFKA_SASL_PASSWORD" }``."""
        return (
            "[kafka.librdkafka]\n"
            '"security.protocol" = "SASL_SSL"\n'
            '"sasl.mechanism" = "SCRAM-SHA-512"\n'
            f'"sasl.username" = "{SASL_USERNAME}"\n'
            f'"sasl.password" = {password}\n'
            f'"ssl.ca.location" = "{self.ca}"\n'
        )

    def mutual_tls_table(self) -> str:
        """The TOML ``[kafka.librdkafka]`` table for the mutual-TLS listener."""
        tls = self.ca.parent
        return (
            "[kafka.librdkafka]\n"
            '"security.protocol" = "SSL"\n'
            f'"ssl.ca.location" = "{self.ca}"\n'
            f'"ssl.certificate.location" = "{tls / "client.pem"}"\n'
            f'"ssl.key.location" = "{tls / "client.key"}"\n'
        )


@contextlib.contextmanager
def secured_broker(password: str) -> Iterator[SecuredBroker]:
    """Start a ``SecuredBroker``; stop it and delete its state (certificates too) after."""
    broker = SecuredBroker(password)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
