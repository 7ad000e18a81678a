"""One sandbox location's rate counters, as HighLevel counts them (``docs/highlevel.md``,
"Rate limits"): a fixed burst window that opens with the first request after the previous one
closed, and a budget per UTC day. Pure: ``now`` (epoch seconds) comes from the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from consumer.sandbox.settings import RateLimits

_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of counting one request: admitted or not, and what the headers report."""

    allowed: bool
    limits: RateLimits
    remaining: int
    daily_remaining: int
    retry_after: float
    """Seconds until a request would be admitted again; 0 when admitted."""
    exhausted: str | None
    """``"burst"`` or ``"daily"`` when refused, else None."""


class RateWindow:
    """One location's rate counters: a fixed burst window and a per-UTC-day budget."""

    __slots__ = ("count", "daily_used", "day", "window_start")

    def __init__(self) -> None:
        self.window_start = -math.inf
        self.count = 0
        self.day = -1
        self.daily_used = 0

    def take(self, now: float, limits: RateLimits) -> RateDecision:
        """Count one request at ``now`` unless a limit is exhausted (refused ones do not count).

        With ``limits.enforced`` false the request is always admitted and counted.
        """
        day = int(now // _DAY)
        if day != self.day:
            self.day = day
            self.daily_used = 0
        if now >= self.window_start + limits.interval_ms / 1000:
            self.window_start = now
            self.count = 0
        exhausted: str | None = None
        retry_after = 0.0
        if limits.enforced:
            if self.daily_used >= limits.daily:
                exhausted, retry_after = "daily", (day + 1) * _DAY - now
            elif self.count >= limits.burst:
                exhausted = "burst"
                retry_after = self.window_start + limits.interval_ms / 1000 - now
        if exhausted is None:
            self.count += 1
            self.daily_used += 1
        return RateDecision(
            allowed=exhausted is None,
            limits=limits,
            remaining=max(0, limits.burst - self.count),
            daily_remaining=max(0, limits.daily - self.daily_used),
            retry_after=retry_after,
            exhausted=exhausted,
        )

    def reset_daily(self) -> None:
        """Give the location its full daily budget again (admin endpoint)."""
        self.daily_used = 0
