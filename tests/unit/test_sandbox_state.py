"""The sandbox's pure state: matching, field rules, tags, rate windows (fake clock)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from consumer.sandbox.rate_window import RateWindow
from consumer.sandbox.settings import DuplicateSettings, RateLimits
from consumer.sandbox.state import Location, PermanentDnd, SandboxState

T0 = 1_790_000_000.0  # some UTC instant; only differences matter except for the daily budget
DAY = 86_400.0


def make_state(duplicates: DuplicateSettings | None = None) -> tuple[SandboxState, Location]:
    ids = (f"c{n}" for n in itertools.count(1))
    state = SandboxState({"L1": "t1", "L2": "t2"}, duplicates=duplicates, new_id=lambda: next(ids))
    return state, state.locations["L1"]


def upsert(state: SandboxState, location: Location, now: float = T0, **fields: Any) -> Any:
    return state.upsert(location, {"locationId": location.id, **fields}, now)


def test_first_upsert_creates_and_second_updates_the_same_contact() -> None:
    state, loc = make_state()
    first = upsert(state, loc, email="sam@example.com", firstName="Sam")
    second = upsert(state, loc, T0 + 5, email="sam@example.com", lastName="Rivera")
    assert (first.new, second.new) == (True, False)
    assert second.contact is first.contact
    rendered = second.contact.to_json()
    assert rendered["firstName"] == "Sam"
    assert rendered["lastName"] == "Rivera"
    assert rendered["name"] == "Sam Rivera"
    assert rendered["fullNameLowerCase"] == "sam rivera"
    assert rendered["dateAdded"] == "2026-09-21T14:13:20.000Z"
    assert rendered["dateUpdated"] == "2026-09-21T14:13:25.000Z"
    assert loc.counters == {"created": 1, "updated": 1}


def test_email_matches_case_insensitively_and_keeps_the_sent_spelling() -> None:
    state, loc = make_state()
    first = upsert(state, loc, email="Sam@Example.com")
    second = upsert(state, loc, email="sam@example.COM")
    assert second.contact is first.contact
    assert not second.new
    assert second.contact.to_json()["emailLowerCase"] == "sam@example.com"
    assert second.contact.to_json()["email"] == "sam@example.COM"


def test_locations_do_not_share_contacts() -> None:
    state, loc1 = make_state()
    loc2 = state.locations["L2"]
    a = upsert(state, loc1, email="sam@example.com")
    b = upsert(state, loc2, email="sam@example.com")
    assert b.new
    assert b.contact.id != a.contact.id
    assert b.contact.location_id == "L2"


def two_contacts(priority: tuple[str, ...]) -> tuple[SandboxState, Location, str, str]:
    """One contact with only an email, another with only a phone (issue #37's setup)."""
    state, loc = make_state(DuplicateSettings(priority=priority))
    by_email = upsert(state, loc, email="sam@example.com").contact.id
    by_phone = upsert(state, loc, phone="+14155550142").contact.id
    return state, loc, by_email, by_phone


def test_email_first_updates_the_email_contact_and_silently_drops_the_phone() -> None:
    state, loc, by_email, by_phone = two_contacts(("email", "phone"))
    result = upsert(state, loc, email="sam@example.com", phone="+14155550142", city="Austin")
    assert result.contact.id == by_email
    assert not result.new
    assert result.ignored == ("phone",)
    assert "phone" not in result.contact.fields
    assert result.contact.fields["city"] == "Austin"
    assert "city" not in loc.contacts[by_phone].fields
    assert len(loc.contacts) == 2


def test_phone_first_updates_the_phone_contact_and_silently_drops_the_email() -> None:
    state, loc, by_email, by_phone = two_contacts(("phone", "email"))
    result = upsert(state, loc, email="sam@example.com", phone="+14155550142")
    assert result.contact.id == by_phone
    assert result.ignored == ("email",)
    assert "email" not in result.contact.fields
    assert loc.contacts[by_email].fields == {"email": "sam@example.com"}


def test_second_identifier_matches_when_the_first_finds_nothing_and_first_is_applied() -> None:
    state, loc, _, by_phone = two_contacts(("email", "phone"))
    result = upsert(state, loc, email="new@example.com", phone="+14155550142")
    assert result.contact.id == by_phone
    assert result.ignored == ()
    assert result.contact.fields["email"] == "new@example.com"
    # the contact is now found by its new email too
    assert upsert(state, loc, email="NEW@example.com").contact.id == by_phone


def test_identifier_outside_the_priority_is_not_matched() -> None:
    state, loc = make_state(DuplicateSettings(priority=("email",)))
    first = upsert(state, loc, phone="+14155550142")
    second = upsert(state, loc, phone="+14155550142")
    assert second.new
    assert second.contact.id != first.contact.id


def test_create_new_if_duplicate_allowed_needs_the_location_to_allow_duplicates() -> None:
    state, loc = make_state(DuplicateSettings(allow_duplicates=False))
    first = upsert(state, loc, email="sam@example.com")
    again = upsert(state, loc, email="sam@example.com", createNewIfDuplicateAllowed=True)
    assert again.contact is first.contact
    assert not again.new

    state, loc = make_state(DuplicateSettings(allow_duplicates=True))
    first = upsert(state, loc, email="sam@example.com")
    duplicate = upsert(state, loc, email="sam@example.com", createNewIfDuplicateAllowed=True)
    assert duplicate.new
    assert duplicate.contact.id != first.contact.id
    # a normal upsert still matches, and picks the oldest of the duplicates
    plain = upsert(state, loc, email="sam@example.com", city="Austin")
    assert plain.contact is first.contact
    assert not plain.new


def test_fields_present_overwrite_absent_are_kept_and_null_clears() -> None:
    state, loc = make_state()
    upsert(state, loc, email="sam@example.com", firstName="Sam", city="Austin", dnd=True)
    result = upsert(state, loc, email="sam@example.com", firstName="Samuel", city=None)
    fields = result.contact.fields
    assert fields["firstName"] == "Samuel"
    assert fields["dnd"] is True
    assert "city" not in fields


def test_clearing_an_email_removes_it_from_matching() -> None:
    state, loc = make_state()
    contact = upsert(state, loc, email="sam@example.com", phone="+14155550142").contact
    upsert(state, loc, phone="+14155550142", email=None)
    assert "email" not in contact.fields
    assert upsert(state, loc, email="sam@example.com").new


def test_changing_a_phone_moves_the_match() -> None:
    state, loc = make_state()
    contact = upsert(state, loc, email="sam@example.com", phone="+14155550142").contact
    upsert(state, loc, email="sam@example.com", phone="+14155550143")
    assert upsert(state, loc, phone="+14155550143").contact is contact
    assert upsert(state, loc, phone="+14155550142").new


def test_gender_is_applied_on_creation_and_silently_ignored_afterwards() -> None:
    state, loc = make_state()
    created = upsert(state, loc, email="sam@example.com", gender="male")
    assert created.contact.fields["gender"] == "male"
    assert created.ignored == ()
    updated = upsert(state, loc, email="sam@example.com", gender="female")
    assert updated.contact.fields["gender"] == "male"
    assert updated.ignored == ("gender",)
    same = upsert(state, loc, email="sam@example.com", gender="male")
    assert same.ignored == ()


def test_upsert_tags_replace_and_add_tags_appends() -> None:
    state, loc = make_state()
    contact = upsert(state, loc, email="sam@example.com", tags=["a", "b"]).contact
    upsert(state, loc, email="sam@example.com", tags=["c", "c"])
    assert contact.tags == ["c"]
    upsert(state, loc, email="sam@example.com", city="Austin")
    assert contact.tags == ["c"]  # absent tags are kept
    state.add_tags(contact, ["d", "c"], T0 + 1)
    assert contact.tags == ["c", "d"]
    assert contact.to_json()["tags"] == ["c", "d"]


def test_tags_are_stored_trimmed_and_lowercased() -> None:
    # HighLevel stores tags lowercased (callers' live reports)
    state, loc = make_state()
    result = upsert(state, loc, email="sam@example.com", tags=[" VIP ", "vip", "Web Lead", " "])
    contact = result.contact
    assert contact.tags == ["vip", "web lead"]
    state.add_tags(contact, ["WEB LEAD", "New "], T0 + 1)
    assert contact.to_json()["tags"] == ["vip", "web lead", "new"]


def test_custom_fields_and_dnd_settings_merge_per_key() -> None:
    state, loc = make_state()
    contact = upsert(
        state,
        loc,
        email="sam@example.com",
        customFields=[("f1", "one"), ("f2", 2)],
        dndSettings={"Email": {"status": "active"}},
    ).contact
    upsert(
        state,
        loc,
        email="sam@example.com",
        customFields=[("f2", 3)],
        dndSettings={"SMS": {"status": "inactive"}},
    )
    rendered = contact.to_json()
    assert rendered["customFields"] == [{"id": "f1", "value": "one"}, {"id": "f2", "value": 3}]
    assert rendered["dndSettings"] == {"Email": {"status": "active"}, "SMS": {"status": "inactive"}}


def test_snapshot_restores_contacts_indexes_and_daily_usage() -> None:
    state, loc = make_state()
    contact = upsert(state, loc, email="sam@example.com", phone="+14155550142", tags=["x"]).contact
    loc.rate.take(T0, RateLimits())
    snapshot = state.snapshot()
    snapshot["locations"]["gone"] = {"contacts": [], "day": 0, "dailyUsed": 0}

    restored, loc_again = make_state()
    assert restored.restore(snapshot) == ["gone"]
    again = upsert(restored, loc_again, phone="+14155550142")
    assert again.contact.id == contact.id
    assert not again.new
    assert again.contact.tags == ["x"]
    assert restored.contacts_by_id[contact.id] is again.contact
    assert loc_again.rate.daily_used == 1


def test_clear_forgets_contacts_and_counters_but_keeps_settings() -> None:
    state, loc = make_state(DuplicateSettings(priority=("phone",)))
    upsert(state, loc, phone="+14155550142")
    state.clear()
    assert not loc.contacts
    assert not state.contacts_by_id
    assert not loc.counters
    assert loc.duplicates.priority == ("phone",)
    assert upsert(state, loc, phone="+14155550142").new


# -- rate windows -------------------------------------------------------------------------


def test_burst_refuses_exactly_the_request_after_the_burst() -> None:
    window, limits = RateWindow(), RateLimits(burst=3, interval_ms=1000, daily=100)
    decisions = [window.take(T0 + i * 0.1, limits) for i in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[3].exhausted == "burst"
    assert decisions[3].retry_after == pytest.approx(0.7)
    assert decisions[3].daily_remaining == 97  # refused requests do not count


def test_burst_window_rolls_over_at_the_interval() -> None:
    window, limits = RateWindow(), RateLimits(burst=2, interval_ms=1000, daily=100)
    window.take(T0, limits)
    window.take(T0 + 0.5, limits)
    assert not window.take(T0 + 0.999, limits).allowed
    rolled = window.take(T0 + 1.0, limits)
    assert rolled.allowed
    assert rolled.remaining == 1
    # the new window opened at T0 + 1.0, not at a multiple of the interval
    assert window.take(T0 + 1.9, limits).allowed
    assert not window.take(T0 + 1.95, limits).allowed


def test_daily_budget_refuses_until_the_next_utc_day_or_a_reset() -> None:
    window, limits = RateWindow(), RateLimits(burst=100, interval_ms=1000, daily=2)
    midnight = (T0 // DAY + 1) * DAY
    assert window.take(midnight - 10, limits).allowed
    last = window.take(midnight - 9, limits)
    assert last.allowed
    assert last.daily_remaining == 0
    refused = window.take(midnight - 8, limits)
    assert not refused.allowed
    assert refused.exhausted == "daily"
    assert refused.retry_after == pytest.approx(8)
    assert window.take(midnight, limits).allowed

    window.take(midnight + 1, limits)
    assert not window.take(midnight + 2, limits).allowed
    window.reset_daily()
    assert window.take(midnight + 3, limits).daily_remaining == 1


def test_unenforced_limits_count_but_never_refuse() -> None:
    window, limits = RateWindow(), RateLimits(burst=1, interval_ms=1000, daily=1, enforced=False)
    decisions = [window.take(T0, limits) for _ in range(3)]
    assert all(d.allowed for d in decisions)
    assert decisions[-1].remaining == 0
    assert decisions[-1].daily_remaining == 0
    assert window.daily_used == 3


def test_a_revoked_token_is_unknown_until_granted_again() -> None:
    state = SandboxState({"loc-1": "t1"})
    state.revoke_token("t1")
    assert state.location_for_token("t1") is None
    state.grant_token("loc-1", "t1")
    location = state.location_for_token("t1")
    assert location is not None
    assert location.id == "loc-1"


# -- DND: stored apart, permanent channels (issue #264 payloads; a caller's live report) -------


def test_dnd_and_dnd_settings_are_stored_apart() -> None:
    state, loc = make_state()
    contact = upsert(state, loc, email="sam@example.com", dnd=True).contact
    assert "dndSettings" not in contact.to_json()
    upsert(state, loc, email="sam@example.com", dndSettings={"SMS": {"status": "active"}})
    upsert(state, loc, email="sam@example.com", dnd=False)
    rendered = contact.to_json()
    assert rendered["dnd"] is False
    assert rendered["dndSettings"] == {"SMS": {"status": "active"}}


@pytest.mark.parametrize(
    "change",
    [
        {"dndSettings": {"SMS": {"status": "inactive"}}},
        {"dndSettings": {"Email": {"status": "active"}, "SMS": {"status": "active"}}},
        {"dnd": False},
    ],
)
def test_lifting_a_permanent_dnd_is_refused_and_changes_nothing(change: dict[str, Any]) -> None:
    state, loc = make_state()
    contact = upsert(state, loc, email="sam@example.com", firstName="Sam", dnd=True).contact
    state.set_dnd_settings(contact, {"SMS": {"status": "permanent", "code": "103"}}, T0)
    before, changes = contact.to_json(), state.changes
    with pytest.raises(PermanentDnd) as refused:
        upsert(state, loc, T0 + 1, email="sam@example.com", firstName="Samuel", **change)
    assert str(refused.value) == "Not authorized to update permanent dnd setting for SMS"
    assert refused.value.channel == "SMS"
    assert contact.to_json() == before
    assert state.changes == changes
    assert loc.counters.get("updated") is None


def test_what_keeps_a_permanent_dnd_is_accepted() -> None:
    state, loc = make_state()
    contact = upsert(state, loc, email="sam@example.com").contact
    state.set_dnd_settings(contact, {"SMS": {"status": "permanent"}}, T0)
    upsert(state, loc, email="sam@example.com", dnd=True)
    upsert(state, loc, email="sam@example.com", dndSettings={"Email": {"status": "active"}})
    upsert(state, loc, email="sam@example.com", dndSettings={"SMS": {"status": "permanent"}})
    assert contact.to_json()["dndSettings"] == {
        "SMS": {"status": "permanent"},
        "Email": {"status": "active"},
    }
    assert state.find(loc, email="SAM@example.com") is contact
    assert state.find(loc, phone="+14155550142") is None


def test_delete_removes_the_contact_and_frees_its_identifiers() -> None:
    state, loc = make_state()
    first = upsert(state, loc, email="Sam@example.com", phone="+14155550142")
    state.delete(first.contact)
    assert loc.contacts == {}
    assert state.contacts_by_id == {}
    assert state.find(loc, email="sam@example.com", phone="+14155550142") is None
    again = upsert(state, loc, email="sam@example.com")
    assert again.new
