"""Parking: the record format and the state machine (pure, fake clock)."""

from __future__ import annotations

from consumer.core.events import ContactUpsert, Record, TagMode
from consumer.engine.parking import (
    ParkingState,
    ParkReason,
    decode_parked,
    encode_parked,
    parked_sources,
    parking_key,
)

UPSERT = ContactUpsert(
    integration_id="acme",
    location_id="loc-1",
    contact_key="user/42",
    fields={"email": "sam@example.com", "dnd": False},
    tags=("lead",),
    custom_fields={"f1": ("a", "b"), "f2": 3},
    tag_mode=TagMode.ADD,
    events=("identify", "Lead Generated"),
)
KEY = ("acme", "user/42")


def test_a_parked_upsert_round_trips_exactly_with_its_sources() -> None:
    sources = [Record("events.eu/x", 2, 10, b"k", b"{}"), Record("events.eu/x", 2, 11, b"k", b"")]
    key, value, headers = encode_parked(UPSERT, sources, ParkReason.DAILY_BUDGET)
    assert key == parking_key(UPSERT) == b"acme/user/42"
    decoded = decode_parked(value)
    assert decoded == UPSERT
    assert decoded is not None
    assert decoded.payload() == UPSERT.payload()
    assert decoded.events == UPSERT.events
    assert dict(headers)["ghl.park.reason"] == b"daily_budget"
    assert parked_sources(headers) == [("events.eu/x", 2, 10), ("events.eu/x", 2, 11)]


def test_values_that_are_not_parked_upserts_decode_to_none() -> None:
    for value in (None, b"", b"{", b"[]", b'{"v": 1}', b'{"integration": 1}'):
        assert decode_parked(value) is None


def test_healthy_integrations_deliver() -> None:
    state = ParkingState(probe_interval=30)
    assert state.reason_to_park(integration_id="acme", location_id="loc-1", key=KEY, now=0) is None


def test_an_unauthorized_integration_parks_and_probes_once_per_interval() -> None:
    state = ParkingState(probe_interval=30)
    assert state.unauthorized("acme", now=100) is True
    assert state.unauthorized("acme", now=101) is False  # already known
    park = {"integration_id": "acme", "location_id": "loc-1", "key": KEY}
    assert state.reason_to_park(**park, now=120) is ParkReason.UNAUTHORIZED
    assert state.reason_to_park(**park, now=131) is None  # the probe
    assert state.reason_to_park(**park, now=132) is ParkReason.UNAUTHORIZED
    assert state.holding("acme", "loc-1", now=132) == 161
    assert state.healthy("acme") is True
    assert state.reason_to_park(**park, now=133) is None
    assert state.holding("acme", "loc-1", now=133) is None


def test_a_spent_daily_budget_parks_the_location_until_it_resets() -> None:
    state = ParkingState(probe_interval=30)
    state.daily_spent("loc-1", until=500)
    park = {"integration_id": "acme", "key": KEY}
    assert state.reason_to_park(location_id="loc-1", **park, now=499) is ParkReason.DAILY_BUDGET
    assert state.reason_to_park(location_id="loc-2", **park, now=499) is None
    assert state.holding("acme", "loc-1", now=499) == 500
    assert state.reason_to_park(location_id="loc-1", **park, now=500) is None


def test_a_parked_contact_parks_until_the_group_commits_past_its_last_record() -> None:
    state = ParkingState(probe_interval=30)
    state.parked(KEY, partition=3, offset=41)
    park = {"integration_id": "acme", "location_id": "loc-1", "key": KEY}
    assert state.reason_to_park(**park, now=0) is ParkReason.CONTACT_PARKED
    assert state.parked_partitions == {3}
    assert state.replayed({3: 41}) == []  # offset 41 itself not yet replayed
    assert state.replayed({2: 99}) == []
    assert state.replayed({3: 42}) == [KEY]
    assert state.reason_to_park(**park, now=0) is None
    assert state.parked_partitions == frozenset()
