"""Per-location rate budgets: HighLevel's burst window, a sustained pace, a daily budget.

HighLevel allows ``X-RateLimit-Max`` (100) requests per ``X-RateLimit-Interval-Milliseconds``
(10 000) and ``X-RateLimit-Limit-Daily`` (200 000) a day per location. This module spends that
budget so a backlog never earns a 429, while one busy location never delays a quiet one.

Layers::

    LocationBudget   pure core for one location: takes ``now``, does no I/O
    LimiterBackend   Protocol: where budgets live. LocalBackend (this process) here;
                     RedisBackend (shared by every instance) in consumer.ratelimit.redis_backend
    RateLimiter      the asyncio front the delivery layer calls: FIFO per location,
                     time read from the event loop so tests drive a virtual clock

The model, exact enough to be safe against a sliding window on the server:

* **Window.** A request holds a slot from the moment it is granted until ``interval`` after
  its answer (in flight counts). A grant needs fewer than ``max`` held slots. Whatever the
  server's arrival times inside [grant, answer], no span of ``interval`` then holds more than
  ``max`` arrivals: of any such set, the last one granted saw all the others holding a slot.
* **Pace.** GCRA at ``sustained_per_interval / interval``, burst capacity
  ``sustained_per_interval``; the long-run rate, below the window's ceiling by default.
* **Daily.** A local count from ``daily``; ``X-RateLimit-Daily-Remaining`` overrides it. At 0
  the location is *exhausted* (``Exhausted`` / ``DailyBudgetExhausted``, never a silent
  wait) until the earlier of: the end of the local period (``daily_period_s`` after its first
  request, rolling) or ``daily_recheck_s`` later, when one probe request goes out and the
  server's answer says whether the day has turned. HighLevel documents no reset time.
* **Answers.** ``observe`` clamps max / interval to the server's when stricter, counts
  requests the server saw but this limiter did not (another client, a restart) as phantom
  slots, and on 429 pauses the location for ``Retry-After`` (else the interval header) plus
  jitter. A 429 with ``Daily-Remaining: 0`` is daily exhaustion, not a pause.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Protocol

from consumer.errors import ConsumerError

__all__ = [
    "ACQUIRED",
    "Acquired",
    "Answer",
    "Budget",
    "DailyBudgetExhausted",
    "Decision",
    "Exhausted",
    "LimiterBackend",
    "LimiterState",
    "LocalBackend",
    "LocationBudget",
    "Permit",
    "RateLimiter",
    "Wait",
    "parse_answer",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """What one location may spend. Defaults: HighLevel's published limits, paced at 80 %.

    ``burst_max`` per ``interval_s`` is the hard window (the server's; never configure above
    it); ``sustained_per_interval`` the pace (up to ``burst_max``); ``daily`` the day's budget.
    """

    burst_max: int = 100
    interval_s: float = 10.0
    sustained_per_interval: int = 80
    daily: int = 200_000
    daily_period_s: float = 86_400.0
    daily_recheck_s: float = 900.0
    pause_jitter: float = 0.1  # fraction of a 429 pause added at random, so instances spread

    def __post_init__(self) -> None:
        if self.burst_max < 1 or self.daily < 1:
            raise ValueError("burst_max and daily must be >= 1")
        if not 1 <= self.sustained_per_interval <= self.burst_max:
            raise ValueError("sustained_per_interval must be in 1..burst_max")
        if self.interval_s <= 0 or self.daily_period_s <= 0 or self.daily_recheck_s <= 0:
            raise ValueError("interval_s, daily_period_s and daily_recheck_s must be > 0")
        if not 0 <= self.pause_jitter <= 1:
            raise ValueError("pause_jitter must be in 0..1")

    def share(self, instances: int) -> Budget:
        """This budget divided among ``instances`` (each keeps at least 1 of everything)."""
        return replace(
            self,
            burst_max=max(1, self.burst_max // instances),
            sustained_per_interval=max(1, self.sustained_per_interval // instances),
            daily=max(1, self.daily // instances),
        )


@dataclass(frozen=True, slots=True)
class Acquired:
    """A slot was granted; ``token`` is the backend's handle for releasing it."""

    token: str | None = None


ACQUIRED = Acquired()


