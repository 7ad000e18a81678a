"""The profile changelog: a compacted Kafka topic, keyed by user key, that makes the profile
store durable (``docs/architecture.md``, "Profiles": profiles survive restarts and rebalances).

Writes: the engine produces ``take_writes()`` after mapping each poll batch and confirms each
with ``written`` (see ``ChangelogProfileStore``). Reads: ``restore`` reads the whole topic, up
to its end offsets at the time of the call, into the store. The engine calls it on every assignment
before it admits a record of the new partitions, so an identify consumed on another instance
(or before a crash) enriches a later "Lead Generated" here: that identify's profile write was
confirmed before its offset was committed, hence before this instance resumed after it.

Every instance holds every profile (bounded by the store's ``max_entries``). A restore reads
the whole compacted topic, once per assignment: seconds for hundreds of thousands of users.

Erasure: ``ghl-consumer forget`` writes a tombstone (a record without value) for each of a
person's keys. ``follow`` runs beside the engine and reads the changelog's new records every
``erasure_check_seconds``: a tombstone drops that profile from memory at once, so every running
member forgets the person within that interval, without a rebalance; a restore applies
tombstones too. Other members' profile writes are left to the next restore, as before.

Encryption at rest (``[profiles] encryption_keys``): with a ``ProfileCipher`` the values written
are sealed (``consumer.state.encryption``) and the values read are opened; keys stay in clear.

Two shapes of the engine's ``ProfileLog`` port over one ``ChangelogTopic``: ``ProfileChangelog``
(every profile in memory, the whole topic read on every assignment) and, with ``[profiles]
state_dir``, ``PartitionedProfileChangelog`` (only the owned partitions, on disk).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from consumer.core.profiles import ChangelogProfileStore, PersonProfiles
from consumer.errors import KafkaAdapterError, ProfileDecodeError
from consumer.kafka.admin import topic_id
from consumer.kafka.clients import Setting
from consumer.kafka.reader import PartitionRange, TopicReader
from consumer.state.encryption import ProfileCipher
from consumer.state.profile_state import Opened, PartitionedProfileStore

logger = logging.getLogger(__name__)


class RestoreMetrics(Protocol):
    """Where restores are reported (``consumer.observe.metrics.Metrics``)."""

    def profile_restored(
        self, partition: int | None, seconds: float, records: int, size: int
    ) -> None:
        """A restore of ``partition`` (None: the whole changelog) read ``records`` records
        in ``seconds``; ``size`` profiles are held for it now."""
        ...

    def profile_released(self, partition: int) -> None:
        """``partition``'s profiles left this member: its series go."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangelogTopic:
    """The changelog and how both shapes read it: ``extra`` librdkafka settings, ``cipher``
    for values at rest, a ``follow`` pass every ``erasure_check_seconds``, a failed restore
    read again for up to ``restore_retry_seconds``."""

    topic: str
    bootstrap: str
    extra: Mapping[str, Setting] | None = None
    cipher: ProfileCipher = field(default_factory=lambda: ProfileCipher({}))
    erasure_check_seconds: float = 10.0
    restore_retry_seconds: float = 60.0

    def reader(self) -> TopicReader:
        return TopicReader(bootstrap=self.bootstrap, extra=self.extra)

    async def topic_id(self) -> str:
        """The changelog's topic id now (``kafka.admin.topic_id``). Raises
        ``KafkaAdapterError``."""
        return await topic_id(self.bootstrap, self.topic, extra=self.extra)


