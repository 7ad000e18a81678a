"""The consumer's topics at start-up: ``start_up`` waits for the bootstrap servers, then
creates its own topics when missing (``ensure_topics``) or, on a managed cluster where an
administrator creates topics (``kafka.create_topics = false``), checks that every topic exists
and that the client may do what the consumer does there (``check_topics``).

Threads and the event loop
    One short-lived ``AdminClient`` per call. Its requests run on librdkafka's threads; the
    coroutines wait for their futures on the loop (a blocking metadata request runs on a worker
    thread) and serve the client's error callback with ``poll(0)``, which never blocks.

Errors
    ``KafkaAdapterError`` when a topic cannot be created, or the bootstrap servers do not answer
    within the start-up timeout; ``ConfigError`` at once when the broker refuses the client's
    credentials or TLS, or librdkafka refuses a setting, and for a missing topic or ACL (the
    message names the topic and the ACL to grant).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, TopicCollection

# NewTopic is documented as confluent_kafka.admin.NewTopic, but that module re-imports it
# without marking the re-export, so mypy --strict does not see it there.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclOperation,
    AdminClient,
    NewTopic,
)

from consumer.errors import ConfigError, KafkaAdapterError
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


_UNAUTHORISED: Final = frozenset(
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)
)


@dataclass(frozen=True, slots=True)
class TopicUse:
    """A topic the consumer uses and the operations it performs there: ``"Read"`` and/or
    ``"Write"`` (each implies ``Describe``), the names of Kafka's ACL operations."""

    name: str
    operations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CoPartition:
    """``topic`` must have as many partitions as ``source`` (its partition p holds what
    belongs with ``source``'s partition p); ``why`` says what requires it, for the error."""

    topic: str
    source: str
    why: str

    def mismatch(self, partitions: int, wanted: int) -> str:
        """The error for ``topic`` found with ``partitions`` where ``source`` has ``wanted``."""
        return (
            f"topic {self.topic} has {partitions} partition(s), topic {self.source} has "
            f"{wanted}: {self.topic} must have {wanted} ({self.why}); recreate it with "
            f"{wanted} partitions once its records are handled (or, if it has fewer, add "
            "partitions)"
        )


_OPERATIONS: Final = {"Read": AclOperation.READ, "Write": AclOperation.WRITE}

# During start-up librdkafka's own lines are not logged: it reports a refused connection once
# per attempt per broker, a wall of lines that ``start_up`` condenses into one.
_QUIET: Final = logging.Logger("consumer.kafka.librdkafka.start-up")
_QUIET.disabled = True
# How long ``start_up`` waits before saying the bootstrap servers do not answer (then it keeps
# trying), and each metadata request's timeout.
UNREACHABLE_NOTICE_S: Final = 5.0
_PROBE_S: Final = 1.0


def _admin(
    bootstrap: str,
    extra: Mapping[str, Setting] | None,
    refusals: list[KafkaError],
    *,
    quiet: bool = False,
) -> AdminClient:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        **(extra or {}),
        "error_cb": refusals.append,  # served by admin.poll
        "logger": _QUIET if quiet else librdkafka_logger,
    }
    try:
        return AdminClient(config)
    except KafkaException as exc:
        raise new_client_error(exc, "kafka admin client") from exc


def _raise_if_refused(refusals: Sequence[KafkaError]) -> None:
    """Refused credentials or certificates do not heal by waiting: say why now. librdkafka's
    text names the mechanism, never the password."""
    refused = next((e for e in refusals if _refused(e)), None)
    if refused is not None:
        raise ConfigError(
            f"kafka.librdkafka: the broker refused the connection: {refused.str()} "
            "(check security.protocol, sasl.* and ssl.* settings)"
        )


