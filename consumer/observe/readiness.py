"""Readiness, liveness, and the state ``/metrics`` reads from a running consumer.

``Observed`` reads the engine only through ``Engine.snapshot()`` (plus the Kafka clients, the
rate limiter and the profile store, each through the small Protocols below): ``snapshot`` builds
the ``StateSnapshot`` the web server hands to ``Metrics.refresh`` before each scrape,
``readiness`` answers ``/readyz`` and ``liveness`` answers ``/healthz``.

What the probes mean for a consumer-group member (docs/architecture.md, "Probes"):

- Ready (``Readiness``): the configuration is loaded (the server runs only after it), the
  broker is reachable, the member has joined its group, and no shutdown has begun. Holding no
  partition is normal for a spare member and is ready: a rollout's surge pod must become Ready
  while the group has fewer partitions than members.
- Alive (``Liveness``, pure, takes ``now``): the event loop runs (a heartbeat it updates every
  second is fresh) and the Kafka client is not stuck (a consume call returned within the
  member's ``max.poll.interval.ms`` while the broker is reachable; during an outage polls wait
  on the broker, and restarting would not help).
- A stalled partition (work waiting, commit point not moving) makes neither probe fail: taking
  the pod out of a Service no one calls, or restarting it, would not move the partition. It is
  the gauge ``ghl_partition_stalled`` (``StallDetector``) and the ``GhlPartitionStalled`` alert.

Called on the event loop thread by the web server's handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from consumer.engine.offsets import PartitionStats
from consumer.engine.stats import EngineSnapshot
from consumer.observe.metrics import StateSnapshot
from consumer.ratelimit.budget import LimiterState

HEARTBEAT_S: Final = 1.0  # how often ``Observed.heartbeat`` marks the event loop alive
LOOP_STUCK_S: Final = 10.0  # a heartbeat older than this: the loop was blocked
# How long a scrape waits for the Kafka client's lag: a rebalance holds the client (the revoke
# callback may wait for in-flight deliveries, seconds); the scrape then reports the last lag
# read instead of outlasting Prometheus' scrape timeout.
LAG_WAIT_S: Final = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Readiness:
    """What ``/readyz`` answers. ``joined``: the member joined its consumer group (its first
    assignment arrived, possibly empty; see ``KafkaSource.joined``); ``broker_reachable``: no
    Kafka client's last word is "all brokers down"; ``stopping``: SIGTERM (or SIGINT) arrived
    and the consumer is draining."""

    joined: bool
    broker_reachable: bool
    stopping: bool = False

    @property
    def ready(self) -> bool:
        return self.joined and self.broker_reachable and not self.stopping

    def reasons(self) -> list[str]:
        """Why not ready (empty when ready), readable and free of personal data."""
        reasons = []
        if self.stopping:
            reasons.append("shutting down")
        if not self.broker_reachable:
            reasons.append("Kafka broker unreachable")
        if not self.joined:
            reasons.append("consumer group not joined yet")
        return reasons


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/healthz`` answers: alive unless ``reasons`` says what is stuck."""

    reasons: tuple[str, ...] = ()

    @property
    def alive(self) -> bool:
        return not self.reasons


class Liveness:
    """Decides whether the process is stuck. Pure: callers pass ``now`` (the loop's clock).

    ``beat(now)`` is called every ``HEARTBEAT_S`` by a task on the event loop; a heartbeat
    older than ``loop_stuck_s`` means the loop was blocked that long. ``check`` also fails when
    the Kafka client's last consume call returned more than ``poll_stuck_s`` ago while the
    broker is reachable (librdkafka leaves the group after ``max.poll.interval.ms`` without a
    poll; pass that). ``stopping``: after SIGTERM intake stops polling on purpose, so only the
    loop counts.
    """

    def __init__(self, *, now: float, loop_stuck_s: float, poll_stuck_s: float) -> None:
        if loop_stuck_s <= 0 or poll_stuck_s <= 0:
            raise ValueError("loop_stuck_s and poll_stuck_s must be > 0")
        self._loop_stuck = loop_stuck_s
        self._poll_stuck = poll_stuck_s
        self._beat = now

    def beat(self, now: float) -> None:
        self._beat = now

    def check(
        self, *, now: float, last_poll: float, broker_reachable: bool, stopping: bool
    ) -> Health:
        reasons = []
        if now - self._beat > self._loop_stuck:
            reasons.append(f"event loop blocked for {now - self._beat:.0f} s")
        if not stopping and broker_reachable and now - last_poll > self._poll_stuck:
            reasons.append(f"Kafka consume call has not returned for {now - last_poll:.0f} s")
        return Health(tuple(reasons))


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

    @property
    def joined(self) -> bool: ...

    @property
    def last_poll_at(self) -> float: ...

    @property
    def max_poll_interval_s(self) -> float: ...

    async def lag(self) -> Sequence[_Watermark]: ...


