"""The pure per-location limiter core, driven by an explicit clock."""

from __future__ import annotations

import math
import random
from bisect import bisect_right

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.ratelimit.budget import (
    ACQUIRED,
    Budget,
    Exhausted,
    LocationBudget,
    RateSignal,
    Wait,
    parse_rate_signal,
)

NO_JITTER = {"pause_jitter": 0.0}


def grant_all(lb: LocationBudget, now: float, n: int) -> int:
    """Grant up to ``n`` at ``now``; return how many were granted."""
    granted = 0
    while granted < n and lb.try_acquire(now) is ACQUIRED:
        granted += 1
    return granted


def max_in_any_window(times: list[float], interval: float) -> int:
    """Most arrivals inside any half-open span (T - interval, T] (a sliding window).

    Float sums make ``(a + interval) - interval`` land a hair below ``a``; 1 ns of slack
    keeps two arrivals exactly ``interval`` apart in different windows, as integer clocks do."""
    times = sorted(times)
    edge = interval - 1e-9
    return max((bisect_right(times, t) - bisect_right(times, t - edge) for t in times), default=0)


def test_idle_location_sends_its_sustained_burst_at_once_then_paces() -> None:
    lb = LocationBudget(Budget())  # 80 per 10 s, window 100
    assert grant_all(lb, 0.0, 1000) == 80
    wait = lb.try_acquire(0.0)
    assert wait == Wait(pytest.approx(0.125))  # 10 s / 80
    assert lb.try_acquire(0.125) is ACQUIRED


def test_window_caps_at_burst_max_when_pace_allows_more() -> None:
    lb = LocationBudget(Budget(sustained_per_interval=100))
    assert grant_all(lb, 0.0, 1000) == 100
    for _ in range(100):
        lb.release(0.0)
    # The pace would allow one more at 0.1 s; the window forbids it until 10 s.
    assert lb.try_acquire(0.1) == Wait(pytest.approx(9.9))
    assert lb.try_acquire(10.0) is ACQUIRED


def test_in_flight_request_holds_its_slot_until_interval_after_its_answer() -> None:
    lb = LocationBudget(Budget(burst_max=5, sustained_per_interval=5))
    assert grant_all(lb, 0.0, 10) == 5
    assert lb.try_acquire(1.0) == Wait(math.inf)  # all five unanswered: only an answer helps
    lb.release(3.0)
    assert lb.try_acquire(3.0) == Wait(pytest.approx(10.0))
    assert lb.try_acquire(13.0) is ACQUIRED


def test_unsent_permit_gives_slot_pace_and_daily_unit_back() -> None:
    lb = LocationBudget(Budget(burst_max=2, sustained_per_interval=2, daily=10))
    assert grant_all(lb, 0.0, 5) == 2
    lb.release(0.0, sent=False)
    assert lb.try_acquire(0.0) is ACQUIRED
    assert lb.state("L", 0.0).daily_remaining == 8


