"""The partitioned, disk-backed profile store (``consumer.state.profile_state``): the mapper's
and the changelog's contracts per partition, checkpoints, and local state that is rebuilt
instead of trusted when it is missing, stale, foreign, unclean or damaged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from consumer.core.dedupe import MessageDeduper
from consumer.core.mapping import Mapper
from consumer.core.profiles import Profile
from consumer.core.targets import Target
from consumer.errors import ProfileDecodeError
from consumer.state.profile_state import Opened, PartitionedProfileStore

TOPIC = "g.profiles"
ADA = Profile(fields={"email": "ada@example.com"}, consent={"marketing": True})
BOB = Profile(fields={"email": "bob@example.com"})


def store(tmp_path: Path, **options: int) -> PartitionedProfileStore:
    return PartitionedProfileStore(tmp_path, TOPIC, **options)


def confirm(s: PartitionedProfileStore) -> list[tuple[int, str, bytes]]:
    """Take the writes and confirm each, as the engine does once the broker has them."""
    writes = s.take_writes()
    for partition, key, _ in writes:
        s.written(partition, key)
    return writes


def test_a_new_partition_starts_empty_from_the_changelog_start(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.open(0) == Opened(partition=0, start=0, rebuilt="no local state")
    s.select(0)
    assert s.get("u1") is None
    assert s.consent_holds("u1", {})
    assert not s.consent_holds("u1", {"marketing": True})
    assert (tmp_path / TOPIC / "0.db").exists()


def test_writes_are_per_partition_coalesced_and_counted(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open(0)
    s.open(3)
    s.select(0)
    s.put("u1", BOB)
    s.put("u1", ADA)
    s.put("u1", ADA)  # unchanged: nothing recorded
    s.select(3)
    s.put("u2", BOB)
    assert s.get("u1") is None  # another partition's state
    assert s.changes == 3
    assert s.take_writes() == [(0, "u1", ADA.to_bytes()), (3, "u2", BOB.to_bytes())]
    assert s.take_writes() == []
    s.select(0)
    assert s.get("u1") == ADA
    assert s.consent_holds("u1", {"marketing": True})
    assert not s.consent_holds("u1", {"marketing": False})


def test_a_clean_close_keeps_the_state_and_its_checkpoint(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open(1)
    s.select(1)
    s.put("u1", ADA)
    confirm(s)
    s.restore(1, "u2", BOB.to_bytes())
    s.checkpoint(1, 42)
    s.put("u3", BOB)  # newer than the checkpoint: in the changelog after offset 42
    confirm(s)
    s.close(1)
    assert s.partitions == frozenset()

    again = store(tmp_path)
    assert again.open(1) == Opened(partition=1, start=42, rebuilt=None)
    again.select(1)
    assert (again.get("u1"), again.get("u2"), again.get("u3")) == (ADA, BOB, BOB)
    assert again.checkpoint_of(1) == 42
    assert again.misses == 3  # read from the file: nothing was cached


def test_a_partition_closed_with_an_unconfirmed_write_is_rebuilt(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open(0)
    s.select(0)
    s.put("u1", ADA)
    s.take_writes()  # produced, never confirmed
    s.checkpoint(0, 5)
    s.close(0)
    opened = store(tmp_path).open(0)
    assert opened == Opened(partition=0, start=0, rebuilt="not closed cleanly")


def test_state_left_open_by_a_crash_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open(0)
    s.select(0)
    s.put("u1", ADA)
    confirm(s)
    s.checkpoint(0, 7)  # on disk, but the member dies before closing the partition
    again = store(tmp_path)
    opened = again.open(0)
    assert opened == Opened(partition=0, start=0, rebuilt="not closed cleanly")
    again.select(0)
    assert again.get("u1") is None


def test_a_damaged_file_is_rebuilt(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open(0)
    s.close(0)
    path = tmp_path / TOPIC / "0.db"
    path.write_bytes(b"this is not a database" * 100)
    opened = store(tmp_path).open(0)
    assert opened.start == 0
    assert opened.rebuilt is not None
    assert opened.rebuilt.startswith("unreadable")
    assert sqlite3.connect(path).execute("SELECT count(*) FROM p").fetchone() == (0,)


def test_state_of_another_partition_or_topic_is_rebuilt(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open(0)
    s.checkpoint(0, 9)
    s.close(0)
    (tmp_path / TOPIC / "0.db").rename(tmp_path / TOPIC / "2.db")
    assert store(tmp_path).open(2).rebuilt == "written for another partition"
    other = PartitionedProfileStore(tmp_path, "other.profiles")
    other.open(0)
    other.close(0)
    (tmp_path / "other.profiles" / "0.db").rename(tmp_path / TOPIC / "0.db")
    assert store(tmp_path).open(0).rebuilt == "written for another topic"


def test_restore_applies_records_and_tombstones_but_skips_unconfirmed_keys(
    tmp_path: Path,
) -> None:
    s = store(tmp_path)
    s.open(0)
    s.select(0)
    s.put("mine", ADA)
    s.take_writes()  # produced, not yet confirmed: what we hold is newer than the log
    assert not s.restore(0, "mine", BOB.to_bytes())
    assert s.restore(0, "u2", BOB.to_bytes())
    assert s.restore(0, "u2", None)
    assert s.restore(0, "u3", b'{"v":1, "f":{}, "c":{}}')
    assert (s.get("mine"), s.get("u2"), s.get("u3")) == (ADA, None, Profile())
    s.written(0, "mine")
    assert s.restore(0, "mine", None)
    assert s.get("mine") is None
    with pytest.raises(ProfileDecodeError):
        s.restore(0, "bad", b"not a profile")


def test_forget_wins_over_an_unconfirmed_write_and_drops_the_unsent_one(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open(0)
    s.select(0)
    s.put("u1", ADA)
    assert s.forget(0, "u1")
    assert not s.forget(0, "u1")
    assert s.get("u1") is None
    assert s.take_writes() == []  # never produced after its tombstone
    assert s.restore(0, "u1", BOB.to_bytes())  # no write of ours is waiting any more
    s.checkpoint(0, 3)
    s.close(0)  # clean: the forgotten write is not waited for
    assert store(tmp_path).open(0).rebuilt is None


def test_memory_is_bounded_by_the_cache_and_reads_fall_back_to_the_file(tmp_path: Path) -> None:
    s = store(tmp_path, cache_entries=2, flush_entries=2)
    s.open(0)
    s.select(0)
    profiles = {f"u{i}": Profile(fields={"email": f"u{i}@example.com"}) for i in range(10)}
    for key, profile in profiles.items():
        s.put(key, profile)
    confirm(s)
    assert len(s._cache) == 2
    misses = s.misses
    assert {key: s.get(key) for key in profiles} == profiles
    assert s.misses > misses  # evicted ones were read back from the file
    assert len(s._cache) == 2


def test_calls_name_an_open_partition(tmp_path: Path) -> None:
    s = store(tmp_path)
    with pytest.raises(RuntimeError, match="no partition selected"):
        s.get("u1")
    s.open(4)
    with pytest.raises(ValueError, match="already open"):
        s.open(4)
    s.select(4)
    s.close(4)
    with pytest.raises(RuntimeError):
        s.put("u1", ADA)  # the closed partition is no longer selected


def test_a_partition_not_open_here_is_mapped_without_profiles_and_changes_none(
    tmp_path: Path,
) -> None:
    s = store(tmp_path)
    s.open(0)
    assert s.select(0)
    s.put("u1", ADA)
    assert not s.select(1)  # another member's partition (a replayed copy, say)
    assert s.get("u1") is None
    assert s.consent_holds("u1", {})
    assert not s.consent_holds("u1", {"marketing": True})
    changes = s.changes
    s.put("u1", BOB)
    assert s.changes == changes
    assert s.take_writes() == [(0, "u1", ADA.to_bytes())]
    assert s.select(0)
    assert s.get("u1") == ADA


def test_sizes_count_the_profiles_held_per_partition(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open(0)
    s.open(1)
    s.restore(0, "a", ADA.to_bytes())
    s.restore(0, "b", BOB.to_bytes())
    assert s.recount(0) == 2
    s.select(0)
    s.put("c", ADA)
    s.put("a", BOB)  # a change, not a new profile
    s.select(1)
    s.put("a", ADA)  # the same key in another partition is another profile
    assert s.sizes() == {0: 3, 1: 1}
    assert s.forget(0, "b")
    assert not s.forget(0, "missing")
    assert s.sizes() == {0: 2, 1: 1}
    assert len(s) == 3
    s.close(1)
    assert s.sizes() == {0: 2}


def test_the_mapper_stitches_within_the_selected_partition(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.open(2)
    s.select(2)
    mapper = Mapper(
        (Target(id="default", location_id="ve9EPM428h8vShlRW1KT"),),
        profiles=s,
        deduper=MessageDeduper(max_entries=10, ttl_seconds=60),
    )
    identify = {"type": "identify", "anonymousId": "anon-1", "traits": {"email": "a@example.com"}}
    mapper.map_record(value=orjson.dumps(identify), key=None, topic="t", now=0)
    page = {"type": "page", "userId": "u1", "anonymousId": "anon-1"}
    mapper.map_record(value=orjson.dumps(page), key=None, topic="t", now=1)
    writes = {key: (partition, value) for partition, key, value in s.take_writes()}
    assert writes["u1"] == (2, Profile(fields={"email": "a@example.com"}).to_bytes())
    assert writes["anon-1"] == (2, Profile().to_bytes())


def test_state_of_a_changelog_recreated_under_the_same_name_is_rebuilt(tmp_path: Path) -> None:
    # the same topic, partition and checkpoint; only the topic id tells the two changelogs apart
    s = store(tmp_path)
    s.open(0, topic_id="id-before")
    s.select(0)
    s.put("u1", ADA)
    confirm(s)
    s.checkpoint(0, 5)
    s.close(0)
    kept = store(tmp_path)
    assert kept.open(0, topic_id="id-before") == Opened(partition=0, start=5, rebuilt=None)
    kept.close(0)
    again = store(tmp_path)
    opened = again.open(0, topic_id="id-after")
    assert opened == Opened(partition=0, start=0, rebuilt="written for another topic id")
    again.select(0)
    assert again.get("u1") is None  # nothing of the old changelog's state is used
    again.checkpoint(0, 1)
    again.close(0)
    # the rebuilt file is the new changelog's: trusted under its id, also after a reset
    last = store(tmp_path)
    assert last.open(0, topic_id="id-after").rebuilt is None
    last.reset(0)
    last.close(0)
    assert store(tmp_path).open(0, topic_id="id-after").rebuilt is None
