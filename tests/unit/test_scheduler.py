"""KeyedScheduler: key order, one in flight per key, coalescing, lanes, retries, discard."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.engine.scheduler import KeyedScheduler, Work


def _concat(older: str, newer: str) -> str:
    return older + newer


def make(window: float = 0.0) -> KeyedScheduler[str, int]:
    return KeyedScheduler(window=window, merge=_concat)


def test_work_waits_for_its_window_then_is_taken() -> None:
    s = make(window=2.0)
    assert s.offer("k", "loc", "a", 1, now=10.0) is False
    assert s.take("loc", now=11.9) is None
    assert s.next_ready_at("loc") == 12.0
    work = s.take("loc", now=12.0)
    assert work is not None
    assert (work.item, work.tickets, work.attempts) == ("a", [1], 0)


def test_items_for_a_waiting_key_fold_into_one_work_in_order() -> None:
    s = make(window=1.0)
    s.offer("k", "loc", "a", 1, now=0.0)
    assert s.offer("k", "loc", "b", 2, now=0.5) is True
    assert s.offer("k", "loc", "c", 3, now=0.9) is True
    work = s.take("loc", now=1.0)
    assert work is not None
    assert (work.item, work.tickets, work.coalesced) == ("abc", [1, 2, 3], 2)
    # the window counts from the first item, not the last
    assert work.ready_at == 1.0


def test_one_in_flight_per_key_and_newer_items_wait_behind_it() -> None:
    s = make()
    s.offer("k", "loc", "a", 1, now=0.0)
    first = s.take("loc", now=0.0)
    assert first is not None
    s.offer("k", "loc", "b", 2, now=0.1)
    s.offer("k", "loc", "c", 3, now=0.2)
    assert s.take("loc", now=5.0) is None  # the key is busy
    s.complete(first)
    second = s.take("loc", now=5.0)
    assert second is not None
    assert (second.item, second.tickets) == ("bc", [2, 3])


def test_other_keys_proceed_while_one_is_in_flight() -> None:
    s = make()
    s.offer("k1", "loc", "a", 1, now=0.0)
    s.offer("k2", "loc", "b", 2, now=0.0)
    first = s.take("loc", now=0.0)
    second = s.take("loc", now=0.0)
    assert first is not None
    assert second is not None
    assert {first.key, second.key} == {"k1", "k2"}
    assert s.in_flight == 2


def test_lanes_are_independent_and_oldest_ready_goes_first() -> None:
    s = make(window=1.0)
    s.offer("k1", "busy", "a", 1, now=0.0)
    s.offer("k2", "busy", "b", 2, now=0.5)
    s.offer("k3", "quiet", "c", 3, now=0.7)
    assert s.take("quiet", now=1.7) is not None
    busy_first = s.take("busy", now=2.0)
    busy_second = s.take("busy", now=2.0)
    assert busy_first is not None
    assert busy_second is not None
    assert [busy_first.key, busy_second.key] == ["k1", "k2"]


def test_retry_keeps_the_failed_work_ahead_of_newer_items() -> None:
    s = make()
    s.offer("k", "loc", "a", 1, now=0.0)
    work = s.take("loc", now=0.0)
    assert work is not None
    s.offer("k", "loc", "b", 2, now=0.1)
    again = s.retry(work, at=3.0)
    assert (again.item, again.tickets, again.attempts) == ("ab", [1, 2], 1)
    assert s.take("loc", now=2.9) is None
    taken = s.take("loc", now=3.0)
    assert taken is again
    assert s.in_flight == 1


def test_complete_forgets_idle_keys() -> None:
    s = make()
    s.offer("k", "loc", "a", 1, now=0.0)
    work = s.take("loc", now=0.0)
    assert work is not None
    s.complete(work)
    assert (s.keys, s.tickets, s.in_flight) == (0, 0, 0)
    assert s.next_ready_at("loc") is None


def test_completing_work_that_is_not_in_flight_is_a_caller_bug() -> None:
    s = make()
    s.offer("k", "loc", "a", 1, now=0.0)
    stray: Work[str, int] = Work("k", "loc", "a", [1], first_at=0.0, ready_at=0.0)
    with pytest.raises(ValueError, match="not in flight"):
        s.complete(stray)


def test_discard_removes_tickets_from_pending_work_only() -> None:
    s = make()
    s.offer("k1", "loc", "a", 1, now=0.0)
    in_flight = s.take("loc", now=0.0)
    assert in_flight is not None
    s.offer("k1", "loc", "b", 2, now=0.0)  # pending behind the in-flight work
    s.offer("k2", "loc", "c", 3, now=0.0)
    s.offer("k2", "loc", "d", 4, now=0.0)
    removed = s.discard(lambda ticket: ticket not in (1, 2, 3, 4))
    assert sorted(removed) == [2, 3, 4]
    assert in_flight.tickets == [1]  # untouched: its delivery finishes
    assert s.take("loc", now=0.0) is None
    s.complete(in_flight)
    assert (s.keys, s.tickets) == (0, 0)


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        make(window=-1)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.integers(0, 4), st.integers(0, 2)),
        st.tuples(st.just("take"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("complete"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("retry"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("tick"), st.just(0), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.sampled_from([0.0, 1.0]))
def test_any_interleaving_keeps_key_order_and_one_in_flight_per_key(
    ops: list[tuple[str, int, int]], window: float
) -> None:
    s: KeyedScheduler[tuple[int, ...], int] = KeyedScheduler(
        window=window, merge=lambda a, b: a + b
    )
    now = 0.0
    next_ticket = 0
    offered: dict[str, list[int]] = {}
    delivered: dict[str, list[int]] = {}
    flying: list[Work[tuple[int, ...], int]] = []
    lane_of = {f"k{i}": f"lane{i % 3}" for i in range(5)}
    for op, a, _ in ops:
        if op == "offer":
            key = f"k{a}"
            s.offer(key, lane_of[key], (next_ticket,), next_ticket, now=now)
            offered.setdefault(key, []).append(next_ticket)
            next_ticket += 1
        elif op == "take":
            work = s.take(f"lane{a}", now=now)
            if work is not None:
                assert all(w.key != work.key for w in flying), "two in flight for one key"
                assert work.lane == f"lane{a}"
                assert list(work.item) == work.tickets, "merge order differs from ticket order"
                flying.append(work)
        elif op in ("complete", "retry") and flying:
            work = flying.pop(a % len(flying))
            if op == "complete":
                s.complete(work)
                delivered.setdefault(str(work.key), []).extend(work.tickets)
            else:
                s.retry(work, at=now + 0.5)
        elif op == "tick":
            now += 0.75
    # Drain everything.
    for work in flying:
        s.complete(work)
        delivered.setdefault(str(work.key), []).extend(work.tickets)
    now += 10
    while True:
        taken = [w for lane in ("lane0", "lane1", "lane2") if (w := s.take(lane, now=now))]
        if not taken:
            break
        for work in taken:
            s.complete(work)
            delivered.setdefault(str(work.key), []).extend(work.tickets)
    assert delivered == offered
    assert (s.keys, s.tickets, s.in_flight) == (0, 0, 0)


# -- identities: no two works sharing one in flight ---------------------------------------------


def _letters(item: str) -> set[str]:
    return set(item)  # each letter of an item is an identity (an email, say)


def with_identities(window: float = 0.0) -> KeyedScheduler[str, int]:
    return KeyedScheduler(window=window, merge=_concat, identities=_letters)


def test_work_sharing_an_identity_with_work_in_flight_waits_for_it_then_goes_first() -> None:
    s = with_identities()
    s.offer("anonymous", "loc", "e", 1, now=0.0)
    s.offer("identified", "loc", "e", 2, now=0.1)  # same email, another key
    s.offer("other", "loc", "x", 3, now=0.2)
    first = s.take("loc", now=1.0)
    assert first is not None
    assert first.key == "anonymous"
    other = s.take("loc", now=1.0)  # "identified" waits; the other contact does not
    assert other is not None
    assert other.key == "other"
    assert s.take("loc", now=1.0) is None
    assert s.next_ready_at("loc") is None  # nothing schedulable until the holder finishes
    assert s.identity_waits == 1
    s.offer("later", "loc", "y", 4, now=1.1)
    s.complete(first)
    second = s.take("loc", now=2.0)
    assert second is not None
    assert second.key == "identified"
    assert (second.tickets, second.ready_at) == ([2], 0.1)


def test_a_retried_holder_releases_its_identities_and_waits_its_backoff() -> None:
    s = with_identities()
    s.offer("k1", "loc", "e", 1, now=0.0)
    s.offer("k2", "loc", "e", 2, now=0.0)
    first = s.take("loc", now=0.0)
    assert first is not None
    assert s.take("loc", now=0.0) is None
    s.retry(first, at=5.0)
    second = s.take("loc", now=0.0)
    assert second is not None
    assert second.key == "k2"
    assert s.take("loc", now=6.0) is None  # now k1 waits for k2
    s.complete(second)
    again = s.take("loc", now=6.0)
    assert again is first


def test_identities_follow_what_folded_into_pending_work() -> None:
    s = with_identities()
    s.offer("k1", "loc", "a", 1, now=0.0)
    holder = s.take("loc", now=0.0)
    s.offer("k2", "loc", "b", 2, now=0.0)
    s.offer("k2", "loc", "a", 3, now=0.0)  # k2 now also carries "a"
    assert s.take("loc", now=0.0) is None
    assert holder is not None
    s.complete(holder)
    work = s.take("loc", now=0.0)
    assert work is not None
    assert (work.item, work.tickets) == ("ba", [2, 3])


def test_discarded_waiting_work_is_not_queued_again() -> None:
    s = with_identities()
    s.offer("k1", "loc", "a", 1, now=0.0)
    holder = s.take("loc", now=0.0)
    s.offer("k2", "loc", "a", 2, now=0.0)
    assert holder is not None
    assert s.take("loc", now=0.0) is None
    assert s.discard(lambda ticket: ticket != 2) == [2]
    s.complete(holder)
    assert s.take("loc", now=0.0) is None
    assert (s.keys, s.tickets, s.in_flight) == (0, 0, 0)


identity_operations = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.integers(0, 4), st.integers(0, 2)),
        st.tuples(st.just("take"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("complete"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("retry"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("tick"), st.just(0), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(identity_operations)
def test_any_interleaving_never_flies_two_works_sharing_an_identity(
    ops: list[tuple[str, int, int]],
) -> None:
    lane_of = {f"k{i}": f"lane{i % 2}" for i in range(5)}
    # item: ((ticket, identity), ...); an identity is (lane, n), as the engine's carry a location
    s: KeyedScheduler[tuple[tuple[int, tuple[str, int]], ...], int] = KeyedScheduler(
        window=0.0,
        merge=lambda a, b: a + b,
        identities=lambda item: {identity for _, identity in item},
    )
    now, next_ticket = 0.0, 0
    offered: dict[str, list[int]] = {}
    delivered: dict[str, list[int]] = {}
    flying: list[Work[tuple[tuple[int, tuple[str, int]], ...], int]] = []

    def take(lane: str) -> bool:
        work = s.take(lane, now=now)
        if work is None:
            return False
        mine = {identity for _, identity in work.item}
        for other in flying:
            assert mine.isdisjoint(identity for _, identity in other.item), "shared identity"
        flying.append(work)
        return True

    for op, a, b in ops:
        if op == "offer":
            key = f"k{a}"
            item = ((next_ticket, (lane_of[key], b)),)
            s.offer(key, lane_of[key], item, next_ticket, now=now)
            offered.setdefault(key, []).append(next_ticket)
            next_ticket += 1
        elif op == "take":
            take(f"lane{a}")
        elif op in ("complete", "retry") and flying:
            work = flying.pop(a % len(flying))
            if op == "complete":
                s.complete(work)
                delivered.setdefault(str(work.key), []).extend(work.tickets)
            else:
                s.retry(work, at=now + 0.5)
        elif op == "tick":
            now += 0.75
    now += 10
    while flying or s.keys:  # drain: nothing may be stranded behind a released identity
        while take("lane0") or take("lane1"):
            pass
        assert flying, "pending work left that nothing will ever release"
        work = flying.pop(0)
        s.complete(work)
        delivered.setdefault(str(work.key), []).extend(work.tickets)
    assert delivered == offered
    assert (s.keys, s.tickets, s.in_flight) == (0, 0, 0)
