"""The engine on in-memory fakes (``tests/unit/engine_fakes.py``): build one, run it until a
condition holds, read what it committed. Used by the engine unit tests; they run on the
virtual-time loop (``tests/virtual_time.py``), so the short intervals below cost no real time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable, Collection

import orjson

from consumer.config import load_settings
from consumer.core.dedupe import MessageDeduper
from consumer.core.events import Record
from consumer.core.mapping import Mapper
from consumer.core.profiles import InMemoryProfileStore
from consumer.core.targets import Routing
from consumer.engine.engine import Engine, EngineOptions, Stitching
from consumer.engine.offsets import PartitionStats
from consumer.observe.metrics import Metrics
from consumer.observe.recent_deliveries import RecentDeliveries
from consumer.ratelimit.budget import Budget
from consumer.ratelimit.limiter import LocalBackend, RateLimiter
from tests.harness.guide import LOCATION
from tests.unit.engine_fakes import (
    FakeHighLevel,
    MemoryParkingLog,
    MemoryPartitionedLog,
    MemoryProfileLog,
    MemorySink,
    MemorySource,
    StaticCredentials,
)

TOKEN = "pit-secret-token"
"""The access token every engine test's integration carries (it must never show)."""


def records(
    topic: str, partition: int, events: list[tuple[str, dict[str, object]]]
) -> list[Record]:
    return [
        Record(topic, partition, offset, key.encode(), orjson.dumps(event))
        for offset, (key, event) in enumerate(events)
    ]


def build(
    source: MemorySource,
    highlevel: FakeHighLevel,
    *,
    sink: MemorySink | None = None,
    metrics: Metrics | None = None,
    debugger: RecentDeliveries | None = None,
    parking: MemoryParkingLog | None = None,
    credentials: StaticCredentials | None = None,
    routing: Routing | None = None,
    replays: MemorySource | None = None,
    replays_follow: bool = False,
    profile_log: MemoryProfileLog | MemoryPartitionedLog | None = None,
    delivery_topic: str | None = None,
    stitches: MemorySource | None = None,
    partitions_of: Callable[[str], Collection[int]] | None = None,
    **options: float,
) -> Engine:
    """An engine over fakes, reading topic ``events`` from ``source`` (and ``dlq replay``
    copies from ``replays``, the replay feed: in a group of its own, or with ``replays_follow``
    co-partitioned, following the event feed's assignment); ``routing``: the default
    integration's, instead of every event. ``stitches``: the stitch topic ``stitch`` (a
    following source, fed by ``sink``), with ``partitions_of`` the input's partitioner (needs
    a partitioned ``profile_log``)."""
    settings = load_settings(
        None, {"GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": TOKEN}
    )
    targets = settings.targets()
    if routing is not None:
        targets = [dataclasses.replace(t, routing=routing) for t in targets]
    mapper = Mapper(
        targets,
        profiles=profile_log.store if profile_log is not None else InMemoryProfileStore(),
        deduper=MessageDeduper(max_entries=10_000, ttl_seconds=3600),
        stitch_across=stitches is not None,
    )
    limiter = RateLimiter(
        LocalBackend(Budget(burst_max=10_000, sustained_per_interval=10_000, interval_s=1.0))
    )
    defaults: dict[str, float] = {
        "coalesce_window": 0.0,
        "poll_timeout": 0.01,
        "commit_interval": 0.05,
        "retry_base": 0.01,
        "retry_max": 0.05,
        "drain_timeout": 2.0,
        "parking_check_interval": 0.05,
    }
    sink = sink or MemorySink()
    parking = parking or MemoryParkingLog()
    sink.forward[parking.topic] = parking.source
    stitching = None
    if stitches is not None:
        assert partitions_of is not None
        sink.forward["stitch"] = stitches
        stitching = Stitching(topic="stitch", source=stitches, partitions_of=partitions_of)
    return Engine(
        source=source,
        sink=sink,
        parking_log=parking,
        mapper=mapper,
        limiter=limiter,
        sender=highlevel,
        credentials=credentials or StaticCredentials({"default": TOKEN}),
        locations={"default": LOCATION},
        dead_letter_topic="events.dlq",
        replay_source=None if replays_follow else replays,
        replay_follower=replays if replays_follow else None,
        profile_log=profile_log,
        stitching=stitching,
        source_topics=("events",),
        delivery_topic=delivery_topic,
        metrics=metrics or Metrics(integrations={"default": LOCATION}, topics=["events"]),
        recorder=debugger or RecentDeliveries(integrations=["default"]),
        options=EngineOptions(**{**defaults, **options}),  # type: ignore[arg-type]
        rng=random.Random(1),
    )


async def run_until(engine: Engine, done: Callable[[], bool], limit: float = 10.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(limit):
        while not done():
            await asyncio.sleep(0.01)
    stop.set()
    await task


def committed(source: MemorySource, topic: str = "events", partition: int = 0) -> int | None:
    entry = source.committed.get((topic, partition))
    return entry[0] if entry else None


def partition_stats(
    partition: int = 0, *, incomplete: int = 0, commit: int | None = 10, committed: int | None = 10
) -> PartitionStats:
    """One partition's offset statistics as the tracker reports them (``offsets.PartitionStats``):
    ``commit`` is the next commit point, ``committed`` the last one the broker confirmed."""
    return PartitionStats(
        topic="events",
        partition=partition,
        commit_offset=commit,
        committed_offset=committed,
        highest_admitted=None,
        incomplete=incomplete,
        pending=incomplete,
        restored_remaining=0,
        skipped_done=0,
        truncated_offsets=0,
        budget_fill=0.0,
    )
