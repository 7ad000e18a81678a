"""``restore_partitions`` against a real broker: only the partitions asked for are read, a
partition whose local state was kept reads only the changelog's tail since its checkpoint, and
a checkpoint the changelog cannot continue, or a changelog deleted and created again (another
topic id, whatever its offsets), rebuilds the partition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.core.profiles import Profile
from consumer.state.changelog import (
    ChangelogTopic,
    PartitionedProfileChangelog,
    restore_partitions,
)
from consumer.state.profile_state import PartitionedProfileStore


def profile(n: int) -> bytes:
    return Profile(fields={"email": f"u{n}@example.com"}).to_bytes()


class Restores:
    """``RestoreMetrics`` that remembers (partition, records read, profiles held) per
    restore and the partitions released."""

    def __init__(self) -> None:
        self.restored: list[tuple[int | None, int, int]] = []
        self.released: list[int] = []

    def profile_restored(
        self, partition: int | None, seconds: float, records: int, size: int
    ) -> None:
        self.restored.append((partition, records, size))

    def profile_released(self, partition: int) -> None:
        self.released.append(partition)


def produce(bootstrap: str, topic: str, records: list[tuple[int, str, bytes | None]]) -> None:
    """(partition, key, value) records, each to the partition it names."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for partition, key, value in records:
        producer.produce(topic, key=key.encode(), value=value, partition=partition)
    assert producer.flush(30) == 0


async def test_only_the_assigned_partitions_are_read_then_only_their_tail(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=3)
    records = [(p, f"p{p}-u{n}", profile(n)) for p in range(3) for n in range(5)]
    produce(kafka_bootstrap, topic, records)
    store = PartitionedProfileStore(tmp_path, topic)
    changelog = ChangelogTopic(topic=topic, bootstrap=kafka_bootstrap)
    restored = await restore_partitions(store, [0, 2], changelog)
    assert [(r.partition, r.start, r.end, r.applied, r.rebuilt) for r in restored] == [
        (0, 0, 5, 5, "no local state"),
        (2, 0, 5, 5, "no local state"),
    ]
    store.select(2)
    assert store.get("p2-u4") == Profile.from_bytes(profile(4))
    assert store.get("p1-u4") is None  # partition 1 is another member's
    store.close_all()

    produce(kafka_bootstrap, topic, [(0, "p0-u0", None), (0, "p0-new", profile(9))])
    again = PartitionedProfileStore(tmp_path, topic)
    restored = await restore_partitions(again, [0], changelog)
    assert [(r.start, r.end, r.applied, r.rebuilt) for r in restored] == [(5, 7, 2, None)]
    again.select(0)
    assert again.get("p0-u0") is None  # the tombstone in the tail
    assert again.get("p0-u3") == Profile.from_bytes(profile(3))  # from the local file
    assert again.get("p0-new") == Profile.from_bytes(profile(9))
    again.close_all()


async def test_a_checkpoint_past_the_changelog_end_rebuilds_the_partition(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    new = new_topic(partitions=1)
    produce(kafka_bootstrap, new, [(0, "u0", profile(7))])
    changelog = ChangelogTopic(topic=new, bootstrap=kafka_bootstrap)
    store = PartitionedProfileStore(tmp_path, new)
    store.open(0, topic_id=await changelog.topic_id())
    store.select(0)
    store.restore(0, "stale", profile(1))
    store.checkpoint(0, 4)  # as if the topic had held 4 records, then lost them unseen
    store.close(0)
    restored = await restore_partitions(store, [0], changelog)
    assert [(r.start, r.end, r.applied) for r in restored] == [(0, 1, 1)]
    assert restored[0].rebuilt == "checkpoint 4 outside the changelog's offsets"
    store.select(0)
    assert store.get("stale") is None
    assert store.get("u0") == Profile.from_bytes(profile(7))
    assert store.checkpoint_of(0) == 1


async def test_a_changelog_recreated_up_to_the_same_offsets_is_not_trusted(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, [(0, "old-a", profile(1)), (0, "old-b", profile(2))])
    changelog = ChangelogTopic(topic=topic, bootstrap=kafka_bootstrap)
    store = PartitionedProfileStore(tmp_path, topic)
    await restore_partitions(store, [0], changelog)
    store.close_all()  # cleanly: checkpoint 2, trusted by a restart on this changelog
    before = await changelog.topic_id()

    # deleted and created again (same name, same partitions), written up to the same offset
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.delete_topics([topic])[topic].result(timeout=30)
    async with asyncio.timeout(60):
        while True:
            try:
                admin.create_topics([NewTopic(topic, num_partitions=2)])[topic].result(30)
                break
            except KafkaException:  # still being deleted
                await asyncio.sleep(0.5)
    produce(kafka_bootstrap, topic, [(0, "new-a", profile(3)), (0, "new-b", profile(4))])
    assert await changelog.topic_id() != before

    again = PartitionedProfileStore(tmp_path, topic)
    restored = await restore_partitions(again, [0], changelog)
    assert [(r.start, r.end, r.applied, r.rebuilt) for r in restored] == [
        (0, 2, 2, "written for another topic id")
    ]
    again.select(0)
    assert again.get("old-a") is None  # nothing of the deleted changelog's state
    assert again.get("new-b") == Profile.from_bytes(profile(4))
    again.close_all()
    # the rebuilt file belongs to the new changelog: the next restart reads its tail only
    last = PartitionedProfileStore(tmp_path, topic)
    [tail] = await restore_partitions(last, [0], changelog)
    assert (tail.start, tail.rebuilt) == (2, None)
    last.close_all()


async def test_the_partitioned_changelog_erases_checkpoints_and_restarts_from_the_tail(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, [(1, "u1", profile(1)), (1, "u2", profile(2))])
    changelog = ChangelogTopic(topic=topic, bootstrap=kafka_bootstrap)
    metrics = Restores()
    log = PartitionedProfileChangelog(
        store=PartitionedProfileStore(tmp_path, topic), changelog=changelog, metrics=metrics
    )
    await log.assign([0, 1])
    assert metrics.restored == [(0, 0, 0), (1, 2, 2)]
    assert log.store.checkpoint_of(1) == 2
    log.select(1)
    log.store.put("u3", Profile.from_bytes(profile(3)))
    writes = log.take_writes()
    assert writes == [(1, "u3", profile(3))]
    produce(kafka_bootstrap, topic, writes)  # as the engine does, to the record's partition
    log.written(1, "u3")
    produce(kafka_bootstrap, topic, [(1, "u1", None)])  # ghl-consumer forget
    assert await log.follow_once() == 1
    assert log.store.get("u1") is None
    assert log.store.checkpoint_of(1) == 4
    assert log.store.sizes() == {0: 0, 1: 2}  # u2 and u3
    log.release([0, 1])
    assert metrics.released == [0, 1]

    again = PartitionedProfileChangelog(
        store=PartitionedProfileStore(tmp_path, topic), changelog=changelog, metrics=metrics
    )
    await again.assign([1])
    assert metrics.restored[-1] == (1, 0, 2)  # the file was kept: nothing left to read
    assert again.store.checkpoint_of(1) == 4
    again.select(1)
    assert again.store.get("u1") is None
    assert again.store.get("u2") == Profile.from_bytes(profile(2))
    assert again.store.get("u3") == Profile.from_bytes(profile(3))
    again.release([1])
