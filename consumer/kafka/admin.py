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
    """A topic ``ensure_topics`` creates when missing; None means the broker's default.
    ``partitions_of``: ``start_up`` creates it with that topic's partition count and refuses
    an existing one with another count (``setting`` names what asked for it, for the error)."""

    name: str
    partitions: int | None = None
    replication_factor: int | None = None
    config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    partitions_of: str | None = None
    setting: str = ""


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
) -> bool:
    """What ``run`` does before its Kafka clients start: wait until a bootstrap server answers
    (after ``UNREACHABLE_NOTICE_S`` one warning line names the servers and the reason; after
    ``timeout_s``, 0 meaning never, ``KafkaAdapterError``); then ``ensure_topics(create)``
    when ``create_topics``, else ``check_topics(uses)``. librdkafka's own log lines are
    dropped meanwhile. False when ``stop`` was set while waiting (nothing more was done), else
    True. Raises ``ConfigError`` (refused credentials, missing topic or ACL)."""
    refusals: list[KafkaError] = []
    admin = _admin(bootstrap, extra, refusals, quiet=True)
    if not await _wait_reachable(admin, bootstrap, refusals, timeout_s, stop):
        return False
    create = await _co_partitioned(admin, create)
    if create_topics:
        await _create(admin, create, refusals, timeout_s=30.0)
    else:
        await check_topics(admin, uses)
    await _check_partition_counts(admin, create)
    return True


async def _partition_counts(admin: AdminClient, names: Sequence[str]) -> dict[str, int]:
    """The partition count of each of ``names`` that exists."""
    metadata = await asyncio.to_thread(admin.list_topics, timeout=30.0)
    return {
        name: len(metadata.topics[name].partitions)
        for name in names
        if name in metadata.topics and metadata.topics[name].error is None
    }


async def _co_partitioned(admin: AdminClient, specs: Sequence[TopicSpec]) -> list[TopicSpec]:
    """``specs`` with each ``partitions_of`` resolved to that topic's partition count. Raises
    ``ConfigError`` when that topic does not exist (nothing to match)."""
    wanted = [spec.partitions_of for spec in specs if spec.partitions_of is not None]
    if not wanted:
        return list(specs)
    counts = await _partition_counts(admin, wanted)
    resolved = []
    for spec in specs:
        if spec.partitions_of is not None:
            if spec.partitions_of not in counts:
                raise ConfigError(
                    f"{spec.setting}: topic {spec.partitions_of} does not exist; topic "
                    f"{spec.name} must have its partition count, so create it first"
                )
            spec = replace(spec, partitions=counts[spec.partitions_of])
        resolved.append(spec)
    return resolved


async def _check_partition_counts(admin: AdminClient, specs: Sequence[TopicSpec]) -> None:
    """Raise ``ConfigError`` when a topic created or found for a ``partitions_of`` spec has
    another partition count than that topic."""
    specs = [spec for spec in specs if spec.partitions_of is not None]
    if not specs:
        return
    counts = await _partition_counts(admin, [spec.name for spec in specs])
    for spec in specs:
        found = counts.get(spec.name)
        if found is not None and found != spec.partitions:
            raise ConfigError(
                f"{spec.setting}: topic {spec.name} has {found} partitions, topic "
                f"{spec.partitions_of} has {spec.partitions}: they must be equal (a profile "
                f"lives in the changelog partition of its events' partition). Recreate "
                f"{spec.name} with {spec.partitions} partitions (its profiles are rebuilt from "
                "the events that follow), or use another kafka.profile_topic"
            )


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
