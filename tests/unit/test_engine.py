"""The engine against in-memory fakes: ordering, coalescing, commit-after-delivery, outcomes."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from consumer.core.deadletter import read_failure
from consumer.core.events import Record
from consumer.core.targets import Routing
from consumer.errors import InstallationBroken, OAuthError, TokenStoreError
from consumer.observe.metrics import Metrics
from consumer.observe.recent_deliveries import RecentDeliveries
from tests.harness.engine import TOKEN, build, committed, records, run_until
from tests.harness.guide import GUIDE_IDENTIFY, GUIDE_LEAD, GUIDE_UPSERT, LOCATION
from tests.unit.engine_fakes import (
    FakeHighLevel,
    MemoryParkingLog,
    MemorySink,
    MemorySource,
    StaticCredentials,
)

pytestmark = pytest.mark.virtual_time

async def test_the_guides_flow_within_the_window_costs_one_call_with_the_exact_payload() -> None:
    source = MemorySource(
        {
            ("events", 0): records(
                "events", 0, [("lead-987", GUIDE_IDENTIFY), ("lead-987", GUIDE_LEAD)]
            )
        }
    )
    highlevel = FakeHighLevel()
    metrics = Metrics(integrations={"default": LOCATION}, topics=["events"])
    debugger = RecentDeliveries(integrations=["default"])
    engine = build(source, highlevel, metrics=metrics, debugger=debugger, coalesce_window=0.2)
    await run_until(engine, lambda: committed(source) == 2)
    assert highlevel.upserts == [GUIDE_UPSERT]
    assert highlevel.tokens == [TOKEN]
    assert (engine.stats.delivered_calls, engine.stats.coalesced) == (1, 1)
    # What operators see: metrics and the event debugger, masked, without the token.
    exposition = metrics.exposition().decode()
    assert 'ghl_events_consumed_total{topic="events"} 2.0' in exposition
    assert 'ghl_events_coalesced_total{integration="default"} 1.0' in exposition
    assert 'ghl_upserts_total{integration="default",status_class="2xx"} 1.0' in exposition
    [entry] = debugger.recent()
    shown = orjson.dumps(entry.to_json()).decode()
    assert entry.events == ("identify", "Lead Generated")
    assert "sam@example.com" not in shown
    assert "s***@example.com" in shown
    assert TOKEN not in shown


async def test_each_contact_sees_its_events_in_order_with_one_call_in_flight() -> None:
    rng = random.Random(5)
    events = []
    for version in range(8):
        for user in range(30):
            events.append(
                (
                    f"u{user}",
                    {
                        "type": "identify",
                        "userId": f"u{user}",
                        "traits": {"email": f"u{user}@example.com", "first_name": f"v{version}"},
                    },
                )
            )
    source = MemorySource(
        {
            ("events", p): records("events", p, [e for e in events if hash(e[0]) % 2 == p])
            for p in (0, 1)
        }
    )
    highlevel = FakeHighLevel(delay=lambda payload: rng.random() * 0.01)
    engine = build(source, highlevel, max_in_flight=16)
    total = len(events)
    await run_until(
        engine,
        lambda: (committed(source, "events", 0) or 0) + (committed(source, "events", 1) or 0)
        == total,
    )
    assert highlevel.max_in_flight_per_contact == 1
    seen: dict[object, list[str]] = {}
    for payload in highlevel.upserts:
        seen.setdefault(payload["email"], []).append(str(payload["firstName"]))
    assert len(seen) == 30
    for versions in seen.values():
        assert versions == sorted(versions), versions  # never an older version after a newer
        assert versions[-1] == "v7"


async def test_nothing_is_committed_before_delivery_and_everything_after() -> None:
    gate = asyncio.Event()
    source = MemorySource(
        {("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)] * 1)}
    )
    highlevel = FakeHighLevel(script=lambda payload: 200 if gate.is_set() else 503)
    engine = build(source, highlevel)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    await asyncio.sleep(0.3)  # several failed attempts, several commit ticks
    assert committed(source) in (None, 0)  # never past the undelivered record
    assert engine.stats.retries >= 2
    gate.set()
    async with asyncio.timeout(5):
        while committed(source) != 1:
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert len(highlevel.upserts) == 1


async def test_a_422_goes_to_the_dead_letter_topic_with_highlevels_answer() -> None:
    sink = MemorySink()
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    engine = build(source, FakeHighLevel(script=lambda payload: 422), sink=sink)
    await run_until(engine, lambda: committed(source) == 1)
    [(topic, key, value, headers)] = sink.produced
    assert (topic, key) == ("events.dlq", b"lead-987")
    assert value == orjson.dumps(GUIDE_IDENTIFY)
    h = {k: v.decode() for k, v in headers}
    assert h["ghl.reason"] == "rejected_by_highlevel"
    assert h["ghl.status"] == "422"
    assert h["ghl.message"] == "property x should not exist"
    assert h["ghl.trace_id"] == "trace-1"
    assert (h["ghl.source.topic"], h["ghl.source.partition"], h["ghl.source.offset"]) == (
        "events",
        "0",
        "0",
    )
    assert TOKEN not in repr(sink.produced)


async def test_poison_and_analytics_complete_without_a_call() -> None:
    sink = MemorySink()
    page = {"type": "page", "userId": "u1", "name": "Home"}
    source = MemorySource(
        {
            ("events", 0): [
                Record("events", 0, 0, b"u1", b"{not json"),
                Record("events", 0, 1, b"u1", orjson.dumps(page)),
                Record("events", 0, 2, b"u1", None),
            ]
        }
    )
    highlevel = FakeHighLevel()
    engine = build(source, highlevel, sink=sink)
    await run_until(engine, lambda: committed(source) == 3)
    assert highlevel.upserts == []
    reasons = [dict(h)["ghl.reason"] for _, _, _, h in sink.produced]
    assert reasons == [b"invalid_json", b"empty_value"]
    assert engine.stats.dropped == {"not_mapped": 1}


async def test_a_revoked_partition_commits_what_is_done_and_drops_its_waiting_work() -> None:
    events = [
        ("a", {**GUIDE_IDENTIFY, "userId": "a"}),
        ("b", {"type": "page", "userId": "b"}),
    ]
    source = MemorySource({("events", 0): records("events", 0, events)})
    highlevel = FakeHighLevel()
    engine = build(source, highlevel, coalesce_window=30.0)  # the upsert waits in its window
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while engine.stats.consumed < 2:
            await asyncio.sleep(0.01)
    await source.revoke([("events", 0)])
    assert committed(source) in (None, 0)  # offset 0 is not done: nothing past it
    assert engine.snapshot().buffered_records == 0
    commits_at_revoke = len(source.commits)
    await asyncio.sleep(0.2)
    stop.set()
    await task
    assert highlevel.upserts == []
    assert len(source.commits) == commits_at_revoke  # never again for the revoked partition


async def test_a_partition_assigned_back_redelivers_its_waiting_work_not_a_duplicate() -> None:
    """Found by the soak: a broker outage past the session timeout loses every partition, and
    the group gives them back to the same members, which re-read from the committed offsets.
    The undelivered identify read again is the same record, not a duplicate of itself (its
    messageId is in this member's de-duplication window): it must be delivered, not dropped."""
    event = {**GUIDE_IDENTIFY, "messageId": "m-lead-987"}
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", event)])})
    highlevel = FakeHighLevel()
    engine = build(source, highlevel, coalesce_window=0.5)  # the upsert waits in its window
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while engine.stats.consumed < 1:
            await asyncio.sleep(0.01)
    await source.revoke([("events", 0)])
    assert highlevel.upserts == []
    await source.assign([("events", 0)])
    async with asyncio.timeout(5):
        while committed(source) != 1:
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert len(highlevel.upserts) == 1
    assert engine.stats.dropped == {}


async def test_a_replayed_dead_letter_is_delivered_not_dropped_as_a_duplicate() -> None:
    """Issue 15, finding 3: the original is rejected (dead-lettered); ``dlq replay`` copies
    it back to the source topic, within this member's de-duplication window. The copy is a new
    origin: delivered. A second copy of the same dead letter (a rerun) is a duplicate."""
    event = {**GUIDE_IDENTIFY, "messageId": "m-lead-987"}
    (original,) = records("events", 0, [("lead-987", event)])
    replay = (("ghl.replayed_from", b"events.dead-letter/0/0"),)
    copies = [
        Record("events", 0, offset, original.key, original.value, replay) for offset in (1, 2)
    ]
    source = MemorySource({("events", 0): [original]})
    answers = iter([422])
    highlevel = FakeHighLevel(script=lambda payload: next(answers, 200))
    sink = MemorySink()
    engine = build(source, highlevel, sink=sink)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while committed(source) != 1:
            await asyncio.sleep(0.01)
        assert highlevel.upserts == []  # rejected: dead-lettered
        source.records[("events", 0)].extend(copies)
        while committed(source) != 3:
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert len(highlevel.upserts) == 1
    assert engine.stats.dropped == {"duplicate": 1}


def replay_copies(
    original: Record, headers: list[tuple[tuple[str, bytes], ...]]
) -> list[Record]:
    """Copies of ``original`` as ``dlq replay`` writes them to the replay topic
    (``events.replay``, partition 0), one per header tuple, offsets from 0."""
    return [
        Record("events.replay", 0, offset, original.key, original.value, copy_headers)
        for offset, copy_headers in enumerate(headers)
    ]


async def test_the_replay_feed_routes_a_copy_as_its_original_topic_and_commits_it_apart() -> None:
    """Issue 15, finding 4: ``dlq replay`` writes to the replay topic, read by a feed (a
    consumer group) of its own. A copy is routed as a record of the topic its
    ``ghl.original_topic`` names (here an integration restricted to ``events`` receives it); a
    copy naming no configured topic is dead-lettered, never routed as another topic. The
    replay feed's offsets are committed on its own source; the event feed's source never sees
    a replay partition."""
    (original,) = records("events", 0, [("lead-987", GUIDE_IDENTIFY)])
    copies = replay_copies(
        original,
        [
            (("ghl.replayed_from", b"events.dlq/0/0"), ("ghl.original_topic", b"events")),
            (("ghl.original_topic", b"payments"),),
            (),
        ],
    )
    source = MemorySource({("events", 0): []})
    replays = MemorySource({("events.replay", 0): copies})
    highlevel, sink = FakeHighLevel(), MemorySink()
    engine = build(
        source,
        highlevel,
        sink=sink,
        routing=Routing(topics=frozenset({"events"})),
        replays=replays,
    )
    await run_until(engine, lambda: committed(replays, "events.replay", 0) == 3)
    assert len(highlevel.upserts) == 1
    assert highlevel.upserts[0]["email"] == GUIDE_UPSERT["email"]
    assert engine.stats.dropped == {}
    dead = [headers for topic, _, _, headers in sink.produced if topic == "events.dlq"]
    failures = [read_failure(h) for h in dead]
    assert [f["reason"] for f in failures] == ["invalid_replay"] * 2
    assert [(f["source.topic"], f["source.offset"]) for f in failures] == [
        ("events.replay", "1"),
        ("events.replay", "2"),
    ]
    assert failures[0]["original_topic"] == "payments"  # kept: a rerun is checked again
    assert "payments" in failures[0]["error"]
    assert set(source.committed) <= {("events", 0)}  # the event feed: source partitions only


async def test_a_replayed_copy_is_committed_only_after_its_delivery() -> None:
    """As for source records: while HighLevel answers 503 the replay feed commits nothing
    past the copy; once delivered, its offset is committed."""
    (original,) = records("events", 0, [("lead-987", GUIDE_IDENTIFY)])
    (copy,) = replay_copies(original, [(("ghl.original_topic", b"events"),)])
    replays = MemorySource({("events.replay", 0): [copy]})
    failing = True
    highlevel = FakeHighLevel(script=lambda payload: 503 if failing else 200)
    engine = build(MemorySource({("events", 0): []}), highlevel, replays=replays)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while highlevel.calls < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # several commit intervals
        assert committed(replays, "events.replay", 0) in (None, 0)
        failing = False
        while committed(replays, "events.replay", 0) != 1:
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert len(highlevel.upserts) == 1
    assert engine.stats.delivered_events == 1


async def test_source_and_replay_work_of_one_identity_is_never_in_flight_together() -> None:
    """Per-identity order within an instance holds across the two feeds: for each of 20
    people an event of the source topic (anonymous id) and a replayed copy (user id), carrying
    the same email, each slow to answer, are never sent at the same time (the dispatcher's
    identity lock); a replayed copy under the same contact key as a source event queues
    behind it like any later event of that key."""
    source_events: list[tuple[str, dict[str, object]]] = []
    replayed: list[tuple[str, dict[str, object]]] = []
    for person in range(20):
        traits = {"email": f"p{person}@example.com"}
        anonymous = {"type": "identify", "anonymousId": f"anon-{person}", "traits": traits}
        identified = {"type": "identify", "userId": f"user-{person}", "traits": traits}
        source_events.append((f"anon-{person}", anonymous))
        replayed.append((f"user-{person}", identified))
    header = (("ghl.original_topic", b"events"),)
    copies = [
        Record("events.replay", 0, r.offset, r.key, r.value, header)
        for r in records("events.replay", 0, replayed)
    ]
    source = MemorySource({("events", 0): records("events", 0, source_events)})
    replays = MemorySource({("events.replay", 0): copies})
    highlevel = FakeHighLevel(delay=lambda payload: 0.05)
    engine = build(source, highlevel, replays=replays, max_in_flight=64)
    await run_until(
        engine,
        lambda: committed(source) == 20 and committed(replays, "events.replay", 0) == 20,
    )
    assert highlevel.max_in_flight_per_contact == 1
    assert len(highlevel.upserts) == 40
    assert engine.stats.delivered_events == 40


async def test_the_replay_feed_restores_before_its_records_one_restore_at_a_time() -> None:
    """A replayed copy is new work, like a source record: before the first record of newly
    assigned replay partitions the engine learns what the previous owner left (the parking
    topic's contacts here, the profiles too). Restores never overlap."""

    class CountingParkingLog(MemoryParkingLog):
        reads = 0
        overlapping = 0
        running = 0

        async def unreplayed(self) -> list[Record]:
            self.reads += 1
            self.running += 1
            self.overlapping = max(self.overlapping, self.running)
            await asyncio.sleep(0.05)
            self.running -= 1
            return []

    parking = CountingParkingLog()
    source = MemorySource({("events", 0): []})
    replays = MemorySource({("events.replay", 0): []})
    engine = build(source, FakeHighLevel(), parking=parking, replays=replays)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while parking.reads < 2 or parking.running:
            await asyncio.sleep(0.01)
        assert parking.reads == 2  # the event feed's assignment, then the replay feed's
        await replays.revoke([("events.replay", 0)])
        await replays.assign([("events.replay", 0)])
        assert parking.reads == 3  # a replay partition alone is assigned: restored first
        await source.revoke([("events", 0)])
        await replays.revoke([("events.replay", 0)])
        await asyncio.gather(
            source.assign([("events", 0)]), replays.assign([("events.replay", 0)])
        )
    stop.set()
    await task
    assert parking.reads == 5
    assert parking.overlapping == 1  # the two assigned together restored one after the other


async def test_revoke_waits_for_work_in_flight_and_never_resends_it_after() -> None:
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel(script=lambda payload: 503, delay=lambda payload: 0.3)
    engine = build(source, highlevel, revoke_wait=2.0)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while highlevel.calls == 0:
            await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await source.revoke([("events", 0)])
    waited = loop.time() - started
    assert 0.2 < waited < 2.0  # until the in-flight request answered, not the whole bound
    await asyncio.sleep(0.3)  # several backoffs' worth: a retry would have gone out by now
    stop.set()
    await task
    assert highlevel.calls == 1
    assert (engine.snapshot().buffered_records, engine.snapshot().in_flight) == (0, 0)


async def test_a_full_partition_pauses_and_resumes_as_work_drains() -> None:
    events = [
        (f"u{i}", {"type": "identify", "userId": f"u{i}", "traits": {"email": f"u{i}@x.io"}})
        for i in range(60)
    ]
    source = MemorySource({("events", 0): records("events", 0, events)})
    highlevel = FakeHighLevel(delay=lambda payload: 0.005)
    engine = build(source, highlevel, max_buffered_per_partition=10, max_in_flight=2, poll_batch=5)
    paused_seen = False

    def done() -> bool:
        nonlocal paused_seen
        paused_seen = paused_seen or bool(source.paused)
        return committed(source) == 60

    await run_until(engine, done)
    assert paused_seen
    assert not source.paused
    assert len(highlevel.upserts) == 60


async def _peak_buffered_bytes(max_buffered_bytes: int) -> tuple[int, bool]:
    """40 identifies of ~100 kB each (padding HighLevel never sees) to a slow HighLevel;
    return the peak of ``buffered_bytes`` seen while all are delivered, and whether intake
    paused."""
    padding = "x" * 100_000
    events = [
        (f"u{i}", {"type": "identify", "userId": f"u{i}", "traits": {"email": f"u{i}@x.io"},
                   "context": {"page": {"referrer": padding}}})
        for i in range(40)
    ]  # fmt: skip
    source = MemorySource({("events", 0): records("events", 0, events)})
    highlevel = FakeHighLevel(delay=lambda payload: 0.01)
    engine = build(
        source, highlevel, max_in_flight=1, poll_batch=2, max_buffered_bytes=max_buffered_bytes
    )
    peak, paused_seen = 0, False

    def done() -> bool:
        nonlocal peak, paused_seen
        peak = max(peak, engine.snapshot().buffered_bytes)
        paused_seen = paused_seen or bool(source.paused)
        return committed(source) == 40

    await run_until(engine, done)
    assert len(highlevel.upserts) == 40
    return peak, paused_seen


async def test_waiting_records_are_bounded_in_bytes_not_only_in_count() -> None:
    """The record count (20,000 by default) alone would let 20,000 large records wait; the
    byte budget pauses intake at 300 kB (plus the poll batch that crossed it) and resumes at
    half, and everything is still delivered. Without it, far more waits."""
    bounded, paused = await _peak_buffered_bytes(300_000)
    assert paused
    assert 0 < bounded <= 300_000 + 2 * 100_200
    unbounded, _ = await _peak_buffered_bytes(64 * 1024 * 1024)
    assert unbounded > 1_000_000


@pytest.mark.parametrize("status", [401, 403])
async def test_an_unauthorized_integration_parks_its_events_and_replays_them_once_it_works(
    status: int,
) -> None:
    answers: dict[str, int] = {"status": status}
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel(script=lambda payload: answers["status"])
    parking = MemoryParkingLog()
    engine = build(source, highlevel, parking=parking, unauthorized_probe_interval=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):  # parked: the source partition moves on
        while committed(source) != 1:
            await asyncio.sleep(0.01)
    [parked] = parking.source.records[("parking", 0)]
    assert dict(parked.headers)["ghl.park.reason"] == b"unauthorized"
    assert engine.snapshot().unhealthy == {"default"}
    await asyncio.sleep(0.25)  # probes keep failing: nothing delivered, nothing lost
    assert highlevel.upserts == []
    answers["status"] = 200
    async with asyncio.timeout(5):
        while committed(parking.source, "parking") != 1:
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert len(highlevel.upserts) == 1
    assert highlevel.upserts[0]["email"] == "sam@example.com"
    assert engine.snapshot().unhealthy == frozenset()


async def test_a_rotated_token_is_read_after_a_401_and_nothing_parks() -> None:
    """Issue 15: the token's source holds a new token (a rotated Private Integration token);
    the 401 to the old one makes the dispatcher read it again and send with it."""
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel(revoked=frozenset({TOKEN}))
    parking = MemoryParkingLog()
    credentials = StaticCredentials({"default": TOKEN}, rotated={"default": "pit-rotated"})
    engine = build(source, highlevel, parking=parking, credentials=credentials)
    await run_until(engine, lambda: committed(source) == 1)
    assert highlevel.tokens == [TOKEN, "pit-rotated"]
    assert [u["email"] for u in highlevel.upserts] == ["sam@example.com"]
    assert parking.source.records.get(("parking", 0), []) == []
    assert credentials.rereads == 1
    assert engine.snapshot().unhealthy == frozenset()


async def test_a_refused_token_with_no_new_one_parks_after_one_reread() -> None:
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel(revoked=frozenset({TOKEN}))
    parking = MemoryParkingLog()
    credentials = StaticCredentials({"default": TOKEN})
    engine = build(source, highlevel, parking=parking, credentials=credentials)
    await run_until(engine, lambda: committed(source) == 1)
    [parked] = parking.source.records[("parking", 0)]
    assert dict(parked.headers)["ghl.park.reason"] == b"unauthorized"
    assert highlevel.tokens == [TOKEN]
    assert credentials.rereads == 1


async def test_a_broken_installation_parks_in_order_and_replays_once_reconnected() -> None:
    """OAuth: no token at all (the installation needs ``oauth reconnect``): the events park
    with their own reason, in order, probes ask for a token again, and once it is back the
    parked upserts arrive in order."""
    events = [
        ("lead-987", {**GUIDE_IDENTIFY, "traits": {**GUIDE_IDENTIFY["traits"], "first_name": n}})  # type: ignore[dict-item]
        for n in ("v1", "v2", "v3")
    ]
    all_records = records("events", 0, events)
    source = MemorySource({("events", 0): all_records[:1]})
    highlevel = FakeHighLevel()
    parking = MemoryParkingLog()
    credentials = StaticCredentials(
        {"default": TOKEN}, failure=InstallationBroken("agency-1", "refresh token is invalid")
    )
    engine = build(
        source,
        highlevel,
        parking=parking,
        credentials=credentials,
        unauthorized_probe_interval=0.1,
        coalesce_window=0.0,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while committed(source) != 1:
            await asyncio.sleep(0.01)
    source.records[("events", 0)].extend(all_records[1:])  # after the first parked
    async with asyncio.timeout(5):
        while committed(source) != 3:
            await asyncio.sleep(0.01)
    parked = parking.source.records[("parking", 0)]
    reasons = [dict(record.headers)["ghl.park.reason"] for record in parked]
    assert reasons[0] == b"installation_broken"
    assert set(reasons[1:]) <= {b"installation_broken", b"contact_parked"}
    await asyncio.sleep(0.25)  # probes find no token: nothing sent, nothing lost
    assert highlevel.upserts == []
    credentials.failure = None  # `oauth reconnect` stored a new grant
    async with asyncio.timeout(5):
        while committed(parking.source, "parking") != len(parked):
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert [u["firstName"] for u in highlevel.upserts][-1] == "v3"
    names = [u["firstName"] for u in highlevel.upserts]
    assert names == sorted(names)  # in order
    assert engine.snapshot().unhealthy == frozenset()


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (OAuthError("locationToken: 400", status=400, retriable=False), "rejected_by_highlevel"),
        (TokenStoreError("token store: Redis: ConnectionError"), None),
    ],
)
async def test_no_token_rejects_a_refused_mint_and_retries_a_passing_failure(
    failure: Exception, reason: str | None
) -> None:
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel()
    sink = MemorySink()
    credentials = StaticCredentials({"default": TOKEN}, failure=failure)
    engine = build(source, highlevel, sink=sink, credentials=credentials, retry_base=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    if reason is None:
        async with asyncio.timeout(5):
            while len(credentials.asked) < 3:
                await asyncio.sleep(0.01)
        assert committed(source) in (None, 0)  # retried, not done
        credentials.failure = None
    async with asyncio.timeout(5):
        while committed(source) != 1:
            await asyncio.sleep(0.01)
    stop.set()
    await task
    letters = [read_failure(h) for topic, _, _, h in sink.produced if topic == "events.dlq"]
    if reason is None:
        assert len(highlevel.upserts) == 1
        assert letters == []
    else:
        assert [letter["reason"] for letter in letters] == [reason]
        assert highlevel.upserts == []


async def test_an_upsert_to_a_location_the_app_is_not_installed_in_is_rejected() -> None:
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel()
    sink = MemorySink()
    credentials = StaticCredentials({"default": TOKEN}, installed={"default": frozenset({"L9"})})
    engine = build(source, highlevel, sink=sink, credentials=credentials)
    await run_until(engine, lambda: committed(source) == 1)
    [failure] = [read_failure(h) for topic, _, _, h in sink.produced if topic == "events.dlq"]
    assert failure["reason"] == "unknown_location"
    assert LOCATION in failure["error"]
    assert highlevel.upserts == []
    assert credentials.asked == []
    assert engine.stats.rejected["unknown_location"] == 1


async def test_a_contact_failing_past_max_retry_is_parked_and_its_newer_events_follow_it() -> None:
    first = {**GUIDE_IDENTIFY, "traits": {**GUIDE_IDENTIFY["traits"], "first_name": "v1"}}  # type: ignore[dict-item]
    second = {**GUIDE_IDENTIFY, "traits": {**GUIDE_IDENTIFY["traits"], "first_name": "v2"}}  # type: ignore[dict-item]
    failing = {"on": True}
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", first)])})
    highlevel = FakeHighLevel(script=lambda payload: 503 if failing["on"] else 200)
    parking = MemoryParkingLog()
    engine = build(source, highlevel, parking=parking, max_retry=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while committed(source) != 1:
            await asyncio.sleep(0.01)
    # A newer event of the same contact must queue behind the parked one, not overtake it.
    source.records[("events", 0)].append(
        Record("events", 0, 1, b"lead-987", orjson.dumps(second))
    )
    async with asyncio.timeout(5):
        while committed(source) != 2:
            await asyncio.sleep(0.01)
    reasons = [dict(r.headers)["ghl.park.reason"] for r in parking.source.records[("parking", 0)]]
    assert reasons[0] == b"retry_exhausted"
    assert set(reasons[1:]) <= {b"contact_parked"}
    failing["on"] = False
    async with asyncio.timeout(5):
        while not highlevel.upserts or highlevel.upserts[-1]["firstName"] != "v2":
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert [u["firstName"] for u in highlevel.upserts] in (["v1", "v2"], ["v2"])


async def test_fields_highlevel_did_not_apply_are_counted_by_name() -> None:
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel(drops=frozenset({"phone"}))
    metrics = Metrics(integrations={"default": LOCATION}, topics=["events"])
    engine = build(source, highlevel, metrics=metrics)
    await run_until(engine, lambda: committed(source) == 1)
    assert engine.stats.ignored_fields == {"phone": 1}
    exposition = metrics.exposition().decode()
    assert 'ghl_ignored_fields_total{field="phone",integration="default"} 1.0' in exposition


async def test_fields_left_out_by_the_mapping_are_counted_by_field_and_reason() -> None:
    event = {**GUIDE_IDENTIFY, "traits": {**GUIDE_IDENTIFY["traits"], "gender": True}}
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", event)])})
    highlevel = FakeHighLevel()
    metrics = Metrics(integrations={"default": LOCATION}, topics=["events"])
    engine = build(source, highlevel, metrics=metrics)
    await run_until(engine, lambda: committed(source) == 1)
    assert len(highlevel.upserts) == 1
    exposition = metrics.exposition().decode()
    assert 'ghl_fields_omitted_total{field="gender",reason="wrong_type"} 1.0' in exposition


async def test_shutdown_drains_in_flight_work_then_commits() -> None:
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel(delay=lambda payload: 0.3)
    engine = build(source, highlevel)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while engine.snapshot().in_flight == 0:
            await asyncio.sleep(0.005)
    stop.set()
    await task
    assert committed(source) == 1
    assert source.closed




async def test_two_keys_carrying_one_email_are_never_in_flight_together() -> None:
    # An anonymous id and a user id (two keys, so no key order between them) for each of 20
    # people, each event slow to answer: without the identity lock both would be in flight.
    events: list[tuple[str, dict[str, object]]] = []
    for person in range(20):
        traits = {"email": f"p{person}@example.com"}
        anonymous = {"type": "identify", "anonymousId": f"anon-{person}", "traits": traits}
        identified = {"type": "identify", "userId": f"user-{person}", "traits": traits}
        events += [(f"anon-{person}", anonymous), (f"user-{person}", identified)]
    source = MemorySource({("events", 0): records("events", 0, events)})
    highlevel = FakeHighLevel(delay=lambda payload: 0.05)
    engine = build(source, highlevel, max_in_flight=64)
    await run_until(engine, lambda: committed(source) == len(events))
    assert highlevel.max_in_flight_per_contact == 1
    assert len(highlevel.upserts) == 40  # every event delivered, none folded across keys
    assert engine.stats.delivered_events == 40


async def test_a_refused_permanent_dnd_resends_the_update_without_dnd(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel(permanent_dnd=frozenset({"sam@example.com"}))
    metrics = Metrics(integrations={"default": LOCATION}, topics=["events"])
    sink = MemorySink()
    engine = build(source, highlevel, metrics=metrics, sink=sink)
    with caplog.at_level("WARNING"):
        await run_until(engine, lambda: committed(source) == 1)
    sent = {k: v for k, v in GUIDE_UPSERT.items() if k not in ("source", "tags")}
    assert highlevel.refused == [sent]  # identify only: no source, no tags
    assert highlevel.upserts == [{k: v for k, v in sent.items() if k != "dnd"}]
    assert (engine.stats.permanent_dnd_kept, engine.stats.dead_lettered) == (1, 0)
    assert engine.stats.ignored_fields == {}  # dnd was not sent the second time
    assert sink.produced == []  # nothing dead-lettered
    exposition = metrics.exposition().decode()
    assert (
        'ghl_permanent_dnd_kept_total{channel="SMS",integration="default"} 1.0' in exposition
    )
    assert 'ghl_upserts_total{integration="default",status_class="4xx"} 1.0' in exposition
    logged = caplog.text
    assert "permanent SMS DND of contact s***@example.com" in logged
    assert "sam@example.com" not in logged
    assert TOKEN not in logged


async def test_other_400s_still_dead_letter_the_update() -> None:
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel(script=lambda payload: 400)
    sink = MemorySink()
    engine = build(source, highlevel, sink=sink)
    await run_until(engine, lambda: committed(source) == 1)
    assert (engine.stats.permanent_dnd_kept, engine.stats.dead_lettered) == (0, 1)
    assert highlevel.calls == 1
