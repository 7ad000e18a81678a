"""Identity stitching across partitions, the pure side (``consumer.core.stitch``, ``Mapper``
with ``stitch_across``): what the mapper reports, the hand-over and the fold, the records."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from consumer.core.dedupe import MessageDeduper
from consumer.core.events import ContactUpsert
from consumer.core.mapping import Mapper
from consumer.core.profiles import InMemoryProfileStore, Profile
from consumer.core.stitch import BadStitch, StitchMerge, StitchRequest, decode_stitch
from consumer.core.targets import Target

LOCATION = "ve9EPM428h8vShlRW1KT"


class Partition:
    """One partition's profiles and a mapper over them, as a member holding it maps."""

    def __init__(self, *, stitch_across: bool = True) -> None:
        self.profiles = InMemoryProfileStore()
        self.mapper = Mapper(
            (Target(id="default", location_id=LOCATION),),
            profiles=self.profiles,
            deduper=MessageDeduper(max_entries=100, ttl_seconds=60),
            stitch_across=stitch_across,
        )

    def map(self, event: dict[str, Any], key: str | None = None) -> list[Any]:
        return self.mapper.map_record(
            value=orjson.dumps(event), key=key.encode() if key else None, topic="t", now=0
        )


ANONYMOUS = {"type": "identify", "anonymousId": "anon-1", "traits": {"phone": "+447700900123"}}
LOGIN = {"type": "identify", "userId": "u1", "anonymousId": "anon-1", "traits": {"email": "u@x.io"}}
LEAD = {"type": "track", "event": "Lead Generated", "userId": "u1"}


def test_a_profile_in_another_partition_is_reported_once_and_merged_through_the_records() -> None:
    a, b = Partition(), Partition()
    a.map(ANONYMOUS, key="anon-1")  # partition A holds anon-1's phone
    assert a.mapper.take_unstitched() == []

    b.map(LOGIN, key="u1")  # partition B: anon-1's profile is not here
    assert b.mapper.take_unstitched() == [("anon-1", "u1")]
    assert b.mapper.take_unstitched() == []  # taken
    assert b.profiles.get("anon-1") == Profile()  # asked for once from this partition
    b.map({**LOGIN, "traits": {}}, key="u1")
    assert b.mapper.take_unstitched() == []

    # A answers the request: anon-1's profile, emptied there; a request re-read finds nothing
    request = decode_stitch(*_record(StitchRequest("anon-1", "u1", 5)))
    assert request == StitchRequest("anon-1", "u1", 5)
    handed = a.mapper.hand_over(request.source)
    assert handed == Profile(fields={"phone": "+447700900123"})
    assert a.profiles.get("anon-1") == Profile()
    assert a.mapper.hand_over("anon-1") is None

    # B folds the merge into u1's profile; folding it again changes nothing
    merge = decode_stitch(*_record(StitchMerge("anon-1", "u1", handed.to_bytes())))
    assert isinstance(merge, StitchMerge)
    assert (merge.source, merge.target) == ("anon-1", "u1")
    assert b.mapper.fold(merge.target, Profile.from_bytes(merge.profile))
    assert not b.mapper.fold(merge.target, Profile.from_bytes(merge.profile))

    [upsert] = b.map(LEAD, key="u1")
    assert isinstance(upsert, ContactUpsert)
    assert upsert.fields["phone"] == "+447700900123"
    assert upsert.fields["email"] == "u@x.io"


def test_the_users_own_values_win_in_a_fold() -> None:
    b = Partition()
    b.map(LOGIN, key="u1")
    other = Profile(fields={"email": "old@x.io", "city": "Leeds"}, consent={"marketing": True})
    assert b.mapper.fold("u1", other)
    assert b.profiles.get("u1") == Profile(
        fields={"email": "u@x.io", "city": "Leeds"}, consent={"marketing": True}
    )


def test_a_profile_held_here_is_stitched_here_and_nothing_is_reported() -> None:
    p = Partition()
    p.map(ANONYMOUS)  # no key: the user key is the anonymousId, in this partition
    p.map(LOGIN, key="u1")
    assert p.mapper.take_unstitched() == []
    assert p.profiles.get("u1") == Profile(fields={"email": "u@x.io", "phone": "+447700900123"})
    assert p.profiles.get("anon-1") == Profile()


def test_without_stitch_across_a_missing_profile_is_not_reported() -> None:
    p = Partition(stitch_across=False)
    p.map(LOGIN, key="u1")
    p.map({"type": "alias", "userId": "u1", "previousId": "old"}, key="u1")
    assert p.mapper.take_unstitched() == []
    assert p.profiles.get("anon-1") is None


def test_an_alias_previous_id_is_reported_too() -> None:
    p = Partition()
    p.map({"type": "alias", "userId": "u1", "previousId": "old-id"}, key="u1")
    assert p.mapper.take_unstitched() == [("old-id", "u1")]


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        (None, b'{"v":1,"into":"u","p":0}', "stitch record without a key"),
        (b"k", b"{", "stitch record value is not JSON"),
        (b"k", None, "stitch record value is not JSON"),
        (b"k", b'{"v":2,"into":"u","p":0}', "stitch record value is not a version 1 object"),
        (b"k", b'{"v":1,"from":"x","profile":"%%%"}', "stitch merge: profile is not base64"),
        (
            b"k",
            b'{"v":1,"into":"u","p":true}',
            "stitch record: neither a request (into, p) nor a merge (from, profile)",
        ),
        (
            b"k",
            b'{"v":1,"into":"u","p":-1}',
            "stitch record: neither a request (into, p) nor a merge (from, profile)",
        ),
    ],
)
def test_a_record_that_is_neither_says_why(
    key: bytes | None, value: bytes | None, error: str
) -> None:
    assert decode_stitch(key, value) == BadStitch(error)


def _record(stitch: StitchRequest | StitchMerge) -> tuple[bytes, bytes]:
    return stitch.key(), stitch.value()
