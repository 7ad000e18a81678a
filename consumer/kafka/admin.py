"""``ensure_topics``: creates the consumer's own topics when missing, at start-up.

Threads and the event loop
    One short-lived ``AdminClient`` per call. Its requests run on librdkafka's threads; the
    coroutine waits for their futures on the loop and serves the client's error callback with
    ``poll(0)``, which never blocks.

Errors
    ``KafkaAdapterError`` when a topic cannot be created; ``ConfigError`` at once when the
    broker refuses the client's credentials or TLS, or librdkafka refuses a setting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException

# NewTopic is documented as confluent_kafka.admin.NewTopic, but that module re-imports it
# without marking the re-export, so mypy --strict does not see it there.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from consumer.errors import ConfigError
from consumer.kafka.clients import (
    Setting,
    adapter_error,
    kafka_error,
    librdkafka_logger,
    new_client_error,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic ``ensure_topics`` creates when missing; None means the broker's default."""

    name: str
    partitions: int | None = None
    replication_factor: int | None = None
    config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# Client errors that waiting does not heal: the broker refused the credentials or the TLS handshake
# (a missing client certificate shows as a transport error carrying the TLS alert).
_REFUSED: Final = frozenset((KafkaError._AUTHENTICATION, KafkaError._SSL))


def _refused(err: KafkaError) -> bool:
    return err.code() in _REFUSED or (
        err.code() == KafkaError._TRANSPORT and "SSL routines" in err.str()
    )


def _already_exists(error: BaseException) -> bool:
    err = kafka_error(error)
    return err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS


async def ensure_topics(
    bootstrap: str,
    topics: Sequence[TopicSpec],
    *,
    extra: Mapping[str, Setting] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Existing topics are
    left as they are (their config is not altered). Raises ``KafkaAdapterError``; raises
    ``ConfigError`` at once, with librdkafka's reason, when the broker refuses the client's
    credentials or TLS (the first Kafka call of ``run``: wrong SASL password or CA)."""
    if not topics:
        return []
    refusals: list[KafkaError] = []
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        **(extra or {}),
        "error_cb": refusals.append,  # served by admin.poll below
        "logger": librdkafka_logger,
    }
    try:
        admin = AdminClient(config)
    except KafkaException as exc:
        raise new_client_error(exc, "kafka admin client") from exc
    new = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions if spec.partitions is not None else -1,
            replication_factor=(
                spec.replication_factor if spec.replication_factor is not None else -1
            ),
            config=dict(spec.config),
        )
        for spec in topics
    ]
    futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
    pending = {asyncio.wrap_future(future): name for name, future in futures.items()}
    created = []
    try:
        while pending:
            done, _ = await asyncio.wait(pending, timeout=0.2)
            admin.poll(0)  # never blocks
            # Refused credentials or certificates do not heal while the request waits for its
            # timeout: say why now. librdkafka's text names the mechanism, never the password.
            refused = next((e for e in refusals if _refused(e)), None)
            if refused is not None:
                raise ConfigError(
                    f"kafka.librdkafka: the broker refused the connection: {refused.str()} "
                    "(check security.protocol, sasl.* and ssl.* settings)"
                )
            failed: list[tuple[str, BaseException]] = []
            for future in done:
                name = pending.pop(future)
                error = future.exception()  # read for every done future: none goes unretrieved
                if error is None:
                    created.append(name)
                elif not _already_exists(error):
                    failed.append((name, error))
            if failed:
                name, error = failed[0]
                if isinstance(error, KafkaException):
                    raise adapter_error(error, f"creating topic {name}") from error
                raise error
    finally:
        for future in pending:
            future.cancel()
    if created:
        logger.info("kafka topics created", extra={"topics": created})
    return created
