"""Identity stitching across partitions in the engine (``Engine(stitching=...)``): a profile to
stitch held in another partition is asked for through the stitch topic (the asking record
completes once the request is confirmed), the member holding it hands it over as a merge to the
asker's partition, and the merge is folded into the user's profile there."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumer.core.events import Record
from consumer.core.profiles import Profile
from consumer.core.stitch import StitchMerge, StitchRequest
from consumer.observe.metrics import STITCH_DIRECTIONS, STITCH_MERGE_RESULTS, Metrics
from consumer.state.encryption import ProfileCipher
from tests.harness.engine import LOCATION, build, committed
from tests.unit.engine_fakes import FakeHighLevel, MemoryPartitionedLog, MemorySink, MemorySource

pytestmark = pytest.mark.virtual_time

# where the input's producers put each key (the anonymous id's events and the user's apart)
PARTITION_OF = {"anon-1": 0, "u1": 1, "lost": 0}
ANONYMOUS = {"type": "identify", "anonymousId": "anon-1", "traits": {"phone": "+447700900123"}}
LOGIN = {"type": "identify", "userId": "u1", "anonymousId": "anon-1", "traits": {"email": "u@x.io"}}
LEAD = {"type": "track", "event": "Lead Generated", "userId": "u1"}


def event(partition: int, offset: int, key: str, body: dict[str, Any]) -> Record:
    return Record("events", partition, offset, key.encode(), orjson.dumps(body))


def stitch_source(partitions: int = 2) -> MemorySource:
    return MemorySource({("stitch", p): [] for p in range(partitions)}, subscribe=False)


async def until(condition: Any, limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


class StitchGatedSink(MemorySink):
    """Holds every produce to the stitch topic until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def produce_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        partition: int | None = None,
    ) -> list[Exception | None]:
        if topic == "stitch":
            await self.gate.wait()
        return await super().produce_many(topic, records, partition=partition)


