"""Per-location sandbox settings: rate limits, duplicate handling, fault injection.

Frozen values, set from the command line and replaced at runtime over the admin endpoints
(``PUT /_sandbox/limits|duplicates|faults``), which send camelCase JSON: each class has
``to_json()`` and ``updated(changes)`` (a copy with the given keys changed; ValueError when a
value is invalid, so the admin endpoint answers 400 and keeps the old setting).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IDENTIFIERS = ("email", "phone")
"""The fields HighLevel matches an upsert on."""


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-location rate limits, HighLevel's defaults (100 per 10 s, 200,000 a day).

    ``enforced=False`` keeps counting and reporting the headers but never answers 429
    (for benchmarks that must not be throttled).
    """

    burst: int = 100
    interval_ms: int = 10_000
    daily: int = 200_000
    enforced: bool = True

    def __post_init__(self) -> None:
        if self.burst < 1 or self.interval_ms < 1 or self.daily < 1:
            raise ValueError("burst, intervalMs and daily must be positive")

    def to_json(self) -> dict[str, Any]:
        return {
            "burst": self.burst,
            "intervalMs": self.interval_ms,
            "daily": self.daily,
            "enforced": self.enforced,
        }

    def updated(self, changes: Mapping[str, Any]) -> RateLimits:
        _reject_unknown(changes, self.to_json())
        return RateLimits(
            burst=_int(changes, "burst", self.burst),
            interval_ms=_int(changes, "intervalMs", self.interval_ms),
            daily=_int(changes, "daily", self.daily),
            enforced=_bool(changes, "enforced", self.enforced),
        )


@dataclass(frozen=True, slots=True)
class DuplicateSettings:
    """A location's "Allow Duplicate Contact" setting: allowed or not, and the match priority;
    and the sandbox's race mode.

    ``race_window_ms > 0`` (off by default) makes an upsert that finds no contact wait that long
    before creating one, without looking again: two upserts for the same new email or phone in
    flight together both create a contact, as the live API can (callers' reports;
    docs/highlevel.md, "Known pitfalls"). At 0 requests are applied one at a time.
    """

    allow_duplicates: bool = False
    priority: tuple[str, ...] = IDENTIFIERS
    race_window_ms: float = 0.0

    def __post_init__(self) -> None:
        if (
            not self.priority
            or len(set(self.priority)) != len(self.priority)
            or not set(self.priority) <= set(IDENTIFIERS)
        ):
            raise ValueError("priority must list email and/or phone, each once")
        if self.race_window_ms < 0:
            raise ValueError("raceWindowMs must not be negative")

    def to_json(self) -> dict[str, Any]:
        return {
            "allowDuplicates": self.allow_duplicates,
            "priority": list(self.priority),
            "raceWindowMs": self.race_window_ms,
        }

    def updated(self, changes: Mapping[str, Any]) -> DuplicateSettings:
        _reject_unknown(changes, self.to_json())
        priority = changes.get("priority", list(self.priority))
        if not isinstance(priority, list) or not all(isinstance(p, str) for p in priority):
            raise ValueError("priority must be a list of strings")
        return DuplicateSettings(
            allow_duplicates=_bool(changes, "allowDuplicates", self.allow_duplicates),
            priority=tuple(priority),
            race_window_ms=_float(changes, "raceWindowMs", self.race_window_ms),
        )


class FaultKind(enum.Enum):
    """What the server does to one request instead of (or on top of) answering it."""

    NONE = "none"
    FAIL = "fail"
    """Answer ``fail_status`` without touching state."""
    HANG = "hang"
    """Never answer (until the sandbox stops) and do not touch state."""
    RESET = "reset"
    """Apply the request, then cut the connection in the middle of the response body."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault injection for one location. Rates are probabilities per request (sum <= 1)."""

    fail_rate: float = 0.0
    fail_status: int = 500
    latency_ms: float = 0.0
    """Added before every answer of the location, faulty or not."""
    hang_rate: float = 0.0
    reset_rate: float = 0.0

    def __post_init__(self) -> None:
        rates = (self.fail_rate, self.hang_rate, self.reset_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0:
            raise ValueError("fault rates must be within 0..1 and sum to at most 1")
        if not 500 <= self.fail_status <= 599:
            raise ValueError("failStatus must be a 5xx status")
        if self.latency_ms < 0:
            raise ValueError("latencyMs must not be negative")

    @property
    def active(self) -> bool:
        return bool(self.fail_rate or self.hang_rate or self.reset_rate or self.latency_ms)

    def pick(self, draw: float) -> FaultKind:
        """The fault for a request, given a uniform ``draw`` in [0, 1) from the caller's RNG."""
        if draw < self.hang_rate:
            return FaultKind.HANG
        if draw < self.hang_rate + self.fail_rate:
            return FaultKind.FAIL
        if draw < self.hang_rate + self.fail_rate + self.reset_rate:
            return FaultKind.RESET
        return FaultKind.NONE

    def to_json(self) -> dict[str, Any]:
        return {
            "failRate": self.fail_rate,
            "failStatus": self.fail_status,
            "latencyMs": self.latency_ms,
            "hangRate": self.hang_rate,
            "resetRate": self.reset_rate,
        }

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        _reject_unknown(changes, self.to_json())
        return Faults(
            fail_rate=_float(changes, "failRate", self.fail_rate),
            fail_status=_int(changes, "failStatus", self.fail_status),
            latency_ms=_float(changes, "latencyMs", self.latency_ms),
            hang_rate=_float(changes, "hangRate", self.hang_rate),
            reset_rate=_float(changes, "resetRate", self.reset_rate),
        )


def _reject_unknown(changes: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(unknown)}")


def _int(changes: Mapping[str, Any], key: str, default: int) -> int:
    value = changes.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be an integer")
    return value


def _float(changes: Mapping[str, Any], key: str, default: float) -> float:
    value = changes.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{key} must be a number")
    return float(value)


def _bool(changes: Mapping[str, Any], key: str, default: bool) -> bool:
    value = changes.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be a boolean")
    return value
