"""The Kafka adapter, and the only module that imports ``confluent_kafka``.

``KafkaSource`` is one member of a consumer group: it fetches record batches, pauses and resumes
partitions, commits offsets with metadata, and reports assignment changes to a
``RebalanceListener``. ``KafkaProducer`` writes the dead-letter, parking and profile-changelog
records and confirms each delivery. ``ensure_topics`` creates missing topics. ``TopicReader``
reads topics once, up to the end offsets captured when it opens, for the operator commands
(``ghl-consumer dlq``, ``ghl-consumer audit``). Records come out as ``consumer.core.events.Record``.

Threads and the event loop
    ``KafkaSource`` is built on ``confluent_kafka.aio.AIOConsumer``: every librdkafka call runs
    on a two-thread executor, never on the loop thread, and rebalance callbacks run as
    coroutines ON THE EVENT LOOP while the librdkafka call that triggered them (``poll_batch``
    or ``close``) waits in its worker thread. So the listener, the engine and
    ``consumer.engine.offsets`` all live on the loop thread and share state without locks.

    Calls are serialised by an ``asyncio.Lock``: one librdkafka call at a time, so a ``pause``,
    ``commit`` or ``lag`` issued while ``poll_batch`` waits for records starts when that poll
    returns (after at most its ``timeout_s``). Calls made from inside a listener callback skip
    the lock (they belong to the call in progress); they must be awaited inside the callback,
    not spawned as tasks that outlive it. This bounds the executor at two threads: the call in
    progress plus the one re-entrant call a callback may make at a time.

    ``KafkaProducer`` uses the plain ``Producer`` (thread-safe): ``produce`` only enqueues and
    runs on the loop; a dedicated thread serves delivery reports and resolves the futures via
    ``call_soon_threadsafe``. (``AIOProducer`` is not used: its batching mode rejects headers,
    which dead-letter records need.)

Rebalance protocols
    ``group_protocol="classic"`` uses the cooperative-sticky assignor, ``"consumer"`` the
    KIP-848 protocol (Kafka 4.x; the broker assigns, ``session.timeout.ms``,
    ``heartbeat.interval.ms``, ``partition.assignment.strategy`` and ``group.protocol.type`` are
    broker-side and refused here). Both are incremental: callbacks name only the partitions that
    move, and the others keep being fetched throughout.

Pause across rebalances
    librdkafka keeps an application pause on the partition object across unassign and
    re-assign (only its own internal pause is reset on assign), and keeps it for partitions
    that stay assigned. So nothing needs re-pausing after a rebalance, but a partition revoked
    while paused would come back paused and stall: the source resumes revoked partitions
    before unassigning them and forgets them in ``paused``.

Errors (all subclass ``consumer.errors.ConsumerError``)::

    KafkaAdapterError         a Kafka operation failed; ``retriable`` says whether trying again
    |                         may help. Raised by poll_batch (fatal client errors), ensure_topics.
    +-- CommitFailedError     a synchronous commit failed for some partitions (``failed``).
    +-- ProduceFailedError    a record was not delivered (set on the delivery future).

An exception raised by the listener propagates out of ``poll_batch`` or ``close``; treat it as
fatal (librdkafka still applies the assignment change, but the engine missed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, TypeVar

from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

# NewTopic is documented as confluent_kafka.admin.NewTopic, but that module re-imports it
# without marking the re-export, so mypy --strict does not see it there.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from confluent_kafka.aio import AIOConsumer

from consumer.core.events import Record
from consumer.engine.offsets import Assignment, CommitPoint
from consumer.engine.ports import Produced, RebalanceListener
from consumer.errors import ConfigError, ConsumerError

__all__ = [
    "Assignment",
    "CommitFailedError",
    "GroupProtocol",
    "KafkaAdapterError",
    "KafkaProducer",
    "KafkaSource",
    "Partition",
    "PartitionLag",
    "PartitionRange",
    "ProduceFailedError",
    "TopicReader",
    "TopicSpec",
    "ensure_topics",
]

logger = logging.getLogger(__name__)


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
_librdkafka_logger = logging.getLogger(__name__ + ".librdkafka")
_librdkafka_logger.addFilter(_Repeats(interval_s=10.0))

GroupProtocol = Literal["classic", "consumer"]
Setting = str | int | float | bool

# Set by the keyword arguments, so refused in ``extra``.
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
    }
)
_COMMITTED_TIMEOUT_S: Final = 10.0  # fetching committed offsets while being assigned
_COMMITTED_ATTEMPTS: Final = 3
# Once every broker is down: how often a metadata request asks whether one is back, and how
# long it waits (it holds up the next poll by that much at most).
_PROBE_INTERVAL_S: Final = 1.0
_PROBE_TIMEOUT_S: Final = 1.0

# The KafkaSource whose rebalance callback is running in this context (see module docstring).
_IN_CALLBACK: contextvars.ContextVar[KafkaSource | None] = contextvars.ContextVar(
    "ghl_kafka_in_callback", default=None
)


# ---------------------------------------------------------------------------------------------
# Values


class Partition(NamedTuple):
    """A topic partition. A tuple, so it equals and hashes like the ``(topic, partition)``
    keys of ``consumer.engine.offsets.OffsetTracker`` and fits seams typed ``tuple[str, int]``."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Fetch position and high watermark of an assigned partition, both from local state
    (None until known: nothing fetched yet)."""

    topic: str
    partition: int
    position: int | None
    high_watermark: int | None

    @property
    def lag(self) -> int | None:
        """Records in the log beyond the fetch position."""
        if self.position is None or self.high_watermark is None:
            return None
        return max(0, self.high_watermark - self.position)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic ``ensure_topics`` creates when missing; None means the broker's default."""

    name: str
    partitions: int | None = None
    replication_factor: int | None = None
    config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# ---------------------------------------------------------------------------------------------
