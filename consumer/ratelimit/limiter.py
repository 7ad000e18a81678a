"""The asyncio rate limiter the delivery layer calls, over a backend that holds the budgets.

Layers::

    LocationBudget   pure model for one location (``consumer.ratelimit.budget``: read its
                     docstring for the model): takes ``now``, does no I/O
    LimiterBackend   Protocol: where budgets live. LocalBackend (this process) here;
                     RedisBackend (shared by every instance) in consumer.ratelimit.redis_backend
    RateLimiter      the asyncio front: FIFO per location, hands out ``Permit``s, raises
                     ``DailyBudgetExhausted``; time read from the event loop so tests drive a
                     virtual clock
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

from consumer.errors import DailyBudgetExhausted
from consumer.ratelimit.budget import (
    Acquired,
    Budget,
    Decision,
    Exhausted,
    LimiterState,
    LocationBudget,
    RateSignal,
    parse_rate_signal,
)

__all__ = ["LimiterBackend", "LocalBackend", "Permit", "RateLimiter"]


class LimiterBackend(Protocol):
    """Where the budgets live. Times are the caller's event-loop time; a backend with
    another clock (Redis) converts. Implementations: ``LocalBackend``, ``RedisBackend``."""

    async def try_acquire(self, location_id: str, now: float) -> Decision:
        """``LocationBudget.try_acquire`` for ``location_id``. Must not raise on an outage of
        shared state: degrade to a local decision instead."""
        ...

    def release(self, location_id: str, token: str | None, now: float, *, sent: bool) -> None:
        """End the grant ``token`` (from ``Acquired.token``). Never blocks."""
        ...

    def observe(self, location_id: str, signal: RateSignal, now: float) -> None:
        """Adapt to an answer. Never blocks."""
        ...

    def state(self, location_id: str, now: float) -> LimiterState:
        """Best-known state of the location (``waiting`` left 0 for the front to fill)."""
        ...

    async def aclose(self) -> None:
        """Stop background work and close connections."""
        ...


class LocalBackend:
    """Budgets in this process: right for one instance, and the fallback of shared state."""

    def __init__(self, budget: Budget, *, rng: random.Random | None = None) -> None:
        self._budget = budget
        self._rng = rng or random.Random()
        self._budgets: dict[str, LocationBudget] = {}

    def _get(self, location_id: str) -> LocationBudget:
        lb = self._budgets.get(location_id)
        if lb is None:
            lb = self._budgets[location_id] = LocationBudget(self._budget, rng=self._rng)
        return lb

    async def try_acquire(self, location_id: str, now: float) -> Decision:
        return self._get(location_id).try_acquire(now)

    def release(self, location_id: str, token: str | None, now: float, *, sent: bool) -> None:
        self._get(location_id).release(now, sent=sent)

    def observe(self, location_id: str, signal: RateSignal, now: float) -> None:
        self._get(location_id).observe(signal, now)

    def state(self, location_id: str, now: float) -> LimiterState:
        return self._get(location_id).state(location_id, now)

    async def aclose(self) -> None:
        return None


class _Lane:
    """One location's queue: the lock makes acquirers FIFO; the head waits on ``wake``."""

    __slots__ = ("lock", "waiting", "wake")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.wake: asyncio.Future[None] | None = None


class Permit:
    """One granted request slot. Release it exactly once when the answer arrives (or
    ``release(sent=False)`` if the request never left); as a context manager it releases
    on exit, counting the request as sent. A second release is ignored."""

    __slots__ = ("_limiter", "_released", "_token", "location_id")

    def __init__(self, limiter: RateLimiter, location_id: str, token: str | None) -> None:
        self._limiter = limiter
        self.location_id = location_id
        self._token = token
        self._released = False

    def release(self, *, sent: bool = True) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self.location_id, self._token, sent=sent)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class RateLimiter:
    """The delivery layer's rate limiter: ``acquire`` before each HighLevel request,
    ``observe`` every answer, release the ``Permit``.

    Fairness: each location has its own FIFO lane; only that lane's head task waits on the
    clock, so a backlog on one location never delays another. Time is ``loop.time()``.
    Runs on one event loop; not thread-safe."""

    def __init__(
        self, backend: LimiterBackend, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._backend = backend
        self._lanes: dict[str, _Lane] = {}
        self._wall_clock = wall_clock  # only for a date-valued Retry-After

    def _lane(self, location_id: str) -> _Lane:
        lane = self._lanes.get(location_id)
        if lane is None:
            lane = self._lanes[location_id] = _Lane()
        return lane

    async def acquire(self, location_id: str) -> Permit:
        """Wait (FIFO within the location) until a request may be sent; return its permit.

        Raises ``DailyBudgetExhausted`` when the daily budget is spent (the caller parks).
        Cancellation while waiting leaves nothing reserved. Use ``asyncio.timeout`` rather
        than Python 3.11's ``wait_for``, which can drop a permit granted at the deadline."""
        loop = asyncio.get_running_loop()
        lane = self._lane(location_id)
        lane.waiting += 1
        try:
            async with lane.lock:
                while True:
                    decision = await self._backend.try_acquire(location_id, loop.time())
                    if isinstance(decision, Acquired):
                        return Permit(self, location_id, decision.token)
                    if isinstance(decision, Exhausted):
                        raise DailyBudgetExhausted(location_id, decision.until)
                    await self._sleep(loop, lane, decision.seconds)
        finally:
            lane.waiting -= 1

    @staticmethod
    async def _sleep(loop: asyncio.AbstractEventLoop, lane: _Lane, seconds: float) -> None:
        fut: asyncio.Future[None] = loop.create_future()
        lane.wake = fut
        handle = loop.call_later(seconds, _wake, fut) if seconds != math.inf else None
        try:
            await fut
        finally:
            lane.wake = None
            if handle is not None:
                handle.cancel()

    def _poke(self, location_id: str) -> None:
        lane = self._lanes.get(location_id)
        if lane is not None and lane.wake is not None:
            _wake(lane.wake)

    def _release(self, location_id: str, token: str | None, *, sent: bool) -> None:
        self._backend.release(location_id, token, asyncio.get_running_loop().time(), sent=sent)
        self._poke(location_id)

    def observe(
        self,
        location_id: str,
        *,
        status: int,
        headers: Mapping[str, str],
        now: float | None = None,
    ) -> None:
        """Adapt the location's budget to an answer (any status, any HighLevel endpoint of
        that location). On 429 the location pauses for every instance sharing the backend."""
        signal = parse_rate_signal(status, headers, wall_now=self._wall_clock())
        if now is None:
            now = asyncio.get_running_loop().time()
        self._backend.observe(location_id, signal, now)
        self._poke(location_id)

    def snapshot(self, location_id: str, now: float | None = None) -> LimiterState:
        """The location's state now (for metrics and the debug page)."""
        if now is None:
            now = asyncio.get_running_loop().time()
        state = self._backend.state(location_id, now)
        lane = self._lanes.get(location_id)
        return replace(state, waiting=lane.waiting if lane is not None else 0)

    def locations(self) -> list[str]:
        """Locations that have used this limiter."""
        return list(self._lanes)

    async def aclose(self) -> None:
        """Close the backend. Waiters still queued are left to their own cancellation."""
        await self._backend.aclose()
