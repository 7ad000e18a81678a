"""The replay feed co-partitioned with the event feed (``Engine(replay_follower=...)``): it
reads exactly the replay partitions whose event partitions the member owns, each assigned after
the event partition's restore, and revoked (its in-flight work finished and committed) or lost
before the event partition is."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consumer.core.events import Record
from tests.harness.engine import build, committed, records
from tests.unit.engine_fakes import (
    FakeHighLevel,
    MemoryParkingLog,
    MemoryPartitionedLog,
    MemorySource,
)

pytestmark = pytest.mark.virtual_time

TP = tuple[str, int]
COPY = (("ghl.replayed_from", b"events.dlq/0/0"), ("ghl.original_topic", b"events"))


def copies(partition: int, *users: str) -> list[Record]:
    """``dlq replay``'s copies of identifies, in replay partition ``partition``."""
    events = [
        (user, {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}})
        for user in users
    ]
    return [
        Record("events.replay", partition, r.offset, r.key, r.value, COPY)
        for r in records("events.replay", partition, events)
    ]


class JournalParkingLog(MemoryParkingLog):
    """Notes each restore (the parking topic's read, part of the engine's restore)."""

    def __init__(self, journal: list[tuple[str, list[TP]]]) -> None:
        super().__init__()
        self.journal = journal

    async def unreplayed(self) -> list[Record]:
        self.journal.append(("restored", []))
        return []


async def test_a_member_reads_only_the_replay_partitions_of_the_event_partitions_it_owns() -> None:
    journal: list[tuple[str, list[TP]]] = []
    source = MemorySource({("events", 0): [], ("events", 1): []}, journal=journal)
    replays = MemorySource(
        {("events.replay", p): copies(p, f"user-{p}") for p in range(3)},
        subscribe=False,
        journal=journal,
    )
    highlevel = FakeHighLevel()
    engine = build(
        source, highlevel, replays=replays, replays_follow=True,
        parking=JournalParkingLog(journal),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while [committed(replays, "events.replay", p) for p in range(3)] != [1, 1, None]:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # several polls and commit ticks: partition 2 stays unread
    stop.set()
    await task
    assert sorted(str(u["email"]) for u in highlevel.upserts) == [
        "user-0@example.com",
        "user-1@example.com",
    ]
    # the event partitions restored first, then their replay partitions, with no restore of
    # their own; closing lets the replay partitions go before the event partitions
    assert journal == [
        ("assigned", [("events", 0), ("events", 1)]),
        ("restored", []),
        ("assigned", [("events.replay", 0), ("events.replay", 1)]),
        ("revoked", [("events.replay", 0), ("events.replay", 1)]),
        ("revoked", [("events", 0), ("events", 1)]),
    ]
    assert ("events.replay", 2) not in replays.committed


async def test_a_replay_partition_goes_before_its_event_partition_revoked_after_its_work() -> None:
    """Revoked: the replay partition's upsert in flight is answered and committed before the
    event partition goes. Lost: the replay partition goes without a commit (its work done or
    not), before the event partition. Assigned again: after the event partition."""
    journal: list[tuple[str, list[TP]]] = []
    source = MemorySource({("events", 0): [], ("events", 1): []}, journal=journal)
    replays = MemorySource(
        {("events.replay", 0): copies(0, "slow"), ("events.replay", 1): copies(1, "fast")},
        subscribe=False,
        journal=journal,
    )
    highlevel = FakeHighLevel(delay=lambda p: 0.3 if p["email"] == "slow@example.com" else 0)
    # no commit tick during the test: every commit comes from a revoke
    engine = build(source, highlevel, replays=replays, replays_follow=True, commit_interval=60)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while highlevel.calls < 2 or not highlevel.upserts:
            await asyncio.sleep(0.01)
    assert [u["email"] for u in highlevel.upserts] == ["fast@example.com"]  # slow in flight
    del journal[:]

    await source.revoke([("events", 0)])
    assert [u["email"] for u in highlevel.upserts] == ["fast@example.com", "slow@example.com"]
    assert committed(replays, "events.replay", 0) == 1
    await source.revoke([("events", 1)], lost=True)
    assert committed(replays, "events.replay", 1) is None  # delivered, but lost: no commit
    await source.assign([("events", 1)])
    assert journal == [
        ("revoked", [("events.replay", 0)]),
        ("revoked", [("events", 0)]),
        ("lost", [("events.replay", 1)]),
        ("lost", [("events", 1)]),
        ("assigned", [("events", 1)]),
        ("assigned", [("events.replay", 1)]),
    ]
    stop.set()
    await task
    assert set(replays.positions) == set()  # closing released the rest



async def test_with_partitioned_profiles_a_replay_partition_waits_for_its_restore(
    tmp_path: Path,
) -> None:
    """Partitioned profile state restores event partitions in the background: the replay
    partition of an event partition still restoring is not assigned until that restore is
    done, and its copies are mapped with the restored profiles."""
    source = MemorySource({("events", 0): []})
    replays = MemorySource(
        {("events.replay", 0): copies(0, "user-0")}, subscribe=False, journal=[]
    )
    log = MemoryPartitionedLog(tmp_path)
    log.gate.clear()  # the restore of events/0 hangs until the gate opens
    highlevel = FakeHighLevel()
    engine = build(source, highlevel, replays=replays, replays_follow=True, profile_log=log)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while not log.assigned:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # several polls while the restore hangs
        assert replays.journal == []  # nothing of the replay topic assigned yet
        log.gate.set()
        while committed(replays, "events.replay", 0) != 1:
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert replays.journal[0] == ("assigned", [("events.replay", 0)])
    assert [u["email"] for u in highlevel.upserts] == ["user-0@example.com"]