# Errors


class KafkaAdapterError(ConsumerError):
    """A Kafka operation failed. ``retriable``: trying again later may succeed."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class CommitFailedError(KafkaAdapterError):
    """A synchronous commit failed; ``failed`` pairs each partition with librdkafka's reason.
    Offsets are not marked committed: the next commit point includes them again."""

    def __init__(self, failed: Sequence[tuple[Partition, str]], *, retriable: bool) -> None:
        names = ", ".join(f"{p.topic}[{p.partition}]: {why}" for p, why in failed)
        super().__init__(f"commit failed for {names}", retriable=retriable)
        self.failed = tuple(failed)


class ProduceFailedError(KafkaAdapterError):
    """A record was not delivered (after librdkafka's own retries, or the producer closed)."""


def _from_kafka(exc: KafkaException, what: str) -> KafkaAdapterError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return KafkaAdapterError(f"{what}: {err.str()}", retriable=err.retriable())
    return KafkaAdapterError(f"{what}: {exc}")


def _new_client(exc: KafkaException | ValueError, what: str) -> ConsumerError:
    """The error for a client librdkafka refused to create: librdkafka rejects settings
    (``[kafka.librdkafka]``: an unknown property, a bad value, an unsupported SASL mechanism)
    only here, so those are a ``ConfigError`` naming the table; anything else is Kafka's."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() == KafkaError._INVALID_ARG:
        return ConfigError(f"kafka.librdkafka: {err.str()}")
    if isinstance(exc, KafkaException):
        return _from_kafka(exc, what)
    return KafkaAdapterError(f"{what}: {exc}")


# ---------------------------------------------------------------------------------------------
# Consumer


class KafkaSource:
    """One consumer-group member. Create, ``await start(listener)``, then loop on
    ``poll_batch``; ``close`` when done. Offsets are committed only by ``commit``
    (``enable.auto.commit`` and ``enable.auto.offset.store`` are off).

    Memory: librdkafka prefetches at most ``queued_max_messages_kbytes`` (per member, all
    partitions together; may be overshot by one fetch of ``max_partition_fetch_bytes`` per
    partition); a paused partition's prefetched records are discarded and fetched again on
    resume. Keep calling ``poll_batch`` even while everything is paused: not polling for
    ``max_poll_interval_ms`` makes librdkafka leave the group.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        topics: Sequence[str],
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
        group_protocol: GroupProtocol = "classic",
        client_id: str = "ghl-consumer",
        session_timeout_ms: int | None = None,
        heartbeat_interval_ms: int | None = None,
        max_poll_interval_ms: int = 300_000,
        # Small prefetch: the 1M-event backlog benchmark peaks at 182 MB RSS with these and at
        # 316 MB with librdkafka's 16 MB / 16 MB, for 12 % less throughput (bench/results/
        # e2e_memory.json). Raise them through [kafka.librdkafka] for throughput.
        queued_max_messages_kbytes: int = 2_048,
        fetch_max_bytes: int = 2 * 1024 * 1024,
        max_partition_fetch_bytes: int = 1024 * 1024,
        extra: Mapping[str, Setting] | None = None,
    ) -> None:
        """Validate and store the configuration; nothing connects before ``start``.

        ``session_timeout_ms`` / ``heartbeat_interval_ms`` apply to the classic protocol only
        (KIP-848 sets them broker-side). ``extra``: further librdkafka settings passed through
        (``security.protocol``, ``sasl.*``, ``ssl.*``, ``group.remote.assignor``, ...); settings
        these keywords own are refused. Raises ``ConfigError``.
        """
        if not topics:
            raise ConfigError("kafka topics: at least one topic is required")
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
        }
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
        self.group_protocol: GroupProtocol = group_protocol
        self._config = config
        self._topics = list(topics)
        self._aio: AIOConsumer | None = None
        self._listener: RebalanceListener | None = None
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Task[list[Message]] | None = None
        self._assigned: set[Partition] = set()
        self._paused: set[Partition] = set()
        self._fatal: KafkaError | None = None
        self._closing = False
        self._closed = False
        # False after librdkafka reported all brokers down, until a commit succeeds or a
        # metadata request is answered (``_watch_broker``).
        self.broker_reachable = True
        self._watcher: asyncio.Task[None] | None = None
        # Counters for metrics (read them; never reset).
        self.commits_refused = 0  # commit points dropped: partition no longer owned
        self.commit_failures = 0  # partitions whose commit librdkafka reported as failed
        self.records_dropped_unowned = 0  # fetched records of partitions revoked meanwhile
        self.consume_errors = 0  # error events returned by consume (logged)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, listener: RebalanceListener) -> None:
        """Create the client and subscribe. Returns at once: joining the group and the first
        ``on_assigned`` happen inside the following ``poll_batch`` calls. Raises
        ``KafkaAdapterError`` (e.g. an invalid librdkafka setting in ``extra``)."""
        if self._aio is not None:
            raise RuntimeError("KafkaSource.start() called twice")
        self._listener = listener
        config = dict(self._config)
        config["error_cb"] = self._on_error
        config["on_commit"] = self._on_commit
        config["logger"] = _librdkafka_logger
        try:
            self._aio = AIOConsumer(config, max_workers=2)
        except KafkaException as exc:
            raise _new_client(exc, "kafka consumer") from exc
        try:
            await self._aio.subscribe(
                self._topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except KafkaException as exc:
            raise _from_kafka(exc, "kafka consumer start") from exc
        self._watcher = asyncio.create_task(self._watch_broker(), name="kafka-broker-watch")

    async def _watch_broker(self) -> None:
        """While ``broker_reachable`` is false, send a metadata request every
        ``_PROBE_INTERVAL_S``; the first answer sets it true again. Records polled during an
        outage may come from librdkafka's prefetch queue and an idle member commits nothing,
        so neither can tell that the broker is back. Runs from ``start`` until ``close``."""
        while True:
            await asyncio.sleep(_PROBE_INTERVAL_S)
            if self.broker_reachable:
                continue
            try:
                async with self._serial() as aio:
                    await aio.list_topics(self._topics[0], timeout=_PROBE_TIMEOUT_S)
            except KafkaException:
                continue
            self.broker_reachable = True
            logger.info("kafka broker reachable again")

    async def close(self) -> None:
        """Leave the group cleanly: ``on_revoked`` runs for every owned partition (commit
        there), then the member leaves so others take its partitions at once, without waiting
        for a session timeout. Records fetched but not yet returned are dropped (they were
        never admitted, so never committed). Idempotent."""
        if self._aio is None or self._closed:
            return
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        async with self._lock:
            if self._inflight is not None:  # a cancelled poll's consume must finish first
                with contextlib.suppress(Exception):
                    await self._inflight
                self._inflight = None
            self._closing = True
            await self._aio.close()
            self._closed = True
        logger.info("kafka consumer closed", extra={"group_protocol": self.group_protocol})

    # -- fetching -------------------------------------------------------------------------------

    async def poll_batch(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first (in a
        worker thread; the loop stays free). Rebalance callbacks run during this call. Records
        of paused partitions are not returned; records of partitions revoked during the call
        are dropped. Cancelling the caller does not lose records: they are returned by the
        next call. Raises ``KafkaAdapterError`` on a fatal client error, and whatever the
        listener raised."""
        aio = self._require_started()
        if self._fatal is not None:
            raise KafkaAdapterError(f"kafka consumer failed: {self._fatal.str()}")
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._consume(aio, max_records, timeout_s))
        task = self._inflight
        # Shielded: a cancelled caller leaves the records in _inflight for the next call,
        # and the lock stays held until librdkafka's call returns.
        try:
            messages = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                self._inflight = None
            raise
        except BaseException:
            self._inflight = None
            raise
        self._inflight = None
        return self._records(messages)

    async def _consume(self, aio: AIOConsumer, max_records: int, timeout_s: float) -> list[Message]:
        async with self._lock:
            try:
                messages: list[Message] = await aio.consume(
                    num_messages=max_records, timeout=timeout_s
                )
            except KafkaException as exc:
                raise _from_kafka(exc, "kafka consume") from exc
            return messages

    def _records(self, messages: list[Message]) -> list[Record]:
        records = []
        for message in messages:
            err = message.error()
            if err is not None:
                self.consume_errors += 1
                logger.warning(
                    "kafka consume error: %s",
                    err.str(),
                    extra={"topic": message.topic(), "partition": message.partition()},
                )
                if err.fatal():
                    self._fatal = err
                    raise KafkaAdapterError(f"kafka consumer failed: {err.str()}")
                continue
            record = _record(message)
            if Partition(record.topic, record.partition) not in self._assigned:
                self.records_dropped_unowned += 1
                continue
            records.append(record)
        return records

    # -- flow control ---------------------------------------------------------------------------

    @property
    def assignment(self) -> frozenset[Partition]:
        """Partitions this member owns now."""
        return frozenset(self._assigned)

    @property
    def paused(self) -> frozenset[Partition]:
        """Owned partitions paused by ``pause`` and not resumed since."""
        return frozenset(self._paused)

    async def pause(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Stop fetching these partitions (owned ones; others are ignored). Records of them
        already prefetched are discarded by librdkafka and fetched again after ``resume``;
        a batch returned before the pause may still hold some. Pause survives rebalances for
        partitions that stay assigned."""
        async with self._serial() as aio:
            wanted = {Partition(*p) for p in partitions}
            targets = sorted(wanted & (self._assigned - self._paused))
            if targets:
                await aio.pause(_topic_partitions(targets))
                self._paused.update(targets)

    async def resume(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Fetch these paused partitions again, from the next offset not yet returned."""
        async with self._serial() as aio:
            targets = sorted({Partition(*p) for p in partitions} & self._paused)
            if targets:
                await aio.resume(_topic_partitions(targets))
                self._paused.difference_update(targets)

    # -- committing -----------------------------------------------------------------------------

    async def commit(self, points: Sequence[CommitPoint], *, sync: bool = True) -> None:
        """Commit offsets with their metadata. Points of partitions this member does not own
        (any more) are dropped and counted in ``commits_refused``: a revoked partition never
        commits again. ``sync=True`` waits for the broker and raises ``CommitFailedError``
        (nothing is retried here); use it in ``on_revoked`` and at shutdown. ``sync=False``
        returns once queued; failures are logged and counted in ``commit_failures``.

        A synchronous commit issued during a broker outage waits, without a bound, until the
        broker is back (librdkafka waits for the group coordinator), and the client runs no
        other call meanwhile: no poll, so no error callback. Reachability is therefore also
        watched by ``KafkaProducer.broker_reachable``, whose client is never blocked so."""
        async with self._serial() as aio:
            owned = [p for p in points if Partition(p.topic, p.partition) in self._assigned]
            refused = len(points) - len(owned)
            if refused:
                self.commits_refused += refused
                logger.warning("refused %d commit point(s) of partitions not owned", refused)
            if not owned:
                return
            offsets = [TopicPartition(p.topic, p.partition, p.offset, p.metadata) for p in owned]
            try:
                if not sync:
                    await aio.commit(offsets=offsets, asynchronous=True)
                    return
                result: list[TopicPartition] = await aio.commit(
                    offsets=offsets, asynchronous=False
                )
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                why = err.str() if isinstance(err, KafkaError) else str(exc)
                retriable = isinstance(err, KafkaError) and err.retriable()
                failed = [(Partition(p.topic, p.partition), why) for p in owned]
                raise CommitFailedError(failed, retriable=retriable) from exc
            failed = [
                (Partition(tp.topic, tp.partition), tp.error.str())
                for tp in result
                if tp.error is not None
            ]
            self.broker_reachable = True
            if failed:
                retriable = all(tp.error.retriable() for tp in result if tp.error is not None)
                raise CommitFailedError(failed, retriable=retriable)

    # -- metrics --------------------------------------------------------------------------------

    async def lag(self) -> list[PartitionLag]:
        """Position and high watermark of each owned partition, from librdkafka's local state
        (no broker round trip; the watermark is the one seen in the last fetch response)."""
        async with self._serial() as aio:
            owned = sorted(self._assigned)
            if not owned:
                return []
            positions: list[TopicPartition] = await aio.position(_topic_partitions(owned))
            lags = []
            for tp in positions:
                _low, high = await aio.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), cached=True
                )
                lags.append(
                    PartitionLag(
                        tp.topic,
                        tp.partition,
                        position=tp.offset if tp.offset >= 0 else None,
                        high_watermark=high if high >= 0 else None,
                    )
                )
            return lags

    # -- internals ------------------------------------------------------------------------------

    def _require_started(self) -> AIOConsumer:
        if self._aio is None:
            raise RuntimeError("KafkaSource.start() has not been called")
        if self._closed:
            raise RuntimeError("KafkaSource is closed")
        return self._aio

    def _require_listener(self) -> RebalanceListener:
        if self._listener is None:  # subscribe() comes after the listener is set
            raise RuntimeError("KafkaSource.start() has not been called")
        return self._listener

    @contextlib.asynccontextmanager
    async def _serial(self) -> AsyncIterator[AIOConsumer]:
        """One librdkafka call at a time; calls from our own rebalance callback belong to the
        call in progress and must not wait for it."""
        aio = self._require_started()
        if _IN_CALLBACK.get() is self:
            yield aio
            return
        async with self._lock:
            yield self._require_started()

    async def _on_assign(self, aio: AIOConsumer, partitions: list[TopicPartition]) -> None:
        token = _IN_CALLBACK.set(self)
        try:
            committed = await self._committed(aio, partitions)
            assignments = [
                Assignment(
                    tp.topic,
                    tp.partition,
                    committed=tp.offset if tp.offset >= 0 else None,
                    metadata=tp.metadata,
                )
                for tp in committed
            ]
            logger.info(
                "kafka partitions assigned",
                extra={"partitions": [f"{a.topic}[{a.partition}]" for a in assignments]},
            )
            await self._require_listener().on_assigned(assignments)
            # Start exactly at the offsets the listener was given (one read of the commit).
            await aio.incremental_assign(
                [
                    TopicPartition(a.topic, a.partition, OFFSET_INVALID)
                    if a.committed is None
                    else TopicPartition(a.topic, a.partition, a.committed)
                    for a in assignments
                ]
            )
            self._assigned.update(Partition(a.topic, a.partition) for a in assignments)
        finally:
            _IN_CALLBACK.reset(token)

    async def _committed(
        self, aio: AIOConsumer, partitions: list[TopicPartition]
    ) -> list[TopicPartition]:
        request = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        if self._closing:
            # An assignment still pending when close() began: librdkafka no longer answers
            # offset fetches then (it would time out), and nothing will be fetched anyway.
            return request
        for attempt in range(1, _COMMITTED_ATTEMPTS + 1):
            try:
                committed: list[TopicPartition] = await aio.committed(
                    request, timeout=_COMMITTED_TIMEOUT_S
                )
                return committed
            except KafkaException as exc:
                logger.warning(
                    "fetching committed offsets failed (attempt %d): %s", attempt, exc.args[0]
                )
        # At-least-once still holds: librdkafka fetches the committed offset itself; only the
        # map of done offsets above it is unknown, so some delivered records may be re-sent.
        logger.error("committed offsets unavailable; assigning without the done-offset map")
        return request

    async def _on_revoke(self, aio: AIOConsumer, partitions: list[TopicPartition]) -> None:
        await self._release(aio, partitions, lost=False)

    async def _on_lost(self, aio: AIOConsumer, partitions: list[TopicPartition]) -> None:
        await self._release(aio, partitions, lost=True)

    async def _release(
        self, aio: AIOConsumer, partitions: list[TopicPartition], *, lost: bool
    ) -> None:
        token = _IN_CALLBACK.set(self)
        gone = [Partition(tp.topic, tp.partition) for tp in partitions]
        logger.info(
            "kafka partitions %s", "lost" if lost else "revoked",
            extra={"partitions": [f"{p.topic}[{p.partition}]" for p in gone]},
        )
        try:
            if lost:
                await self._require_listener().on_lost(gone)
            else:
                await self._require_listener().on_revoked(gone)
        finally:
            try:
                # A pause would outlive the assignment in librdkafka (see module docstring).
                stale = sorted(self._paused.intersection(gone))
                if stale:
                    await aio.resume(_topic_partitions(stale))
                self._paused.difference_update(gone)
                self._assigned.difference_update(gone)
                await aio.incremental_unassign(_topic_partitions(gone))
            finally:
                _IN_CALLBACK.reset(token)

    async def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.broker_reachable = False
        if err.fatal():
            self._fatal = err
            logger.error("kafka consumer fatal error: %s", err.str())
        else:
            _librdkafka_logger.warning("kafka consumer error: %s", err.str())

    async def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [tp for tp in partitions if tp.error is not None]
        if err is not None and err.code() == KafkaError._NO_OFFSET:
            return
        if err is not None or failed:
            self.commit_failures += max(1, len(failed))
            logger.warning(
                "kafka commit failed: %s",
                err.str() if err is not None else "; ".join(str(tp.error) for tp in failed),
            )


def _topic_partitions(partitions: Iterable[Partition]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.partition) for p in partitions]


def _record(message: Message) -> Record:
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
    return Record(
        topic=topic,
        partition=partition,
        offset=offset,
        key=message.key(),
        value=message.value(),
        headers=tuple(
            (name, value.encode() if isinstance(value, str) else value or b"")
            for name, value in headers
        ),
        timestamp_ms=None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp,
    )


# ---------------------------------------------------------------------------------------------
# Producer


class KafkaProducer:
    """Idempotent producer for the consumer's own topics (dead letters, parking, profile
    changelog). Create it inside the running loop's thread; ``close`` flushes."""

    def __init__(
        self,
        *,
        bootstrap: str,
        client_id: str = "ghl-consumer",
        linger_ms: int = 5,
        delivery_timeout_ms: int = 120_000,
        extra: Mapping[str, Setting] | None = None,
    ) -> None:
        """``extra``: further librdkafka settings (security, compression, ...). Idempotence
        (and with it ``acks=all``) is always on. Raises ``KafkaAdapterError`` on a bad
        setting."""
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "linger.ms": linger_ms,
            "delivery.timeout.ms": delivery_timeout_ms,
            **(extra or {}),
            "enable.idempotence": True,
            "error_cb": self._on_error,
            "logger": _librdkafka_logger,
        }
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise _new_client(exc, "kafka producer") from exc
        self._closing = threading.Event()
        self._closed = False
        self._flush_timeout_s = 30.0
        # False after librdkafka reported all brokers down, until a metadata request is
        # answered (asked from the serving thread, once per _PROBE_INTERVAL_S meanwhile).
        # Unlike a consumer's, this client keeps serving its callbacks during an outage.
        self.broker_reachable = True
        self._thread = threading.Thread(target=self._serve, name="kafka-producer", daemon=True)
        self._thread.start()

    async def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Produced:
        """Write one record; return where it landed once the broker has it (``send``, then
        await its future). Raises ``ProduceFailedError``."""
        return await (await self.send(topic, key=key, value=value, headers=headers))

    async def send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> asyncio.Future[Produced]:
        """Enqueue one record without waiting for the broker, to pipeline many: the returned
        future resolves to ``Produced`` once the broker has it, or fails with
        ``ProduceFailedError``. Waits (without blocking the loop) while librdkafka's local
        queue is full. Raises ``ProduceFailedError`` when closed or the record is refused
        outright (e.g. too large)."""
        if self._closed or self._closing.is_set():
            raise ProduceFailedError("producer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Produced] = loop.create_future()
        on_delivery = _delivery_callback(loop, future)
        while True:
            try:
                # Enqueue only: librdkafka never blocks here, so the loop thread may call it.
                self._producer.produce(
                    topic, value=value, key=key, headers=list(headers), on_delivery=on_delivery
                )
                return future
            except BufferError:
                await asyncio.sleep(0.05)  # queue full: the serving thread drains it
            except KafkaException as exc:
                raise ProduceFailedError(str(_from_kafka(exc, "produce"))) from exc

    async def close(self, timeout_s: float = 30.0) -> None:
        """Deliver what is queued (up to ``timeout_s``), fail the rest with
        ``ProduceFailedError``, stop the serving thread. Idempotent."""
        if self._closed:
            return
        self._flush_timeout_s = timeout_s
        self._closing.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._closed = True

    def _serve(self) -> None:
        # Runs on the producer's own thread: delivery reports resolve futures on the loop.
        probed = 0.0
        while not self._closing.is_set():
            self._producer.poll(0.1)
            if not self.broker_reachable and time.monotonic() - probed >= _PROBE_INTERVAL_S:
                probed = time.monotonic()
                try:
                    self._producer.list_topics(timeout=_PROBE_TIMEOUT_S)
                except KafkaException:
                    continue
                self.broker_reachable = True
                logger.info("kafka broker reachable again (producer)")
        remaining = self._producer.flush(self._flush_timeout_s)
        if remaining:
            logger.error("kafka producer: %d record(s) undelivered at close", remaining)
            self._producer.purge()
            self._producer.poll(0)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.broker_reachable = False
        _librdkafka_logger.warning("kafka producer error: %s", err.str())


def _delivery_callback(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Produced]
) -> Callable[[KafkaError | None, Message], None]:
    def settle(err: KafkaError | None, where: Produced | None) -> None:
        if future.done():  # the caller gave up waiting
            return
        if err is not None or where is None:
            why = err.str() if err is not None else "no delivery report"
            retriable = err is not None and err.retriable()
            future.set_exception(ProduceFailedError(f"not delivered: {why}", retriable=retriable))
        else:
            future.set_result(where)

    def on_delivery(err: KafkaError | None, message: Message) -> None:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        where = (
            Produced(topic, partition, offset)
            if err is None and topic is not None and partition is not None and offset is not None
            else None
        )
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody waits
            loop.call_soon_threadsafe(settle, err, where)

    return on_delivery


# ---------------------------------------------------------------------------------------------
# Admin


# Client errors that waiting does not heal: the broker refused the credentials or the TLS handshake
# (a missing client certificate shows as a transport error carrying the TLS alert).
_REFUSED: Final = frozenset((KafkaError._AUTHENTICATION, KafkaError._SSL))


def _refused(err: KafkaError) -> bool:
    return err.code() in _REFUSED or (
        err.code() == KafkaError._TRANSPORT and "SSL routines" in err.str()
    )


def _already_exists(error: BaseException) -> bool:
    err = error.args[0] if isinstance(error, KafkaException) and error.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS


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
        "logger": _librdkafka_logger,
    }
    try:
        admin = AdminClient(config)
    except KafkaException as exc:
        raise _new_client(exc, "kafka admin client") from exc
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
                    raise _from_kafka(error, f"creating topic {name}") from error
                raise error
    finally:
        for future in pending:
            future.cancel()
    if created:
        logger.info("kafka topics created", extra={"topics": created})
    return created


