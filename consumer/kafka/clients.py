"""What every Kafka client of the package shares: settings, librdkafka's log, values, records,
the translation of librdkafka's errors, and reading a group's committed offsets.

Contracts
    ``librdkafka_logger`` is the ``logger`` every client passes to librdkafka, and the logger of
    the errors reported through ``error_cb``: one line per message shape every 10 s (``_Repeats``),
    because librdkafka reports a broker outage on every reconnect attempt of every client.

    librdkafka's errors become ``consumer.errors`` here and nowhere else: ``adapter_error`` (any
    failed operation), ``commit_failed`` (a synchronous commit), ``new_client_error`` (a client
    librdkafka refused to create: a bad ``[kafka.librdkafka]`` setting is a ``ConfigError``).

Threads
    Nothing here starts a thread. ``wait_out_coordinator`` and ``committed_offsets`` block (they
    sleep between attempts): call them on a worker thread, never on the event loop's.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple, TypeVar

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from consumer.core.events import Record
from consumer.errors import CommitFailedError, ConfigError, ConsumerError, KafkaAdapterError

logger = logging.getLogger(__name__)

Setting = str | int | float | bool
"""A librdkafka setting's value, as ``[kafka.librdkafka]`` passes it through (``extra``)."""

# Once every broker is down: how often a client asks (one metadata request) whether one is back,
# and how long it waits for the answer.
PROBE_INTERVAL_S: Final = 1.0
PROBE_TIMEOUT_S: Final = 1.0


class _Repeats(logging.Filter):
    """Lets through one record per message shape (its text with numbers masked) every
    ``interval_s``. librdkafka reports a broker outage on every reconnect attempt of every
    client, hundreds of lines a second; one line per shape every few seconds says as much."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        shape = _DIGITS.sub("#", record.getMessage())
        now = time.monotonic()
        if now - self._last.get(shape, -math.inf) < self._interval_s:
            return False
        if len(self._last) >= 1_000:  # bounded: shapes are few, but messages are not ours
            self._last.clear()
        self._last[shape] = now
        return True


_DIGITS: Final = re.compile(r"\d+")
# What librdkafka logs, and the errors it reports through error_cb.
librdkafka_logger: Final = logging.getLogger("consumer.kafka.librdkafka")
librdkafka_logger.addFilter(_Repeats(interval_s=10.0))


# ---------------------------------------------------------------------------------------------
# Settings

GroupProtocol = Literal["classic", "consumer"]

# Set by the keyword arguments of ``member_config``, so refused in ``extra``.
_OWN_SETTINGS: Final = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "group.protocol",
        "auto.offset.reset",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "group.protocol.type",
        "group.instance.id",
    }
)


FETCH_QUEUE_BACKOFF_MS: Final = 20


def member_config(
    *,
    bootstrap: str,
    group_id: str,
    auto_offset_reset: Literal["earliest", "latest"],
    group_protocol: GroupProtocol,
    client_id: str,
    session_timeout_ms: int | None,
    heartbeat_interval_ms: int | None,
    max_poll_interval_ms: int,
    queued_max_messages_kbytes: int,
    fetch_max_bytes: int,
    max_partition_fetch_bytes: int,
    group_instance_id: str | None,
    extra: Mapping[str, Setting] | None,
) -> dict[str, Any]:
    """The librdkafka settings of a consumer-group member (``KafkaSource``, which documents
    the keywords): offsets are stored and committed only on request, the assignor is
    cooperative-sticky under the classic protocol, and ``extra`` is applied last. Raises
    ``ConfigError`` for a bad value, timeouts given under the ``"consumer"`` protocol (they are
    broker-side), or an ``extra`` setting that these keywords own."""
    if auto_offset_reset not in ("earliest", "latest"):
        raise ConfigError("kafka auto_offset_reset: must be 'earliest' or 'latest'")
    if group_protocol not in ("classic", "consumer"):
        raise ConfigError("kafka group_protocol: must be 'classic' or 'consumer'")
    clash = sorted(_OWN_SETTINGS.intersection(extra or {}))
    if clash:
        raise ConfigError(f"kafka extra settings: set by the source itself: {clash}")
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "client.id": client_id,
        "auto.offset.reset": auto_offset_reset,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "max.poll.interval.ms": max_poll_interval_ms,
        "queued.max.messages.kbytes": queued_max_messages_kbytes,
        "fetch.max.bytes": fetch_max_bytes,
        "max.partition.fetch.bytes": max_partition_fetch_bytes,
        # Once the small prefetch queue is full, librdkafka postpones the next fetch of a
        # partition by this long (default 1000 ms) although the engine drains the queue in
        # milliseconds: with the default a member read at most about 43,000 events/s
        # (BENCHMARKS.md, "Hot path"). ``extra`` may set it.
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
    }
    if group_instance_id:
        config["group.instance.id"] = group_instance_id
    if group_protocol == "consumer":
        if session_timeout_ms is not None or heartbeat_interval_ms is not None:
            raise ConfigError(
                "kafka session/heartbeat timeouts are broker-side with group_protocol "
                "'consumer' (group.consumer.session.timeout.ms, "
                "group.consumer.heartbeat.interval.ms)"
            )
        config["group.protocol"] = "consumer"
    else:
        config["partition.assignment.strategy"] = "cooperative-sticky"
        if session_timeout_ms is not None:
            config["session.timeout.ms"] = session_timeout_ms
        if heartbeat_interval_ms is not None:
            config["heartbeat.interval.ms"] = heartbeat_interval_ms
    config.update(extra or {})
    return config


# ---------------------------------------------------------------------------------------------
# Values and records


class Partition(NamedTuple):
    """A topic partition. A tuple, so it equals and hashes like the ``(topic, partition)``
    keys of ``consumer.engine.offsets.OffsetTracker`` and fits seams typed ``tuple[str, int]``."""

    topic: str
    partition: int


def topic_partitions(partitions: Iterable[tuple[str, int]]) -> list[TopicPartition]:
    """librdkafka's form of ``partitions``, without offsets."""
    return [TopicPartition(topic, partition) for topic, partition in partitions]


