"""The shared rate limiter against a real redis-server: several instances, one budget."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from consumer.errors import DailyBudgetExhausted
from consumer.ratelimit.budget import Budget
from consumer.ratelimit.limiter import RateLimiter
from consumer.ratelimit.redis_backend import RedisBackend
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

# HighLevel's shape (max per interval, paced at the max), ten times faster.
FAST = Budget(burst_max=20, interval_s=1.0, sustained_per_interval=20, pause_jitter=0.0)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class Instances:
    """N limiter instances, each with its own Redis connection pool, as N processes have."""

    def __init__(self, url: str, n: int, budget: Budget = FAST, **kwargs: float) -> None:
        self.backends = [RedisBackend.from_url(url, budget, **kwargs) for _ in range(n)]
        self.limiters = [RateLimiter(b) for b in self.backends]

    async def aclose(self) -> None:
        for limiter in self.limiters:
            await limiter.aclose()


@pytest.fixture
async def three(redis_server: RedisServer) -> AsyncIterator[Instances]:
    instances = Instances(redis_server.url, 3)
    yield instances
    await instances.aclose()


def assert_no_window_over(times: list[float], max_: int, interval: float) -> None:
    ordered = sorted(times)
    worst = min((b - a for a, b in zip(ordered, ordered[max_:], strict=False)), default=interval)
    assert worst >= interval, f"{max_ + 1} requests within {worst:.4f}s"


@pytest.mark.slow
async def test_three_instances_sharing_one_location_stay_inside_its_window(
    three: Instances,
) -> None:
    grants: list[float] = []
    answers: list[float] = []
    rng = random.Random(1)
    deadline = time.time() + 4.0

    async def sender(limiter: RateLimiter) -> None:
        while time.time() < deadline:
            permit = await limiter.acquire("loc-shared")
            grants.append(time.time())  # Redis TIME and time.time() read the same clock
            await asyncio.sleep(rng.uniform(0.0, 0.03))
            answers.append(time.time())
            permit.release()

    await asyncio.gather(*(sender(lim) for lim in three.limiters for _ in range(4)))
    # The server sees each request somewhere between its grant and its answer.
    assert_no_window_over(grants, 20, 1.0)
    assert_no_window_over(answers, 20, 1.0)
    # Grants come in window-sized batches: rate over whole batches, first to last. A slot is
    # held for the interval plus the answer's latency, which weighs 10x more at this scale.
    rate = (len(grants) - 20) / (grants[-1] - grants[0])
    assert rate >= 0.85 * 20, rate
    assert not any(b.fallback_active for b in three.backends)


async def test_a_429_seen_by_one_instance_pauses_the_others(three: Instances) -> None:
    first, second, _ = three.limiters
    (await first.acquire("loc-429")).release()
    first.observe("loc-429", status=429, headers={"Retry-After": "1"})
    await asyncio.sleep(0.05)  # the observation travels to Redis in the background
    started = time.monotonic()
    (await second.acquire("loc-429")).release()
    assert time.monotonic() - started >= 0.9


async def test_daily_budget_is_one_budget_for_all_instances(redis_server: RedisServer) -> None:
    budget = Budget(daily=5, daily_recheck_s=3600.0)
    instances = Instances(redis_server.url, 3, budget)
    try:
        granted = 0
        refusals = []
        for _ in range(3):
            for limiter in instances.limiters:
                try:
                    (await limiter.acquire("loc-daily")).release()
                    granted += 1
                except DailyBudgetExhausted as exc:
                    refusals.append(exc.until - asyncio.get_running_loop().time())
        assert granted == 5
        assert len(refusals) == 4
        assert all(3590 < r <= 3600 for r in refusals)
        snapshot = instances.limiters[0].snapshot("loc-daily")
        assert snapshot.daily_exhausted_until is not None
    finally:
        await instances.aclose()


async def test_remaining_reported_by_the_server_limits_every_instance(three: Instances) -> None:
    first, second, _ = three.limiters
    permit = await first.acquire("loc-remaining")
    # The server counted 17 of 20 in its window, ours included: someone else spent 16.
    first.observe(
        "loc-remaining",
        status=200,
        headers={"X-RateLimit-Max": "20", "X-RateLimit-Remaining": "3"},
    )
    permit.release()
    await asyncio.sleep(0.05)
    granted = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.5):  # well inside the 1 s window
            while True:
                (await second.acquire("loc-remaining")).release()
                granted += 1
    assert granted == 3


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


async def test_outage_falls_back_to_a_local_share_and_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="consumer.ratelimit.redis_backend")
    instances = Instances(redis_server.url, 1, reconnect_interval_s=0.1)
    backend, limiter = instances.backends[0], instances.limiters[0]
    try:
        (await limiter.acquire("loc-outage")).release()
        # Several pooled connections, all dead once Redis restarts.
        for permit in await asyncio.gather(*(limiter.acquire(f"warm-{i}") for i in range(8))):
            permit.release()
        assert not backend.fallback_active

        redis_server.stop()
        # Nothing is refused and nothing hangs: 1/3 of the window (6 of 20) goes at once.
        async with asyncio.timeout(2.0):
            permits = [await limiter.acquire("loc-outage") for _ in range(6)]
        assert backend.fallback_active
        assert limiter.snapshot("loc-outage").fallback_active
        seventh = asyncio.create_task(limiter.acquire("loc-outage"))
        await asyncio.sleep(0.3)
        assert not seventh.done()  # the local share is full until answers come back
        for permit in permits:
            permit.release()
        (await seventh).release()
        fallbacks = events(caplog, "ratelimit_fallback")
        assert len(fallbacks) == 1

        redis_server.start()
        for _ in range(100):  # reconnect attempts every 0.1 s
            if not backend.fallback_active:
                break
            await asyncio.sleep(0.05)
        assert not backend.fallback_active
        permit = await limiter.acquire("loc-outage")
        permit.release()
        # The pool's connections from before the outage are not mistaken for a new one.
        for permit in await asyncio.gather(*(limiter.acquire(f"warm-{i}") for i in range(8))):
            permit.release()
        await asyncio.sleep(0.1)  # the released slots' batch went out
        check = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            # Granted by Redis again (its scripts reloaded after the restart: NOSCRIPT).
            assert await check.exists("ghl-consumer:rl:{loc-outage}:w") == 1
        finally:
            await check.aclose()
        recoveries = events(caplog, "ratelimit_fallback_recovered")
        assert len(recoveries) == 1
        assert backend.fallback_transitions == 1
    finally:
        await instances.aclose()


async def test_daily_period_resets_and_a_probe_finds_the_servers_new_day(
    redis_server: RedisServer,
) -> None:
    budget = Budget(daily=2, daily_period_s=1.0, daily_recheck_s=0.5)
    instances = Instances(redis_server.url, 2, budget)
    first, second = instances.limiters
    try:
        for limiter in (first, second):
            (await limiter.acquire("loc-day")).release()
        with pytest.raises(DailyBudgetExhausted) as caught:
            await second.acquire("loc-day")
        assert 0.3 < caught.value.until - asyncio.get_running_loop().time() <= 0.5
        await asyncio.sleep(1.05)  # the local period (1 s from the first request) is over
        (await second.acquire("loc-day")).release()

        # The server says the day is spent: one probe per recheck, until it says otherwise.
        permit = await first.acquire("loc-day")
        first.observe("loc-day", status=429, headers={"X-RateLimit-Daily-Remaining": "0"})
        permit.release()
        await asyncio.sleep(0.05)
        with pytest.raises(DailyBudgetExhausted):
            await second.acquire("loc-day")
        await asyncio.sleep(0.5)
        probe = await second.acquire("loc-day")
        with pytest.raises(DailyBudgetExhausted):
            await first.acquire("loc-day")
        second.observe("loc-day", status=200, headers={"X-RateLimit-Daily-Remaining": "500"})
        probe.release()
        await asyncio.sleep(0.05)
        (await first.acquire("loc-day")).release()
    finally:
        await instances.aclose()


async def test_unsent_and_cancelled_requests_give_their_slots_back(three: Instances) -> None:
    first, second, _ = three.limiters
    permits = [await first.acquire("loc-give") for _ in range(20)]
    waiter = asyncio.create_task(second.acquire("loc-give"))
    await asyncio.sleep(0.1)
    assert not waiter.done()  # the window is full of unanswered requests
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    for permit in permits[:5]:
        permit.release(sent=False)
    await asyncio.sleep(0.05)
    async with asyncio.timeout(0.3):  # long before any slot's interval could end
        granted = [await second.acquire("loc-give") for _ in range(5)]
    assert second.snapshot("loc-give").remaining == 0
    for permit in granted + permits[5:]:
        permit.release()
