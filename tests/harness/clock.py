"""A clock the tests move by hand: call it for the time, set ``now`` to move it."""

from __future__ import annotations


class ManualClock:
    """Seconds (epoch seconds by default, so token expiries and HTTP dates read sensibly);
    ``now`` is whatever the test last set."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