class _Producer(Protocol):
    @property
    def broker_reachable(self) -> bool: ...


class _Limiter(Protocol):
    def snapshot(self, location_id: str, now: float | None = None) -> LimiterState: ...

    def locations(self) -> list[str]: ...


class _Sized(Protocol):
    def __len__(self) -> int: ...


@runtime_checkable
class _PartitionedProfiles(Protocol):
    """``consumer.state.profile_state.PartitionedProfileStore``: what the metrics read."""

    hits: int
    misses: int

    def __len__(self) -> int: ...

    def sizes(self) -> dict[int, int]: ...


class Observed:
    """Reads a running consumer's state for ``/metrics`` (per scrape), ``/readyz`` and
    ``/healthz``. ``stall_seconds``: how long a partition with work may keep its commit point
    before it counts as stalled (``StallDetector``, the ``ghl_partition_stalled`` gauge).
    ``stopping``: whether shutdown has begun (the stop event's ``is_set``). Build it on the
    event loop; run ``heartbeat`` as a task for as long as ``/healthz`` is served."""

    def __init__(
        self,
        *,
        engine: _Engine,
        source: _Source,
        producer: _Producer,
        limiter: _Limiter,
        profiles: _Sized | _PartitionedProfiles,
        stall_seconds: float,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._engine = engine
        self._source = source
        self._producer = producer
        self._limiter = limiter
        self._profiles = profiles
        self._stopping = stopping
        self._stalls = StallDetector(after_s=stall_seconds)
        self._last_lags: Sequence[_Watermark] = []
        self._loop = asyncio.get_running_loop()
        self._liveness = Liveness(
            now=self._loop.time(),
            loop_stuck_s=LOOP_STUCK_S,
            poll_stuck_s=source.max_poll_interval_s,
        )

    async def snapshot(self) -> StateSnapshot:
        """The state gauges' values now (reads the source's local lag state, waiting at most
        ``LAG_WAIT_S`` for the client, else the last lag read); advances the stall clocks."""
        engine = self._engine.snapshot()
        # the client busy (a rebalance): the last lag read
        with contextlib.suppress(TimeoutError):
            self._last_lags = await asyncio.wait_for(self._source.lag(), LAG_WAIT_S)
        lags = self._last_lags
        now = self._loop.time()
        store = self._profiles
        partitioned = store if isinstance(store, _PartitionedProfiles) else None
        held = bool(engine.unhealthy) or any(
            (state.paused_until or 0.0) > now or (state.daily_exhausted_until or 0.0) > now
            for state in (self._limiter.snapshot(loc, now) for loc in self._limiter.locations())
        )
        return StateSnapshot(
            partitions=engine.partitions,
            high_watermarks={
                (lag.topic, lag.partition): lag.high_watermark
                for lag in lags
                if lag.high_watermark is not None
            },
            stalled=self._stalls.check(engine.partitions, throttled=held, now=now),
            paused_partitions=engine.paused_partitions,
            limiters=[self._limiter.snapshot(loc) for loc in self._limiter.locations()],
            unhealthy=engine.unhealthy,
            buffered_records=engine.buffered_records,
            buffered_bytes=engine.buffered_bytes,
            requests_in_flight=engine.in_flight,
            profile_store_size=len(self._profiles),
            profile_partitions={} if partitioned is None else partitioned.sizes(),
            profile_cache_hits=None if partitioned is None else partitioned.hits,
            profile_cache_misses=None if partitioned is None else partitioned.misses,
        )

    def _broker_reachable(self) -> bool:
        # The source's client hears of an outage late when a commit is waiting for the
        # broker (it serves no callback meanwhile); the producer's hears at once.
        return self._source.broker_reachable and self._producer.broker_reachable

    def readiness(self) -> Readiness:
        """What ``/readyz`` answers now."""
        return Readiness(
            joined=self._source.joined,
            broker_reachable=self._broker_reachable(),
            stopping=self._stopping(),
        )

    def liveness(self) -> Health:
        """What ``/healthz`` answers now."""
        return self._liveness.check(
            now=self._loop.time(),
            last_poll=self._source.last_poll_at,
            broker_reachable=self._broker_reachable(),
            stopping=self._stopping(),
        )

    async def heartbeat(self) -> None:
        """Mark the event loop alive every ``HEARTBEAT_S`` until cancelled."""
        while True:
            self._liveness.beat(self._loop.time())
            await asyncio.sleep(HEARTBEAT_S)
