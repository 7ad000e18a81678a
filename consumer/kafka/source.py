"""``KafkaSource``: one member of a consumer group, the source the engine reads.

It fetches record batches, pauses and resumes partitions, commits offsets with metadata, and
reports assignment changes to a ``consumer.engine.ports.RebalanceListener``. Records come out as
``consumer.core.events.Record``.

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

Rebalance protocols
    ``group_protocol="classic"`` uses the cooperative-sticky assignor, ``"consumer"`` the
    KIP-848 protocol (Kafka 4.x; the broker assigns, ``session.timeout.ms``,
    ``heartbeat.interval.ms``, ``partition.assignment.strategy`` and ``group.protocol.type`` are
    broker-side and refused here). Both are incremental: callbacks name only the partitions that
    move, and the others keep being fetched throughout.

Assigned by the application (``subscribe=False``)
    The source then joins no group: ``start`` does not subscribe, and ``follow(partitions)``
    assigns and unassigns partitions of its one topic, as the engine decides (the replay feed
    co-partitioned with the event feed follows the event feed's assignment). Each change runs
    the same listener callbacks as a rebalance would (``on_assigned`` with the group's committed
    offsets and metadata, ``on_revoked`` or ``on_lost``), so offset tracking works unchanged.
    Offsets are committed in the group ``group_id`` all the same: the broker accepts commits of
    a member outside the group while no member is subscribed to it. ``group_protocol`` does not
    matter then (it governs subscriptions only).

Static membership (``group_instance_id``, KIP-345)
    The member keeps its partitions across a restart that returns within the session timeout:
    no rebalance, the same partitions (so the same local profile state). librdkafka sends no
    LeaveGroup for a static member as it closes (KIP-848: a leave with epoch -2, which keeps
    the assignment too), so ``close`` still runs ``on_revoked`` (commit, profile files closed
    cleanly) but the partitions stay this instance's until the session timeout: a member that
    stops for good is replaced only then. An instance id names a member in one group only:
    two groups may use the same one. A source assigned by ``follow`` joins no group, so an
    instance id would mean nothing there and is refused (Kafka 4.4 accepts its commits either
    way: a commit with generation -1 to a group without members is not checked).

Pause across rebalances
    librdkafka keeps an application pause on the partition object across unassign and
    re-assign (only its own internal pause is reset on assign), and keeps it for partitions
    that stay assigned. So nothing needs re-pausing after a rebalance, but a partition revoked
    while paused would come back paused and stall: the source resumes revoked partitions
    before unassigning them and forgets them in ``paused``.

Size
    Over 500 lines for one reason: ``KafkaSource`` is one class whose state (assignment, pauses,
    the call in progress) its lifecycle, fetching, commits and rebalance callbacks share under
    the threading rules above; splitting it would spread those rules over several modules.

Errors
    ``KafkaAdapterError`` from ``start`` and ``poll_batch`` (fatal client errors),
    ``CommitFailedError`` from ``commit``, ``ConfigError`` from the constructor. An exception
    raised by the listener propagates out of ``poll_batch`` or ``close``; treat it as fatal
    (librdkafka still applies the assignment change, but the engine missed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.aio import AIOConsumer

from consumer.core.events import Record
from consumer.engine.offsets import Assignment, CommitPoint
from consumer.engine.ports import RebalanceListener
from consumer.errors import CommitFailedError, ConfigError, KafkaAdapterError
from consumer.kafka.clients import (
    PROBE_INTERVAL_S,
    PROBE_TIMEOUT_S,
    RETRY_PAUSE_S,
    GroupProtocol,
    Partition,
    Setting,
    adapter_error,
    commit_failed,
    coordinator_busy,
    librdkafka_logger,
    member_config,
    new_client_error,
    raise_partition_error,
    to_record,
    topic_partitions,
)

logger = logging.getLogger(__name__)

# Fetching committed offsets while being assigned: each request, and all attempts together.
_COMMITTED_REQUEST_TIMEOUT_S: Final = 10.0
_COMMITTED_TIMEOUT_S: Final = 30.0

# The KafkaSource whose rebalance callback is running in this context (see module docstring).
_IN_CALLBACK: contextvars.ContextVar[KafkaSource | None] = contextvars.ContextVar(
    "ghl_kafka_in_callback", default=None
)


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
        subscribe: bool = True,
        group_instance_id: str | None = None,
    ) -> None:
        """Validate and store the configuration; nothing connects before ``start``.

        ``subscribe=False``: the source joins no group; its partitions (of exactly one topic)
        are assigned by ``follow`` (see the module docstring).

        ``session_timeout_ms`` / ``heartbeat_interval_ms`` apply to the classic protocol only
        (KIP-848 sets them broker-side). ``extra``: further librdkafka settings passed through
        (``security.protocol``, ``sasl.*``, ``ssl.*``, ``group.remote.assignor``, ...); settings
        these keywords own are refused. Raises ``ConfigError``.

        ``group_instance_id``: static membership (KIP-345, librdkafka's ``group.instance.id``),
        for a subscribing source only (see "Static membership" in the module docstring).
        """
        if not topics:
            raise ConfigError("kafka topics: at least one topic is required")
        if not subscribe and len(topics) != 1:
            raise ConfigError("kafka source assigned by follow(): exactly one topic is required")
        if not subscribe and group_instance_id:
            raise ConfigError(
                "kafka source assigned by follow(): it joins no group, so it takes no group "
                "instance id"
            )
        config = member_config(
            bootstrap=bootstrap,
            group_id=group_id,
            auto_offset_reset=auto_offset_reset,
            group_protocol=group_protocol,
            client_id=client_id,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_interval_ms=max_poll_interval_ms,
            queued_max_messages_kbytes=queued_max_messages_kbytes,
            fetch_max_bytes=fetch_max_bytes,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            group_instance_id=group_instance_id,
            extra=extra,
        )
        self.group_protocol: GroupProtocol = group_protocol
        self._config = config
        self._topics = list(topics)
        self._subscribe = subscribe
        self._aio: AIOConsumer | None = None
        self._listener: RebalanceListener | None = None
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Task[list[Message]] | None = None
        self._assigned: set[Partition] = set()
        self._assigning: set[Partition] = set()  # during ``on_assigned``
        self._paused: set[Partition] = set()
        self._fatal: KafkaError | None = None
        self._closing = False
        self._closed = False
        # False after librdkafka reported all brokers down, until a commit succeeds or a
        # metadata request is answered (``_watch_broker``).
        self.broker_reachable = True
        # Readiness and liveness (``consumer.observe.readiness``): see ``joined`` and
        # ``last_poll_at``.
        self._joined = False
        self._last_poll_at = 0.0
        self._watcher: asyncio.Task[None] | None = None
        # Counters for metrics (read them; never reset).
        self.commits_refused = 0  # commit points dropped: partition no longer owned
        self.commit_failures = 0  # partitions whose commit librdkafka reported as failed
        self.records_dropped_unowned = 0  # fetched records of partitions revoked meanwhile
        self.consume_errors = 0  # error events returned by consume (logged)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, listener: RebalanceListener) -> None:
        """Create the client and subscribe (with ``subscribe=False``: only create it; ``follow``
        assigns). Returns at once: joining the group and the first ``on_assigned`` happen
        inside the following ``poll_batch`` calls. Raises ``KafkaAdapterError`` (e.g. an
        invalid librdkafka setting in ``extra``)."""
        if self._aio is not None:
            raise RuntimeError("KafkaSource.start() called twice")
        self._listener = listener
        config = dict(self._config)
        config["error_cb"] = self._on_error
        config["on_commit"] = self._on_commit
        config["logger"] = librdkafka_logger
        try:
            self._aio = AIOConsumer(config, max_workers=2)
        except KafkaException as exc:
            raise new_client_error(exc, "kafka consumer") from exc
        try:
            if self._subscribe:
                await self._aio.subscribe(
                    self._topics,
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_lost,
                )
        except KafkaException as exc:
            raise adapter_error(exc, "kafka consumer start") from exc
        self._last_poll_at = asyncio.get_running_loop().time()
        # KIP-848 announces no empty assignment: a member given no partition gets no callback.
        # A source assigned by follow() joins no group: nothing to wait for.
        self._joined = self.group_protocol == "consumer" or not self._subscribe
        self._watcher = asyncio.create_task(self._watch_broker(), name="kafka-broker-watch")

    async def _watch_broker(self) -> None:
        """While ``broker_reachable`` is false, send a metadata request every
        ``PROBE_INTERVAL_S``; the first answer sets it true again. Records polled during an
        outage may come from librdkafka's prefetch queue and an idle member commits nothing,
        so neither can tell that the broker is back. Runs from ``start`` until ``close``."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if self.broker_reachable:
                continue
            try:
                async with self._serial() as aio:
                    await aio.list_topics(self._topics[0], timeout=PROBE_TIMEOUT_S)
            except KafkaException:
                continue
            self.broker_reachable = True
            logger.info("kafka broker reachable again")

    async def close(self) -> None:
        """Leave the group cleanly: ``on_revoked`` runs for every owned partition (commit
        there), then the member leaves so others take its partitions at once, without waiting
        for a session timeout (a source assigned by ``follow`` releases what it still owns the
        same way). Records fetched but not yet returned are dropped (they were never admitted,
        so never committed). Idempotent."""
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
            if not self._subscribe and self._assigned:
                await self._release(self._aio, topic_partitions(sorted(self._assigned)), lost=False)
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
                raise adapter_error(exc, "kafka consume") from exc
            self._last_poll_at = asyncio.get_running_loop().time()
            return messages

    def _records(self, messages: list[Message]) -> list[Record]:
        records = []
        assigned, where, owned = self._assigned, None, False
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
            record = to_record(message)
            if record[:2] != where:  # a new run of one partition's records
                where = record[:2]
                owned = where in assigned
            if not owned:
                self.records_dropped_unowned += 1
                continue
            records.append(record)
        return records

    # -- probes ---------------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        """Whether the member has joined its group. Classic protocol: its first assignment
        is in effect (the listener's ``on_assigned`` returned; an empty assignment too: a spare
        member has joined), and it was not lost since.
        ``"consumer"`` protocol: from ``start`` on, since librdkafka calls no callback for a
        member given no partition."""
        return self._joined

    @property
    def last_poll_at(self) -> float:
        """Event-loop time at which the last consume call returned (``start``'s time before
        the first); ``max_poll_interval_s`` without one and librdkafka leaves the group."""
        return self._last_poll_at

    @property
    def max_poll_interval_s(self) -> float:
        """``max.poll.interval.ms`` in seconds, as configured (``extra`` may override it)."""
        return float(self._config["max.poll.interval.ms"]) / 1000

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
        partitions that stay assigned. Called from ``on_assigned`` for partitions being
        assigned, the pause takes effect as they are assigned, before any record of them is
        returned (the listener may hold them until it has restored their state)."""
        async with self._serial() as aio:
            wanted = {Partition(*p) for p in partitions}
            targets = wanted & ((self._assigned | self._assigning) - self._paused)
            now = sorted(targets - self._assigning)
            if now:
                await aio.pause(topic_partitions(now))
            self._paused.update(targets)  # those being assigned: paused once assigned

    async def resume(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Fetch these paused partitions again, from the next offset not yet returned."""
        async with self._serial() as aio:
            targets = sorted({Partition(*p) for p in partitions} & self._paused)
            if targets:
                await aio.resume(topic_partitions(targets))
                self._paused.difference_update(targets)

    async def follow(self, partitions: Collection[int], *, lost: bool = False) -> None:
        """Own exactly ``partitions`` of the topic (a source built with ``subscribe=False``).
        Owned partitions not named are released first: ``on_revoked`` (commit there), or with
        ``lost`` ``on_lost`` (nothing of them may be committed any more), then unassigned.
        Partitions newly named are then assigned as a rebalance would: ``on_assigned`` with the
        group's committed offsets and metadata, then fetched from exactly those (without one,
        ``auto_offset_reset``). Waits for a poll in progress (at most its ``timeout_s``).
        Raises ``RuntimeError`` on a subscribing source, ``KafkaAdapterError``, and whatever
        the listener raised."""
        if self._subscribe:
            raise RuntimeError("KafkaSource.follow() needs a source built with subscribe=False")
        async with self._lock:
            aio = self._require_started()
            topic = self._topics[0]
            wanted = {Partition(topic, p) for p in partitions}
            gone = sorted(self._assigned - wanted)
            new = sorted(wanted - self._assigned)
            try:
                if gone:
                    await self._release(aio, topic_partitions(gone), lost=lost)
                if new:
                    await self._on_assign(aio, topic_partitions(new))
            except KafkaException as exc:
                raise adapter_error(exc, "kafka assign") from exc

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
                raise commit_failed(exc, [(p.topic, p.partition) for p in owned]) from exc
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
            positions: list[TopicPartition] = await aio.position(topic_partitions(owned))
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
            self._assigning = {Partition(a.topic, a.partition) for a in assignments}
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
            # Paused by the listener: before this callback returns, so the consume call that
            # runs it returns none of their records (a prefetch is discarded by the pause).
            held = sorted(self._paused & self._assigning)
            if held:
                await aio.pause(topic_partitions(held))
            self._assigned.update(self._assigning)
            self._joined = True  # the assignment (possibly empty) is in effect
        finally:
            self._assigning = set()
            _IN_CALLBACK.reset(token)

    async def _committed(
        self, aio: AIOConsumer, partitions: list[TopicPartition]
    ) -> list[TopicPartition]:
        request = [Partition(tp.topic, tp.partition) for tp in partitions]
        if self._closing:
            # An assignment still pending when close() began: librdkafka no longer answers
            # offset fetches then (it would time out), and nothing will be fetched anyway.
            return topic_partitions(request)
        deadline = time.monotonic() + _COMMITTED_TIMEOUT_S
        try:
            while True:  # as clients.wait_out_coordinator, without blocking the loop
                try:
                    found: list[TopicPartition] = await aio.committed(
                        topic_partitions(request), timeout=_COMMITTED_REQUEST_TIMEOUT_S
                    )
                    raise_partition_error(found)
                    return found
                except KafkaException as exc:
                    if not coordinator_busy(exc) or time.monotonic() > deadline:
                        raise
                    logger.info("kafka group coordinator busy: %s; retrying", exc)
                    await asyncio.sleep(RETRY_PAUSE_S)
        except KafkaException as exc:
            # At-least-once still holds: librdkafka fetches the committed offset itself; only
            # the map of done offsets above it is unknown, so some delivered records may be
            # re-sent.
            logger.error(
                "committed offsets unavailable (%s); assigning without the done-offset map", exc
            )
            return topic_partitions(request)

    async def _on_revoke(self, aio: AIOConsumer, partitions: list[TopicPartition]) -> None:
        await self._release(aio, partitions, lost=False)

    async def _on_lost(self, aio: AIOConsumer, partitions: list[TopicPartition]) -> None:
        if self.group_protocol == "classic":  # out of the group until the next assignment
            self._joined = False
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
                    await aio.resume(topic_partitions(stale))
                self._paused.difference_update(gone)
                self._assigned.difference_update(gone)
                await aio.incremental_unassign(topic_partitions(gone))
            finally:
                _IN_CALLBACK.reset(token)

    async def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.broker_reachable = False
        if err.fatal():
            self._fatal = err
            logger.error("kafka consumer fatal error: %s", err.str())
        else:
            librdkafka_logger.warning("kafka consumer error: %s", err.str())

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
