"""The two implementations of the engine's ``Source`` the contract suite runs against.

``cluster`` is parametrised: ``memory`` is the in-memory source of the engine unit tests
(``tests/unit/engine_fakes.py``); ``kafka`` is ``KafkaSource`` on the session's real broker. A
``Cluster`` is one topic of ``PARTITIONS`` partitions and one consumer group: ``produce`` appends
records to a partition, ``member()`` makes a new (not yet started) member of the group.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from typing import Protocol

import pytest
from confluent_kafka import Producer

from consumer.core.events import Record
from consumer.engine.offsets import Assignment, CommitPoint
from consumer.engine.ports import RebalanceListener
from consumer.kafka.source import KafkaSource  # the one import of KafkaSource in this suite
from tests.kafka_broker import create_topic
from tests.unit.engine_fakes import MemorySource

PARTITIONS = 3


class Source(Protocol):
    """What the engine calls on its source (``Engine(source=...)``)."""

    async def start(self, listener: RebalanceListener) -> None: ...
    async def poll_batch(self, max_records: int, timeout_s: float) -> list[Record]: ...
    async def pause(self, partitions: Sequence[tuple[str, int]]) -> None: ...
    async def resume(self, partitions: Sequence[tuple[str, int]]) -> None: ...
    async def commit(self, points: Sequence[CommitPoint]) -> None: ...
    async def close(self) -> None: ...


class Cluster(Protocol):
    topic: str

    async def produce(self, partition: int, values: Sequence[bytes]) -> None: ...
    def member(self) -> Source: ...


class MemoryCluster:
    """MemorySources sharing one log and one group commit store."""

    topic = "events"

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], list[Record]] = {
            (self.topic, p): [] for p in range(PARTITIONS)
        }
        self.committed: dict[tuple[str, int], tuple[int, str]] = {}

    async def produce(self, partition: int, values: Sequence[bytes]) -> None:
        log = self.records[(self.topic, partition)]
        for value in values:
            log.append(Record(self.topic, partition, len(log), b"key", value))

    def member(self) -> Source:
        return MemorySource(self.records, committed=self.committed)


class KafkaCluster:
    """KafkaSources of one fresh group on a fresh topic of the session's broker."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.topic = create_topic(bootstrap, partitions=PARTITIONS)
        self.group = f"contract-{uuid.uuid4().hex[:8]}"

    async def produce(self, partition: int, values: Sequence[bytes]) -> None:
        def send() -> None:
            producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True})
            for value in values:
                producer.produce(self.topic, key=b"key", value=value, partition=partition)
            assert producer.flush(30) == 0

        await asyncio.to_thread(send)

    def member(self) -> Source:
        return KafkaSource(
            bootstrap=self.bootstrap,
            group_id=self.group,
            topics=[self.topic],
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One topic and one group, in memory or on the real broker."""
    if request.param == "memory":
        yield MemoryCluster()
    else:
        yield KafkaCluster(request.getfixturevalue("kafka_bootstrap"))


class Member:
    """A started source and the listener the engine would be: it logs every callback and every
    record in the order they happened, and commits ``on_revoke_commit`` from ``on_revoked``
    (as the engine commits its final points there)."""

    def __init__(self, source: Source, pause_on_assign: Collection[int] = ()) -> None:
        self.source = source
        self.pause_on_assign = pause_on_assign  # partitions paused inside ``on_assigned``
        self.log: list[tuple[str, tuple[str, int]]] = []
        self.records: list[Record] = []
        self.assigned: dict[tuple[str, int], Assignment] = {}
        self.revoked: list[tuple[str, int]] = []
        self.on_revoke_commit: list[CommitPoint] = []

    async def on_assigned(self, partitions: Sequence[Assignment]) -> None:
        for a in partitions:
            self.log.append(("assigned", (a.topic, a.partition)))
            self.assigned[(a.topic, a.partition)] = a
        held = [(a.topic, a.partition) for a in partitions if a.partition in self.pause_on_assign]
        if held:
            await self.source.pause(held)

    async def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        for topic, partition in partitions:
            self.log.append(("revoked", (topic, partition)))
            self.revoked.append((topic, partition))
        points = [p for p in self.on_revoke_commit if (p.topic, p.partition) in self.revoked]
        if points:
            await self.source.commit(points)

    async def on_lost(self, partitions: Sequence[tuple[str, int]]) -> None:
        raise AssertionError(f"no partition may be lost in these tests: {partitions}")

    async def poll(self) -> None:
        for record in await self.source.poll_batch(100, 0.1):
            self.log.append(("record", (record.topic, record.partition)))
            self.records.append(record)

    async def poll_until(self, done: Callable[[], bool], limit: float = 30.0) -> None:
        async with asyncio.timeout(limit):
            while not done():
                await self.poll()

    async def poll_for(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while loop.time() < until:
            await self.poll()

    def offsets(self, topic: str, partition: int) -> list[int]:
        return [r.offset for r in self.records if (r.topic, r.partition) == (topic, partition)]


@pytest.fixture
async def members(cluster: Cluster) -> AsyncIterator[Callable[..., Awaitable[Member]]]:
    """Factory: ``await members()`` starts a new member of ``cluster``'s group (``await
    members(pause_on_assign={0})``: one that pauses partition 0 as it is assigned); every
    member still open is closed at the end."""
    started: list[Member] = []

    async def start(pause_on_assign: Collection[int] = ()) -> Member:
        member = Member(cluster.member(), pause_on_assign)
        await member.source.start(member)
        started.append(member)
        return member

    yield start
    for member in started:
        await member.source.close()