async def start_up(
    bootstrap: str,
    *,
    create: Sequence[TopicSpec],
    uses: Sequence[TopicUse],
    create_topics: bool,
    timeout_s: float,
    extra: Mapping[str, Setting] | None = None,
    stop: asyncio.Event | None = None,
    co_partitioned: Sequence[CoPartition] = (),
) -> dict[str, int] | None:
    """What ``run`` does before its Kafka clients start: wait until a bootstrap server answers
    (after ``UNREACHABLE_NOTICE_S`` one warning line names the servers and the reason; after
    ``timeout_s``, 0 meaning never, ``KafkaAdapterError``); then ``ensure_topics(create)``
    when ``create_topics``, else ``check_topics(uses)``. Each topic of ``co_partitioned`` is
    created with its source's partition count, and one that exists with another count is
    refused (``ConfigError``, ``CoPartition.mismatch``), as is a missing source. librdkafka's
    own log lines are dropped meanwhile. None when ``stop`` was set while waiting (nothing
    more was done), else the partition count of each source topic of ``co_partitioned``
    (empty without). Raises ``ConfigError`` (refused credentials, missing topic or ACL,
    partition counts)."""
    refusals: list[KafkaError] = []
    admin = _admin(bootstrap, extra, refusals, quiet=True)
    if not await _wait_reachable(admin, bootstrap, refusals, timeout_s, stop):
        return None
    create, sources = await _co_partition(admin, create, co_partitioned)
    if create_topics:
        await _create(admin, create, refusals, timeout_s=30.0)
    else:
        await check_topics(admin, uses)
    return sources


async def _co_partition(
    admin: AdminClient, create: Sequence[TopicSpec], co_partitioned: Sequence[CoPartition]
) -> tuple[list[TopicSpec], dict[str, int]]:
    """``create`` with each co-partitioned topic's partition count set to its source's, after
    checking every such topic that exists already (one metadata request), and the sources'
    partition counts. Raises ``ConfigError`` for a missing source topic or an existing topic
    with another count."""
    if not co_partitioned:
        return list(create), {}
    try:
        metadata = await asyncio.to_thread(admin.list_topics, timeout=30.0)
    except KafkaException as exc:
        raise adapter_error(exc, "listing topics") from exc
    counts = {
        name: len(meta.partitions)
        for name, meta in metadata.topics.items()
        if meta.error is None
    }
    wanted: dict[str, int] = {}
    for rule in co_partitioned:
        if rule.source not in counts:
            raise ConfigError(
                f"topic {rule.source} does not exist: {rule.topic} must have its partition "
                f"count ({rule.why})"
            )
        wanted[rule.topic] = counts[rule.source]
        found = counts.get(rule.topic)
        if found is not None and found != wanted[rule.topic]:
            raise ConfigError(rule.mismatch(found, wanted[rule.topic]))
    specs = [
        replace(spec, partitions=wanted[spec.name]) if spec.name in wanted else spec
        for spec in create
    ]
    return specs, {rule.source: counts[rule.source] for rule in co_partitioned}


async def _wait_reachable(
    admin: AdminClient,
    bootstrap: str,
    refusals: list[KafkaError],
    timeout_s: float,
    stop: asyncio.Event | None,
) -> bool:
    started = time.monotonic()
    noticed = False
    while True:
        try:
            await asyncio.to_thread(admin.list_topics, timeout=_PROBE_S)
            if noticed:
                logger.warning("kafka bootstrap servers %s answer now", bootstrap)
            return True
        except KafkaException:
            pass
        if stop is not None and stop.is_set():
            return False
        admin.poll(0)
        _raise_if_refused(refusals)
        waited = time.monotonic() - started
        transport = [e.str() for e in refusals if e.code() != KafkaError._ALL_BROKERS_DOWN]
        reason = transport[-1] if transport else "no answer"
        refusals.clear()
        if timeout_s and waited >= timeout_s:
            raise KafkaAdapterError(
                f"bootstrap servers {bootstrap} unreachable for {timeout_s:.0f} s ({reason}); "
                "giving up (kafka.startup_timeout_seconds)"
            )
        if not noticed and waited >= UNREACHABLE_NOTICE_S:
            noticed = True
            logger.warning(
                "kafka bootstrap servers %s unreachable (%s); %s",
                bootstrap,
                reason,
                f"retrying for up to {timeout_s:.0f} s (kafka.startup_timeout_seconds)"
                if timeout_s
                else "retrying until they answer (kafka.startup_timeout_seconds = 0)",
            )


