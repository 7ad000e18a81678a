"""The asyncio front of the limiter, on an event loop whose clock is virtual
(``tests/virtual_time.py``): a test that waits ten simulated minutes takes milliseconds and
every instant is exact."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumer.errors import DailyBudgetExhausted
from consumer.ratelimit.budget import Budget
from consumer.ratelimit.limiter import LocalBackend, Permit, RateLimiter
from tests.virtual_time import now, run


def limiter(**budget: Any) -> RateLimiter:
    return RateLimiter(LocalBackend(Budget(pause_jitter=0.0, **budget)))


async def sequence(rl: RateLimiter, location: str, n: int, latency: float) -> list[float]:
    """Start ``n`` senders at once; each acquires, 'sends', releases after ``latency``.
    Return grant times in grant order."""
    grants: list[float] = []

    async def send() -> None:
        with await rl.acquire(location):
            grants.append(now())
            await asyncio.sleep(latency)

    await asyncio.gather(*(send() for _ in range(n)))
    return grants


def test_backlog_is_granted_at_the_budgets_pace_in_virtual_time() -> None:
    async def main() -> list[float]:
        return await sequence(limiter(), "A", 240, latency=0.3)

    grants = run(main)
    assert grants[:80] == [0.0] * 80  # the idle location's burst capacity
    assert grants[80] == pytest.approx(0.125)  # then the pace: 10 s / 80
    # The pace's burst plus its rate would put 100 in the first window by 2.5 s; the window
    # then holds until the burst's slots expire (answer + 10 s), and never more than 100.
    assert grants[99] == pytest.approx(20 * 0.125)
    assert grants[100] == pytest.approx(10.3)
    assert all(b - a >= 10.0 for a, b in zip(grants, grants[100:], strict=False))
    # Long run: at most the pace's burst capacity plus 8 per second.
    assert len(grants) <= 80 + 8 * grants[-1] + 1


def test_waiters_of_one_location_are_served_in_arrival_order() -> None:
    async def main() -> list[int]:
        rl = limiter(burst_max=2, sustained_per_interval=2, interval_s=1.0)
        order: list[int] = []

        async def send(i: int) -> None:
            with await rl.acquire("A"):
                order.append(i)

        tasks = []
        for i in range(20):
            tasks.append(asyncio.create_task(send(i)))
            await asyncio.sleep(0.01)  # arrive one after another
        await asyncio.gather(*tasks)
        return order

    assert run(main) == list(range(20))


def test_a_busy_location_never_delays_a_quiet_one() -> None:
    async def main() -> tuple[float, int]:
        rl = limiter(burst_max=10, sustained_per_interval=10)
        backlog = asyncio.create_task(sequence(rl, "busy", 1000, latency=0.1))
        await asyncio.sleep(1.0)  # the busy lane is saturated and queued
        queued = rl.snapshot("busy").waiting
        started = now()
        with await rl.acquire("quiet"):
            waited = now() - started
        backlog.cancel()
        with pytest.raises(asyncio.CancelledError):
            await backlog
        return waited, queued

    waited, queued = run(main)
    assert waited == 0.0
    assert queued > 900


def test_cancelled_waiter_leaves_no_slot_behind() -> None:
    async def main() -> tuple[float, int, int]:
        rl = limiter(burst_max=1, sustained_per_interval=1, interval_s=1.0)
        first = await rl.acquire("A")
        waiters = [asyncio.create_task(rl.acquire("A")) for _ in range(3)]
        await asyncio.sleep(0.1)
        waiters[0].cancel()  # the head, blocked on the in-flight request
        waiters[1].cancel()
        first.release()
        permit = await waiters[2]
        granted_at = now()
        state = rl.snapshot("A")
        permit.release()
        return granted_at, state.in_flight, state.waiting

    granted_at, in_flight, waiting = run(main)
    assert granted_at == pytest.approx(1.1)  # one interval after the answer, not later
    assert (in_flight, waiting) == (1, 0)


def test_head_blocked_on_in_flight_requests_wakes_on_release() -> None:
    async def main() -> float:
        rl = limiter(burst_max=1, sustained_per_interval=1, interval_s=0.5)
        permit = await rl.acquire("A")
        waiter = asyncio.create_task(rl.acquire("A"))
        await asyncio.sleep(7.0)  # unanswered for 7 s: the waiter must not give up or spin
        permit.release()
        (await waiter).release()
        return now()

    assert run(main) == pytest.approx(7.5)


def test_429_pauses_the_lane_for_retry_after() -> None:
    async def main() -> float:
        rl = limiter()
        permit = await rl.acquire("A")
        rl.observe("A", status=429, headers={"Retry-After": "30"})
        permit.release()
        assert rl.snapshot("A").paused_until == pytest.approx(30.0)
        (await rl.acquire("A")).release()
        return now()

    assert run(main) == pytest.approx(30.0)


def test_daily_exhaustion_raises_with_the_estimated_reset() -> None:
    async def main() -> DailyBudgetExhausted:
        rl = limiter(daily=2, daily_period_s=3600.0, daily_recheck_s=7200.0)
        await asyncio.sleep(5.0)
        for _ in range(2):
            (await rl.acquire("A")).release()
        with pytest.raises(DailyBudgetExhausted) as caught:
            await rl.acquire("A")
        assert rl.snapshot("A").daily_exhausted_until == 3605.0
        return caught.value

    exc = run(main)
    assert (exc.location_id, exc.until) == ("A", 3605.0)


def test_permit_releases_once_and_unsent_release_gives_the_slot_back() -> None:
    async def main() -> list[int]:
        rl = limiter(burst_max=2, sustained_per_interval=2, daily=100)
        seen = []
        a: Permit = await rl.acquire("A")
        a.release(sent=False)
        a.release()  # ignored
        seen.append(rl.snapshot("A").remaining)
        seen.append(rl.snapshot("A").daily_remaining)
        with await rl.acquire("A"):
            pass
        seen.append(rl.snapshot("A").remaining)
        return seen

    assert run(main) == [2, 100, 1]


def test_virtual_loop_refuses_to_hang() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(RuntimeError, match="block forever"):
        run(main)


@pytest.mark.parametrize("latency", [0.0, 0.05, 0.3])
def test_backlog_at_highlevels_limits_runs_at_95_percent_without_exceeding_a_window(
    latency: float,
) -> None:
    """Pace = window = 100 / 10 s. A slot is held from grant to answer + 10 s, so the
    ceiling is 100 / (10 s + latency): 97 % at 0.3 s."""
    async def main() -> list[float]:
        rl = limiter(sustained_per_interval=100)
        return await sequence(rl, "A", 3000, latency=latency)

    grants = run(main)
    # Arrivals at the server: anywhere in [grant, grant + latency]; latest is worst case.
    for seen in (grants, [g + latency for g in grants]):
        ordered = sorted(seen)
        assert all(b - a >= 10.0 - 1e-9 for a, b in zip(ordered, ordered[100:], strict=False))
    elapsed = grants[-1] - grants[100]
    assert (len(grants) - 101) / elapsed >= 0.95 * 10.0


def test_a_waiter_on_an_infinite_wait_does_not_hold_other_lanes() -> None:
    async def main() -> None:
        rl = limiter(burst_max=1, sustained_per_interval=1)
        await rl.acquire("A")  # never released: A is blocked for good
        blocked = asyncio.create_task(rl.acquire("A"))
        await asyncio.sleep(60.0)
        for loc in ("B", "C"):
            (await rl.acquire(loc)).release()
        assert not blocked.done()
        state = rl.snapshot("A")
        assert (state.remaining, state.in_flight, state.waiting) == (0, 1, 1)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked

    run(main)
