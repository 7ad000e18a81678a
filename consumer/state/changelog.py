"""The profile changelog: a compacted Kafka topic, keyed by user key, that makes the profile
store durable (``docs/architecture.md``, "Profiles": profiles survive restarts and rebalances).

Writes: the engine produces ``take_writes()`` after mapping each record and confirms each with
``written`` (see ``ChangelogProfileStore``). Reads: ``restore`` reads the whole topic, up to its
end offsets at the time of the call, into the store. The engine calls it on every assignment
before it admits a record of the new partitions, so an identify consumed on another instance
(or before a crash) enriches a later "Lead Generated" here: that identify's profile write was
confirmed before its offset was committed, hence before this instance resumed after it.

Every instance holds every profile (bounded by the store's ``max_entries``). A restore reads
the whole compacted topic, once per assignment: seconds for hundreds of thousands of users.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Protocol

from consumer.core.profiles import ChangelogProfileStore
from consumer.errors import ProfileDecodeError
from consumer.kafka.clients import Setting
from consumer.kafka.reader import TopicReader

logger = logging.getLogger(__name__)


class RestoreMetrics(Protocol):
    """Where a restore is reported (``consumer.observe.metrics.Metrics``)."""

    def profile_restored(self, seconds: float, size: int) -> None: ...


class ProfileChangelog:
    """``store`` plus its topic. ``restore`` raises ``KafkaAdapterError`` when the topic cannot
    be read (the engine's rebalance callback then fails, which stops the consumer: better than
    mapping without the profiles it promised to keep)."""

    def __init__(
        self,
        *,
        store: ChangelogProfileStore,
        topic: str,
        bootstrap: str,
        metrics: RestoreMetrics,
        extra: Mapping[str, Setting] | None = None,
    ) -> None:
        self.store = store
        self.topic = topic
        self._bootstrap = bootstrap
        self._metrics = metrics
        self._extra = extra

    def take_writes(self) -> list[tuple[str, bytes]]:
        return self.store.take_writes()

    def written(self, key: str) -> None:
        self.store.written(key)

    async def restore(self) -> None:
        """Read the changelog to its current end into the store; records the time taken."""
        started = time.perf_counter()
        reader = TopicReader(bootstrap=self._bootstrap, extra=self._extra)
        applied = skipped = bad = 0
        try:
            await reader.open([self.topic])
            while records := await reader.read(5_000):
                for record in records:
                    if record.key is None:
                        bad += 1
                        continue
                    key = record.key.decode("utf-8", "backslashreplace")
                    try:
                        if self.store.restore(key, record.value):
                            applied += 1
                        else:
                            skipped += 1
                    except ProfileDecodeError:
                        bad += 1
        finally:
            await reader.close()
        seconds = time.perf_counter() - started
        self._metrics.profile_restored(seconds, len(self.store))
        logger.info(
            "profiles restored from %s in %.2fs: %d applied, %d newer here, %d unreadable; %d held",
            self.topic,
            seconds,
            applied,
            skipped,
            bad,
            len(self.store),
        )
