"""Per-location rate budgets, the pure part: HighLevel's burst window, a sustained pace, a
daily budget, and what HighLevel's rate headers say. Every method takes ``now``; no I/O.

HighLevel allows ``X-RateLimit-Max`` (100) requests per ``X-RateLimit-Interval-Milliseconds``
(10 000) and ``X-RateLimit-Limit-Daily`` (200 000) a day per location (``docs/highlevel.md``,
"Rate limits"). ``LocationBudget`` spends that budget so a backlog never earns a 429; the
asyncio front (``consumer.ratelimit.limiter``) keeps one busy location from delaying a quiet
one, and ``consumer.ratelimit.redis_backend`` runs the same model in Redis.

The model, exact enough to be safe against a sliding window on the server:

* **Window.** A request holds a slot from the moment it is granted until ``interval`` after
  its answer (in flight counts). A grant needs fewer than ``max`` held slots. Whatever the
  server's arrival times inside [grant, answer], no span of ``interval`` then holds more than
  ``max`` arrivals: of any such set, the last one granted saw all the others holding a slot.
* **Pace.** GCRA at ``sustained_per_interval / interval``, burst capacity
  ``sustained_per_interval``; the long-run rate, below the window's ceiling by default.
* **Daily.** A local count from ``daily``; ``X-RateLimit-Daily-Remaining`` overrides it. At 0
  the location is *exhausted* (``Exhausted``; the front raises
  ``consumer.errors.DailyBudgetExhausted``, never a silent wait) until the earlier of: the end
  of the local period (``daily_period_s`` after its first request, rolling) or
  ``daily_recheck_s`` later, when one probe request goes out and the server's answer says
  whether the day has turned. HighLevel documents no reset time.
* **Rate signals.** ``observe`` clamps max / interval to the server's when stricter, counts
  requests the server saw but this limiter did not (another client, a restart) as phantom
  slots, and on 429 pauses the location for ``Retry-After`` (else the interval header) plus
  jitter. A 429 with ``Daily-Remaining: 0`` is daily exhaustion, not a pause.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime

__all__ = [
    "ACQUIRED",
    "Acquired",
    "Budget",
    "Decision",
    "Exhausted",
    "LimiterState",
    "LocationBudget",
    "RateSignal",
    "Wait",
    "parse_rate_signal",
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


@dataclass(frozen=True, slots=True)
class RateSignal:
    """What one HighLevel answer's rate headers say; ``None`` where a header was absent."""

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


def parse_rate_signal(status: int, headers: Mapping[str, str], *, wall_now: float) -> RateSignal:
    """Read ``X-RateLimit-*`` and ``Retry-After`` from an answer's headers (any key case).

    Malformed values count as absent. ``wall_now`` (epoch seconds) resolves a date-valued
    ``Retry-After``."""
    h = {k.lower(): v for k, v in headers.items()}
    interval_ms = _int(h.get("x-ratelimit-interval-milliseconds"))
    return RateSignal(
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

    @classmethod
    def at(
        cls,
        now: float,
        *,
        location_id: str,
        remaining: int,
        in_flight: int,
        paused_until: float,
        daily_remaining: int,
        exhausted_until: float | None,
    ) -> LimiterState:
        """The state at ``now``: a pause or an exhaustion already over reads as None.
        ``waiting`` (the front's) is 0 and ``fallback_active`` (the backend's) False."""
        return cls(
            location_id=location_id,
            remaining=remaining,
            in_flight=in_flight,
            waiting=0,
            paused_until=paused_until if paused_until > now else None,
            daily_remaining=daily_remaining,
            daily_exhausted_until=(
                exhausted_until if exhausted_until is not None and exhausted_until > now else None
            ),
            fallback_active=False,
        )


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

    def observe(self, signal: RateSignal, now: float) -> None:
        """Adapt to an answer's headers; on 429, pause. Call before ``release`` of the same
        request (either order is safe; before is exact)."""
        server_max, server_interval = self._server_max, self._server_interval
        if signal.max is not None and signal.max > 0:
            server_max = signal.max
        if signal.interval_s is not None:
            server_interval = signal.interval_s
        if signal.daily_limit is not None and signal.daily_limit > 0:
            self._daily_limit = min(self._budget.daily, signal.daily_limit)
        if server_max != self._server_max or server_interval != self._server_interval:
            self._server_max, self._server_interval = server_max, server_interval
            self._apply_limits()  # only when the announced limits change (rarely)
        if signal.remaining is not None:
            expiries = self._expiries
            while expiries and expiries[0] <= now:
                expiries.popleft()
            server_used = (signal.max or self._max) - signal.remaining
            unknown = server_used - len(expiries) - self._in_flight
            # Requests the server counted and this limiter did not: hold their slots.
            expiries.extend([now + self._interval] * max(0, unknown))
        if signal.daily_remaining is not None:
            # In-flight requests other than this one may not be in the server's count yet.
            uncounted = max(0, self._in_flight - 1)
            self._daily_remaining = max(0, signal.daily_remaining - uncounted)
            if signal.daily_remaining > 0:
                self._daily_blocked_until = None
        if signal.status == 429 and signal.daily_remaining != 0:
            self._paused_until = max(self._paused_until, now + self._pause_for(signal))

    def _pause_for(self, signal: RateSignal) -> float:
        delay = signal.retry_after_s
        if delay is None:
            delay = signal.interval_s if signal.interval_s is not None else self._interval
        return delay * (1 + self._budget.pause_jitter * self._rng.random())

    def state(self, location_id: str, now: float) -> LimiterState:
        """Snapshot (``waiting`` and ``fallback_active`` are the front's / backend's)."""
        held = sum(1 for e in self._expiries if e > now) + self._in_flight
        return LimiterState.at(
            now,
            location_id=location_id,
            remaining=max(0, self._max - held),
            in_flight=self._in_flight,
            paused_until=self._paused_until,
            daily_remaining=self._daily_remaining,
            exhausted_until=self._daily_blocked_until,
        )
