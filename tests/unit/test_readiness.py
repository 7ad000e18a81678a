"""consumer.observe.readiness: stall detection, what /readyz answers, and what the running
consumer's state reader reads from ``Engine.snapshot()``."""

from __future__ import annotations

import pytest

from consumer.engine.stats import EngineSnapshot
from consumer.observe.readiness import Observed, Readiness, StallDetector
from consumer.ratelimit.budget import LimiterState
from tests.harness.engine import partition_stats


def test_readiness_reasons() -> None:
    assert Readiness(assigned=True, broker_reachable=True).ready
    not_ready = Readiness(assigned=False, broker_reachable=False, stalled=(("events", 3),))
    assert not not_ready.ready
    assert not_ready.reasons() == [
        "no partitions assigned",
        "Kafka broker unreachable",
        "partition events[3] stalled",
    ]


def test_stall_needs_incomplete_work_and_no_progress_for_the_whole_period() -> None:
    detector = StallDetector(after_s=60)
    busy = [
        partition_stats(0, incomplete=5, commit=10),
        partition_stats(1, incomplete=0, commit=3),
    ]
    assert detector.check(busy, throttled=False, now=0) == ()
    assert detector.check(busy, throttled=False, now=59) == ()
    assert detector.check(busy, throttled=False, now=60) == (("events", 0),)
    # progress restarts the clock
    moved = [
        partition_stats(0, incomplete=5, commit=11),
        partition_stats(1, incomplete=0, commit=3),
    ]
    assert detector.check(moved, throttled=False, now=61) == ()
    assert detector.check(moved, throttled=False, now=120) == ()
    assert detector.check(moved, throttled=False, now=121) == (("events", 0),)


def test_stall_clock_restarts_while_the_rate_limiter_holds_deliveries() -> None:
    detector = StallDetector(after_s=60)
    waiting = [partition_stats(0, incomplete=5, commit=10)]
    detector.check(waiting, throttled=False, now=0)
    assert detector.check(waiting, throttled=True, now=100) == ()
    assert detector.check(waiting, throttled=False, now=150) == ()
    assert detector.check(waiting, throttled=False, now=160) == (("events", 0),)


def test_stall_forgets_revoked_partitions() -> None:
    detector = StallDetector(after_s=10)
    detector.check([partition_stats(0, incomplete=1)], throttled=False, now=0)
    detector.check([], throttled=False, now=5)
    # reassigned later: a fresh clock, not the old one
    assert detector.check([partition_stats(0, incomplete=1)], throttled=False, now=20) == ()


def test_stall_detector_rejects_a_non_positive_period() -> None:
    with pytest.raises(ValueError, match="after_s"):
        StallDetector(after_s=0)


class _Watermark:
    def __init__(self, partition: int, high: int | None) -> None:
        self.topic, self.partition, self.high_watermark = "events", partition, high


class _Client:
    broker_reachable = True

    async def lag(self) -> list[_Watermark]:
        return [_Watermark(0, 25), _Watermark(1, None)]


class _Limiter:
    def snapshot(self, location_id: str, now: float | None = None) -> LimiterState:
        return LimiterState(
            location_id=location_id,
            remaining=3,
            in_flight=0,
            waiting=0,
            paused_until=None,
            daily_remaining=100,
            daily_exhausted_until=None,
            fallback_active=False,
        )

    def locations(self) -> list[str]:
        return ["loc-acme"]


class _Engine:
    def __init__(self, snapshot: EngineSnapshot) -> None:
        self.state = snapshot

    def snapshot(self) -> EngineSnapshot:
        return self.state


def observed(engine: _Engine, *, stall_seconds: float = 60) -> Observed:
    client = _Client()
    return Observed(
        engine=engine,
        source=client,
        producer=client,
        limiter=_Limiter(),
        profiles=["p1", "p2"],
        stall_seconds=stall_seconds,
    )


async def test_the_scrape_state_comes_from_the_engine_snapshot() -> None:
    engine = _Engine(
        EngineSnapshot(
            partitions=(partition_stats(0, incomplete=2), partition_stats(1)),
            paused_partitions=1,
            unhealthy=frozenset({"acme"}),
            buffered_records=7,
            buffered_bytes=700,
            in_flight=3,
        )
    )
    state = await observed(engine).snapshot()
    assert state.partitions == engine.state.partitions
    assert state.high_watermarks == {("events", 0): 25}
    assert (state.paused_partitions, set(state.unhealthy)) == (1, {"acme"})
    assert (state.buffered_records, state.buffered_bytes, state.requests_in_flight) == (7, 700, 3)
    assert [s.location_id for s in state.limiters] == ["loc-acme"]
    assert state.profile_store_size == 2


async def test_ready_when_assigned_and_reachable_not_before() -> None:
    empty = EngineSnapshot(
        partitions=(),
        paused_partitions=0,
        unhealthy=frozenset(),
        buffered_records=0,
        buffered_bytes=0,
        in_flight=0,
    )
    engine = _Engine(empty)
    probe = observed(engine)
    assert probe.readiness().reasons() == ["no partitions assigned"]
    engine.state = EngineSnapshot(
        partitions=(partition_stats(0),),
        paused_partitions=0,
        unhealthy=frozenset(),
        buffered_records=0,
        buffered_bytes=0,
        in_flight=0,
    )
    assert probe.readiness().ready
