"""The engine over partitioned profile state (``ProfileLog.partitioned``): a record's partition
is selected before it is mapped, its profile writes go to that changelog partition explicitly,
newly assigned partitions are restored alone, paused meanwhile, while the others keep being
delivered, and revoked ones are released."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from consumer.core.events import Record
from consumer.engine.backpressure import Decision
from consumer.engine.engine import _Feed, _Restores
from tests.harness.engine import build, committed
from tests.unit.engine_fakes import FakeHighLevel, MemoryPartitionedLog, MemorySink, MemorySource

pytestmark = pytest.mark.virtual_time


def identify(partition: int, offset: int, user: str) -> Record:
    event = {
        "type": "identify",
        "userId": user,
        "messageId": f"{user}-{offset}",
        "traits": {"email": f"{user}@example.com"},
    }
    return Record("events", partition, offset, user.encode(), orjson.dumps(event))


async def until(condition: object, limit: float = 5.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


async def test_writes_go_to_the_record_partition_and_profiles_stay_in_it(tmp_path: Path) -> None:
    source = MemorySource(
        {
            ("events", 0): [identify(0, 0, "ada"), identify(0, 1, "ada")],
            ("events", 1): [identify(1, 0, "bob")],
        }
    )
    sink, log, highlevel = MemorySink(), MemoryPartitionedLog(tmp_path), FakeHighLevel()
    engine = build(source, highlevel, sink=sink, profile_log=log)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    await until(lambda: committed(source, partition=0) == 2 and committed(source, partition=1))
    stop.set()
    await task
    profiles = sorted(p for p in sink.placed if p[0] == "profiles")
    assert profiles == [("profiles", b"ada", 0), ("profiles", b"bob", 1)]
    assert log.assigned == [[0, 1]]
    assert {u["email"] for u in highlevel.upserts} == {"ada@example.com", "bob@example.com"}
    # closed at shutdown (revoked), each held only in its own partition
    assert sorted(p for call in log.released for p in call) == [0, 1]
    again = MemoryPartitionedLog(tmp_path)
    again.store.open(0)
    again.store.open(1)
    assert again.select(0)
    assert again.store.get("ada") is not None
    assert again.store.get("bob") is None
    assert again.select(1)
    assert again.store.get("bob") is not None


async def test_a_new_partition_waits_for_its_own_restore_while_the_others_deliver(
    tmp_path: Path,
) -> None:
    source = MemorySource({("events", 0): [identify(0, 0, "ada")]})
    log, highlevel = MemoryPartitionedLog(tmp_path), FakeHighLevel()
    engine = build(source, highlevel, profile_log=log)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    await until(lambda: committed(source, partition=0) == 1)

    log.gate.clear()  # partition 1's restore takes its time
    source.records[("events", 1)] = [identify(1, 0, "bob")]
    await source.assign([("events", 1)])
    assert ("events", 1) in source.paused  # before any of its records is read
    source.records[("events", 0)].append(identify(0, 1, "cy"))
    await until(lambda: committed(source, partition=0) == 2)  # partition 0 goes on
    await asyncio.sleep(0.2)
    assert source.positions[("events", 1)] == 0  # nothing of partition 1 read yet
    assert log.assigned == [[0], [1]]  # only the new partition restored

    log.gate.set()
    await until(lambda: committed(source, partition=1) == 1)
    assert ("events", 1) not in source.paused
    assert {u["email"] for u in highlevel.upserts} == {
        "ada@example.com",
        "cy@example.com",
        "bob@example.com",
    }

    await source.revoke([("events", 1)])
    assert log.released[-1] == [1]
    assert log.store.partitions == frozenset({0})
    stop.set()
    await task


async def test_a_partition_paused_for_its_restore_is_not_resumed_by_backpressure(
    tmp_path: Path,
) -> None:
    source = MemorySource({("events", 0): [], ("events", 1): []})
    feed = _Feed("events", source)
    log = MemoryPartitionedLog(tmp_path)
    gate = asyncio.Event()

    async def restore(partitions: object) -> None:
        await gate.wait()

    feed.restores = _Restores(feed, restore, log)
    feed.tracker.assign("events", 1, committed=None, metadata=None)
    await feed.restores.assigned([("events", 1)])
    await feed.restores.step()  # the restore runs
    # backpressure paused it too meanwhile, and now wants it back
    await feed.apply(Decision(pause=(("events", 1),), resume=()))
    await feed.apply(Decision(pause=(), resume=(("events", 1),)))
    assert ("events", 1) in source.paused
    gate.set()
    await asyncio.sleep(0)
    await feed.restores.step()  # restored, but backpressure's pause stands
    assert ("events", 1) in source.paused
    await feed.apply(Decision(pause=(), resume=(("events", 1),)))
    assert ("events", 1) not in source.paused
