"""consumer.observe.recent_deliveries: bounded per integration, masked,
filtered, newest first, subscribable."""

from __future__ import annotations

import json
import sys

import pytest

from consumer.core.events import OmitReason, Omitted, Record
from consumer.core.normalise import mask_text
from consumer.highlevel.verdicts import Answer, classify
from consumer.observe.recent_deliveries import (
    NEVER_PERSONAL,
    DeliveryEntry,
    Hider,
    RecentDeliveries,
    mask_payload,
)
from tests.harness.guide import GUIDE_UPSERT


def answer(
    status: int | None = 201,
    *,
    message: str = "",
    trace_id: str | None = "trace-1",
    error: str | None = None,
) -> Answer:
    return Answer(
        verdict=classify(status),
        status=status,
        latency_s=0.1234,
        trace_id=trace_id,
        message=message,
        error=error,
    )


def record(
    debugger: RecentDeliveries,
    integration: str = "acme",
    *,
    status: int | None = 201,
    message: str = "",
    contact_key: str = "lead-987",
    events: tuple[str, ...] = ("identify", "Lead Generated"),
    now: float = 1_700_000_000.0,
    omitted: tuple[Omitted, ...] = (),
    sources: tuple[Record, ...] = (),
) -> DeliveryEntry:
    debugger.record(
        integration=integration,
        location_id="ve9EPM428h8vShlRW1KT",
        endpoint="upsert",
        events=events,
        contact_key=contact_key,
        payload=GUIDE_UPSERT,
        answer=answer(status, message=message),
        attempts=1,
        now=now,
        omitted=omitted,
        sources=sources,
    )
    return debugger.recent(limit=1)[0]


KEY = b"k" * 16
HIDE = Hider(KEY)


def test_entry_holds_masked_payload_and_the_answer() -> None:
    debugger = RecentDeliveries(integrations=["acme"], hash_key=KEY)
    entry = record(debugger)
    assert entry.payload == {
        "locationId": GUIDE_UPSERT["locationId"],
        "email": "s***@example.com",
        "phone": "+1******0142",
        "firstName": HIDE("Sam"),
        "lastName": HIDE("Rivera"),
        "source": "Pricing Page Form",
        "tags": ["website-lead"],
        "dnd": False,
    }
    assert entry.contact_key == HIDE("lead-987")
    assert entry.outcome == "delivered"
    assert entry.status == 201
    assert entry.trace_id == "trace-1"
    assert entry.latency_ms == 123.4
    assert entry.events == ("identify", "Lead Generated")
    assert entry.event_count == 2
    text = json.dumps(entry.to_json())
    for personal in ("sam@example.com", "4155550142", "Sam", "Rivera", "lead-987"):
        assert personal not in text


PERSONAL = {
    "locationId": "L",
    "email": "sam@example.com",
    "phone": "+14155550142",
    "firstName": "Sam",
    "lastName": "Rivera",
    "name": "Sam Rivera",
    "companyName": "Rivera Bikes",
    "address1": "12 Mission St",
    "city": "San Francisco",
    "state": "CA",
    "postalCode": "94105",
    "country": "US",
    "website": "https://rivera.example",
    "dateOfBirth": "1990-04-01",
    "timezone": "America/Los_Angeles",
    "gender": "female",
    "source": "Pricing Page Form",
    "tags": ["website-lead"],
    "dnd": False,
    "customFields": [{"id": "cf-plan", "field_value": "pro"},
                     {"id": "cf-colours", "field_value": ["teal", "red"]}],
}


def test_every_personal_field_is_hidden_by_default() -> None:
    shown = mask_payload(PERSONAL, HIDE)
    assert set(shown) == set(PERSONAL)  # present or absent stays visible
    for name in ("locationId", "source", "tags", "dnd"):
        assert shown[name] == PERSONAL[name]
    assert (shown["email"], shown["phone"]) == ("s***@example.com", "+1******0142")
    assert shown["customFields"] == [
        {"id": "cf-plan", "field_value": HIDE("pro")},
        {"id": "cf-colours", "field_value": HIDE(["teal", "red"])},
    ]
    text = json.dumps(shown)
    for name, value in PERSONAL.items():
        if name not in {*NEVER_PERSONAL, "email", "phone"} and isinstance(value, str):
            assert shown[name] == HIDE(value)
            assert value not in text, name
    assert "pro" not in text.replace("cf-plan", "")
    assert "teal" not in text


def test_hidden_values_are_equal_for_equal_input_and_keyed_per_instance() -> None:
    assert HIDE("Sam") == HIDE("Sam") != HIDE("Samuel")
    assert HIDE("Sam").startswith("hidden:")
    assert len(HIDE("Sam")) == len("hidden:") + 8
    assert Hider(b"other-key-16byte")("Sam") != HIDE("Sam")
    one, two = RecentDeliveries(integrations=["acme"]), RecentDeliveries(integrations=["acme"])
    assert record(one).contact_key != record(two).contact_key  # random key per instance