@dataclass(frozen=True, slots=True)
class Wait:
    """Not yet: ask again after ``seconds`` (``math.inf``: only an answer frees a slot)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Exhausted:
    """The daily budget is spent until ``until`` (the caller's clock). ``reason``: "daily"."""

    until: float
    reason: str = "daily"


Decision = Acquired | Wait | Exhausted


class DailyBudgetExhausted(ConsumerError):
    """A location's daily budget is spent. Retriable after ``until`` (event-loop time):
    the delivery layer parks the location's events instead of waiting on the loop."""

    def __init__(self, location_id: str, until: float) -> None:
        super().__init__(f"daily budget exhausted for location {location_id} until {until:.0f}")
        self.location_id = location_id
        self.until = until


@dataclass(frozen=True, slots=True)
class Answer:
    """The rate-limit facts of one HighLevel answer; ``None`` where a header was absent."""

    status: int
    max: int | None = None
    interval_s: float | None = None
    remaining: int | None = None
    daily_limit: int | None = None
    daily_remaining: int | None = None
    retry_after_s: float | None = None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _retry_after(value: str | None, wall_now: float) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # Retry-After may also be an HTTP date
        return max(0.0, parsedate_to_datetime(value).timestamp() - wall_now)
    except (TypeError, ValueError):
        return None


def parse_answer(status: int, headers: Mapping[str, str], *, wall_now: float) -> Answer:
    """Read ``X-RateLimit-*`` and ``Retry-After`` from an answer's headers (any key case).

    Malformed values count as absent. ``wall_now`` (epoch seconds) resolves a date-valued
    ``Retry-After``."""
    h = {k.lower(): v for k, v in headers.items()}
    interval_ms = _int(h.get("x-ratelimit-interval-milliseconds"))
    return Answer(
        status=status,
        max=_int(h.get("x-ratelimit-max")),
        interval_s=interval_ms / 1000 if interval_ms and interval_ms > 0 else None,
        remaining=_int(h.get("x-ratelimit-remaining")),
        daily_limit=_int(h.get("x-ratelimit-limit-daily")),
        daily_remaining=_int(h.get("x-ratelimit-daily-remaining")),
        retry_after_s=_retry_after(h.get("retry-after"), wall_now),
    )


@dataclass(frozen=True, slots=True)
class LimiterState:
    """One location's limiter, for metrics and the debug page. Times are event-loop time."""

    location_id: str
    remaining: int  # slots free in the window now
    in_flight: int
    waiting: int  # tasks queued in acquire()
    paused_until: float | None
    daily_remaining: int
    daily_exhausted_until: float | None
    fallback_active: bool


class LocationBudget:
    """Pure limiter for one location. Every method takes ``now`` (seconds, one monotonic
    clock) and does no I/O. Not thread-safe; the asyncio front calls it from one loop.

    Protocol: ``try_acquire`` until ``Acquired``; then exactly one ``release`` per grant
    (``sent=False`` gives an unused slot back); ``observe`` every answer."""

    __slots__ = (
        "_budget",
        "_daily_blocked_until",
        "_daily_limit",
        "_daily_remaining",
        "_daily_resets_at",
        "_emission",
        "_expiries",
        "_in_flight",
        "_interval",
        "_max",
        "_paused_until",
        "_rng",
        "_server_interval",
        "_server_max",
        "_tat",
        "_tolerance",
    )

    def __init__(self, budget: Budget, *, rng: random.Random | None = None) -> None:
        self._budget = budget
        self._rng = rng or random.Random()
        self._server_max: int | None = None
        self._server_interval: float | None = None
        self._daily_limit = budget.daily
        self._tat = -math.inf  # GCRA theoretical arrival time
        self._expiries: deque[float] = deque()  # answered requests' slot expiries, ascending
        self._in_flight = 0
        self._paused_until = -math.inf
        self._daily_remaining = budget.daily
        self._daily_resets_at: float | None = None  # end of the local daily period
        self._daily_blocked_until: float | None = None
        self._apply_limits()

    def _apply_limits(self) -> None:
        # Stricter of configured and announced: min max over the longer interval is safe
        # against both windows. The pace keeps the configured headroom ratio.
        b = self._budget
        self._max = min(b.burst_max, self._server_max or b.burst_max)
        self._interval = max(b.interval_s, self._server_interval or b.interval_s)
        sustained = b.sustained_per_interval * self._max / b.burst_max
        self._emission = self._interval / sustained
        self._tolerance = (sustained - 1) * self._emission

    def try_acquire(self, now: float) -> Decision:
        """Grant a slot now (``ACQUIRED``), or say how long to wait, or that the day is spent.

        A grant is counted at once (window, pace, daily); a refusal changes nothing except
        the daily bookkeeping that starts a probe after exhaustion."""
        if self._daily_remaining <= 0:
            until = self._daily_until(now)
            if now < until:
                return Exhausted(until)
            self._daily_blocked_until = None
            if self._daily_resets_at is not None and now >= self._daily_resets_at:
                self._daily_resets_at = None
                self._daily_remaining = self._daily_limit
            else:
                self._daily_remaining = 1  # one probe; its answer tells the server's count
        if now < self._paused_until:
            return Wait(self._paused_until - now)
        expiries = self._expiries
        while expiries and expiries[0] <= now:
            expiries.popleft()
        excess = len(expiries) + self._in_flight - self._max
        if excess >= 0:
            return Wait(expiries[excess] - now if excess < len(expiries) else math.inf)
        allow_at = self._tat - self._tolerance
        if now < allow_at:
            return Wait(allow_at - now)
        self._tat = max(self._tat, now) + self._emission
        self._in_flight += 1
        self._daily_remaining -= 1
        if self._daily_resets_at is None:
            self._daily_resets_at = now + self._budget.daily_period_s
        return ACQUIRED

    def _daily_until(self, now: float) -> float:
        if self._daily_blocked_until is None:
            until = now + self._budget.daily_recheck_s
            if self._daily_resets_at is not None:
                until = min(until, max(now, self._daily_resets_at))
            self._daily_blocked_until = until
        return self._daily_blocked_until

    def release(self, now: float, *, sent: bool = True) -> None:
        """End a grant: its answer came (``sent``: the slot is held ``interval`` longer) or
        it was never sent (slot, pace and daily unit are given back)."""
        self._in_flight -= 1
        if sent:
            self._expiries.append(now + self._interval)
        else:
            self._tat -= self._emission
            self._daily_remaining += 1

    def observe(self, answer: Answer, now: float) -> None:
        """Adapt to an answer's headers; on 429, pause. Call before ``release`` of the same
        request (either order is safe; before is exact)."""
        if answer.max is not None and answer.max > 0:
            self._server_max = answer.max
        if answer.interval_s is not None:
            self._server_interval = answer.interval_s
        if answer.daily_limit is not None and answer.daily_limit > 0:
            self._daily_limit = min(self._budget.daily, answer.daily_limit)
        self._apply_limits()
        if answer.remaining is not None:
            expiries = self._expiries
            while expiries and expiries[0] <= now:
                expiries.popleft()
            server_used = (answer.max or self._max) - answer.remaining
            unknown = server_used - len(expiries) - self._in_flight
            # Requests the server counted and this limiter did not: hold their slots.
            expiries.extend([now + self._interval] * max(0, unknown))
        if answer.daily_remaining is not None:
            # In-flight requests other than this one may not be in the server's count yet.
            uncounted = max(0, self._in_flight - 1)
            self._daily_remaining = max(0, answer.daily_remaining - uncounted)
            if answer.daily_remaining > 0:
                self._daily_blocked_until = None
        if answer.status == 429 and answer.daily_remaining != 0:
            self._paused_until = max(self._paused_until, now + self._pause_for(answer))

    def _pause_for(self, answer: Answer) -> float:
        delay = answer.retry_after_s
        if delay is None:
            delay = answer.interval_s if answer.interval_s is not None else self._interval
        return delay * (1 + self._budget.pause_jitter * self._rng.random())

    def state(self, location_id: str, now: float) -> LimiterState:
        """Snapshot (``waiting`` and ``fallback_active`` are the front's / backend's)."""
        held = sum(1 for e in self._expiries if e > now) + self._in_flight
        blocked = self._daily_blocked_until
        return LimiterState(
            location_id=location_id,
            remaining=max(0, self._max - held),
            in_flight=self._in_flight,
            waiting=0,
            paused_until=self._paused_until if self._paused_until > now else None,
            daily_remaining=self._daily_remaining,
            daily_exhausted_until=blocked if blocked is not None and blocked > now else None,
            fallback_active=False,
        )


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

    def observe(self, location_id: str, answer: Answer, now: float) -> None:
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

    def observe(self, location_id: str, answer: Answer, now: float) -> None:
        self._get(location_id).observe(answer, now)

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
        answer = parse_answer(status, headers, wall_now=self._wall_clock())
        if now is None:
            now = asyncio.get_running_loop().time()
        self._backend.observe(location_id, answer, now)
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
