"""Profiles: encoding for a changelog topic, and the bounded in-memory store."""

from __future__ import annotations

import pytest

from consumer.errors import ProfileDecodeError
from consumer.profiles import InMemoryProfileStore, Profile


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
