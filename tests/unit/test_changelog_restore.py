"""``ProfileChangelog.restore`` rides out a Kafka error (a leader moving, a broker restarting)
by reading the changelog again, and gives up only after ``restore_retry_seconds``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from consumer.core.events import Record
from consumer.core.profiles import ChangelogProfileStore, Profile
from consumer.errors import KafkaAdapterError
from consumer.kafka.reader import PartitionRange
from consumer.state import changelog
from consumer.state.profile_state import PartitionedProfileStore

pytestmark = pytest.mark.virtual_time

PROFILE = Profile(fields={"email": "sam@example.com"}, consent={"marketing": True})


class FlakyReader:
    """A ``TopicReader`` over one changelog record whose ``open`` fails ``failures`` times
    (shared by every reader made), as librdkafka does while a partition has no leader."""

    failures = 0
    opened = 0

    def __init__(self, **_: object) -> None:
        self._records = [Record("profiles", 0, 0, b"u1", PROFILE.to_bytes())]

    async def open(self, topics: Sequence[str]) -> list[PartitionRange]:
        FlakyReader.opened += 1
        if FlakyReader.failures:
            FlakyReader.failures -= 1
            raise KafkaAdapterError("Failed to get watermark offsets: Not leader for partition")
        return [PartitionRange("profiles", 0, 0, 1)]

    async def read(self, max_records: int = 1000) -> list[Record]:
        records, self._records = self._records, []
        return records

    async def close(self) -> None:
        return None


class Restores:
    """``RestoreMetrics`` that remembers (partition, records read, profiles held)."""

    def __init__(self) -> None:
        self.restored: list[tuple[int | None, int, int]] = []

    def profile_restored(
        self, partition: int | None, seconds: float, records: int, size: int
    ) -> None:
        self.restored.append((partition, records, size))

    def profile_released(self, partition: int) -> None:
        return None


def topic(retry_seconds: float = 60) -> changelog.ChangelogTopic:
    return changelog.ChangelogTopic(
        topic="profiles", bootstrap="unused:9092", restore_retry_seconds=retry_seconds
    )


def log(retry_seconds: float) -> changelog.ProfileChangelog:
    return changelog.ProfileChangelog(
        store=ChangelogProfileStore(), changelog=topic(retry_seconds), metrics=Restores()
    )


async def test_a_kafka_error_is_read_again_after_a_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(changelog, "TopicReader", FlakyReader)
    FlakyReader.failures, FlakyReader.opened = 2, 0
    profiles = log(retry_seconds=60)
    await profiles.restore()
    assert FlakyReader.opened == 3
    assert profiles.store.get("u1") == PROFILE


async def test_it_gives_up_after_the_retry_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(changelog, "TopicReader", FlakyReader)
    FlakyReader.failures, FlakyReader.opened = 100, 0
    with pytest.raises(KafkaAdapterError, match="Not leader"):
        await log(retry_seconds=5).restore()
    assert FlakyReader.opened == 3  # at 0, 1 and 3 s; the next try would be after 7 s


class FlakyPartitionReader(FlakyReader):
    """``FlakyReader`` as ``restore_partitions`` opens it (chosen partitions, from offsets)."""

    async def open(  # type: ignore[override]
        self, topics: Sequence[str], *, start: object = None, only: object = None
    ) -> list[PartitionRange]:
        return await super().open(topics)


async def test_a_partitioned_restore_that_fails_is_tried_again_from_its_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(changelog, "TopicReader", FlakyPartitionReader)

    async def topic_id(bootstrap: str, topic: str, **_: object) -> str:
        return "changelog-id"  # no broker here: the id a DescribeTopics would give

    monkeypatch.setattr(changelog, "topic_id", topic_id)
    FlakyReader.failures, FlakyReader.opened = 1, 0
    metrics = Restores()
    log = changelog.PartitionedProfileChangelog(
        store=PartitionedProfileStore(tmp_path, "profiles"), changelog=topic(), metrics=metrics
    )
    await log.assign([0])
    assert FlakyReader.opened == 2  # the failed attempt closed partition 0; the next reopened it
    assert metrics.restored == [(0, 1, 1)]
    assert log.store.checkpoint_of(0) == 1
    log.select(0)
    assert log.store.get("u1") == PROFILE