# ---------------------------------------------------------------------------------------------
# Bounded reader (operator commands)


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """What a ``TopicReader`` reads of one partition: offsets from ``start`` (inclusive) to
    ``end`` (exclusive), ``end`` being the partition's end offset when the reader opened."""

    topic: str
    partition: int
    start: int
    end: int


class TopicReader:
    """Reads topics once, from a start offset up to the end offsets captured by ``open``: the
    bounded read of the operator commands (``ghl-consumer dlq``, ``ghl-consumer audit``).

    Not a group member: partitions are assigned directly (no subscription, no rebalancing), so
    readers never disturb the running consumer. Records produced after ``open`` are not read,
    so a command that writes to a topic it reads cannot loop on its own output. Per partition,
    records come in offset order; partitions are interleaved.

    With ``group_id``, ``open(from_committed=True)`` starts at that group's committed offsets
    and ``commit`` stores new ones (a standalone commit: the group must have no subscribed
    members, so never pass the consumer's own group). Without it nothing is committed.

    Every librdkafka call runs in a worker thread (``asyncio.to_thread``), never on the loop
    thread. One call at a time: do not run two methods of one reader concurrently. Raises
    ``KafkaAdapterError``.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str | None = None,
        client_id: str = "ghl-consumer-reader",
        timeout_s: float = 30.0,
        extra: Mapping[str, Setting] | None = None,
    ) -> None:
        """``timeout_s`` bounds each broker request, and how long ``read`` waits without any
        progress before it gives up. ``extra``: further librdkafka settings (security, ...).
        Nothing connects before ``open``. Raises ``KafkaAdapterError`` on a bad setting."""
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            **(extra or {}),
            # librdkafka needs a group id even for assign-only consumers; a throwaway one is
            # never committed to, so it never appears on the broker.
            "group.id": group_id or f"ghl-consumer-reader-{uuid.uuid4().hex}",
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",  # a committed offset deleted by retention
            "logger": _librdkafka_logger,
        }
        try:
            self._consumer = Consumer(config)
        except (KafkaException, ValueError) as exc:
            raise _new_client(exc, "kafka reader") from exc
        self._grouped = group_id is not None
        self._timeout_s = timeout_s
        self._remaining: dict[Partition, int] = {}  # partition -> end offset, until read

    async def existing_topics(self) -> frozenset[str]:
        """Names of the topics the broker has (one metadata request; never creates topics)."""
        return await asyncio.to_thread(self._existing_topics)

    async def open(
        self, topics: Sequence[str], *, from_committed: bool = False
    ) -> list[PartitionRange]:
        """Capture the end offset of every partition of ``topics`` and start reading there from
        the beginning, or (``from_committed``, needs ``group_id``) from the group's committed
        offsets, the beginning where it has none. Returns every partition's range, empty ones
        included; a topic that does not exist has no ranges. Call once."""
        if from_committed and not self._grouped:
            raise ValueError("TopicReader.open(from_committed=True) needs a group_id")
        return await asyncio.to_thread(self._open, list(topics), from_committed)

    async def read(self, max_records: int = 1000) -> list[Record]:
        """The next records (at most ``max_records``); ``[]`` once every range is read. Raises
        ``KafkaAdapterError`` when nothing advances for ``timeout_s``."""
        if not self._remaining:
            return []
        return await asyncio.to_thread(self._read, max_records)

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Store, for the reader's group, the next offset to read per partition; returns once
        the broker has them. Raises ``CommitFailedError``."""
        if not self._grouped:
            raise ValueError("TopicReader.commit needs a group_id")
        if offsets:
            await asyncio.to_thread(self._commit, dict(offsets))

    async def committed(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """The reader's group's committed offset per partition of ``topic`` (absent where the
        group has none). Needs ``group_id``; waits out a loading coordinator."""
        if not self._grouped:
            raise ValueError("TopicReader.committed needs a group_id")
        request = [TopicPartition(topic, p) for p in partitions]

        def fetch() -> dict[int, int]:
            result = self._consumer.committed(request, timeout=self._timeout_s)
            _raise_partition_error(result)
            return {tp.partition: tp.offset for tp in result if tp.offset >= 0}

        try:
            return await asyncio.to_thread(self._with_retries, fetch)
        except KafkaException as exc:
            raise _from_kafka(exc, "committed offsets") from exc

    async def close(self) -> None:
        """Release the client (nothing to leave: the reader never joined a group)."""
        await asyncio.to_thread(self._consumer.close)

    # -- internals (worker thread) ----------------------------------------------------------------

    def _existing_topics(self) -> frozenset[str]:
        try:
            # No topic argument: naming one may auto-create it on brokers that allow that.
            metadata = self._consumer.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise _from_kafka(exc, "listing topics") from exc
        return frozenset(name for name, meta in metadata.topics.items() if meta.error is None)

    def _open(self, topics: list[str], from_committed: bool) -> list[PartitionRange]:
        consumer = self._consumer
        try:
            metadata = consumer.list_topics(timeout=self._timeout_s)
            partitions = [
                TopicPartition(topic, number)
                for topic in dict.fromkeys(topics)
                if (meta := metadata.topics.get(topic)) is not None and meta.error is None
                for number in sorted(meta.partitions)
            ]
            committed: dict[Partition, int] = {}
            if from_committed and partitions:

                def fetch() -> list[TopicPartition]:
                    found: list[TopicPartition] = consumer.committed(
                        partitions, timeout=self._timeout_s
                    )
                    _raise_partition_error(found)
                    return found

                for tp in self._with_retries(fetch):
                    if tp.offset >= 0:
                        committed[Partition(tp.topic, tp.partition)] = tp.offset
            ranges = []
            for tp in partitions:
                low, high = consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
                start = committed.get(Partition(tp.topic, tp.partition), low)
                start = min(max(start, low), high)  # retention or a recreated topic
                ranges.append(PartitionRange(tp.topic, tp.partition, start, high))
            assign = [r for r in ranges if r.start < r.end]
            consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in assign])
        except KafkaException as exc:
            raise _from_kafka(exc, "opening topics") from exc
        self._remaining = {Partition(r.topic, r.partition): r.end for r in assign}
        return ranges

    def _read(self, max_records: int) -> list[Record]:
        consumer = self._consumer
        deadline = time.monotonic() + self._timeout_s
        while self._remaining:
            try:
                messages = consumer.consume(max_records, timeout=0.5)
            except KafkaException as exc:
                raise _from_kafka(exc, "kafka read") from exc
            records = []
            for message in messages:
                err = message.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaAdapterError(f"kafka read: {err.str()}")
                    logger.warning("kafka read error: %s", err.str())
                    continue
                record = _record(message)
                where = Partition(record.topic, record.partition)
                end = self._remaining.get(where)
                if end is None or record.offset >= end:
                    continue  # produced after open
                records.append(record)
                if record.offset + 1 >= end:
                    self._finish([where])
            if records:
                return records
            # Offsets may end in gaps (compaction, transaction markers): the position tells.
            try:
                positions = consumer.position(_topic_partitions(self._remaining))
            except KafkaException as exc:
                raise _from_kafka(exc, "kafka read") from exc
            self._finish(
                [
                    Partition(tp.topic, tp.partition)
                    for tp in positions
                    if tp.offset >= self._remaining[Partition(tp.topic, tp.partition)]
                ]
            )
            if self._remaining and time.monotonic() > deadline:
                pending = ", ".join(f"{p.topic}[{p.partition}]" for p in sorted(self._remaining))
                raise KafkaAdapterError(
                    f"kafka read: no progress for {self._timeout_s:.0f}s on {pending}",
                    retriable=True,
                )
        return []

    def _finish(self, partitions: list[Partition]) -> None:
        if not partitions:
            return
        for partition in partitions:
            del self._remaining[partition]
        self._consumer.pause(_topic_partitions(partitions))  # nothing past the end is wanted

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        request = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]

        def commit() -> None:
            _raise_partition_error(self._consumer.commit(offsets=request, asynchronous=False))

        try:
            self._with_retries(commit)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            why = err.str() if isinstance(err, KafkaError) else str(exc)
            retriable = isinstance(err, KafkaError) and err.retriable()
            failed = [(Partition(tp.topic, tp.partition), why) for tp in request]
            raise CommitFailedError(failed, retriable=retriable) from exc

    def _with_retries(self, call: Callable[[], _T]) -> _T:
        """``call()``, again while it fails because the group coordinator is loading or moving
        (a new group, a broker that just started), for up to ``timeout_s``."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                return call()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                busy = isinstance(err, KafkaError) and (
                    err.code() in _COORDINATOR_BUSY or err.retriable()
                )
                if not busy or time.monotonic() > deadline:
                    raise
                logger.info("kafka reader: %s; retrying", exc)
                time.sleep(0.2)  # on the reader's worker thread


_T = TypeVar("_T")
_COORDINATOR_BUSY: Final = frozenset(
    (
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
    )
)


def _raise_partition_error(partitions: list[TopicPartition] | None) -> None:
    """Offset requests report per-partition errors in their result: raise the first."""
    for tp in partitions or ():
        if tp.error is not None:
            raise KafkaException(tp.error)