async def check_topics(admin: AdminClient, uses: Sequence[TopicUse]) -> None:
    """Describe every topic of ``uses``: raise ``ConfigError`` naming each topic that does not
    exist and each ACL the client lacks (``Read``, ``Write`` on the topic; each implies
    ``Describe``, so a topic it may not even describe lacks all of its uses' operations). A
    broker without an authorizer reports every operation allowed."""
    if not uses:
        return
    names = list(dict.fromkeys(use.name for use in uses))
    futures = admin.describe_topics(
        TopicCollection(names), include_authorized_operations=True, request_timeout=30.0
    )
    problems: list[str] = []
    allowed: dict[str, set[Any] | None] = {}
    for name, future in futures.items():
        try:
            description = await asyncio.wrap_future(future)
        except KafkaException as exc:
            err = kafka_error(exc)
            code = None if err is None else err.code()
            if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
                problems.append(f"topic {name} does not exist")
            elif code in _UNAUTHORISED:
                allowed[name] = set()  # not even Describe: every operation of its uses is missing
            else:
                raise adapter_error(exc, f"describing topic {name}") from exc
            continue
        operations = description.authorized_operations
        allowed[name] = None if operations is None else set(operations)
    for use in uses:
        granted = allowed.get(use.name)
        if granted is None:
            continue
        missing = [op for op in use.operations if _OPERATIONS[op] not in granted]
        problems.extend(f"not authorised: needs {op} on topic {use.name}" for op in missing)
    if problems:
        raise ConfigError(
            "kafka.create_topics = false: "
            + "; ".join(dict.fromkeys(problems))
            + " (an administrator creates the topics and grants the ACLs, see README "
            "'Kafka ACLs')"
        )


async def topic_id(
    bootstrap: str,
    topic: str,
    *,
    extra: Mapping[str, Setting] | None = None,
    timeout_s: float = 30.0,
) -> str:
    """``topic``'s id (KIP-516), as text: a topic deleted and created again under the same name
    gets a new one, though its partitions and offsets may look the same (one DescribeTopics
    request; a consumer's metadata does not carry the id). Raises ``KafkaAdapterError`` (no
    such topic, no answer within ``timeout_s``)."""
    admin = _admin(bootstrap, extra, [])
    [future] = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s).values()
    try:
        description = await asyncio.wrap_future(future)
    except KafkaException as exc:
        raise adapter_error(exc, f"describing topic {topic}") from exc
    return str(description.topic_id)


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
    credentials or TLS (wrong SASL password or CA), or refuses CreateTopics for want of an ACL
    (the message names it)."""
    if not topics:
        return []
    refusals: list[KafkaError] = []
    return await _create(_admin(bootstrap, extra, refusals), topics, refusals, timeout_s=timeout_s)


async def _create(
    admin: AdminClient,
    topics: Sequence[TopicSpec],
    refusals: list[KafkaError],
    *,
    timeout_s: float,
) -> list[str]:
    if not topics:
        return []
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
            _raise_if_refused(refusals)
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
                err = kafka_error(error)
                if err is not None and err.code() in _UNAUTHORISED:
                    raise ConfigError(
                        f"kafka: not authorised to create topic {name} ({err.str()}): needs "
                        f"Create on cluster, or Create on topic {name}; on a cluster where an "
                        "administrator creates the topics, set kafka.create_topics = false"
                    )
                if isinstance(error, KafkaException):
                    raise adapter_error(error, f"creating topic {name}") from error
                raise error
    finally:
        for future in pending:
            future.cancel()
    if created:
        logger.info("kafka topics created", extra={"topics": created})
    return created
