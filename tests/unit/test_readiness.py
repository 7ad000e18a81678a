"""consumer.observe.readiness: what /readyz and /healthz answer for a consumer-group member,
stall detection (a metric, not a probe), and what the running consumer's state reader reads
from ``Engine.snapshot()``."""

from __future__ import annotations

import asyncio

import pytest

from consumer.engine.offsets import PartitionStats
from consumer.engine.stats import EngineSnapshot
from consumer.observe.readiness import (
    LAG_WAIT_S,
    Liveness,
    Observed,
    Readiness,
    StallDetector,
)
from consumer.ratelimit.budget import LimiterState
from tests.harness.engine import partition_stats


def test_ready_means_joined_reachable_and_not_stopping() -> None:
    assert Readiness(joined=True, broker_reachable=True).ready
    not_ready = Readiness(joined=False, broker_reachable=False, stopping=True)
    assert not not_ready.ready
    assert not_ready.reasons() == [
        "shutting down",
        "Kafka broker unreachable",
        "consumer group not joined yet",
    ]
    assert Readiness(joined=True, broker_reachable=True, stopping=True).reasons() == [
        "shutting down"
    ]


def test_alive_while_the_loop_beats_and_polls_return() -> None:
    probe = Liveness(now=0, loop_stuck_s=10, poll_stuck_s=300)
    for t in range(1, 400):
        probe.beat(t)
        # polls return every 0.1 s
        assert probe.check(now=t, last_poll=t - 0.1, broker_reachable=True, stopping=False).alive


def test_a_blocked_event_loop_fails_liveness() -> None:
    probe = Liveness(now=0, loop_stuck_s=10, poll_stuck_s=300)
    probe.beat(100)
    assert probe.check(now=110, last_poll=110, broker_reachable=True, stopping=False).alive
    health = probe.check(now=125, last_poll=125, broker_reachable=True, stopping=False)
    assert health.reasons == ("event loop blocked for 25 s",)
    probe.beat(126)
    assert probe.check(now=126, last_poll=126, broker_reachable=True, stopping=False).alive


def test_a_consume_call_stuck_beyond_max_poll_interval_fails_liveness_unless_explained() -> None:
    probe = Liveness(now=0, loop_stuck_s=10, poll_stuck_s=300)
    probe.beat(400)
    assert probe.check(now=400, last_poll=100, broker_reachable=True, stopping=False).alive
    stuck = probe.check(now=400.5, last_poll=100, broker_reachable=True, stopping=False)
    assert stuck.reasons == ("Kafka consume call has not returned for 300 s",)
    # A broker outage holds polls (a commit waits for the coordinator): restarting would not
    # help, readiness reports it. Draining after SIGTERM stops polling on purpose.
    probe.beat(500)
    assert probe.check(now=500, last_poll=100, broker_reachable=False, stopping=False).alive
    assert probe.check(now=500, last_poll=100, broker_reachable=True, stopping=True).alive


def test_liveness_rejects_non_positive_limits() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        Liveness(now=0, loop_stuck_s=0, poll_stuck_s=1)


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
    joined = False
    last_poll_at = 0.0
    max_poll_interval_s = 300.0

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


def observed(
    engine: _Engine, *, stall_seconds: float = 60, stopping: bool = False
) -> tuple[Observed, _Client]:
    client = _Client()
    state = Observed(
        engine=engine,
        source=client,
        producer=client,
        limiter=_Limiter(),
        profiles=["p1", "p2"],
        stall_seconds=stall_seconds,
        stopping=lambda: stopping,
    )
    return state, client


def snapshot(*partitions: PartitionStats) -> EngineSnapshot:
    return EngineSnapshot(
        partitions=partitions,
        paused_partitions=0,
        unhealthy=frozenset(),
        buffered_records=0,
        buffered_bytes=0,
        in_flight=0,
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
    state = await observed(engine)[0].snapshot()
    assert state.partitions == engine.state.partitions
    assert state.high_watermarks == {("events", 0): 25}
    assert (state.paused_partitions, set(state.unhealthy)) == (1, {"acme"})
    assert (state.buffered_records, state.buffered_bytes, state.requests_in_flight) == (7, 700, 3)
    assert [s.location_id for s in state.limiters] == ["loc-acme"]
    assert state.profile_store_size == 2
    assert state.stalled == ()


async def test_a_spare_member_with_no_partitions_is_ready_once_joined() -> None:
    probe, client = observed(_Engine(snapshot()))
    assert probe.readiness().reasons() == ["consumer group not joined yet"]
    client.joined = True  # the first (empty) assignment arrived
    assert probe.readiness().ready
    client.broker_reachable = False
    assert probe.readiness().reasons() == ["Kafka broker unreachable"]


async def test_shutting_down_is_not_ready() -> None:
    probe, client = observed(_Engine(snapshot(partition_stats(0))), stopping=True)
    client.joined = True
    assert probe.readiness().reasons() == ["shutting down"]


async def test_a_stalled_partition_is_a_metric_and_leaves_readiness_alone() -> None:
    engine = _Engine(snapshot(partition_stats(0, incomplete=5, commit=10)))
    probe, client = observed(engine, stall_seconds=0.01)
    client.joined = True
    assert (await probe.snapshot()).stalled == ()
    await asyncio.sleep(0.02)
    assert (await probe.snapshot()).stalled == (("events", 0),)
    assert probe.readiness().ready


async def test_liveness_reads_the_source_poll_time_on_the_loop_clock() -> None:
    probe, client = observed(_Engine(snapshot()))
    now = asyncio.get_running_loop().time()
    client.last_poll_at = now
    assert probe.liveness().alive
    client.last_poll_at = now - client.max_poll_interval_s - 1
    assert probe.liveness().reasons[0].startswith("Kafka consume call has not returned")


async def test_the_heartbeat_keeps_the_loop_marked_alive() -> None:
    probe, client = observed(_Engine(snapshot()))
    client.last_poll_at = float("inf")  # polls are not what this test is about
    beating = asyncio.create_task(probe.heartbeat())
    try:
        await asyncio.sleep(0)
        assert probe.liveness().alive
    finally:
        beating.cancel()


@pytest.mark.virtual_time
async def test_a_scrape_during_a_rebalance_reports_the_last_lag_instead_of_waiting() -> None:
    probe, client = observed(_Engine(snapshot()))
    assert (await probe.snapshot()).high_watermarks == {("events", 0): 25}
    held = asyncio.Event()  # the client's lock, held by a rebalance callback

    async def busy() -> list[_Watermark]:
        await held.wait()
        return []

    client.lag = busy  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    started = loop.time()
    state = await probe.snapshot()
    assert loop.time() - started == pytest.approx(LAG_WAIT_S, abs=0.1)
    assert state.high_watermarks == {("events", 0): 25}  # the last lag read