class ProfileChangelog:
    """``store`` plus its topic, the whole-changelog shape of ``ProfileLog`` (not
    ``partitioned``: writes go to the partition of their key, ``release`` keeps everything).
    ``assign`` reads the topic again after a Kafka error (a leader moving, a broker
    restarting), with backoff, for up to ``restore_retry_seconds``; then it raises
    ``KafkaAdapterError`` (the engine's rebalance callback then fails, which stops the
    consumer: better than mapping without the profiles it promised to keep)."""

    partitioned = False

    def __init__(
        self, *, store: ChangelogProfileStore, changelog: ChangelogTopic, metrics: RestoreMetrics
    ) -> None:
        self.store = store
        self.topic = changelog.topic
        self._changelog = changelog
        self._cipher = changelog.cipher
        self._metrics = metrics
        # partition -> next offset ``follow`` reads; None until the first restore
        self._read_to: dict[tuple[str, int], int] | None = None

    def select(self, partition: int) -> bool:
        """Every profile is held here: nothing to select."""
        return True

    @property
    def changes(self) -> int:
        return self.store.changes

    def take_writes(self) -> list[tuple[int | None, str, bytes]]:
        """The store's writes (partition None: the partitioner's, by key), each value sealed
        when encryption is on."""
        seal = self._cipher.seal if self._cipher.encrypts else None
        return [
            (None, key, value if seal is None else seal(key, value))
            for key, value in self.store.take_writes()
        ]

    def written(self, partition: int | None, key: str) -> None:
        self.store.written(key)

    def seal(self, key: str, value: bytes) -> bytes:
        return self._cipher.seal(key, value)

    def open(self, key: str, value: bytes) -> bytes:
        return self._cipher.open(key, value)

    async def assign(self, partitions: Sequence[int]) -> None:
        """Whatever was assigned: read the whole changelog (``restore``)."""
        await self.restore()

    def release(self, partitions: Sequence[int]) -> None:
        """Every profile stays held."""

    async def restore(self) -> None:
        """Read the changelog to its current end into the store; records the time taken. A
        Kafka error starts the read over (applying a record twice, in order, is harmless)
        after 1, 2, 4... s (at most 10), until ``restore_retry_seconds`` have passed."""
        await _retrying(self._restore_once, self.topic, self._changelog.restore_retry_seconds)

    async def _restore_once(self) -> None:
        started = time.perf_counter()
        reader = self._changelog.reader()
        applied = skipped = bad = 0
        try:
            ranges = await reader.open([self.topic])
            while records := await reader.read(5_000):
                for record in records:
                    if record.key is None:
                        bad += 1
                        continue
                    key = record.key.decode("utf-8", "backslashreplace")
                    try:
                        value = record.value
                        if value is not None:
                            value = self._cipher.open(key, value)
                        if self.store.restore(key, value):
                            applied += 1
                        else:
                            skipped += 1
                    except ProfileDecodeError as exc:
                        if bad == 0:
                            logger.warning("profile changelog %s: %s", self.topic, exc)
                        bad += 1
            self._advance(ranges)
        finally:
            await reader.close()
        seconds = time.perf_counter() - started
        self._metrics.profile_restored(None, seconds, applied + skipped + bad, len(self.store))
        logger.info(
            "profiles restored from %s in %.2fs: %d applied, %d newer here, %d unreadable; %d held",
            self.topic,
            seconds,
            applied,
            skipped,
            bad,
            len(self.store),
        )

    async def follow(self) -> None:
        """Every ``erasure_check_seconds``, drop from the store the profiles tombstoned in the
        changelog since the last restore or pass (``ghl-consumer forget``). Starts reading at
        the end of the first restore. Runs until cancelled; a pass that fails is logged and
        tried again at the next interval (the engine's own work goes on)."""
        while True:
            await asyncio.sleep(self._changelog.erasure_check_seconds)
            if self._read_to is None:
                continue
            try:
                erased = await self._erase_tombstoned(dict(self._read_to))
            except KafkaAdapterError as exc:
                logger.warning("profile changelog %s: erasures not read: %s", self.topic, exc)
                continue
            if erased:
                logger.info("profiles erased (tombstones in %s): %d", self.topic, erased)

    async def _erase_tombstoned(self, start: dict[tuple[str, int], int]) -> int:
        reader = self._changelog.reader()
        erased = 0
        try:
            ranges = await reader.open([self.topic], start=start)
            while records := await reader.read(5_000):
                for record in records:
                    if record.value is None and record.key is not None:
                        erased += self.store.forget(record.key.decode("utf-8", "backslashreplace"))
            self._advance(ranges)
        finally:
            await reader.close()
        return erased

    def _advance(self, ranges: Sequence[PartitionRange]) -> None:
        """``ranges`` were read to their ends: the next pass starts there (a failed pass never
        gets here, so the next one reads the same records again)."""
        read_to = dict(self._read_to or {})
        for r in ranges:
            read_to[(r.topic, r.partition)] = max(read_to.get((r.topic, r.partition), 0), r.end)
        self._read_to = read_to