async def test_an_anonymous_profile_in_another_partition_reaches_the_users_next_upsert(
    tmp_path: Path,
) -> None:
    source = MemorySource(
        {
            ("events", 0): [event(0, 0, "anon-1", ANONYMOUS)],
            ("events", 1): [event(1, 0, "u1", LOGIN)],
        }
    )
    stitches, sink, highlevel = stitch_source(), MemorySink(), FakeHighLevel()
    log = MemoryPartitionedLog(tmp_path)
    metrics = stitch_metrics()
    engine = build(
        source, highlevel, sink=sink, profile_log=log, stitches=stitches,
        partitions_of=lambda key: {PARTITION_OF[key]}, metrics=metrics,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    # the request (stitch partition 0) and the merge (stitch partition 1) are both handled
    await until(
        lambda: committed(stitches, "stitch", 0) == 1 and committed(stitches, "stitch", 1) == 1
    )
    source.records[("events", 1)].append(event(1, 1, "u1", LEAD))
    await until(lambda: committed(source, partition=1) == 2)
    stop.set()
    await task

    request, merge = (r for r in sink.placed if r[0] == "stitch")
    assert request == ("stitch", b"anon-1", 0)
    assert merge == ("stitch", b"u1", 1)
    values = {key: value for topic, key, value, _ in sink.produced if topic == "stitch"}
    assert orjson.loads(values[b"anon-1"]) == {"v": 1, "into": "u1", "p": 1}
    assert highlevel.upserts[-1]["phone"] == "+447700900123"
    assert highlevel.upserts[-1]["email"] == "u@x.io"
    # the request was confirmed before the "asked for" write; the handed-over profile is
    # emptied in its own partition
    writes = [r for r in sink.placed if r[0] in ("stitch", "profiles")]
    assert writes.index(("stitch", b"anon-1", 0)) < writes.index(("profiles", b"anon-1", 1))
    assert ("profiles", b"anon-1", 0) in writes[writes.index(("stitch", b"u1", 1)) :]
    assert held_at(tmp_path, 0, "anon-1") == Profile()
    # one member asked, answered and folded: each step counted once
    assert stitch_counts(metrics) == {
        ("requests", "sent"): 1,
        ("requests", "handled"): 1,
        ("merges", "sent"): 1,
        ("merges", "folded"): 1,
        ("consumed", "stitch"): 2,
    }


async def test_the_asking_record_completes_only_once_its_request_is_confirmed(
    tmp_path: Path,
) -> None:
    source = MemorySource({("events", 0): [], ("events", 1): [event(1, 0, "u1", LOGIN)]})
    sink, highlevel = StitchGatedSink(), FakeHighLevel()
    engine = build(
        source, highlevel, sink=sink, profile_log=MemoryPartitionedLog(tmp_path),
        stitches=stitch_source(), partitions_of=lambda key: {PARTITION_OF[key]},
    )
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    await until(lambda: len(highlevel.upserts) == 1)
    await asyncio.sleep(0.3)  # several commit ticks
    assert committed(source, partition=1) in (None, 0)  # offset 0 not done
    assert not [r for r in sink.placed if r[0] == "profiles"]  # "asked for" waits too
    sink.gate.set()
    await until(lambda: committed(source, partition=1) == 1)
    stop.set()
    await task


async def test_no_request_when_the_profile_could_only_be_in_the_records_own_partition(
    tmp_path: Path,
) -> None:
    source = MemorySource({("events", 0): [], ("events", 1): [event(1, 0, "u1", LOGIN)]})
    sink = MemorySink()
    engine = build(
        source, FakeHighLevel(), sink=sink, profile_log=MemoryPartitionedLog(tmp_path),
        stitches=stitch_source(), partitions_of=lambda key: {1},
    )
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    await until(lambda: committed(source, partition=1) == 1)
    stop.set()
    await task
    assert not [r for r in sink.placed if r[0] == "stitch"]


async def test_a_request_for_nothing_held_completes_and_a_merge_is_sealed(
    tmp_path: Path,
) -> None:
    cipher = ProfileCipher({"k1": b"\x07" * 32}, write_key="k1")
    held = Profile(fields={"phone": "+447700900123"})
    log = MemoryPartitionedLog(tmp_path, cipher)
    requests = [
        Record("stitch", 0, 0, *_kv(StitchRequest("lost", "u1", 1))),  # nothing held
        Record("stitch", 0, 1, *_kv(StitchRequest("anon-1", "u1", 1))),
        Record("stitch", 0, 2, *_kv(StitchRequest("anon-1", "u1", 1))),  # re-read: emptied
    ]
    stitches = MemorySource({("stitch", 0): requests, ("stitch", 1): []}, subscribe=False)
    source = MemorySource({("events", 0): [], ("events", 1): []})
    sink = MemorySink()
    metrics = stitch_metrics()
    engine = build(
        source, FakeHighLevel(), sink=sink, profile_log=log, stitches=stitches,
        partitions_of=lambda key: {PARTITION_OF[key]}, metrics=metrics,
    )
    log.store.open(0)  # anon-1's profile is held in partition 0 before the member starts
    log.select(0)
    log.store.put("anon-1", held)
    log.store.take_writes()
    log.store.written(0, "anon-1")  # confirmed: the file is kept
    log.store.close(0)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    await until(
        lambda: committed(stitches, "stitch", 0) == 3 and committed(stitches, "stitch", 1) == 1
    )
    stop.set()
    await task
    merges = [(k, v) for t, k, v, _ in sink.produced if t == "stitch"]
    assert len(merges) == 1  # one hand-over, however often asked
    key, value = merges[0]
    assert key == b"u1"
    body = orjson.loads(value or b"")
    sealed = base64.b64decode(body["profile"])
    assert sealed[0] == 1  # an envelope, not the plain profile
    assert b"447700900123" not in sealed
    assert Profile.from_bytes(cipher.open("u1", sealed)) == held
    assert held_at(tmp_path, 1, "u1") == held  # folded where u1's events are
    assert stitch_counts(metrics) == {
        ("requests", "sent"): 0,  # none asked by this member's events
        ("requests", "handled"): 3,
        ("merges", "sent"): 1,
        ("merges", "empty"): 2,  # nothing held, then handed over already
        ("merges", "folded"): 1,
        ("consumed", "stitch"): 4,
    }


async def test_a_record_that_is_not_a_stitch_is_dead_lettered(tmp_path: Path) -> None:
    forged = StitchMerge("anon-1", "u1", b"not a profile")
    stitches = MemorySource(
        {
            ("stitch", 0): [
                Record("stitch", 0, 0, b"k", b"{"),
                Record("stitch", 0, 1, *_kv(forged)),
            ]
        },
        subscribe=False,
    )
    source = MemorySource({("events", 0): []})
    sink = MemorySink()
    engine = build(
        source, FakeHighLevel(), sink=sink, profile_log=MemoryPartitionedLog(tmp_path),
        stitches=stitches, partitions_of=lambda key: {0},
    )
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    await until(lambda: committed(stitches, "stitch", 0) == 2)
    stop.set()
    await task
    dead = [headers for topic, _, _, headers in sink.produced if topic == "events.dlq"]
    reasons = [dict(h)["ghl.reason"] for h in dead]
    assert reasons == [b"invalid_stitch", b"invalid_stitch"]


def stitch_metrics() -> Metrics:
    return Metrics(integrations={"default": LOCATION}, topics=["events", "stitch"])


def stitch_counts(metrics: Metrics) -> dict[tuple[str, str], float]:
    """The stitch counters that moved, and the stitch topic's consumed records."""
    counts = {
        ("requests", d): metrics.registry.get_sample_value(
            "ghl_stitch_requests_total", {"direction": d}
        )
        for d in STITCH_DIRECTIONS
    } | {
        ("merges", r): metrics.registry.get_sample_value("ghl_stitch_merges_total", {"result": r})
        for r in STITCH_MERGE_RESULTS
    }
    counts["consumed", "stitch"] = metrics.registry.get_sample_value(
        "ghl_events_consumed_total", {"topic": "stitch"}
    )
    return {k: v for k, v in counts.items() if v or k == ("requests", "sent")}


def held_at(state_dir: Path, partition: int, key: str) -> Profile | None:
    """``key``'s profile in ``partition`` as the member left it (closed at shutdown)."""
    again = MemoryPartitionedLog(state_dir)
    again.store.open(partition)
    assert again.select(partition)
    return again.store.get(key)


def _kv(stitch: StitchRequest | StitchMerge) -> tuple[bytes, bytes]:
    return stitch.key(), stitch.value()
