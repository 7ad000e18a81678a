"""messageId deduplication per contact key: TTL, bound, origin and replays."""

from __future__ import annotations

import pytest

from consumer.core.deadletter import replayed_from
from consumer.core.dedupe import MessageDeduper


def test_second_sighting_within_ttl_is_a_duplicate() -> None:
    dedupe = MessageDeduper(max_entries=10, ttl_seconds=60)
    assert dedupe.check("u1", "m1", now=0.0) is False
    assert dedupe.check("u1", "m1", now=59.0) is True
    assert dedupe.check("u1", "m2", now=59.0) is False


def test_expired_ids_are_forgotten_and_duplicates_do_not_extend_the_ttl() -> None:
    dedupe = MessageDeduper(max_entries=10, ttl_seconds=60)
    dedupe.check("u1", "m1", now=0.0)
    dedupe.check("u1", "m1", now=30.0)
    assert dedupe.check("u1", "m1", now=60.0) is False  # 60 s after the first sighting
    assert len(dedupe) == 1
    assert dedupe.check("u1", "m2", now=200.0) is False
    assert len(dedupe) == 1  # m1 expired and was purged


def test_bound_forgets_the_oldest_first() -> None:
    dedupe = MessageDeduper(max_entries=3, ttl_seconds=3600)
    for index, message_id in enumerate(["a", "b", "c", "d"]):
        dedupe.check("u1", message_id, now=float(index))
    assert len(dedupe) == 3
    assert dedupe.evicted == 1
    assert dedupe.check("u1", "b", now=10.0) is True
    assert dedupe.check("u1", "a", now=10.0) is False  # evicted, so new again


@pytest.mark.parametrize(("entries", "ttl"), [(0, 1.0), (1, 0.0)])
def test_invalid_bounds(entries: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MessageDeduper(max_entries=entries, ttl_seconds=ttl)


def test_the_same_record_read_again_is_not_a_duplicate_of_itself() -> None:
    """A partition revoked and assigned back re-reads its undelivered records: same origin,
    not a duplicate. Another record with the id is; without an origin, any repeat is."""
    d = MessageDeduper(max_entries=10, ttl_seconds=60)
    assert d.check("u1", "m1", 0.0, ("events", 0, 7)) is False
    assert d.check("u1", "m1", 1.0, ("events", 0, 7)) is False
    assert d.check("u1", "m1", 2.0, ("events", 0, 9)) is True
    assert d.check("u1", "m1", 3.0, ("events", 1, 7)) is True
    assert d.check("u1", "m1", 4.0) is True
    assert len(d) == 1


def test_a_replayed_dead_letter_is_not_a_duplicate_of_its_original() -> None:
    """``dlq replay`` copies a dead letter back to its source topic within the TTL: a new
    origin. A second copy of the same dead letter (a rerun) is a duplicate; a copy of
    another dead letter of the id (the replay failed again and was replayed again) is not."""
    d = MessageDeduper(max_entries=10, ttl_seconds=86_400)
    first, again = "events.dead-letter/0/3", "events.dead-letter/0/8"
    assert d.check("u1", "m1", 0.0, ("events", 0, 7)) is False
    assert d.check("u1", "m1", 3600.0, ("events", 0, 90), replay_of=first) is False
    assert d.check("u1", "m1", 3601.0, ("events", 0, 91), replay_of=first) is True
    assert d.check("u1", "m1", 3602.0, ("events", 0, 92), replay_of=again) is False
    assert d.check("u1", "m1", 3603.0, ("events", 0, 93)) is True  # a plain repeat still is


def test_ids_are_remembered_per_contact_key() -> None:
    """The same messageId under another contact key is another event: fixtures reuse ids, and
    a key's records are read in order on their partition, whatever order partitions are read
    in. Under the same key, any repeat is a duplicate."""
    d = MessageDeduper(max_entries=10, ttl_seconds=60)
    assert d.check("alice", "shared-id", 0.0, ("events", 0, 1)) is False
    assert d.check("bob", "shared-id", 1.0, ("events", 2, 1)) is False
    assert d.check("bob", "shared-id", 2.0, ("events", 2, 5)) is True
    assert d.check("alice", "shared-id", 3.0, ("events", 0, 4)) is True
    assert len(d) == 2


def test_the_duplicate_decision_does_not_depend_on_the_order_keys_are_read_in() -> None:
    """Two partitions' records, the same messageIds reused across keys, read in two different
    interleavings (per-partition order kept): the same records are duplicates."""
    part0 = [("alice", "m1", ("t", 0, 0)), ("alice", "m1", ("t", 0, 1)), ("cy", "m2", ("t", 0, 2))]
    part1 = [("bob", "m1", ("t", 1, 0)), ("bob", "m2", ("t", 1, 1)), ("bob", "m1", ("t", 1, 2))]

    def duplicates(order: list[tuple[str, str, tuple[str, int, int]]]) -> set[object]:
        d = MessageDeduper(max_entries=100, ttl_seconds=60)
        return {origin for key, mid, origin in order if d.check(key, mid, 0.0, origin)}

    first = duplicates(part0 + part1)
    assert first == {("t", 0, 1), ("t", 1, 2)}
    assert duplicates(part1 + part0) == first
    interleaved = [r for pair in zip(part1, part0, strict=True) for r in pair]
    assert duplicates(interleaved) == first


def test_replayed_from_reads_the_replay_header() -> None:
    assert replayed_from((("trace", b"x"), ("ghl.replayed_from", b"dlq/0/3"))) == "dlq/0/3"
    assert replayed_from((("trace", b"x"),)) is None
    # The deduper keeps it for the TTL: a value no replay writes is not held.
    assert replayed_from((("ghl.replayed_from", b"t" * 5_000 + b"/0/3"),)) is None


def test_expiry_is_checked_only_when_the_oldest_id_can_have_expired() -> None:
    deduper = MessageDeduper(max_entries=2, ttl_seconds=10)
    assert deduper.check("u", "a", now=0.0) is False
    assert deduper.check("u", "b", now=5.0) is False
    assert deduper.check("u", "c", now=6.0) is False  # over the bound: "a" is evicted
    assert len(deduper) == 2
    assert deduper.evicted == 1
    assert deduper.check("u", "b", now=9.0) is True  # still within b's TTL
    assert deduper.check("u", "d", now=15.5) is False  # b (5.0) expired; c (6.0) still here
    assert deduper.check("u", "c", now=15.9) is True
    assert deduper.check("u", "b", now=15.9) is False  # forgotten: new again
    assert deduper.check("u", "x", now=100.0) is False  # everything older expired
    assert len(deduper) == 1