def to_record(message: Message) -> Record:
    """The engine's ``Record`` of a consumed message (not an error event). Header names that
    are not UTF-8 cannot be decoded by confluent-kafka: the record keeps its other fields and
    loses its headers (logged). Raises ``KafkaAdapterError`` when the message lacks a topic,
    partition or offset."""
    kind, timestamp = message.timestamp()
    try:
        headers = message.headers() or ()
    except SystemError:
        # A header name that is not UTF-8 (other clients send any bytes): confluent-kafka
        # cannot decode it. Only the dead-letter copy reads headers: drop them, not the record.
        logger.warning(
            "kafka record %s [%s] at %s: a header name is not UTF-8; its headers are dropped",
            message.topic(),
            message.partition(),
            message.offset(),
        )
        headers = ()
    if isinstance(headers, dict):  # the stubs allow a dict; a consumed message gives a list
        headers = list(headers.items())
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:  # only error events lack them
        raise KafkaAdapterError("kafka returned a record without topic, partition or offset")
    kept: tuple[tuple[str, bytes], ...] = (
        tuple(
            (name, value.encode() if isinstance(value, str) else value or b"")
            for name, value in headers
        )
        if headers
        else ()
    )
    # The tuple's own constructor, positionally (topic, partition, offset, key, value, headers,
    # timestamp_ms): once per consumed record, and ``Record(...)`` adds a Python call (about
    # 0.2 us of the 0.5 us this function took).
    return _new_record(
        Record,
        (
            topic,
            partition,
            offset,
            message.key(),
            message.value(),
            kept,
            None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp,
        ),
    )


_new_record = tuple.__new__


