"""A private broker with the secured listeners of ``tools/kafka/kafka.sh``: SASL_SSL
(``KAFKA_SECURE_PORT``, SCRAM-SHA-512 and PLAIN) and mutual TLS (``KAFKA_TLS_PORT``), and the
``[kafka.librdkafka]`` tables a consumer needs to use them. The broker runs an ACL authorizer:
the SCRAM user, the mutual-TLS client and the PLAINTEXT listener are super users; the PLAIN
user may do only what a test grants it (``grant``).

The broker keeps its PLAINTEXT listener too: tests produce their input and read the consumer's
output topics through it (``bootstrap``), while the consumer under test only gets a secured
address (``secure_bootstrap``, ``tls_bootstrap``), so everything it does goes through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from tests.kafka_broker import LocalBroker, free_port

SASL_USERNAME = "ghl-consumer"
# The SCRAM user's password on the session's secured broker (tests/integration/conftest.py);
# distinctive, with characters URL and base64 encodings change, for the leak checks.
SASL_PASSWORD = "kafka-CanarySasl/6Qv+Lx9="
PLAIN_USERNAME = "ghl-plain"
PLAIN_PASSWORD = "kafka-CanaryPlain/3Rw+Tz7="


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
        self._env["KAFKA_PLAIN_USERNAME"] = PLAIN_USERNAME
        self._env["KAFKA_PLAIN_PASSWORD"] = PLAIN_PASSWORD

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

    def plain_table(self, password: str) -> str:
        """The TOML ``[kafka.librdkafka]`` table for SASL/PLAIN over TLS as ``PLAIN_USERNAME``;
        ``password`` is the TOML value of ``sasl.password``."""
        return (
            "[kafka.librdkafka]\n"
            '"security.protocol" = "SASL_SSL"\n'
            '"sasl.mechanism" = "PLAIN"\n'
            f'"sasl.username" = "{PLAIN_USERNAME}"\n'
            f'"sasl.password" = {password}\n'
            f'"ssl.ca.location" = "{self.ca}"\n'
        )

    def grant(self, *grants: tuple[str, str, str]) -> None:
        """Allow ``PLAIN_USERNAME`` each (resource type ``"topic"`` | ``"group"`` |
        ``"cluster"``, name, operation ``"Read"`` | ``"Write"`` | ``"Create"`` | ...), through
        the PLAINTEXT listener (a super user)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        bindings = [
            AclBinding(
                ResourceType[kind.upper()],
                name,
                ResourcePatternType.LITERAL,
                f"User:{PLAIN_USERNAME}",
                "*",
                AclOperation[operation.upper()],
                AclPermissionType.ALLOW,
            )
            for kind, name, operation in grants
        ]
        for future in admin.create_acls(bindings).values():
            future.result(timeout=30)

    def create_topics(self, *names: str) -> None:
        """Create these topics (one partition each), as an administrator of a managed
        cluster would, through the PLAINTEXT listener."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(n, num_partitions=1) for n in names])
        for future in futures.values():
            future.result(timeout=60)

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