def test_show_personal_data_keeps_what_was_sent_but_email_and_phone() -> None:
    debugger = RecentDeliveries(integrations=["acme"], show_personal_data=True)
    assert debugger.show_personal_data
    entry = record(debugger, contact_key="Sam.Rivera@Example.com")
    assert entry.payload == {**GUIDE_UPSERT, "email": "s***@example.com",
                             "phone": "+1******0142"}
    assert entry.contact_key == "S***@Example.com"


def test_entry_lists_the_fields_left_out_by_name_never_by_value() -> None:
    debugger = RecentDeliveries(integrations=["acme"])
    entry = record(
        debugger, omitted=(Omitted("dateOfBirth", OmitReason.INVALID, "traits.birthday"),)
    )
    assert entry.to_json()["omitted"] == [
        {"field": "dateOfBirth", "reason": "invalid", "path": "traits.birthday"}
    ]
    assert record(debugger).to_json()["omitted"] == []


def test_contact_key_and_highlevel_message_are_masked() -> None:
    debugger = RecentDeliveries(integrations=["acme"], hash_key=KEY)
    entry = record(
        debugger,
        status=422,
        contact_key="Sam.Rivera@Example.com",
        message="duplicate contact sam@example.com / +1 (415) 555-0142",
    )
    assert entry.contact_key == HIDE("Sam.Rivera@Example.com")
    assert "sam@example.com" not in entry.message
    assert "555-0142" not in entry.message
    assert entry.message.startswith("duplicate contact s***@example.com / +1")
    assert entry.outcome == "rejected"


def test_mask_helpers_leave_other_text_and_fields_alone() -> None:
    assert mask_text("HighLevel answered 422: property foo should not exist") == (
        "HighLevel answered 422: property foo should not exist"
    )
    assert mask_payload({"locationId": "L", "firstName": "Sam"}) == {
        "locationId": "L",
        "firstName": "Sam",
    }


def test_bounded_per_integration_oldest_evicted() -> None:
    debugger = RecentDeliveries(integrations=["acme", "beta"], capacity=3)
    for i in range(5):
        record(debugger, "acme", now=float(i))
    record(debugger, "beta")
    acme = debugger.recent(integration="acme")
    assert [e.seq for e in acme] == [5, 4, 3]
    # one busy integration does not evict another's entries
    assert len(debugger.recent(integration="beta")) == 1
    assert debugger.last_seq == 6


def test_recent_filters_by_integration_outcome_and_seq() -> None:
    debugger = RecentDeliveries(integrations=["acme", "beta"])
    record(debugger, "acme", status=201)
    record(debugger, "beta", status=429)
    record(debugger, "acme", status=422)
    record(debugger, "beta", status=201)
    assert [e.seq for e in debugger.recent()] == [4, 3, 2, 1]
    assert [e.seq for e in debugger.recent(integration="beta")] == [4, 2]
    assert [e.seq for e in debugger.recent(outcome="delivered")] == [4, 1]
    assert [e.seq for e in debugger.recent(integration="acme", outcome="rejected")] == [3]
    assert [e.seq for e in debugger.recent(after=2)] == [4, 3]
    assert [e.seq for e in debugger.recent(limit=1)] == [4]
    assert debugger.recent(integration="nobody") == []


def test_unknown_integration_is_refused() -> None:
    debugger = RecentDeliveries(integrations=["acme"])
    with pytest.raises(ValueError, match="not a configured integration"):
        record(debugger, "elsewhere")
    assert debugger.recent() == []


def test_event_names_are_deduplicated_and_capped() -> None:
    debugger = RecentDeliveries(integrations=["acme"])
    names = tuple(f"event {i % 15}" for i in range(100))
    entry = record(debugger, events=names)
    assert entry.events == tuple(f"event {i}" for i in range(10))
    assert entry.event_count == 100


def test_no_http_answer_is_shown_with_its_error() -> None:
    debugger = RecentDeliveries(integrations=["acme"])
    debugger.record(
        integration="acme",
        location_id="L",
        endpoint="upsert",
        events=["identify"],
        contact_key="u1",
        payload={"locationId": "L"},
        answer=answer(None, trace_id=None, error="timeout"),
        attempts=3,
        now=0.0,
    )
    entry = debugger.recent()[0]
    assert (entry.status, entry.outcome, entry.error, entry.attempts) == (
        None,
        "retry",
        "timeout",
        3,
    )


def test_subscribers_see_new_entries_until_they_unsubscribe() -> None:
    debugger = RecentDeliveries(integrations=["acme"])
    seen: list[int] = []
    unsubscribe = debugger.subscribe(lambda e: seen.append(e.seq))
    record(debugger)
    unsubscribe()
    record(debugger)
    unsubscribe()  # idempotent
    assert seen == [1]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RecentDeliveries(integrations=["acme"], capacity=0)


def test_an_entry_keeps_its_source_records_coordinates_not_the_records() -> None:
    """A delivery entry stays in its ring for hundreds of requests: holding the source records
    would hold their values (up to about a megabyte each) as long."""
    debugger = RecentDeliveries(integrations=["acme"])
    value = bytes(100_000)
    before = sys.getrefcount(value)
    source = Record("events", 3, 41, b"lead-987", value)
    record(debugger, sources=(source,))
    del source
    assert sys.getrefcount(value) == before
    assert debugger.recent()[0].sources == ("events/3/41",)