# ---------------------------------------------------------------------------------------------
# Errors


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` carries (None for any other exception, or a
    ``KafkaException`` without one)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def adapter_error(exc: KafkaException, what: str) -> KafkaAdapterError:
    """``exc`` as our error, its message prefixed by ``what`` (the operation that failed),
    retriable when librdkafka says so."""
    err = kafka_error(exc)
    if err is not None:
        return KafkaAdapterError(f"{what}: {err.str()}", retriable=err.retriable())
    return KafkaAdapterError(f"{what}: {exc}")


def commit_failed(exc: KafkaException, partitions: Iterable[tuple[str, int]]) -> CommitFailedError:
    """A synchronous commit of ``partitions`` that raised ``exc``: every partition failed, for
    the one reason librdkafka gave."""
    err = kafka_error(exc)
    why = err.str() if err is not None else str(exc)
    retriable = err is not None and err.retriable()
    return CommitFailedError([(Partition(*p), why) for p in partitions], retriable=retriable)


def new_client_error(exc: KafkaException | ValueError, what: str) -> ConsumerError:
    """The error for a client librdkafka refused to create: librdkafka rejects settings
    (``[kafka.librdkafka]``: an unknown property, a bad value, an unsupported SASL mechanism)
    only here, so those are a ``ConfigError`` naming the table; anything else is Kafka's."""
    err = kafka_error(exc)
    if err is not None and err.code() == KafkaError._INVALID_ARG:
        return ConfigError(f"kafka.librdkafka: {err.str()}")
    if isinstance(exc, KafkaException):
        return adapter_error(exc, what)
    return KafkaAdapterError(f"{what}: {exc}")


def raise_partition_error(partitions: list[TopicPartition] | None) -> None:
    """Offset requests report per-partition errors in their result: raise the first as a
    ``KafkaException``."""
    for tp in partitions or ():
        if tp.error is not None:
            raise KafkaException(tp.error)


# ---------------------------------------------------------------------------------------------
# Committed offsets

_T = TypeVar("_T")
# A group coordinator that is loading or moving (a new group, a broker that just started), or a
# request that found none in time: asking again shortly may succeed.
_COORDINATOR_BUSY: Final = frozenset(
    (
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError._TIMED_OUT,
    )
)
RETRY_PAUSE_S: Final = 0.2


def coordinator_busy(exc: KafkaException) -> bool:
    """Whether ``exc`` says the group coordinator is busy (loading, moving, or not answering in
    time) or is otherwise retriable: a read of the group's offsets may succeed shortly."""
    err = kafka_error(exc)
    return err is not None and (err.code() in _COORDINATOR_BUSY or err.retriable())


def wait_out_coordinator(call: Callable[[], _T], *, timeout_s: float) -> _T:
    """``call()``, again every 0.2 s while it raises a ``KafkaException`` for which
    ``coordinator_busy`` holds, until ``timeout_s`` after the first attempt; then, or on any
    other error, the exception propagates. Blocks: run it on a worker thread
    (``KafkaSource`` has the asynchronous twin, over ``AIOConsumer.committed``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not coordinator_busy(exc) or time.monotonic() > deadline:
                raise
            logger.info("kafka group coordinator busy: %s; retrying", exc)
            time.sleep(RETRY_PAUSE_S)


def committed_offsets(
    consumer: Consumer,
    partitions: Sequence[tuple[str, int]],
    *,
    timeout_s: float,
    request_timeout_s: float | None = None,
) -> list[TopicPartition]:
    """The committed offset and metadata of each of ``partitions`` for ``consumer``'s group
    (``offset < 0``: the group has none), waiting out a busy group coordinator for up to
    ``timeout_s`` (``wait_out_coordinator``); each request waits at most ``request_timeout_s``
    (default ``timeout_s``). The one way this package reads a group's commits; ``consumer``
    need not be subscribed. Raises ``KafkaException``. Blocks: run it on a worker thread."""
    request = topic_partitions(partitions)
    per_request = timeout_s if request_timeout_s is None else request_timeout_s

    def fetch() -> list[TopicPartition]:
        found: list[TopicPartition] = consumer.committed(request, timeout=per_request)
        raise_partition_error(found)
        return found

    return wait_out_coordinator(fetch, timeout_s=timeout_s)