@settings(max_examples=300, deadline=None)
@given(
    burst=st.integers(1, 30),
    sustained_frac=st.floats(0.2, 1.0),
    interval=st.sampled_from([1.0, 10.0]),
    demand=st.lists(
        st.tuples(
            st.floats(0.0, 3.0),  # gap before this batch of requests arrives
            st.integers(0, 40),  # requests in the batch
            st.floats(0.0, 2.0),  # answer latency of those granted
            st.floats(0.0, 1.0),  # where in [grant, answer] the server sees each
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_no_schedule_puts_more_than_max_in_any_sliding_window(
    burst: int,
    sustained_frac: float,
    interval: float,
    demand: list[tuple[float, int, float, float]],
) -> None:
    """Event-driven: requests are granted at the exact instants the limiter names, so any
    off-by-epsilon in the window shows up as max + 1 arrivals in some span."""
    budget = Budget(
        burst_max=burst,
        interval_s=interval,
        sustained_per_interval=max(1, round(burst * sustained_frac)),
    )
    lb = LocationBudget(budget)
    batches = []
    at = 0.0
    for gap, count, latency, seen_at in demand:
        at += gap
        batches.append((at, count, latency, seen_at))
    now, backlog, wake = 0.0, [], math.inf
    answers: list[float] = []  # answer times of requests in flight
    arrivals: list[float] = []
    while batches or backlog:
        now = min([wake, *answers, *(b[0] for b in batches[:1])])
        while batches and batches[0][0] <= now:
            _, count, latency, seen_at = batches.pop(0)
            backlog.extend([(latency, seen_at)] * count)
        for due in sorted(a for a in answers if a <= now):
            answers.remove(due)
            lb.release(due)
        wake = math.inf
        while backlog:
            decision = lb.try_acquire(now)
            if decision is not ACQUIRED:
                assert isinstance(decision, Wait)
                wake = now + decision.seconds
                break
            latency, seen_at = backlog.pop(0)
            answers.append(now + latency)
            arrivals.append(now + latency * seen_at)
    assert max_in_any_window(arrivals, interval) <= burst
    # The pace: GCRA allows its burst capacity plus the rate over the run, no more.
    rate = budget.sustained_per_interval / interval
    assert len(arrivals) <= budget.sustained_per_interval + rate * now + 1


def simulate_backlog(budget: Budget, seconds: float, latency: float) -> list[float]:
    """A backlogged location: ask whenever the limiter allows; answers after ``latency``."""
    lb = LocationBudget(budget)
    now, grants, answers = 0.0, [], []
    while now < seconds:
        while answers and answers[0] <= now:
            lb.release(answers.pop(0))
        decision = lb.try_acquire(now)
        if decision is ACQUIRED:
            grants.append(now)
            answers.append(now + latency)
            continue
        assert isinstance(decision, Wait)
        wake = now + decision.seconds
        now = min(wake, answers[0]) if answers else wake
    return grants


@pytest.mark.parametrize("sustained", [80, 100])
def test_backlog_achieves_at_least_95_percent_of_the_configured_pace(sustained: int) -> None:
    budget = Budget(sustained_per_interval=sustained)
    grants = simulate_backlog(budget, seconds=600.0, latency=0.2)
    steady = [t for t in grants if t >= 100.0]  # past the initial burst
    achieved = len(steady) / 500.0
    assert achieved >= 0.95 * sustained / 10.0
    assert max_in_any_window(grants, 10.0) <= 100


def test_daily_budget_exhausts_then_resets_after_the_rolling_period() -> None:
    lb = LocationBudget(Budget(daily=3, daily_period_s=100.0, daily_recheck_s=1000.0))
    assert grant_all(lb, 5.0, 10) == 3
    for _ in range(3):
        lb.release(5.0)
    decision = lb.try_acquire(20.0)
    assert decision == Exhausted(105.0)  # the period started at the first request
    assert lb.state("L", 20.0).daily_exhausted_until == 105.0
    assert lb.try_acquire(104.9) == Exhausted(105.0)
    assert grant_all(lb, 105.0, 10) == 3


def test_server_reported_daily_zero_exhausts_and_a_probe_discovers_the_reset() -> None:
    lb = LocationBudget(Budget(daily_recheck_s=900.0))
    assert lb.try_acquire(0.0) is ACQUIRED
    lb.observe(RateSignal(status=200, daily_remaining=0), 1.0)
    lb.release(1.0)
    assert lb.try_acquire(2.0) == Exhausted(902.0)
    assert lb.try_acquire(902.0) is ACQUIRED  # the one probe
    assert lb.try_acquire(902.0) == Exhausted(1802.0)  # nothing more until it answers
    lb.observe(RateSignal(status=200, daily_remaining=199_999), 903.0)
    lb.release(903.0)
    assert lb.try_acquire(903.0) is ACQUIRED
    assert lb.state("L", 903.0).daily_remaining == 199_998


def test_429_pauses_for_retry_after_plus_bounded_jitter() -> None:
    lb = LocationBudget(Budget(pause_jitter=0.1), rng=random.Random(7))
    assert lb.try_acquire(0.0) is ACQUIRED
    lb.observe(RateSignal(status=429, retry_after_s=4.0, interval_s=10.0), 1.0)
    decision = lb.try_acquire(1.0)
    assert isinstance(decision, Wait)
    assert 4.0 <= decision.seconds <= 4.4
    assert lb.try_acquire(1.0 + 4.4) is ACQUIRED


def test_429_without_retry_after_pauses_for_the_interval_header() -> None:
    lb = LocationBudget(Budget(**NO_JITTER))
    lb.observe(RateSignal(status=429, interval_s=20.0, remaining=0), 0.0)
    assert lb.try_acquire(0.0) == Wait(20.0)
    state = lb.state("L", 1.0)
    assert state.paused_until == 20.0


def test_429_with_daily_remaining_zero_is_exhaustion_not_a_pause() -> None:
    lb = LocationBudget(Budget(**NO_JITTER, daily_recheck_s=600.0))
    lb.observe(RateSignal(status=429, interval_s=10.0, daily_remaining=0), 0.0)
    assert lb.try_acquire(0.0) == Exhausted(600.0)
    assert lb.state("L", 0.0).paused_until is None


def test_stricter_server_limits_clamp_window_and_pace() -> None:
    lb = LocationBudget(Budget())  # 100 / 10 s window, 80 / 10 s pace
    lb.observe(RateSignal(status=200, max=25, interval_s=10.0, remaining=25), 0.0)
    # Pace keeps the 80 % headroom: 20 per 10 s burst capacity, window 25.
    assert grant_all(lb, 0.0, 1000) == 20
    assert lb.try_acquire(0.0) == Wait(pytest.approx(0.5))


def test_longer_server_interval_lengthens_the_window() -> None:
    lb = LocationBudget(Budget(burst_max=10, sustained_per_interval=10))
    lb.observe(RateSignal(status=200, max=10, interval_s=60.0), 0.0)
    assert grant_all(lb, 0.0, 100) == 10
    for _ in range(10):
        lb.release(0.0)
    assert lb.try_acquire(10.0) == Wait(pytest.approx(50.0))


def test_looser_server_limits_never_raise_the_configured_ones() -> None:
    lb = LocationBudget(Budget(burst_max=10, sustained_per_interval=10))
    lb.observe(RateSignal(status=200, max=500, interval_s=1.0), 0.0)
    assert grant_all(lb, 0.0, 100) == 10


def test_server_remaining_below_our_count_reserves_the_unknown_slots() -> None:
    lb = LocationBudget(Budget(burst_max=100, sustained_per_interval=100))
    assert lb.try_acquire(0.0) is ACQUIRED
    # Someone else spent 89 in this window: 100 - 10 remaining, we know of 1.
    lb.observe(RateSignal(status=200, max=100, remaining=10), 0.5)
    lb.release(0.5)
    assert grant_all(lb, 0.5, 1000) == 10
    assert lb.try_acquire(0.5) == Wait(pytest.approx(10.0))


def test_server_remaining_above_our_count_changes_nothing() -> None:
    lb = LocationBudget(Budget(burst_max=10, sustained_per_interval=10))
    assert grant_all(lb, 0.0, 5) == 5
    lb.observe(RateSignal(status=200, max=10, remaining=9), 0.1)
    assert lb.state("L", 0.1).remaining == 5


def test_parse_rate_signal_reads_headers_in_any_case_and_ignores_garbage() -> None:
    signal = parse_rate_signal(
        429,
        {
            "x-ratelimit-max": "100",
            "X-RateLimit-Interval-Milliseconds": "10000",
            "X-RATELIMIT-REMAINING": "0",
            "X-RateLimit-Limit-Daily": "200000",
            "X-RateLimit-Daily-Remaining": "oops",
            "Retry-After": "3",
        },
        wall_now=0.0,
    )
    assert signal == RateSignal(
        status=429, max=100, interval_s=10.0, remaining=0, daily_limit=200_000, retry_after_s=3.0
    )


def test_parse_rate_signal_accepts_an_http_date_retry_after() -> None:
    signal = parse_rate_signal(429, {"Retry-After": "Thu, 01 Jan 1970 00:01:00 GMT"}, wall_now=45.0)
    assert signal.retry_after_s == 15.0


@pytest.mark.parametrize(
    "kwargs",
    [{"burst_max": 0}, {"sustained_per_interval": 101}, {"interval_s": 0}, {"pause_jitter": 2}],
)
def test_budget_rejects_impossible_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Budget(**kwargs)  # type: ignore[arg-type]


def test_budget_share_divides_and_keeps_at_least_one() -> None:
    share = Budget().share(3)
    assert (share.burst_max, share.sustained_per_interval, share.daily) == (33, 26, 66_666)
    assert Budget(burst_max=2, sustained_per_interval=1).share(5).burst_max == 1
