"""The Event Debugger's other outcomes (``RecentDeliveries`` as the engine's OutcomeRecorder):
every kind shown with its coordinates, masked; two bounded rings; search by user key, userId,
anonymousId and messageId; and the engine recording each outcome where it happens."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from consumer.core.deadletter import ORIGINAL_TOPIC, Failure
from consumer.core.events import ContactUpsert, Record
from consumer.engine.parking import ParkReason, decode_parked, encode_parked
from consumer.highlevel.verdicts import Answer, classify
from consumer.observe.recent_deliveries import (
    KEPT_VALUE_BYTES,
    Hider,
    OutcomeEntry,
    RecentDeliveries,
)
from tests.harness.engine import build, committed, records, run_until
from tests.harness.guide import GUIDE_IDENTIFY, GUIDE_LEAD, LOCATION
from tests.unit.engine_fakes import FakeHighLevel, MemoryParkingLog, MemorySource

KEY = b"k" * 16
HIDE = Hider(KEY)
NOW = 1_700_000_000.0
EMAIL, PHONE = "jane@example.com", "+14155550199"
PERSONAL = (EMAIL, "4155550199", "Jane")


def event_record(
    offset: int,
    *,
    key: str | None = EMAIL,
    message_id: str = "msg-1",
    user: str = "jane",
    topic: str = "events",
    headers: tuple[tuple[str, bytes], ...] = (),
) -> Record:
    value = {
        "type": "track",
        "event": "Page Viewed",
        "userId": f"user-{user}",
        "anonymousId": f"anon-{user}",
        "messageId": message_id,
        "traits": {"email": EMAIL, "phone": PHONE, "first_name": "Jane"},
    }
    return Record(
        topic,
        0,
        offset,
        None if key is None else key.encode(),
        orjson.dumps(value),
        headers,
        1_699_999_999_000,
    )


UPSERT = ContactUpsert(
    integration_id="acme",
    location_id=LOCATION,
    contact_key=EMAIL,
    fields={"email": EMAIL, "phone": PHONE, "firstName": "Jane"},
    events=("identify",),
    message_ids=("msg-9",),
)


def every_kind(debugger: RecentDeliveries) -> None:
    debugger.dropped(event_record(1), "not_mapped", "acme", NOW)
    debugger.dropped(event_record(2), "duplicate", None, NOW + 1)
    debugger.rejected(
        event_record(3), "no_identifier", "traits.email: not a valid email (omitted)", "acme",
        NOW + 2,
    )
    failure = Failure(
        reason="rejected_by_highlevel",
        error="HighLevel answered 422",
        integration_id="acme",
        status=422,
        message=f"email {EMAIL} is invalid, phone {PHONE} too",
        trace_id="trace-422",
    )
    debugger.dead_lettered(event_record(4), failure, NOW + 3)
    debugger.parked([event_record(5), event_record(6)], UPSERT, ParkReason.UNAUTHORIZED, NOW + 4)
    key, value, headers = encode_parked(UPSERT, [event_record(5)], ParkReason.UNAUTHORIZED)
    parked = Record("events.parking", 1, 7, key, value, tuple(headers))
    debugger.replayed(parked, UPSERT, NOW + 5)
    copy = event_record(8, topic="events.replay", headers=((ORIGINAL_TOPIC, b"events"),))
    debugger.replayed(copy, None, NOW + 6)


def test_every_kind_is_shown_newest_first_with_its_record_and_nothing_personal() -> None:
    debugger = RecentDeliveries(integrations=["acme"], hash_key=KEY)
    every_kind(debugger)
    entries = debugger.outcomes()
    assert [(e.kind, e.offset) for e in entries] == [
        ("replayed", 8),
        ("replayed", 7),
        ("parked", 6),
        ("parked", 5),
        ("dead_lettered", 4),
        ("rejected", 3),
        ("duplicate", 2),
        ("dropped", 1),
    ]
    by_offset = {e.offset: e for e in entries}
    dropped = by_offset[1]
    assert (dropped.topic, dropped.partition, dropped.reason) == ("events", 0, "not_mapped")
    assert (dropped.integration, dropped.at, dropped.record_time) == ("acme", NOW, 1_699_999_999)
    assert dropped.contact_key == HIDE(EMAIL)  # the record key is the user key
    assert (dropped.events, dropped.message_ids) == (("Page Viewed",), ("msg-1",))
    assert by_offset[3].error == "traits.email: not a valid email (omitted)"
    dead = by_offset[4]
    assert (dead.reason, dead.status, dead.trace_id) == ("rejected_by_highlevel", 422, "trace-422")
    assert dead.message is not None
    assert "j***@example.com" in dead.message
    assert by_offset[5].reason == "unauthorized"
    replayed = by_offset[7]
    assert (replayed.topic, replayed.integration) == ("events.parking", "acme")
    assert (replayed.events, replayed.message_ids) == (("identify",), ("msg-9",))
    assert replayed.contact_key == HIDE(EMAIL)
    assert replayed.sources == ("events/0/5",)
    assert by_offset[8].original_topic == "events"
    shown = orjson.dumps([e.to_json() for e in entries]).decode()
    for personal in PERSONAL:
        assert personal not in shown, personal
    assert "user-jane" not in shown
    assert "anon-jane" not in shown


def test_showing_personal_data_still_masks_email_and_phone() -> None:
    debugger = RecentDeliveries(integrations=["acme"], show_personal_data=True)
    every_kind(debugger)
    entries = debugger.outcomes()
    shown = orjson.dumps([e.to_json() for e in entries]).decode()
    for personal in (EMAIL, "4155550199"):
        assert personal not in shown, personal
    assert entries[-1].contact_key == "j***@example.com"
    keyed = RecentDeliveries(integrations=["acme"], show_personal_data=True)
    keyed.dropped(event_record(1, key="user-jane"), "not_mapped", None, NOW)
    assert keyed.outcomes()[0].contact_key == "user-jane"


def test_filters_by_kind_and_integration() -> None:
    debugger = RecentDeliveries(integrations=["acme"], hash_key=KEY)
    every_kind(debugger)
    assert [e.offset for e in debugger.outcomes(kind="parked")] == [6, 5]
    assert [e.kind for e in debugger.outcomes(kind="duplicate")] == ["duplicate"]
    # record-level outcomes (no integration) match any integration
    assert len(debugger.outcomes(integration="acme")) == 8
    assert [e.offset for e in debugger.outcomes(integration="beta")] == [8, 2]
    assert len(debugger.outcomes(limit=3)) == 3


def test_drops_and_other_outcomes_have_their_own_bounded_rings() -> None:
    debugger = RecentDeliveries(integrations=["acme"], outcome_capacity=3)
    debugger.rejected(event_record(0), "invalid_event", "no user", None, NOW)
    for offset in range(1, 11):
        debugger.dropped(event_record(offset), "not_routed", None, NOW + offset)
    entries = debugger.outcomes()
    assert [e.offset for e in entries] == [10, 9, 8, 0]  # the reject outlives the drop flood
    with pytest.raises(ValueError, match="outcome_capacity"):
        RecentDeliveries(integrations=["acme"], outcome_capacity=0)


def test_a_value_too_large_to_keep_shows_its_coordinates_and_reason_only() -> None:
    debugger = RecentDeliveries(integrations=["acme"], hash_key=KEY)
    padded = {"type": "page", "userId": "user-big", "messageId": "m-big",
              "properties": {"pad": "x" * KEPT_VALUE_BYTES}}
    big = Record("events", 2, 40, b"user-big", orjson.dumps(padded))
    small = big._replace(offset=42, value=orjson.dumps({**padded, "properties": {}}))
    debugger.rejected(big, "invalid_event", "too big to keep", None, NOW)
    debugger.dropped(big._replace(offset=41), "not_mapped", None, NOW - 1)
    debugger.dropped(small, "not_mapped", None, NOW - 2)
    shown = {e.offset: e for e in debugger.outcomes()}
    assert (shown[40].topic, shown[40].partition, shown[40].reason) == ("events", 2,
                                                                      "invalid_event")
    for offset in (40, 41):  # neither ring kept the value: nothing read from it
        assert shown[offset].contact_key == HIDE("user-big")
        assert shown[offset].events == shown[offset].message_ids == ()
    assert shown[42].message_ids == ("m-big",)


def test_an_undecodable_record_shows_its_key() -> None:
    debugger = RecentDeliveries(integrations=["acme"], hash_key=KEY)
    debugger.rejected(Record("events", 0, 1, b"u-1", b"{oops"), "invalid_json", "x", None, NOW)
    debugger.rejected(Record("events", 0, 2, None, None), "empty_value", "x", None, NOW)
    second, first = debugger.outcomes()
    assert first.contact_key == HIDE("u-1")
    assert second.contact_key is None


def deliver(debugger: RecentDeliveries, contact_key: str, message_ids: tuple[str, ...]) -> None:
    debugger.record(
        integration="acme",
        location_id=LOCATION,
        endpoint="upsert",
        events=["identify"],
        contact_key=contact_key,
        payload={"locationId": LOCATION, "email": EMAIL},
        answer=Answer(verdict=classify(201), status=201, latency_s=0.05),
        attempts=1,
        now=NOW + 10,
        message_ids=message_ids,
        sources=[event_record(20)],
    )


@pytest.mark.parametrize("query", [EMAIL, "user-jane", "anon-jane", "msg-1", f"  {EMAIL} "])
def test_search_finds_a_persons_outcomes_by_any_of_their_ids(query: str) -> None:
    debugger = RecentDeliveries(integrations=["acme"], hash_key=KEY)
    debugger.dropped(event_record(1), "not_mapped", None, NOW)
    other = event_record(2, key="other", message_id="m-other", user="other")
    debugger.dropped(other, "not_mapped", None, NOW)
    found = debugger.search(query)
    assert [e.offset for e in found.outcomes] == [1]


def test_search_finds_deliveries_by_contact_key_and_message_id() -> None:
    debugger = RecentDeliveries(integrations=["acme"], hash_key=KEY)
    deliver(debugger, EMAIL, ("msg-a", "msg-b"))
    deliver(debugger, "other-user", ("msg-c",))
    assert [e.message_ids for e in debugger.search(EMAIL).deliveries] == [("msg-a", "msg-b")]
    assert [e.message_ids for e in debugger.search("msg-c").deliveries] == [("msg-c",)]
    assert debugger.search("msg-z").deliveries == []
    [entry] = debugger.search("msg-b").deliveries
    assert entry.sources == ("events/0/20",)
    assert entry.to_json()["message_ids"] == ["msg-a", "msg-b"]


# -- the engine records each outcome where it happens --------------------------------------------


def kinds(entries: list[OutcomeEntry]) -> list[tuple[str, str | None, int]]:
    return sorted((e.kind, e.reason, e.offset) for e in entries)


async def test_the_engine_records_drops_duplicates_and_rejects() -> None:
    identify = {**GUIDE_IDENTIFY, "messageId": "m-1"}
    no_identifier = {"type": "identify", "userId": "u-2", "traits": {"email": "nope"}}
    page = {"type": "page", "userId": "u-3", "messageId": "m-3"}
    source = MemorySource(
        {
            ("events", 0): records(
                "events",
                0,
                [("lead-987", identify), ("lead-987", identify), ("u-2", no_identifier),
                 ("u-3", page), ("lead-987", GUIDE_LEAD)],
            )
        }
    )
    debugger = RecentDeliveries(integrations=["default"])
    engine = build(source, FakeHighLevel(), debugger=debugger)
    await run_until(engine, lambda: committed(source) == 5)
    assert kinds(debugger.outcomes()) == [
        ("dead_lettered", "no_identifier", 2),
        ("dropped", "not_mapped", 3),
        ("duplicate", "duplicate", 1),
        ("rejected", "no_identifier", 2),
    ]
    [page_drop] = debugger.search("m-3").outcomes
    assert page_drop.events == ("page",)
    # the delivered identify is found by its messageId, its source record named
    [delivered] = debugger.search("m-1").deliveries
    assert "events/0/0" in delivered.sources
    shown = orjson.dumps([e.to_json() for e in debugger.outcomes()]).decode()
    assert "sam@example.com" not in shown


async def test_the_engine_records_parked_and_replayed_records() -> None:
    answers = {"status": 401}
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    highlevel = FakeHighLevel(script=lambda payload: answers["status"])
    parking = MemoryParkingLog()
    debugger = RecentDeliveries(integrations=["default"])
    engine = build(
        source, highlevel, parking=parking, debugger=debugger, unauthorized_probe_interval=0.1
    )
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    async with asyncio.timeout(5):
        while committed(source) != 1:
            await asyncio.sleep(0.01)
        answers["status"] = 200
        while committed(parking.source, "parking") != 1:
            await asyncio.sleep(0.01)
    stop.set()
    await task
    entries = debugger.outcomes()
    assert [(e.kind, e.reason) for e in entries] == [
        ("replayed", None),
        ("parked", "unauthorized"),
    ]
    replayed, parked = entries
    assert (parked.topic, parked.offset) == ("events", 0)
    assert replayed.topic == "parking"
    assert replayed.sources == ("events/0/0",)
    assert replayed.contact_key == parked.contact_key


def test_message_ids_fold_with_coalescing_and_survive_parking() -> None:
    newer = ContactUpsert(
        integration_id="acme",
        location_id=LOCATION,
        contact_key=EMAIL,
        fields={"firstName": "Janet"},
        message_ids=("msg-10",),
    )
    merged = UPSERT.merged_with(newer)
    assert merged.message_ids == ("msg-9", "msg-10")
    _, value, _ = encode_parked(merged, [], ParkReason.DAILY_BUDGET)
    parked = decode_parked(value)
    assert parked is not None
    assert parked.message_ids == ("msg-9", "msg-10")
    older = orjson.loads(value)
    del older["messageIds"]  # a parking record written before messageIds were kept
    decoded = decode_parked(orjson.dumps(older))
    assert decoded is not None
    assert decoded.message_ids == ()
