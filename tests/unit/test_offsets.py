"""Offset tracking: the contiguous commit point, the commit-metadata map, budget and revocation."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.engine.offsets import (
    MAGIC,
    CommitPoint,
    OffsetBudget,
    OffsetMap,
    OffsetTracker,
    PartitionOffsets,
    worst_case_chars,
)

commit_offsets = st.integers(min_value=0, max_value=2**62)
relative_sets = st.sets(st.integers(min_value=0, max_value=40_000), max_size=3_000)


def kind_of(text: str) -> str:
    return text.split(";", 3)[2]


# --- codec ------------------------------------------------------------------------------------


@given(commit_offsets, relative_sets)
def test_encode_decode_round_trip(commit: int, rel: set[int]) -> None:
    done = {commit + r for r in rel}
    text = OffsetMap.from_offsets(commit, done).encode()
    decoded = OffsetMap.decode(text, commit_offset=commit)
    assert set(decoded) == done
    assert len(decoded) == len(done)
    assert all(o in decoded for o in done)
    assert commit + 40_001 not in decoded


@given(commit_offsets, relative_sets)
def test_encoded_length_never_exceeds_the_worst_case_bound(commit: int, rel: set[int]) -> None:
    done = {commit + r for r in rel}
    text = OffsetMap.from_offsets(commit, done).encode()
    span = max(rel) + 1 if rel else 0
    assert len(text) <= worst_case_chars(commit, span, span - len(rel))
    assert text.isascii()


def test_empty_map_encodes_to_empty_metadata() -> None:
    assert OffsetMap.from_offsets(10, []).encode() == ""
    assert worst_case_chars(10, 0, 0) == 0


def test_the_smaller_encoding_is_chosen() -> None:
    # Alternating: a run encoding needs two bytes per offset, the bitset a quarter byte.
    alternating = OffsetMap.from_offsets(1000, range(1001, 9001, 2)).encode()
    assert kind_of(alternating).lower() == "b"
    # A few far-apart offsets: runs, a few bytes each; the bitset would span 1.25 MB.
    sparse = OffsetMap.from_offsets(0, [10, 500_000, 9_999_999]).encode()
    assert kind_of(sparse) == "r"
    assert len(sparse) < 40
    # Everything done after the commit point: one run, whatever its length.
    dense = OffsetMap.from_offsets(7, range(8, 2_000_008)).encode()
    assert kind_of(dense) == "r"
    assert len(dense) < 30
    # Regular but long patterns compress: deflated (upper-case kind).
    periodic = [o for o in range(0, 200_000) if o % 7 in (1, 2)]
    text = OffsetMap.from_offsets(0, periodic).encode()
    assert kind_of(text).isupper()
    assert set(OffsetMap.decode(text, commit_offset=0)) == set(periodic)


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        "",
        "hello",
        '{"pc": "parallel-consumer map"}',
        f"{MAGIC};5",
        f"{MAGIC};5;b",
        f"{MAGIC};x;b;00",
        f"{MAGIC};5;q;00",  # unknown kind
        f"{MAGIC};5;bb;00",
        f"{MAGIC};5;r;{{{{",  # not base85
        f"{MAGIC};5;R;0000000",  # not deflate
        f"{MAGIC};5;r;" + "zzzzz",  # odd number of varints / truncated
    ],
)
def test_foreign_or_broken_metadata_decodes_to_nothing(metadata: str | None) -> None:
    assert len(OffsetMap.decode(metadata, commit_offset=5)) == 0


def test_a_map_for_another_commit_offset_is_ignored() -> None:
    # Someone reset the group's offset (e.g. to replay): the old map must not skip records.
    text = OffsetMap.from_offsets(100, [105, 107]).encode()
    assert set(OffsetMap.decode(text, commit_offset=100)) == {105, 107}
    assert len(OffsetMap.decode(text, commit_offset=50)) == 0


@given(st.text(max_size=300))
def test_decode_never_raises_on_text(metadata: str) -> None:
    OffsetMap.decode(metadata, commit_offset=0)
    OffsetMap.decode(MAGIC + ";0;" + metadata, commit_offset=0)


@given(relative_sets, st.data())
def test_decode_never_raises_on_corrupted_encodings(rel: set[int], data: st.DataObject) -> None:
    text = OffsetMap.from_offsets(0, rel).encode()
    if not text:
        return
    i = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    c = data.draw(st.characters(min_codepoint=33, max_codepoint=126))
    OffsetMap.decode(text[:i] + c + text[i + 1 :], commit_offset=0)
    OffsetMap.decode(text[:i], commit_offset=0)


def test_decompression_bomb_is_refused() -> None:
    import base64
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = packer.compress(b"\xff" * (4 << 20)) + packer.flush()
    text = f"{MAGIC};0;B;" + base64.b85encode(bomb).decode()
    assert len(OffsetMap.decode(text, commit_offset=0)) == 0


def test_invalid_maps_are_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="below the commit offset"):
        OffsetMap.from_offsets(10, [9])
    with pytest.raises(ValueError, match="disjoint"):
        OffsetMap(0, (range(0, 5), range(5, 6)))  # touching: must be one range


def test_capacity_of_the_default_budget() -> None:
    """How many done offsets fit in 4000 characters (bench/bench_offsets.py measures more)."""
    limit = OffsetBudget().max_metadata_chars
    rng = random.Random(7)
    # Worst case for the bitset: random half of 25,000 positions done (incompressible).
    half = [o for o in range(1, 25_001) if rng.random() < 0.5]
    assert len(OffsetMap.from_offsets(0, half).encode()) <= limit
    # Sparse random: 1% done -> run lengths, under 2 bytes per done offset once deflated.
    sparse = rng.sample(range(1, 200_000), 2000)
    assert len(OffsetMap.from_offsets(0, sparse).encode()) <= limit
    # Very sparse: 0.01% done -> gaps need 2-byte varints.
    very_sparse = rng.sample(range(1, 12_000_000), 1200)
    assert len(OffsetMap.from_offsets(0, very_sparse).encode()) <= limit
    # Whatever the density, a budget never holds a random map much wider than this.
    wide = [o for o in range(1, 40_001) if rng.random() < 0.5]
    assert len(OffsetMap.from_offsets(0, wide).encode()) > limit


def test_encode_within_cuts_to_the_offsets_nearest_the_commit_point() -> None:
    rng = random.Random(3)
    done = sorted(rng.sample(range(1, 200_000), 6000))
    full = OffsetMap.from_offsets(0, done)
    assert len(full.encode()) > 4000
    text, left_out = full.encode_within(4000)
    assert len(text) <= 4000
    kept = sorted(OffsetMap.decode(text, commit_offset=0))
    assert kept == done[: len(kept)]
    assert left_out == len(done) - len(kept) > 0
    small = OffsetMap.from_offsets(0, done[:10])
    assert small.encode_within(4000) == (small.encode(), 0)


# --- PartitionOffsets ---------------------------------------------------------------------------


def lowest_not_done(admitted: list[int], done: set[int], next_offset: int) -> int:
    return next((o for o in admitted if o not in done), next_offset)


@settings(max_examples=200)
@given(
    st.integers(min_value=0, max_value=10**12),
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=300),
    st.randoms(use_true_random=False),
)
def test_commit_point_is_always_the_lowest_offset_not_done(
    base: int, steps: list[int], rng: random.Random
) -> None:
    admitted = []
    offset = base
    for step in steps:  # ascending, with gaps (compaction, transaction markers)
        admitted.append(offset)
        offset += step
    tracker = PartitionOffsets("t", 0, committed=base)
    for o in admitted:
        assert tracker.admit(o) is True
    order = admitted[:]
    rng.shuffle(order)
    done: set[int] = set()
    for o in order:
        tracker.complete(o)
        done.add(o)
        point = tracker.commit_point()
        assert point is not None
        expected = lowest_not_done(admitted, done, admitted[-1] + 1)
        assert point.offset == expected
        restored = OffsetMap.decode(point.metadata, commit_offset=point.offset)
        assert set(restored) == {d for d in done if d > expected}
        assert tracker.incomplete == len(admitted) - len(done)
        tracker.mark_committed(point)
        assert tracker.commit_point() is None


@settings(max_examples=200)
@given(
    st.lists(st.booleans(), min_size=1, max_size=300),
    st.randoms(use_true_random=False),
)
def test_offsets_passed_at_once_commit_as_if_admitted_and_completed(
    at_once: list[bool], rng: random.Random
) -> None:
    # The engine's hot path: a record dropped as soon as it is mapped is ``passed``, never
    # tracked. The commit points must be those of admitting and completing it at once.
    fast = PartitionOffsets("t", 0, committed=500)
    slow = PartitionOffsets("t", 0, committed=500)
    tracked = []
    for offset, done in enumerate(at_once, start=500):
        assert fast.accept(offset) is True
        assert slow.admit(offset) is True
        if done:
            fast.passed(offset)
            slow.complete(offset)
        else:
            fast.track(offset, 10)
            tracked.append(offset)
        assert fast.commit_point() == slow.commit_point()
    assert fast.incomplete == len(tracked)
    assert fast.incomplete_bytes == 10 * len(tracked)
    rng.shuffle(tracked)
    for offset in tracked:
        fast.complete(offset)
        slow.complete(offset)
        assert fast.commit_point() == slow.commit_point()
    assert fast.commit_point() == CommitPoint("t", 0, 500 + len(at_once), "")
    assert fast.accept(500 + len(at_once) - 1) is False  # not ahead: a duplicate


@settings(max_examples=100)
@given(
    st.lists(st.booleans(), min_size=1, max_size=400),
    st.lists(st.booleans(), min_size=0, max_size=100),
)
def test_restored_map_skips_exactly_the_done_offsets(
    done_flags: list[bool], more: list[bool]
) -> None:
    # First owner: offsets 1000.. admitted; some done; commits; crashes.
    first = PartitionOffsets("t", 3, committed=1000)
    offsets = list(range(1000, 1000 + len(done_flags)))
    for o in offsets:
        first.admit(o)
    for o, flag in zip(offsets, done_flags, strict=True):
        if flag:
            first.complete(o)
    point = first.commit_point()
    committed, metadata = (point.offset, point.metadata) if point else (1000, "")
    done = {o for o, flag in zip(offsets, done_flags, strict=True) if flag}

    # Next owner restarts from the commit: everything from `committed` is fetched again.
    second = PartitionOffsets("t", 3, committed=committed, metadata=metadata)
    refetched = list(range(committed, 1000 + len(done_flags) + len(more)))
    admitted = [o for o in refetched if second.admit(o)]
    assert set(refetched) - set(admitted) == {o for o in done if o >= committed}
    assert second.skipped_done == len({o for o in done if o >= committed})
    # Completing what was admitted moves the commit point to the end.
    for o in admitted:
        second.complete(o)
    end = 1000 + len(done_flags) + len(more)
    final = second.commit_point()
    if end == committed:  # nothing was left to fetch: nothing new to commit
        assert final is None
    else:
        assert final == CommitPoint("t", 3, end, "")


def test_restored_offsets_not_yet_fetched_stay_in_the_metadata() -> None:
    metadata = OffsetMap.from_offsets(100, [103, 104, 110]).encode()
    p = PartitionOffsets("t", 0, committed=100, metadata=metadata)
    assert p.commit_point() is None  # nothing new yet
    assert p.admit(100)
    assert p.admit(101)
    p.complete(101)
    point = p.commit_point()
    assert point is not None
    assert point.offset == 100
    assert set(OffsetMap.decode(point.metadata, commit_offset=100)) == {101, 103, 104, 110}
    p.complete(100)
    point = p.commit_point()
    assert point is not None
    assert point.offset == 102
    assert set(OffsetMap.decode(point.metadata, commit_offset=102)) == {103, 104, 110}


def test_restored_offsets_missing_from_the_log_are_dropped() -> None:
    # 103..105 were compacted away after the commit: fetcher jumps from 102 to 106.
    metadata = OffsetMap.from_offsets(100, [103, 104, 105, 107]).encode()
    p = PartitionOffsets("t", 0, committed=100, metadata=metadata)
    for o in (100, 101, 102):
        assert p.admit(o)
    assert p.admit(106)
    assert not p.admit(107)
    for o in (100, 101, 102, 106):
        p.complete(o)
    point = p.commit_point()
    assert point == CommitPoint("t", 0, 108, "")


def test_first_record_below_the_committed_offset_restarts_tracking() -> None:
    # The topic was recreated; the fetcher reset to offset 0 below the committed 500.
    p = PartitionOffsets("t", 0, committed=500)
    assert p.admit(0) is True
    assert p.admit(0) is False  # a duplicate from now on
    p.complete(0)
    assert p.commit_point() == CommitPoint("t", 0, 1, "")


def test_restored_map_is_dropped_when_the_log_restarts_below_it() -> None:
    metadata = OffsetMap.from_offsets(500, [502]).encode()
    p = PartitionOffsets("t", 0, committed=500, metadata=metadata)
    assert p.admit(3) is True
    assert p.stats().restored_remaining == 0


def test_duplicates_and_unknown_completions_are_ignored() -> None:
    p = PartitionOffsets("t", 0, committed=None)
    assert p.commit_point() is None  # nothing known about this partition yet
    assert p.admit(40)
    assert not p.admit(40)
    assert not p.admit(39)
    p.complete(99)
    p.complete(40)
    p.complete(40)
    assert p.commit_point() == CommitPoint("t", 0, 41, "")
    assert p.highest_admitted == 40


def test_revoked_partition_never_yields_a_commit_point() -> None:
    p = PartitionOffsets("t", 1, committed=0)
    for o in range(10):
        p.admit(o)
    p.complete(0)
    assert p.commit_point() is not None
    p.revoke()
    assert p.revoked
    for o in range(10):
        p.complete(o)  # late completions from in-flight work
    assert p.commit_point() is None
    assert p.admit(10) is False
    assert p.incomplete == 0
    assert p.stats().commit_offset is None


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=8))
def test_pausing_at_over_budget_keeps_every_commit_within_the_limit(seed: int, stride: int) -> None:
    rng = random.Random(seed)
    budget = OffsetBudget(max_metadata_chars=600, max_pending=1_000_000)
    p = PartitionOffsets("t", 0, committed=0, budget=budget)
    offset = 0
    head = 0  # the offset that stays incomplete: the commit point cannot advance
    admitted = []
    while not p.over_budget():
        assert p.admit(offset)
        admitted.append(offset)
        # Complete a random selection of what came before, never the head.
        if offset != head and rng.random() < 0.5:
            p.complete(offset)
        offset += rng.randint(1, stride)
    assert p.budget_fill() >= budget.pause_fill
    rest = [o for o in admitted if o != head]
    rng.shuffle(rest)
    fill = p.budget_fill()
    for i, o in enumerate(rest):
        p.complete(o)
        assert p.budget_fill() <= fill  # it only falls until more is admitted
        fill = p.budget_fill()
        if i % 16 == 0 or i == len(rest) - 1:
            point = p.commit_point()
            if point is not None:
                assert len(point.metadata) <= budget.max_metadata_chars
                assert point.offset == head
    assert p.truncated_offsets == 0
    p.complete(head)
    assert p.may_resume()
    assert p.budget_fill() == 0.0


def test_max_pending_bounds_memory() -> None:
    budget = OffsetBudget(max_pending=100, pause_fill=0.75, resume_fill=0.5)
    p = PartitionOffsets("t", 0, committed=0, budget=budget)
    for o in range(75):
        p.admit(o)
        if o:
            p.complete(o)  # all done except the head: the map stays tiny
    assert p.over_budget()
    for o in range(75, 80):
        p.admit(o)
    p.complete(0)  # head done: pending shrinks to 75..79
    assert p.may_resume()
    assert p.stats().pending == 5


def test_over_budget_then_resume_with_hysteresis() -> None:
    budget = OffsetBudget(max_metadata_chars=200, max_pending=10**6)
    p = PartitionOffsets("t", 0, committed=0, budget=budget)
    o = 0
    while not p.over_budget():
        p.admit(o)
        o += 1
    # Complete from the top down: the commit point stays at 0, fill drops only slowly.
    for x in range(o - 1, 0, -2):
        p.complete(x)
    assert not p.may_resume()  # the head is still open: the span is unchanged
    for x in range(o):
        p.complete(x)
    assert p.may_resume()
    assert not p.over_budget()


def test_truncation_is_counted_when_admitting_past_the_pause_mark() -> None:
    budget = OffsetBudget(max_metadata_chars=100, max_pending=10**6)
    p = PartitionOffsets("t", 0, committed=0, budget=budget)
    rng = random.Random(5)
    for o in range(20_000):  # the engine ignored over_budget()
        p.admit(o)
    for o in range(1, 20_000):
        if rng.random() < 0.5:
            p.complete(o)
    point = p.commit_point()
    assert point is not None
    assert point.offset == 0
    assert len(point.metadata) <= 100
    assert p.truncated_offsets > 0


def test_budget_validation() -> None:
    with pytest.raises(ValueError, match="resume_fill"):
        OffsetBudget(pause_fill=0.5, resume_fill=0.6)
    with pytest.raises(ValueError, match="max_metadata_chars"):
        OffsetBudget(max_metadata_chars=10)


# --- OffsetTracker ------------------------------------------------------------------------------


def test_tracker_assign_commit_revoke() -> None:
    tracker = OffsetTracker()
    a = tracker.assign("t", 0, committed=10, metadata=None)
    b = tracker.assign("t", 1, committed=None, metadata=None)
    assert tracker.get("t", 0) is a
    assert tracker.get("t", 2) is None
    assert tracker.commit_points() == []
    a.admit(10)
    a.complete(10)
    b.admit(0)
    points = tracker.commit_points()
    assert points == [CommitPoint("t", 0, 11, ""), CommitPoint("t", 1, 0, "")]
    assert tracker.commit_points(only=[("t", 1), ("t", 9)]) == [CommitPoint("t", 1, 0, "")]
    tracker.mark_committed(points)
    assert tracker.commit_points() == []

    b.complete(0)
    tracker.revoke("t", 1)
    tracker.revoke("t", 1)  # idempotent
    assert b.revoked
    assert tracker.get("t", 1) is None
    assert tracker.commit_points() == []
    tracker.mark_committed([CommitPoint("t", 1, 1, "")])  # not owned: ignored
    assert [s.partition for s in tracker.stats()] == [0]
    assert [p.partition for p in tracker.owned()] == [0]


def test_reassignment_revokes_the_previous_generation() -> None:
    tracker = OffsetTracker()
    old = tracker.assign("t", 0, committed=0, metadata=None)
    old.admit(0)
    new = tracker.assign("t", 0, committed=0, metadata=None)
    old.complete(0)  # a late completion from the previous assignment
    assert old.revoked
    assert not new.revoked
    assert tracker.commit_points() == []


def test_stats_snapshot() -> None:
    tracker = OffsetTracker()
    p = tracker.assign("t", 0, committed=5, metadata=OffsetMap.from_offsets(5, [9]).encode())
    for o in range(5, 9):
        p.admit(o)
    p.complete(6)
    (s,) = tracker.stats()
    assert (s.commit_offset, s.committed_offset, s.highest_admitted) == (5, 5, 8)
    assert (s.incomplete, s.pending, s.restored_remaining, s.skipped_done) == (3, 4, 1, 0)
    assert 0 < s.budget_fill < 0.01
