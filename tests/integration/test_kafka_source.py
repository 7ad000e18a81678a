"""The Kafka adapter against a real broker: both rebalance protocols (classic cooperative-sticky
and KIP-848), batches, commit metadata read back, pause/resume, revocation, leaving the group,
and the producer and topic helpers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Producer

# ConfigResource: documented in confluent_kafka.admin; the re-export is not marked for mypy.
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from consumer.core.events import Record
from consumer.engine.offsets import Assignment, CommitPoint, OffsetMap
from consumer.engine.ports import Produced
from consumer.errors import CommitFailedError, ConfigError, ProduceFailedError
from consumer.kafka.admin import TopicSpec, ensure_topics
from consumer.kafka.clients import GroupProtocol, Partition
from consumer.kafka.producer import KafkaProducer
from consumer.kafka.source import KafkaSource
from tests.integration.consumer_harness import committed_records

pytestmark = pytest.mark.integration

# Long enough that a prompt hand-over can only come from leaving the group, not a timeout.
SESSION_TIMEOUT_MS = 45_000


@dataclass
class Member:
    """One group member as the engine would drive it: records what the source reports and, on
    revocation, commits what ``final_points`` says (inside the callback)."""

    source: KafkaSource
    records: list[Record] = field(default_factory=list)
    assigned: list[list[Assignment]] = field(default_factory=list)
    revoked: list[list[Partition]] = field(default_factory=list)
    lost: list[list[Partition]] = field(default_factory=list)
    final_points: Callable[[list[Partition]], list[CommitPoint]] | None = None

    async def on_assigned(self, partitions: Sequence[Assignment]) -> None:
        self.assigned.append(list(partitions))

    async def on_revoked(self, partitions: Sequence[Partition]) -> None:
        self.revoked.append(list(partitions))
        if self.final_points is not None:
            await self.source.commit(self.final_points(list(partitions)), sync=True)

    async def on_lost(self, partitions: Sequence[Partition]) -> None:
        self.lost.append(list(partitions))

    async def poll(self, timeout_s: float = 0.2) -> list[Record]:
        batch = await self.source.poll_batch(500, timeout_s)
        self.records.extend(batch)
        return batch

    def of(self, partition: int) -> list[int]:
        return [r.offset for r in self.records if r.partition == partition]


@pytest.fixture(params=["classic", "consumer"])
def protocol(request: pytest.FixtureRequest) -> GroupProtocol:
    value: GroupProtocol = request.param
    return value


@pytest.fixture
async def members(
    kafka_bootstrap: str, protocol: GroupProtocol
) -> AsyncIterator[Callable[..., Awaitable[Member]]]:
    """Factory ``await members(topic, group)``: a started member; all closed at the end."""
    started: list[Member] = []

    async def make(topic: str, group: str, **kwargs: Any) -> Member:
        timeouts: dict[str, Any] = (
            {"session_timeout_ms": SESSION_TIMEOUT_MS, "heartbeat_interval_ms": 1000}
            if protocol == "classic"
            else {}
        )
        source = KafkaSource(
            bootstrap=kafka_bootstrap,
            group_id=group,
            topics=[topic],
            group_protocol=protocol,
            **timeouts,
            **kwargs,
        )
        member = Member(source)
        await source.start(member)
        started.append(member)
        return member

    yield make
    for member in started:
        await member.source.close()


def produce(bootstrap: str, topic: str, per_partition: dict[int, int], tag: str = "") -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(
                topic,
                key=f"user-{partition}".encode(),
                value=f"{tag}{partition}:{i}".encode(),
                partition=partition,
                headers=[("source", b"test"), ("empty", None)],
            )
    assert producer.flush(30) == 0


async def poll_until(
    members: list[Member], done: Callable[[], bool], timeout_s: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached in time"
        for member in members:
            await member.poll(0.1)


async def poll_for(members: list[Member], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for member in members:
            await member.poll(0.1)


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, Any]:
    """Committed (offset, metadata) per partition (``consumer_harness.committed_records``)."""
    committed = committed_records(bootstrap, group, topic, partitions)
    return {tp.partition: (tp.offset, tp.metadata) for tp in committed}


def group_name() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


# --- consuming and committing -------------------------------------------------------------------


@pytest.mark.slow
async def test_batches_and_commit_metadata_restored_by_the_next_member(
    kafka_bootstrap: str, new_topic: Callable[..., str], members: Callable[..., Awaitable[Member]]
) -> None:
    topic, group = new_topic(partitions=3), group_name()
    produce(kafka_bootstrap, topic, {0: 10, 1: 10, 2: 10})
    first = await members(topic, group)
    await poll_until([first], lambda: len(first.records) == 30)

    (assignment,) = first.assigned
    assert sorted((a.partition, a.committed) for a in assignment) == [(p, None) for p in range(3)]
    for p in range(3):
        assert first.of(p) == list(range(10))  # in order, each once
    record = next(r for r in first.records if r.partition == 1 and r.offset == 4)
    assert (record.topic, record.key, record.value) == (topic, b"user-1", b"1:4")
    assert record.headers == (("source", b"test"), ("empty", b""))
    assert record.timestamp_ms is not None
    assert record.timestamp_ms > 1_600_000_000_000

    lags = {lag.partition: lag for lag in await first.source.lag()}
    assert {p: (lag.position, lag.high_watermark, lag.lag) for p, lag in lags.items()} == {
        p: (10, 10, 0) for p in range(3)
    }

    # Partition 0: 3 is the lowest offset not done, 5 and 6 are done above it.
    metadata = OffsetMap.from_offsets(3, [5, 6]).encode()
    points = [CommitPoint(topic, 0, 3, metadata), CommitPoint(topic, 1, 10, "")]
    await first.source.commit(points, sync=True)
    await first.source.close()
    assert sorted(p.partition for p in first.revoked[-1]) == [0, 1, 2]  # close revokes all

    second = await members(topic, group)
    await poll_until([second], lambda: len(second.records) == 7 + 10)
    restored = {a.partition: a for a in second.assigned[0]}
    assert (restored[0].committed, restored[0].metadata) == (3, metadata)
    assert set(OffsetMap.decode(restored[0].metadata, commit_offset=3)) == {5, 6}
    assert restored[1].committed == 10
    assert (restored[2].committed, restored[2].metadata) == (None, None)
    # Fetching starts exactly at the committed offsets.
    assert (second.of(0), second.of(1), second.of(2)) == (list(range(3, 10)), [], list(range(10)))


async def test_asynchronous_commit_is_applied(
    kafka_bootstrap: str, new_topic: Callable[..., str], members: Callable[..., Awaitable[Member]]
) -> None:
    topic, group = new_topic(partitions=1), group_name()
    produce(kafka_bootstrap, topic, {0: 3})
    member = await members(topic, group)
    await poll_until([member], lambda: len(member.records) == 3)
    await member.source.commit([CommitPoint(topic, 0, 2, "x")], sync=False)
    deadline = time.monotonic() + 15
    while committed_offsets(kafka_bootstrap, group, topic, 1)[0] != (2, "x"):
        assert time.monotonic() < deadline
        await member.poll(0.2)  # serves the commit's result
    assert member.source.commit_failures == 0


async def test_commit_failure_is_raised_with_the_partition(
    kafka_bootstrap: str, new_topic: Callable[..., str], members: Callable[..., Awaitable[Member]]
) -> None:
    topic, group = new_topic(partitions=1), group_name()
    produce(kafka_bootstrap, topic, {0: 1})
    member = await members(topic, group)
    await poll_until([member], lambda: len(member.records) == 1)
    too_large = "m" * 5000  # the broker's offset.metadata.max.bytes is 4096
    with pytest.raises(CommitFailedError) as caught:
        await member.source.commit([CommitPoint(topic, 0, 1, too_large)], sync=True)
    assert [p for p, _ in caught.value.failed] == [Partition(topic, 0)]
    assert "metadata" in str(caught.value).lower()


@pytest.mark.slow
async def test_pause_stops_one_partition_while_others_continue(
    kafka_bootstrap: str, new_topic: Callable[..., str], members: Callable[..., Awaitable[Member]]
) -> None:
    topic, group = new_topic(partitions=2), group_name()
    produce(kafka_bootstrap, topic, {0: 5, 1: 5})
    member = await members(topic, group)
    await poll_until([member], lambda: len(member.records) == 10)

    await member.source.pause([Partition(topic, 0), Partition("other", 0)])
    assert member.source.paused == {Partition(topic, 0)}
    produce(kafka_bootstrap, topic, {0: 5, 1: 5}, tag="later-")
    await poll_until([member], lambda: len(member.of(1)) == 10)
    await poll_for([member], 2.0)  # p0 records would have arrived by now
    assert member.of(0) == list(range(5))

    await member.source.resume([Partition(topic, 0)])
    assert member.source.paused == frozenset()
    await poll_until([member], lambda: len(member.of(0)) == 10)
    assert member.of(0) == list(range(10))  # nothing skipped, nothing twice


@pytest.mark.slow
async def test_cancelled_poll_loses_no_records(
    kafka_bootstrap: str, new_topic: Callable[..., str], members: Callable[..., Awaitable[Member]]
) -> None:
    topic, group = new_topic(partitions=1), group_name()
    member = await members(topic, group)
    await poll_until([member], lambda: bool(member.assigned))
    waiting = asyncio.create_task(member.source.poll_batch(100, 3.0))
    await asyncio.sleep(0.3)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    produce(kafka_bootstrap, topic, {0: 4})  # likely fetched by the abandoned consume call
    await poll_until([member], lambda: len(member.records) >= 4)
    assert member.of(0) == [0, 1, 2, 3]


# --- groups -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_second_member_takes_only_moved_partitions_and_revoked_ones_never_commit(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    members: Callable[..., Awaitable[Member]],
    protocol: GroupProtocol,
) -> None:
    topic, group = new_topic(partitions=4), group_name()
    produce(kafka_bootstrap, topic, {p: 2 for p in range(4)})
    first = await members(topic, group)
    # The engine's final commit, inside on_revoked: "offset 2 done, map says revoked".
    first.final_points = lambda gone: [CommitPoint(p.topic, p.partition, 2, "final") for p in gone]
    await poll_until([first], lambda: len(first.records) == 8)
    everything = {Partition(topic, p) for p in range(4)}
    assert first.source.assignment == everything
    await first.source.pause(everything)  # paused when they move: must not stay paused

    second = await members(topic, group)
    await poll_until(
        [first, second],
        lambda: bool(second.source.assignment)
        and first.source.assignment | second.source.assignment == everything
        and not first.source.assignment & second.source.assignment,
    )
    moved = second.source.assignment
    kept = first.source.assignment
    # Incremental: only the moved partitions were revoked, the rest never stopped.
    assert {p for batch in first.revoked for p in batch} == moved
    assert first.lost == []
    assert first.source.paused == kept
    # The final commit happened inside on_revoked, before the new owner read it.
    got = {a.partition: (a.committed, a.metadata) for batch in second.assigned for a in batch}
    assert got == {p.partition: (2, "final") for p in moved}
    committed = committed_offsets(kafka_bootstrap, group, topic, 4)
    assert {p.partition: committed[p.partition] for p in moved} == got

    # Stale work of the old owner: refused, never sent to the broker.
    stale = [CommitPoint(p.topic, p.partition, 999, "stale") for p in moved]
    await first.source.commit(stale, sync=True)
    assert first.source.commits_refused == len(moved)
    await poll_for([first, second], 1.0)
    committed = committed_offsets(kafka_bootstrap, group, topic, 4)
    assert {p.partition: committed[p.partition] for p in moved} == got

    # Leaving the group hands the partitions back promptly (well within the session timeout).
    await second.source.close()
    started = time.monotonic()
    await poll_until([first], lambda: first.source.assignment == everything, timeout_s=20)
    assert time.monotonic() - started < 15
    # Returned partitions come back unpaused; the kept ones are still paused.
    produce(kafka_bootstrap, topic, {p: 1 for p in range(4)}, tag="after-")
    before = {p: len(first.of(p)) for p in range(4)}
    await poll_until(
        [first], lambda: all(len(first.of(p.partition)) > before[p.partition] for p in moved)
    )
    await poll_for([first], 1.0)
    assert all(len(first.of(p.partition)) == before[p.partition] for p in kept)


@pytest.mark.slow
async def test_close_with_an_assignment_pending_is_prompt(
    kafka_bootstrap: str, new_topic: Callable[..., str], members: Callable[..., Awaitable[Member]]
) -> None:
    topic, group = new_topic(partitions=4), group_name()
    first = await members(topic, group)
    second = await members(topic, group)
    everything = {Partition(topic, p) for p in range(4)}
    await poll_until(
        [first, second],
        lambda: first.source.assignment | second.source.assignment == everything
        and bool(first.source.assignment)
        and bool(second.source.assignment),
    )
    await second.source.close()
    await asyncio.sleep(3)  # the first member is not polled: its new assignment stays pending
    started = time.monotonic()
    await first.source.close()
    assert time.monotonic() - started < 8
    revoked = {p for batch in first.revoked for p in batch}
    assigned = {Partition(a.topic, a.partition) for batch in first.assigned for a in batch}
    assert revoked == assigned  # everything it was told about, it was told to give up


# --- configuration ------------------------------------------------------------------------------


def test_settings_the_protocol_forbids_are_refused() -> None:
    with pytest.raises(ConfigError, match="broker-side"):
        KafkaSource(
            bootstrap="x:1",
            group_id="g",
            topics=["t"],
            group_protocol="consumer",
            session_timeout_ms=6000,
        )
    with pytest.raises(ConfigError, match=r"partition\.assignment\.strategy"):
        KafkaSource(
            bootstrap="x:1",
            group_id="g",
            topics=["t"],
            extra={"partition.assignment.strategy": "range"},
        )
    with pytest.raises(ConfigError, match="topic"):
        KafkaSource(bootstrap="x:1", group_id="g", topics=[])


async def test_invalid_librdkafka_setting_fails_start(kafka_bootstrap: str) -> None:
    source = KafkaSource(
        bootstrap=kafka_bootstrap, group_id="g", topics=["t"], extra={"no.such.setting": 1}
    )
    with pytest.raises(
        ConfigError, match=r'^kafka\.librdkafka: No such configuration property: "no\.such\.'
    ):
        await source.start(Member(source))


# --- producer and topics ------------------------------------------------------------------------


async def test_ensure_topics_creates_missing_ones_once(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    specs = [
        TopicSpec(f"dead-letters-{suffix}", partitions=2),
        TopicSpec(f"profiles-{suffix}", partitions=1, config={"cleanup.policy": "compact"}),
    ]
    created = await ensure_topics(kafka_bootstrap, specs)
    assert sorted(created) == sorted(s.name for s in specs)
    assert await ensure_topics(kafka_bootstrap, specs) == []

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource("topic", f"profiles-{suffix}")
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["cleanup.policy"].value == "compact"
    metadata = admin.list_topics(timeout=30).topics
    assert len(metadata[f"dead-letters-{suffix}"].partitions) == 2


async def test_producer_confirms_delivery_with_headers(
    kafka_bootstrap: str, new_topic: Callable[..., str], members: Callable[..., Awaitable[Member]]
) -> None:
    topic = new_topic(partitions=1)
    producer = KafkaProducer(bootstrap=kafka_bootstrap)
    futures = [
        await producer.send(
            topic,
            key=f"k{i}".encode(),
            value=f"v{i}".encode(),
            headers=[("reason", b"invalid_json"), ("status", b"422")],
        )
        for i in range(3)
    ]
    delivered = await asyncio.wait_for(asyncio.gather(*futures), 30)
    assert delivered == [Produced(topic, 0, i) for i in range(3)]
    await producer.produce(topic, key=b"k3", value=b"v3", headers=[])
    await producer.close()
    await producer.close()  # idempotent
    with pytest.raises(ProduceFailedError):
        await producer.produce(topic, key=None, value=b"late")

    reader = await members(topic, group_name())
    await poll_until([reader], lambda: len(reader.records) == 4)
    assert [(r.key, r.value, r.headers) for r in reader.records[:3]] == [
        (f"k{i}".encode(), f"v{i}".encode(), (("reason", b"invalid_json"), ("status", b"422")))
        for i in range(3)
    ]
    assert reader.records[3].headers == ()


@pytest.mark.slow
async def test_undeliverable_record_fails_its_future(kafka_bootstrap: str) -> None:
    producer = KafkaProducer(
        bootstrap=kafka_bootstrap,
        delivery_timeout_ms=2000,
        extra={"message.max.bytes": 2000, "allow.auto.create.topics": False},
    )
    try:
        with pytest.raises(ProduceFailedError):
            await producer.produce("any-topic", key=None, value=b"x" * 5000)
        # A topic that does not exist and is not auto-created: times out, future fails.
        future = await producer.send(f"missing-{uuid.uuid4().hex}", key=None, value=b"x")
        with pytest.raises(ProduceFailedError, match="not delivered"):
            await asyncio.wait_for(future, 30)
    finally:
        await producer.close(timeout_s=5)


async def test_produce_many_waits_once_for_every_record_and_reports_each_failure(
    kafka_bootstrap: str, new_topic: Callable[..., str], members: Callable[..., Awaitable[Member]]
) -> None:
    topic = new_topic(partitions=1)
    producer = KafkaProducer(bootstrap=kafka_bootstrap, extra={"message.max.bytes": 2000})
    try:
        records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(200)]
        records.insert(100, (b"big", b"x" * 5000))  # refused outright: over message.max.bytes
        results = await asyncio.wait_for(producer.produce_many(topic, records), 30)
        assert [i for i, error in enumerate(results) if error is not None] == [100]
        assert isinstance(results[100], ProduceFailedError)
        assert await producer.produce_many(topic, []) == []
    finally:
        await producer.close()
    reader = await members(topic, group_name())
    await poll_until([reader], lambda: len(reader.records) == 200)
    assert [r.key for r in reader.records] == [k for k, _ in records if k != b"big"]


async def test_produce_many_to_a_partition_puts_every_record_there_whatever_its_key(
    kafka_bootstrap: str, new_topic: Callable[..., str], members: Callable[..., Awaitable[Member]]
) -> None:
    # The profile changelog of partitioned profile state: a write goes to its record's
    # partition, not where its key hashes to.
    topic = new_topic(partitions=3)
    producer = KafkaProducer(bootstrap=kafka_bootstrap)
    try:
        records: list[tuple[bytes | None, bytes | None]] = [
            (f"k{i}".encode(), b"v") for i in range(30)
        ]
        assert await producer.produce_many(topic, records, partition=2) == [None] * 30
    finally:
        await producer.close()
    reader = await members(topic, group_name())
    await poll_until([reader], lambda: len(reader.records) == 30)
    assert {r.partition for r in reader.records} == {2}