async def _retrying(
    restore: Callable[[], Awaitable[None]], topic: str, retry_seconds: float
) -> None:
    """Await ``restore()``; after a ``KafkaAdapterError`` await it again after 1, 2, 4... s (at
    most 10) until ``retry_seconds`` have passed, then raise the error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_seconds
    delay = 1.0
    while True:
        try:
            await restore()
            return
        except KafkaAdapterError as exc:
            if loop.time() + delay > deadline:
                raise
            logger.warning(
                "profile changelog %s: restore failed (%s); reading it again in %.0fs",
                topic,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def read_person(
    *,
    bootstrap: str,
    topic: str,
    key: str | None = None,
    email: str | None = None,
    extra: Mapping[str, Setting] | None = None,
    cipher: ProfileCipher | None = None,
) -> PersonProfiles:
    """The changelog's current profiles of one person: the one under ``key`` and those holding
    ``email`` (normalised), by key and with the partitions holding them (``PersonProfiles``),
    encrypted values opened with ``cipher``. Reads the whole topic to its current end; none
    when the topic does not exist. A
    value that cannot be opened (key id not configured, tampered) is skipped with a warning
    naming how many: the person may have more profiles. Raises ``KafkaAdapterError``."""
    cipher = cipher or ProfileCipher({})
    person = PersonProfiles(key=key, email=email)
    unreadable = 0
    reader = TopicReader(bootstrap=bootstrap, extra=extra)
    try:
        await reader.open([topic])
        while records := await reader.read(5_000):
            for record in records:
                if record.key is None:
                    continue
                record_key = record.key.decode("utf-8", "backslashreplace")
                try:
                    value = record.value and cipher.open(record_key, record.value)
                except ProfileDecodeError as exc:
                    if unreadable == 0:
                        logger.warning("profile changelog %s: %s", topic, exc)
                    unreadable += 1
                    continue
                person.feed(record_key, value, record.partition)
    finally:
        await reader.close()
    if unreadable:
        logger.warning(
            "profile changelog %s: %d value(s) could not be decrypted and were not searched",
            topic,
            unreadable,
        )
    return person


@dataclass(frozen=True, slots=True)
class PartitionRestored:
    """One partition's restore (``restore_partitions``): the changelog offsets read, the records
    applied, skipped (a write of ours unconfirmed) and unreadable, and why the local state was
    rebuilt from the start (None: only the tail since its checkpoint was read)."""

    partition: int
    start: int
    end: int
    applied: int
    skipped: int
    unreadable: int
    rebuilt: str | None


async def restore_partitions(
    store: PartitionedProfileStore, partitions: Collection[int], changelog: ChangelogTopic
) -> list[PartitionRestored]:
    """Open ``partitions`` in ``store`` and bring each up to its changelog partition's current
    end, reading only that partition, from the local checkpoint when the state was kept. A
    file written under another topic id (the changelog was deleted and created again, whatever
    its offsets) is rebuilt, as is one whose checkpoint the changelog cannot continue (past its
    end: the topic was recreated; before its start: records the state never saw were deleted).
    Each partition's checkpoint is its end offset once read. Raises ``KafkaAdapterError`` (when
    the topic id cannot be had nothing is opened; later, the partitions stay open, marked
    unclean: the next open rebuilds them)."""
    current = await changelog.topic_id()
    opened = {p: store.open(p, topic_id=current) for p in partitions}
    ranges = await _read_partitions(store, opened, changelog)
    for r in ranges:
        store.checkpoint(r.partition, r.end)
        logger.info(
            # "from N to M", not "N-M": the log's phone masking would star a digit run
            "profile changelog %s[%d]: offsets from %d to %d read (%s), %d applied, "
            "%d newer here, "
            "%d unreadable; %d held",
            changelog.topic, r.partition, r.start, r.end,
            "tail" if r.rebuilt is None else f"rebuilt: {r.rebuilt}",
            r.applied, r.skipped, r.unreadable, store.recount(r.partition),
        )
    return ranges


async def _read_partitions(
    store: PartitionedProfileStore, opened: Mapping[int, Opened], changelog: ChangelogTopic
) -> list[PartitionRestored]:
    topic, cipher = changelog.topic, changelog.cipher
    rebuilt = {p: o.rebuilt for p, o in opened.items()}
    start = {(topic, p): o.start for p, o in opened.items()}
    reader = changelog.reader()
    try:
        ranges = await reader.open([topic], start=start, only=start.keys())
        stale = [r for r in ranges if r.start != start[(topic, r.partition)]]
        if stale:  # the changelog cannot continue these checkpoints: read them whole
            await reader.close()
            for r in stale:
                rebuilt[r.partition] = (
                    f"checkpoint {start[(topic, r.partition)]} outside the changelog's offsets"
                )
                store.reset(r.partition)
                start[(topic, r.partition)] = 0
            reader = changelog.reader()
            ranges = await reader.open([topic], start=start, only=start.keys())
        counts = {r.partition: [0, 0, 0] for r in ranges}  # applied, skipped, unreadable
        while records := await reader.read(5_000):
            for record in records:
                count = counts[record.partition]
                if record.key is None:
                    count[2] += 1
                    continue
                key = record.key.decode("utf-8", "backslashreplace")
                try:
                    value = record.value
                    if value is not None:
                        value = cipher.open(key, value)
                    count[0 if store.restore(record.partition, key, value) else 1] += 1
                except ProfileDecodeError as exc:
                    if count[2] == 0:
                        logger.warning("profile changelog %s[%d]: %s", topic, record.partition, exc)
                    count[2] += 1
    finally:
        await reader.close()
    return [
        PartitionRestored(
            partition=r.partition,
            start=r.start,
            end=r.end,
            applied=counts[r.partition][0],
            skipped=counts[r.partition][1],
            unreadable=counts[r.partition][2],
            rebuilt=rebuilt[r.partition],
        )
        for r in ranges
    ]


class PartitionedProfileChangelog:
    """The partitioned shape of ``ProfileLog`` over a ``PartitionedProfileStore``
    (``[profiles] state_dir``; ``docs/architecture.md``, "Profiles"): the changelog has the
    input topic's partitions and a profile is written to the changelog partition of the
    record that changed it.

    ``assign`` restores the newly assigned partitions only (``restore_partitions``), retried
    after a Kafka error like ``ProfileChangelog.restore``; ``release`` closes revoked or lost
    ones at their last checkpoint. ``follow`` reads, every ``erasure_check_seconds``, what was
    appended to each owned changelog partition since: a tombstone erases that profile (erasure
    wins over a write of ours), other records are ours (already held); then that partition's
    checkpoint moves to where the pass ended. ``take_writes`` seals values when encryption is
    on. Event-loop only."""

    partitioned = True

    def __init__(
        self,
        *,
        store: PartitionedProfileStore,
        changelog: ChangelogTopic,
        metrics: RestoreMetrics,
    ) -> None:
        self.store = store
        self.topic = changelog.topic
        self._changelog = changelog
        self._cipher = changelog.cipher
        self._metrics = metrics
        self._read_to: dict[int, int] = {}  # owned partition -> next offset ``follow`` reads

    @property
    def changes(self) -> int:
        return self.store.changes

    def select(self, partition: int) -> bool:
        return self.store.select(partition)

    def take_writes(self) -> list[tuple[int | None, str, bytes]]:
        """The store's writes as (partition, key, value), each value sealed when encryption
        is on."""
        seal = self._cipher.seal if self._cipher.encrypts else None
        return [
            (p, key, value if seal is None else seal(key, value))
            for p, key, value in self.store.take_writes()
        ]

    def written(self, partition: int | None, key: str) -> None:
        assert partition is not None  # every write of this shape names its partition
        self.store.written(partition, key)

    def seal(self, key: str, value: bytes) -> bytes:
        return self._cipher.seal(key, value)

    def open(self, key: str, value: bytes) -> bytes:
        return self._cipher.open(key, value)

    async def assign(self, partitions: Collection[int]) -> None:
        """Restore ``partitions`` (newly assigned). A failed attempt closes them again at their
        previous checkpoint (what it applied is replayed by the next one). Raises
        ``KafkaAdapterError`` after ``restore_retry_seconds``."""
        restored: list[PartitionRestored] = []
        started = time.perf_counter()

        async def attempt() -> None:
            try:
                restored[:] = await restore_partitions(self.store, partitions, self._changelog)
            except BaseException:
                for p in set(partitions) & self.store.partitions:
                    self.store.close(p)
                raise

        await _retrying(attempt, self.topic, self._changelog.restore_retry_seconds)
        seconds = time.perf_counter() - started
        sizes = self.store.sizes()
        for r in restored:
            self._read_to[r.partition] = r.end
            records = r.applied + r.skipped + r.unreadable
            self._metrics.profile_restored(r.partition, seconds, records, sizes[r.partition])

    def release(self, partitions: Collection[int]) -> None:
        """Close ``partitions`` (revoked or lost) where they are."""
        for p in partitions:
            if p in self.store.partitions:
                self.store.close(p)
                self._metrics.profile_released(p)
            self._read_to.pop(p, None)

    async def follow(self) -> None:
        """Erase tombstoned profiles every ``erasure_check_seconds`` and checkpoint the owned
        partitions (see the class doc). Runs until cancelled; a pass that fails is logged and
        tried again at the next interval."""
        while True:
            await asyncio.sleep(self._changelog.erasure_check_seconds)
            try:
                erased = await self.follow_once()
            except KafkaAdapterError as exc:
                logger.warning("profile changelog %s: erasures not read: %s", self.topic, exc)
                continue
            if erased:
                logger.info("profiles erased (tombstones in %s): %d", self.topic, erased)

    async def follow_once(self) -> int:
        """One ``follow`` pass over the partitions owned now; returns how many profiles it
        erased."""
        start = {(self.topic, p): offset for p, offset in self._read_to.items()}
        if not start:
            return 0
        reader = self._changelog.reader()
        erased = 0
        try:
            ranges = await reader.open([self.topic], start=start, only=start.keys())
            while records := await reader.read(5_000):
                for record in records:
                    if (
                        record.value is None
                        and record.key is not None
                        and record.partition in self._read_to  # not released meanwhile
                    ):
                        key = record.key.decode("utf-8", "backslashreplace")
                        erased += self.store.forget(record.partition, key)
        finally:
            await reader.close()
        for r in ranges:
            # not released (and perhaps restored anew) while the pass ran
            if self._read_to.get(r.partition) == start[(self.topic, r.partition)]:
                self._read_to[r.partition] = r.end
                self.store.checkpoint(r.partition, r.end)
        return erased
