"""Readiness, and the state ``/metrics`` and ``/readyz`` read from a running consumer.

``Observed`` reads the engine only through ``Engine.snapshot()`` (plus the Kafka clients, the
rate limiter and the profile store, each through the small Protocols below): ``snapshot`` builds
the ``StateSnapshot`` the web server hands to ``Metrics.refresh`` before each scrape, and
``readiness`` answers ``/readyz``. ``StallDetector`` (pure, takes ``now``) decides which
partitions are stalled; ``Readiness`` is what ``/readyz`` reports.

Called on the event loop thread by the web server's handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from consumer.engine.offsets import PartitionStats
from consumer.engine.stats import EngineSnapshot
from consumer.observe.metrics import StateSnapshot
from consumer.ratelimit.budget import LimiterState


@dataclass(frozen=True, slots=True, kw_only=True)
class Readiness:
    """What ``/readyz`` answers. The composition root fills it: ``assigned`` (owns at least one
    partition), ``broker_reachable`` (the Kafka client's last error is not "all brokers down"),
    ``stalled`` (from ``StallDetector``)."""

    assigned: bool
    broker_reachable: bool
    stalled: tuple[tuple[str, int], ...] = ()

    @property
    def ready(self) -> bool:
        return self.assigned and self.broker_reachable and not self.stalled

    def reasons(self) -> list[str]:
        """Why not ready (empty when ready), readable and free of personal data."""
        reasons = []
        if not self.assigned:
            reasons.append("no partitions assigned")
        if not self.broker_reachable:
            reasons.append("Kafka broker unreachable")
        reasons.extend(f"partition {t}[{p}] stalled" for t, p in self.stalled)
        return reasons


class StallDetector:
    """Finds partitions that have work but make no progress.

    A partition is stalled when it has incomplete records and its commit point has not moved
    for ``after_s`` seconds, while deliveries are not held by the rate limiter (a 429 pause or a
    spent daily budget is waiting, not stalling). Pure: the caller passes ``now``; keeps one
    (position, since) pair per owned partition.
    """

    def __init__(self, *, after_s: float) -> None:
        if after_s <= 0:
            raise ValueError("after_s must be > 0")
        self._after = after_s
        self._since: dict[tuple[str, int], tuple[int | None, float]] = {}

    def check(
        self, partitions: Sequence[PartitionStats], *, throttled: bool, now: float
    ) -> tuple[tuple[str, int], ...]:
        """The stalled partitions among ``partitions`` (the owned ones now). ``throttled``: the
        rate limiter holds deliveries; the stall clock restarts for every partition then."""
        since: dict[tuple[str, int], tuple[int | None, float]] = {}
        stalled = []
        for p in partitions:
            key = (p.topic, p.partition)
            previous = self._since.get(key)
            if throttled or p.incomplete == 0 or previous is None or previous[0] != p.commit_offset:
                since[key] = (p.commit_offset, now)
                continue
            since[key] = previous
            if now - previous[1] >= self._after:
                stalled.append(key)
        self._since = since
        return tuple(sorted(stalled))


class _Engine(Protocol):
    def snapshot(self) -> EngineSnapshot: ...


class _Watermark(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def high_watermark(self) -> int | None: ...


class _Source(Protocol):
    """The event feed's Kafka client (``consumer.kafka.source.KafkaSource``)."""

    @property
    def broker_reachable(self) -> bool: ...

    async def lag(self) -> Sequence[_Watermark]: ...


class _Producer(Protocol):
    @property
    def broker_reachable(self) -> bool: ...


class _Limiter(Protocol):
    def snapshot(self, location_id: str, now: float | None = None) -> LimiterState: ...

    def locations(self) -> list[str]: ...


class _Sized(Protocol):
    def __len__(self) -> int: ...


class Observed:
    """Reads a running consumer's state for ``/metrics`` (per scrape) and ``/readyz``.
    ``stall_seconds``: how long a partition with work may keep its commit point before it
    counts as stalled (``StallDetector``)."""

    def __init__(
        self,
        *,
        engine: _Engine,
        source: _Source,
        producer: _Producer,
        limiter: _Limiter,
        profiles: _Sized,
        stall_seconds: float,
    ) -> None:
        self._engine = engine
        self._source = source
        self._producer = producer
        self._limiter = limiter
        self._profiles = profiles
        self._stalls = StallDetector(after_s=stall_seconds)

    async def snapshot(self) -> StateSnapshot:
        """The state gauges' values now (reads the source's local lag state)."""
        engine = self._engine.snapshot()
        lags = await self._source.lag()
        return StateSnapshot(
            partitions=engine.partitions,
            high_watermarks={
                (lag.topic, lag.partition): lag.high_watermark
                for lag in lags
                if lag.high_watermark is not None
            },
            paused_partitions=engine.paused_partitions,
            limiters=[self._limiter.snapshot(loc) for loc in self._limiter.locations()],
            unhealthy=engine.unhealthy,
            buffered_records=engine.buffered_records,
            buffered_bytes=engine.buffered_bytes,
            requests_in_flight=engine.in_flight,
            profile_store_size=len(self._profiles),
        )

    def readiness(self) -> Readiness:
        """What ``/readyz`` answers now; advances the stall clocks."""
        engine = self._engine.snapshot()
        now = asyncio.get_running_loop().time()
        held = bool(engine.unhealthy) or any(
            (state.paused_until or 0.0) > now or (state.daily_exhausted_until or 0.0) > now
            for state in (self._limiter.snapshot(loc, now) for loc in self._limiter.locations())
        )
        return Readiness(
            assigned=bool(engine.partitions),
            # The source's client hears of an outage late when a commit is waiting for the
            # broker (it serves no callback meanwhile); the producer's hears at once.
            broker_reachable=self._source.broker_reachable and self._producer.broker_reachable,
            stalled=self._stalls.check(engine.partitions, throttled=held, now=now),
        )
