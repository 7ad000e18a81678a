"""Profiles: encoding for a changelog topic, and the bounded in-memory store."""

from __future__ import annotations

import pytest

from consumer.core.profiles import (
    ChangelogProfileStore,
    InMemoryProfileStore,
    PersonProfiles,
    Profile,
)
from consumer.errors import ProfileDecodeError


def test_round_trip() -> None:
    profile = Profile(
        fields={"email": "a@example.com", "phone": "+14155550142", "firstName": "Ä"},
        consent={"marketing": False},
    )
    assert Profile.from_bytes(profile.to_bytes()) == profile
    assert Profile.from_bytes(Profile().to_bytes()) == Profile()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v": 2, "f": {}, "c": {}}',
        b'{"v": 1, "f": [], "c": {}}',
        b'{"v": 1, "f": {"email": 5}, "c": {}}',
        b'{"v": 1, "f": {}, "c": {"marketing": "yes"}}',
        b'{"v": 1, "f": {"tags": "x"}, "c": {}}',
    ],
)
def test_from_bytes_rejects_anything_else(data: bytes) -> None:
    with pytest.raises(ProfileDecodeError):
        Profile.from_bytes(data)


def test_only_identity_fields() -> None:
    with pytest.raises(ValueError, match="source"):
        Profile(fields={"source": "x"})


def test_store_is_bounded_least_recently_used_first() -> None:
    store = InMemoryProfileStore(max_entries=2)
    store.put("a", Profile(fields={"email": "a@example.com"}))
    store.put("b", Profile())
    assert store.get("a") is not None  # a is now the most recently used
    store.put("c", Profile())
    assert store.get("b") is None
    assert store.get("a") is not None
    assert len(store) == 2
    assert store.evicted == 1


def test_changelog_store_records_only_changes_and_hands_them_out_once() -> None:
    store = ChangelogProfileStore()
    sam = Profile(fields={"email": "sam@example.com"}, consent={"marketing": True})
    store.put("u1", sam)
    store.put("u1", Profile(fields={"email": "sam@example.com"}, consent={"marketing": True}))
    assert store.take_writes() == [("u1", sam.to_bytes())]
    assert store.take_writes() == []


def test_changelog_store_restore_never_overwrites_an_unconfirmed_write() -> None:
    store = ChangelogProfileStore()
    newer = Profile(fields={"email": "new@example.com"})
    older = Profile(fields={"email": "old@example.com"})
    store.put("u1", newer)
    store.take_writes()
    assert store.restore("u1", older.to_bytes()) is False
    assert store.get("u1") == newer
    store.written("u1")
    assert store.restore("u1", older.to_bytes()) is True
    assert store.get("u1") == older
    assert store.restore("u1", None) is True
    assert store.get("u1") is None
    assert store.take_writes() == []  # restoring is not a change to write back


def test_changelog_store_restore_refuses_bytes_that_are_not_a_profile() -> None:
    with pytest.raises(ProfileDecodeError):
        ChangelogProfileStore().restore("u1", b"not a profile")


def _record(email: str) -> bytes:
    return Profile(fields={"email": email, "firstName": "Sam"}).to_bytes()


def test_person_profiles_follow_the_latest_record_of_each_key() -> None:
    person = PersonProfiles(email="sam@example.com")
    person.feed("u1", _record("sam@example.com"))
    person.feed("u2", _record("sam@example.com"))
    person.feed("u3", _record("other@example.com"))
    person.feed("u2", _record("new@example.com"))  # changed address: no longer the person's
    person.feed("u4", _record("sam@example.com"))
    person.feed("u4", None)  # already forgotten
    person.feed("u5", b"not a profile")
    assert sorted(person.profiles) == ["u1"]


def test_person_profiles_by_key() -> None:
    person = PersonProfiles(key="u2")
    person.feed("u1", _record("sam@example.com"))
    person.feed("u2", _record("kim@example.com"))
    assert person.profiles == {"u2": Profile.from_bytes(_record("kim@example.com"))}


def test_person_profiles_name_every_partition_holding_a_key() -> None:
    # partitioned profile state: one key's profile in the partitions of its events
    person = PersonProfiles(email="sam@example.com")
    person.feed("u1", _record("sam@example.com"), 0)
    person.feed("u1", _record("sam@example.com"), 3)
    person.feed("u2", _record("sam@example.com"), 1)
    person.feed("u2", None, 1)  # forgotten in its only partition
    person.feed("u3", _record("sam@example.com"), 2)
    person.feed("u3", _record("kim@example.com"), 5)  # another person's profile there
    assert person.partitions == {"u1": [0, 3], "u3": [2]}
    assert sorted(person.profiles) == ["u1", "u3"]


def test_forget_wins_over_an_unconfirmed_write_but_a_restored_tombstone_does_not() -> None:
    store = ChangelogProfileStore()
    store.put("u1", Profile(fields={"email": "sam@example.com"}))  # unconfirmed
    assert store.restore("u1", None) is False  # our newer write is still on its way
    assert store.get("u1") is not None
    assert store.forget("u1") is True  # a tombstone read while running: erasure wins
    assert store.get("u1") is None
    assert store.forget("u1") is False


def test_consent_holds_without_decoding_when_the_stored_consent_is_exactly_the_decisions() -> None:
    store = InMemoryProfileStore()
    assert store.consent_holds("u1", {}) is True  # nothing to remember, nothing stored
    assert store.consent_holds("u1", {"marketing": True}) is False
    store.put("u1", Profile(fields={"email": "sam@example.com"}, consent={"marketing": True}))
    assert store.consent_holds("u1", {"marketing": True}) is True
    assert store.consent_holds("u1", {"marketing": False}) is False
    # a subset of what is stored holds too (the slow path: the profile is decoded)
    store.put("u2", Profile(consent={"marketing": True, "analytics": False}))
    assert store.consent_holds("u2", {"analytics": False}) is True
    assert store.consent_holds("u2", {"analytics": True}) is False
    assert store.consent_holds("u2", {"sms": True}) is False


def test_changelog_store_coalesces_changes_to_one_key_into_its_latest_write() -> None:
    store = ChangelogProfileStore()
    first = Profile(consent={"marketing": True})
    second = Profile(consent={"marketing": False})
    store.put("u1", first)
    store.put("u2", first)
    store.put("u1", second)
    assert store.changes == 3
    assert store.take_writes() == [("u1", second.to_bytes()), ("u2", first.to_bytes())]
    # one write of u1 is unconfirmed: a restore of u1 is skipped until it is confirmed
    assert store.restore("u1", first.to_bytes()) is False
    store.written("u1")
    assert store.restore("u1", first.to_bytes()) is True
