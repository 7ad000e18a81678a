"""``TopicReader``: reads topics once, up to the end offsets captured when it opens, for the
operator commands (``ghl-consumer dlq``, ``ghl-consumer audit``), the profile changelog's restore
and the parking log. Records come out as ``consumer.core.events.Record``.

Threads and the event loop
    A plain, synchronous ``confluent_kafka.Consumer``: every librdkafka call runs in a worker
    thread (``asyncio.to_thread``), never on the loop thread. One call at a time: do not run two
    methods of one reader concurrently.

Errors
    ``KafkaAdapterError`` from every method (``retriable`` when ``read`` made no progress),
    ``CommitFailedError`` from ``commit``, ``ConfigError`` from the constructor for a setting
    librdkafka refuses.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.core.events import Record
from consumer.errors import KafkaAdapterError
from consumer.kafka.clients import (
    Partition,
    Setting,
    adapter_error,
    commit_failed,
    committed_offsets,
    librdkafka_logger,
    new_client_error,
    raise_partition_error,
    to_record,
    topic_partitions,
    wait_out_coordinator,
)

logger = logging.getLogger(__name__)


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
    Threads and errors: see the module docstring.
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
            "logger": librdkafka_logger,
        }
        try:
            self._consumer = Consumer(config)
        except (KafkaException, ValueError) as exc:
            raise new_client_error(exc, "kafka reader") from exc
        self._grouped = group_id is not None
        self._timeout_s = timeout_s
        self._remaining: dict[Partition, int] = {}  # partition -> end offset, until read

    async def existing_topics(self) -> frozenset[str]:
        """Names of the topics the broker has (one metadata request; never creates topics)."""
        return await asyncio.to_thread(self._existing_topics)

    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        """How many partitions each of ``topics`` has (one metadata request); a topic that does
        not exist is absent."""
        return await asyncio.to_thread(self._partition_counts, list(topics))

    async def open(
        self,
        topics: Sequence[str],
        *,
        from_committed: bool = False,
        start: Mapping[tuple[str, int], int] | None = None,
        only: Collection[tuple[str, int]] | None = None,
        since_ms: int | None = None,
    ) -> list[PartitionRange]:
        """Capture the end offset of every partition of ``topics`` and start reading there from
        the beginning, or (``from_committed``, needs ``group_id``) from the group's committed
        offsets, or from the ``start`` offsets given per (topic, partition); the beginning where
        there is none. ``only``: just these (topic, partition) pairs; ``since_ms``: from the
        first record timestamped at or after it (the broker's time index), where no start
        offset says otherwise. Returns every read partition's range, empty ones included; a
        topic that does not exist has no ranges. Call once."""
        if from_committed and not self._grouped:
            raise ValueError("TopicReader.open(from_committed=True) needs a group_id")
        return await asyncio.to_thread(
            self._open,
            list(topics),
            from_committed,
            dict(start or {}),
            None if only is None else frozenset(only),
            since_ms,
        )

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
        request = [(topic, p) for p in partitions]
        try:
            found = await asyncio.to_thread(
                committed_offsets, self._consumer, request, timeout_s=self._timeout_s
            )
        except KafkaException as exc:
            raise adapter_error(exc, "committed offsets") from exc
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}

    async def committed_points(
        self, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[int, str | None]]:
        """The reader's group's committed (offset, metadata) per (topic, partition), absent
        where the group has none: a read, never a commit nor a join. Needs ``group_id``."""
        if not self._grouped:
            raise ValueError("TopicReader.committed_points needs a group_id")
        try:
            found = await asyncio.to_thread(
                committed_offsets, self._consumer, list(partitions), timeout_s=self._timeout_s
            )
        except KafkaException as exc:
            raise adapter_error(exc, "committed offsets") from exc
        return {
            (tp.topic, tp.partition): (tp.offset, tp.metadata) for tp in found if tp.offset >= 0
        }

    async def close(self) -> None:
        """Release the client (nothing to leave: the reader never joined a group)."""
        await asyncio.to_thread(self._consumer.close)

    # -- internals (worker thread) ----------------------------------------------------------------

    def _existing_topics(self) -> frozenset[str]:
        try:
            # No topic argument: naming one may auto-create it on brokers that allow that.
            metadata = self._consumer.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise adapter_error(exc, "listing topics") from exc
        return frozenset(name for name, meta in metadata.topics.items() if meta.error is None)

    def _partition_counts(self, topics: list[str]) -> dict[str, int]:
        try:
            metadata = self._consumer.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise adapter_error(exc, "listing topics") from exc
        return {
            topic: len(meta.partitions)
            for topic in topics
            if (meta := metadata.topics.get(topic)) is not None and meta.error is None
        }

    def _open(
        self,
        topics: list[str],
        from_committed: bool,
        given: dict[tuple[str, int], int],
        only: frozenset[tuple[str, int]] | None,
        since_ms: int | None,
    ) -> list[PartitionRange]:
        consumer = self._consumer
        try:
            metadata = consumer.list_topics(timeout=self._timeout_s)
            partitions = [
                TopicPartition(topic, number)
                for topic in dict.fromkeys(topics)
                if (meta := metadata.topics.get(topic)) is not None and meta.error is None
                for number in sorted(meta.partitions)
                if only is None or (topic, number) in only
            ]
            committed = {Partition(t, p): offset for (t, p), offset in given.items()}
            if from_committed and partitions:
                found = committed_offsets(
                    consumer,
                    [(tp.topic, tp.partition) for tp in partitions],
                    timeout_s=self._timeout_s,
                )
                for tp in found:
                    if tp.offset >= 0:
                        committed[Partition(tp.topic, tp.partition)] = tp.offset
            if since_ms is not None and partitions:
                request = [TopicPartition(tp.topic, tp.partition, since_ms) for tp in partitions]
                for tp in consumer.offsets_for_times(request, timeout=self._timeout_s):
                    where = Partition(tp.topic, tp.partition)
                    if tp.offset >= 0 and where not in committed:
                        committed[where] = tp.offset
                    elif tp.offset < 0 and where not in committed:  # nothing that recent
                        committed[where] = 1 << 62  # clamped to the end below
            ranges = []
            for tp in partitions:
                low, high = consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
                start = committed.get(Partition(tp.topic, tp.partition), low)
                start = min(max(start, low), high)  # retention or a recreated topic
                ranges.append(PartitionRange(tp.topic, tp.partition, start, high))
            assign = [r for r in ranges if r.start < r.end]
            consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in assign])
        except KafkaException as exc:
            raise adapter_error(exc, "opening topics") from exc
        self._remaining = {Partition(r.topic, r.partition): r.end for r in assign}
        return ranges

    def _read(self, max_records: int) -> list[Record]:
        consumer = self._consumer
        deadline = time.monotonic() + self._timeout_s
        while self._remaining:
            try:
                messages = consumer.consume(max_records, timeout=0.5)
            except KafkaException as exc:
                raise adapter_error(exc, "kafka read") from exc
            records = []
            remaining = self._remaining
            for message in messages:
                err = message.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaAdapterError(f"kafka read: {err.str()}")
                    logger.warning("kafka read error: %s", err.str())
                    continue
                record = to_record(message)
                # (topic, partition) as a plain tuple: it finds the Partition key, and costs
                # no NamedTuple construction per record read
                end = remaining.get(record[:2])  # type: ignore[call-overload]
                offset = record.offset
                if end is None or offset >= end:
                    continue  # produced after open
                records.append(record)
                if offset + 1 >= end:
                    self._finish([Partition(record.topic, record.partition)])
            if records:
                return records
            # Offsets may end in gaps (compaction, transaction markers): the position tells.
            try:
                positions = consumer.position(topic_partitions(self._remaining))
            except KafkaException as exc:
                raise adapter_error(exc, "kafka read") from exc
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
        self._consumer.pause(topic_partitions(partitions))  # nothing past the end is wanted

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        request = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]

        def commit() -> None:
            raise_partition_error(self._consumer.commit(offsets=request, asynchronous=False))

        try:
            wait_out_coordinator(commit, timeout_s=self._timeout_s)
        except KafkaException as exc:
            raise commit_failed(exc, [(tp.topic, tp.partition) for tp in request]) from exc
