"""The engine's batch hot path (``Engine._ingest``): a poll batch in one pass, its profile
writes coalesced per user and produced together, and drops that complete without a ticket."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from consumer.core.events import ContactUpsert, Record
from consumer.core.profiles import Profile
from consumer.engine.dispatch import Ticket
from consumer.engine.offsets import PartitionOffsets
from consumer.observe.metrics import Metrics
from tests.harness.engine import build, committed, run_until
from tests.harness.guide import LOCATION
from tests.unit.engine_fakes import FakeHighLevel, MemoryProfileLog, MemorySink, MemorySource

pytestmark = pytest.mark.virtual_time


class GatedSink(MemorySink):
    """Holds every ``produce_many`` until ``gate`` is set; remembers each call's records."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.batches: list[tuple[str, list[tuple[bytes | None, bytes | None]]]] = []

    async def produce_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        partition: int | None = None,
    ) -> list[Exception | None]:
        self.batches.append((topic, list(records)))
        await self.gate.wait()
        return await super().produce_many(topic, records, partition=partition)


def page(user: str, n: int, consent: bool) -> Record:
    event = {
        "type": "track",
        "event": "Page Viewed",
        "userId": user,
        "messageId": f"{user}-{n}",
        "context": {"consent": {"categoryPreferences": {"marketing": consent}}},
    }
    return Record("events", 0, n, user.encode(), orjson.dumps(event))


async def test_one_write_per_user_per_batch_and_offsets_wait_for_it() -> None:
    # One poll batch: u1 changes consent twice (granted, then denied), u2 once; u1's third
    # event changes nothing.
    batch = [page("u1", 0, True), page("u2", 1, True), page("u1", 2, False)]
    batch.append(page("u1", 3, False))
    source = MemorySource({("events", 0): batch})
    sink, log = GatedSink(), MemoryProfileLog()
    engine = build(source, FakeHighLevel(), sink=sink, profile_log=log)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while not sink.batches:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # several commit intervals
    # the last consent wins, in one write per user, and nothing is committed before it lands
    assert [(t, [k for k, _ in records]) for t, records in sink.batches] == [
        ("profiles", [b"u1", b"u2"])
    ]
    written = dict(sink.batches[0][1])
    assert Profile.from_bytes(written[b"u1"] or b"").consent == {"marketing": False}
    # the first three records wait for the write: nothing below offset 0 is committed (offset
    # 3 changed no profile and is done: the offset map may say so)
    assert committed(source) in (None, 0)
    sink.gate.set()
    async with asyncio.timeout(5):
        while committed(source) != 4:
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert len(sink.batches) == 1
    assert engine.stats.dropped["not_mapped"] == 4


async def test_drops_without_profile_changes_complete_at_once_and_are_counted_per_batch() -> None:
    user_events = [page("u1", n, True) for n in range(50)]
    source = MemorySource({("events", 0): user_events})
    log = MemoryProfileLog()
    log.store.put("u1", Profile(consent={"marketing": True}))  # consent as before: no writes
    log.take_writes()
    log.written(None, "u1")
    metrics = Metrics(integrations={"default": LOCATION}, topics=["events"])
    engine = build(source, FakeHighLevel(), metrics=metrics, profile_log=log)
    await run_until(engine, lambda: committed(source) == 50)
    assert engine.stats.consumed == 50
    assert engine.stats.dropped["not_mapped"] == 50
    text = metrics.exposition().decode()
    assert 'ghl_events_consumed_total{topic="events"} 50.0' in text
    assert 'ghl_events_dropped_total{reason="not_mapped"} 50.0' in text


async def test_one_user_key_in_two_locations_is_two_contacts_pending_apart() -> None:
    """An integration whose events choose their location (OAuth ``location_path``) reaches one
    user key in several locations: each is its own HighLevel contact, so their upserts never
    fold together (folding upserts of two locations is refused by ``merged_with``)."""
    engine = build(MemorySource({("events", 0): []}), FakeHighLevel(), coalesce_window=60.0)
    partition = PartitionOffsets("events", 0, committed=None)
    for offset, location in enumerate(("loc-a", "loc-b", "loc-a")):
        partition.admit(offset)
        record = Record("events", 0, offset, b"u1", b"{}")
        upsert = ContactUpsert(
            integration_id="default",
            location_id=location,
            contact_key="u1",
            fields={"email": "sam@example.com"},
        )
        engine._dispatcher.offer(upsert, Ticket(record, partition, 1), now=0.0)
    assert engine._dispatcher.tickets == 3
    assert engine.stats.coalesced == 1  # the second loc-a upsert folded into the first
