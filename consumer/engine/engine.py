"""The streaming engine: Kafka records in, HighLevel upserts out, offsets committed after.

Flow per record (``docs/architecture.md``, "Data flow"), all on the event loop thread:

1. ``admit``: the partition's ``PartitionOffsets`` says whether the record still needs work
   (``accept``: a restored offset map may say it was delivered before a restart).
2. ``map``: ``Mapper.map_record`` gives one outcome per routed integration (a record of the
   replay feed is routed as its ``ghl.original_topic``). A record whose outcomes are all
   drops and that changed no profile is done at once, never tracked (``passed``); others are
   ``track``ed until their last outcome settles (``complete``). Drops complete at once; rejects go
   to the dead-letter topic; upserts go to the ``Dispatcher`` (``consumer.engine.dispatch``),
   which coalesces, delivers, retries and parks them (steps 3 and 4).
5. ``commit``: on a timer, on revoke and at shutdown, each owned partition commits its
   contiguous done offset plus the offset map of done offsets above it
   (``consumer.engine.offsets``).

After every poll, ``consumer.engine.backpressure`` decides which partitions to pause or resume.

Feeds: the event feed (the source topics, the main consumer group), the parking feed (the
parking topic, a group named after it) and, when given, the replay feed (``dlq replay``'s
copies, the replay topic, a group named after it). Each feed is its own consumer group, so the
main group's assignment depends on the source partitions alone. The replay feed may instead be
co-partitioned with the event feed (``replay_follower``): it then joins no group and reads
exactly the replay partitions whose event partitions this member owns. With partitioned
profile state, a fourth feed follows the event feed the same way: the stitch topic
(``Stitching``), which carries identity stitching across partitions (``_ingest_stitch``;
``docs/architecture.md``, "Profiles"). Records of the replay feed go
through the same steps as the event feed's (admit, map, dedupe, deliver, dead-letter), under
the same contact keys (so per-contact order and the dispatcher's identity lock hold across both
feeds), and commit after delivery likewise.

Rebalance handling (``docs/architecture.md``, "Rebalance handling"; ``_FeedListener``): before
any record of newly assigned event or replay partitions, the engine restores the profile store
and learns the contacts parked by their previous owner. With partitioned profile state
(``ProfileLog.partitioned``) only the new event partitions are restored, in the background,
while they stay paused (``_Restores``): the other partitions keep being delivered.

Inside ``on_revoked`` (before the partitions move) it lets work of those partitions already
being sent or parked finish (bounded by ``revoke_wait``, longer than an HTTP timeout), commits
them, then revokes them in the tracker, whose guard ignores late completions; their
not-yet-sent work is discarded (the new owner re-reads it). Lost partitions are revoked without
a commit. Partitioned profile state of revoked or lost partitions is released then. The
following feeds (co-partitioned replay, stitch) follow the event feed's assignment: their
partition p is assigned after event partition p was assigned and its profiles restored, and
revoked (its in-flight work waited for, committed) or lost before event partition p is.

Not thread-safe by design: the Kafka adapter runs rebalance callbacks on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from operator import itemgetter

from consumer.core.deadletter import ORIGINAL_TOPIC, Failure, original_topic, replayed_from
from consumer.core.events import ContactUpsert, Drop, Outcome, Reason, Record, Reject
from consumer.core.mapping import Mapper
from consumer.core.profiles import Profile
from consumer.core.stitch import BadStitch, StitchMerge, StitchRequest, decode_stitch
from consumer.engine.backpressure import Backpressure, Decision
from consumer.engine.deliveries import DeliveryLog
from consumer.engine.dispatch import Dispatcher, Ticket
from consumer.engine.offsets import Assignment, OffsetTracker, PartitionOffsets
from consumer.engine.outbox import Outbox
from consumer.engine.parking import decode_parked
from consumer.engine.ports import (
    Credentials,
    DeliveryRecorder,
    EngineMetrics,
    FollowingSource,
    Limiter,
    ParkingLog,
    ProfileLog,
    RebalanceKind,
    Sender,
    Sink,
    Source,
)
from consumer.engine.stats import EngineSnapshot, EngineStats
from consumer.engine.tasks import TaskSet
from consumer.errors import ProfileDecodeError

logger = logging.getLogger(__name__)

_PARTITION_OF = itemgetter(0, 1)  # a Record's (topic, partition): runs of one partition


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    """Tuning of the engine; every time is in seconds."""

    coalesce_window: float = 0.25
    max_in_flight: int = 64
    max_buffered: int = 20_000
    max_buffered_per_partition: int = 5_000
    max_buffered_bytes: int = 16 * 1024 * 1024
    poll_batch: int = 500
    poll_timeout: float = 0.1
    commit_interval: float = 1.0
    drain_timeout: float = 10.0
    progress_interval: float = 10.0
    retry_base: float = 0.5
    retry_max: float = 30.0
    max_retry: float = 300.0  # a contact failing this long (5xx, timeouts) is parked
    unauthorized_probe_interval: float = 30.0
    parking_check_interval: float = 5.0  # how often replayed contacts are released
    revoke_wait: float = 15.0  # on revoke: how long in-flight work of those partitions may finish


@dataclass(frozen=True, slots=True, kw_only=True)
class Stitching:
    """Identity stitching across partitions (partitioned profile state; ``docs/architecture.md``,
    "Profiles"): the stitch topic ``topic``, read by ``source`` co-partitioned with the event
    feed (it follows the event feed's assignment, as the co-partitioned replay feed does), and
    ``partitions_of(key)``: every event partition a record keyed ``key`` may be in (the input
    producers' partitioner over the input's partition count; several when it is not known)."""

    topic: str
    source: FollowingSource
    partitions_of: Callable[[str], Collection[int]]


class _Feed:
    """One Kafka source the engine reads: its offsets, the partitions backpressure paused, and
    its commits. ``name`` appears in logs."""

    def __init__(self, name: str, source: Source) -> None:
        self.name = name
        self.source = source
        self.tracker = OffsetTracker()
        self.paused: set[tuple[str, int]] = set()  # by backpressure
        self.restores: _Restores | None = None  # partitioned profile state: the event feed

    async def commit(self, only: Sequence[tuple[str, int]] | None = None) -> None:
        """Commit what the owned partitions (or ``only`` those) have new to commit. A failure is
        logged, not raised: the same points are committed on the next call."""
        points = self.tracker.commit_points(only)
        if not points:
            return
        try:
            await self.source.commit(points)
        except Exception as exc:  # noqa: BLE001 - any commit failure is retried next tick
            logger.warning("%s commit failed, will retry: %s", self.name, exc)
            return
        self.tracker.mark_committed(points)

    async def apply(self, decision: Decision) -> None:
        """Pause and resume partitions of the source as ``decision`` says."""
        if decision.pause:
            await self.source.pause(decision.pause)
            self.paused.update(decision.pause)
            logger.debug("%s: paused %s", self.name, decision.pause)
        resume = decision.resume
        if resume and self.restores is not None:  # paused for a restore until it is done
            resume = tuple(tp for tp in resume if tp not in self.restores.waiting)
        if resume:
            await self.source.resume(resume)
            self.paused.difference_update(resume)
            logger.debug("%s: resumed %s", self.name, resume)

    def forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Stop tracking ``partitions`` (revoked or lost): late completions are ignored and
        nothing of them is committed again."""
        for topic, partition in partitions:
            self.tracker.revoke(topic, partition)
            self.paused.discard((topic, partition))


async def _lead(
    feed: _Feed,
    followers: Sequence[FollowingSource],
    leaving: Sequence[tuple[str, int]] = (),
    *,
    lost: bool = False,
) -> None:
    """Make each of ``followers`` own the partition numbers ``feed`` owns with their profiles
    restored (none still in ``feed.restores.waiting``), ``leaving`` excepted; one after the
    other, in order."""
    if not followers:
        return
    gone = set(leaving)
    if feed.restores is not None:
        gone.update(feed.restores.waiting)
    partitions = {p.partition for p in feed.tracker.owned() if (p.topic, p.partition) not in gone}
    for follower in followers:
        await follower.follow(partitions, lost=lost)


class _Restores:
    """The profile restores of one feed's newly assigned partitions (partitioned profile
    state): records of a partition wait only for that partition's restore.

    ``assigned`` (inside the rebalance callback) pauses the new partitions, which takes effect
    as they are assigned, before any record of them is fetched, and queues them. ``step`` (the
    intake loop, after each poll, outside any callback) starts the queued restores as one
    background task and resumes the partitions whose restore is done, unless backpressure
    paused them meanwhile (``_Feed.apply`` never resumes a partition in ``waiting``); a
    restore that failed raises there, which stops the engine as a failed callback would.
    ``released`` (inside ``on_revoked``/``on_lost``) waits for a running restore of those
    partitions (bounded by the profile log's own retries: it touches no source), then
    releases their profiles. The ``followers`` (the co-partitioned replay and stitch feeds)
    are given a partition once its restore is done."""

    def __init__(
        self,
        feed: _Feed,
        restore: Callable[[Sequence[int]], Coroutine[None, None, None]],
        log: ProfileLog,
        *,
        followers: Sequence[FollowingSource] = (),
    ) -> None:
        self._feed = feed
        self._followers = followers
        self._restore = restore
        self._log = log
        self._queued: list[tuple[str, int]] = []
        self._running: dict[asyncio.Task[None], tuple[tuple[str, int], ...]] = {}

    @property
    def waiting(self) -> frozenset[tuple[str, int]]:
        """Partitions queued or being restored."""
        running = (tp for tps in self._running.values() for tp in tps)
        return frozenset((*self._queued, *running))

    async def assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        await self._feed.source.pause(partitions)
        self._queued.extend(partitions)

    async def step(self) -> None:
        if self._queued:
            batch, self._queued = tuple(self._queued), []
            restore = self._restore([p for _, p in batch])
            name = f"restore-{self._feed.name}"
            self._running[asyncio.create_task(restore, name=name)] = batch
        finished = [t for t in self._running if t.done()]
        for task in finished:
            batch = self._running.pop(task)
            task.result()  # a restore that failed stops the engine
            tracker, paused = self._feed.tracker, self._feed.paused
            ready = [tp for tp in batch if tracker.get(*tp) is not None and tp not in paused]
            if ready:
                await self._feed.source.resume(ready)
            logger.info("%s: profiles restored for %s", self._feed.name, list(batch))
        if finished:
            await _lead(self._feed, self._followers)

    async def released(self, partitions: Sequence[tuple[str, int]]) -> None:
        gone = set(partitions)
        self._queued = [tp for tp in self._queued if tp not in gone]
        running = [t for t, batch in self._running.items() if gone.intersection(batch)]
        if running:
            await asyncio.wait(running)
        self._log.release([p for _, p in partitions])


class _FeedListener:
    """Rebalance handling of one feed (its source's ``RebalanceListener``; called on the event
    loop). ``prepare``, when given, is awaited before non-empty assignments are tracked: the
    event feed restores the state the previous owner left (see the module docstring).
    ``followers`` (the event feed's co-partitioned replay and stitch feeds) are made to own the
    same partition numbers as this feed: after an assignment is tracked, and before a revoked
    or lost partition is let go here."""

    def __init__(
        self,
        feed: _Feed,
        dispatcher: Dispatcher,
        metrics: EngineMetrics,
        *,
        revoke_wait: float,
        prepare: Callable[[], Awaitable[None]] | None = None,
        followers: Sequence[FollowingSource] = (),
    ) -> None:
        self._feed = feed
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._revoke_wait = revoke_wait
        self._prepare = prepare
        self._followers = followers

    async def on_assigned(self, partitions: Sequence[Assignment]) -> None:
        if partitions and self._prepare is not None:
            await self._prepare()
        if partitions and self._feed.restores is not None:
            await self._feed.restores.assigned([(a.topic, a.partition) for a in partitions])
        for a in partitions:
            self._feed.tracker.assign(
                a.topic, a.partition, committed=a.committed, metadata=a.metadata
            )
        self._metrics.rebalance(RebalanceKind.ASSIGNED)
        logger.info(
            "%s: assigned %s", self._feed.name, [(a.topic, a.partition) for a in partitions]
        )
        if partitions:
            await self._follow()

    async def _follow(self, leaving: Sequence[tuple[str, int]] = (), *, lost: bool = False) -> None:
        await _lead(self._feed, self._followers, leaving, lost=lost)

    async def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        # The followers' partitions go first, their in-flight work waited for and committed,
        # so a replayed copy or a stitch record is never handled after the event partition
        # has moved.
        await self._follow(partitions)
        # Work of these partitions already sent (or being parked) finishes first: otherwise a
        # slow answer, or its retry, could land after the new owner's newer upsert. Its
        # completions then make it into the final commit.
        tracker = self._feed.tracker
        leaving = [p for tp in partitions if (p := tracker.get(*tp)) is not None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._revoke_wait):
                await self._dispatcher.wait_for_in_flight(leaving)
        await self._feed.commit(only=partitions)
        await self._forget(partitions)
        self._metrics.rebalance(RebalanceKind.REVOKED)
        logger.info("%s: revoked %s", self._feed.name, list(partitions))

    async def on_lost(self, partitions: Sequence[tuple[str, int]]) -> None:
        await self._follow(partitions, lost=True)
        await self._forget(partitions)
        self._metrics.rebalance(RebalanceKind.LOST)
        logger.warning("%s: lost %s (no commit possible)", self._feed.name, list(partitions))

    async def _forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        self._feed.forget(partitions)
        self._dispatcher.forget_revoked()
        if self._feed.restores is not None:
            await self._feed.restores.released(partitions)


class _Tally:
    """Counts of one poll batch, flushed to the stats and the metrics once (``flush``)."""

    __slots__ = ("consumed", "dropped", "rejected", "skipped")

    def __init__(self) -> None:
        self.consumed: Counter[str] = Counter()  # by topic
        self.skipped: Counter[str] = Counter()  # by topic
        self.dropped: Counter[str] = Counter()  # by reason
        self.rejected: Counter[str] = Counter()  # by reason

    def flush(self, stats: EngineStats, metrics: EngineMetrics) -> None:
        for topic, count in self.consumed.items():
            metrics.consumed(topic, count)
        stats.consumed += self.consumed.total()
        for topic, count in self.skipped.items():
            metrics.skipped(topic, count)
        stats.skipped_done += self.skipped.total()
        for reason, count in self.dropped.items():
            metrics.dropped(reason, count)
            stats.dropped[reason] += count
        for reason, count in self.rejected.items():
            metrics.rejected(reason, count)
            stats.rejected[reason] += count


class Engine:
    """One consumer-group member's processing. Build it, then ``await run(stop)``.

    ``credentials`` gives each request's token and says which locations an OAuth
    integration serves (an upsert to another is rejected, ``unknown_location``); ``locations``
    maps every configured integration id to its location id ("" for one whose events choose
    it). ``parking_log`` is the parking topic (its ``source`` is
    the second feed); ``metrics`` and ``recorder`` observe every outcome. ``replay_source``,
    when given, is the third feed: the replay topic's group (``dlq replay`` copies); or
    ``replay_follower`` (not both): the replay topic co-partitioned with the one source topic,
    whose partitions the engine assigns as the event feed's assignment changes (see the module
    docstring), so a copy is read by the member holding its original partition's state. Each
    of its records is mapped as a record of the topic its ``ghl.original_topic`` header names, which
    must be one of ``source_topics``; otherwise it is dead-lettered (``invalid_replay``), never
    routed as another topic. ``delivery_topic``, when given, receives a delivery record per
    HighLevel call (``consumer.engine.deliveries``: best effort, produced through ``sink``).
    ``stitching``, with a partitioned ``profile_log`` and a mapper built with
    ``stitch_across``: the stitch topic's feed, which carries identity stitching across
    partitions (``_ingest`` asks, ``_ingest_stitch`` answers and folds).

    ``run`` returns after ``stop`` is set and the engine has drained (bounded by
    ``drain_timeout``), committed and closed the sources. Raises only for programming errors;
    delivery failures are outcomes, Kafka commit failures are logged and retried next time.
    """

    def __init__(
        self,
        *,
        source: Source,
        sink: Sink,
        mapper: Mapper,
        limiter: Limiter,
        sender: Sender,
        credentials: Credentials,
        locations: Mapping[str, str],
        dead_letter_topic: str,
        parking_log: ParkingLog,
        metrics: EngineMetrics,
        recorder: DeliveryRecorder,
        profile_log: ProfileLog | None = None,
        replay_source: Source | None = None,
        replay_follower: FollowingSource | None = None,
        stitching: Stitching | None = None,
        source_topics: Collection[str] = (),
        delivery_topic: str | None = None,
        options: EngineOptions = EngineOptions(),
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._mapper = mapper
        self._credentials = credentials
        self._locations = dict(locations)
        self._metrics = metrics
        self._recorder = recorder
        self._profile_log = profile_log
        self._source_topics = frozenset(source_topics)
        self._options = options
        self._wall_clock = wall_clock
        self.stats = EngineStats()
        self._outbox = Outbox(
            sink=sink,
            dead_letter_topic=dead_letter_topic,
            retry_base=options.retry_base,
            retry_max=options.retry_max,
            wall_clock=wall_clock,
        )
        self._delivery_log = (
            None
            if delivery_topic is None
            else DeliveryLog(sink=sink, topic=delivery_topic, metrics=metrics)
        )
        self._dispatcher = Dispatcher(
            limiter=limiter,
            sender=sender,
            credentials=credentials,
            parking_log=parking_log,
            outbox=self._outbox,
            metrics=metrics,
            recorder=recorder,
            delivery_log=self._delivery_log,
            stats=self.stats,
            coalesce_window=options.coalesce_window,
            max_in_flight=options.max_in_flight,
            retry_base=options.retry_base,
            retry_max=options.retry_max,
            max_retry=options.max_retry,
            unauthorized_probe_interval=options.unauthorized_probe_interval,
            parking_check_interval=options.parking_check_interval,
            rng=rng or random.Random(),
            wall_clock=wall_clock,
        )
        self._backpressure = Backpressure(
            max_buffered=options.max_buffered,
            max_buffered_per_partition=options.max_buffered_per_partition,
            max_buffered_bytes=options.max_buffered_bytes,
        )
        self._main = _Feed("events", source)
        self._parking = _Feed("parking", parking_log.source)
        if replay_source is not None and replay_follower is not None:
            raise ValueError("Engine: give replay_source or replay_follower, not both")
        if stitching is not None and (profile_log is None or not profile_log.partitioned):
            raise ValueError("Engine: stitching needs a partitioned profile_log")
        self._stitching = stitching
        self._followers = tuple(
            f
            for f in (replay_follower, None if stitching is None else stitching.source)
            if f is not None
        )
        replays = replay_source or replay_follower
        self._replays = None if replays is None else _Feed("replay", replays)
        self._stitches = None if stitching is None else _Feed("stitch", stitching.source)
        self._feeds = tuple(
            f
            for f in (self._main, self._parking, self._replays, self._stitches)
            if f is not None
        )
        if profile_log is not None and profile_log.partitioned:
            self._main.restores = _Restores(
                self._main, self._restore, profile_log, followers=self._followers
            )
        self._restore_lock = asyncio.Lock()  # one restore at a time (two feeds ask for one)
        self._tasks = TaskSet()  # dead letters and profile writes of intake

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then drain, commit and close (see the class doc)."""
        feeds = self._feeds
        # The event feed last: an assignment of it makes the following feeds assign.
        for feed in (*feeds[1:], feeds[0]):
            # Parked upserts need no profiles; new work (events, replays) does, and a following
            # feed's partitions come only after the event feed's restored them. With
            # partitioned profile state the event feed restores its partitions itself
            # (``_Restores``), in the background.
            restores = (feed is self._main and feed.restores is None) or (
                feed is self._replays and feed.source not in self._followers
            )
            await feed.source.start(
                _FeedListener(
                    feed,
                    self._dispatcher,
                    self._metrics,
                    revoke_wait=self._options.revoke_wait,
                    prepare=self._restore if restores else None,
                    followers=self._followers if feed is self._main else (),
                )
            )
        background = [
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._progress_loop(), name="progress"),
            asyncio.create_task(self._dispatcher.run_releases(), name="parking-release"),
        ]
        if self._profile_log is not None:
            background.append(asyncio.create_task(self._profile_log.follow(), name="erasures"))
        if self._delivery_log is not None:
            background.append(asyncio.create_task(self._delivery_log.run(), name="deliveries"))
        intakes = [
            asyncio.create_task(self._intake_loop(feed, stop), name=f"intake-{feed.name}")
            for feed in feeds
        ]
        try:
            await asyncio.gather(*intakes)
            await self._drain()
        finally:
            for task in [*background, *intakes]:
                task.cancel()
            await asyncio.gather(*background, *intakes, return_exceptions=True)
            await self._dispatcher.close()
            await self._tasks.cancel_all()
            if self._delivery_log is not None:  # before the final commits, bounded
                await self._delivery_log.flush(within=self._options.drain_timeout)
            for feed in feeds:
                await feed.commit()
                await feed.source.close()
            logger.info("engine stopped: %s", self.progress_line())

    async def _restore(self, partitions: Sequence[int] = ()) -> None:
        """Before any record of newly assigned event or replay partitions, learn what their
        previous owner (another instance, or this one before a restart) left: the profiles it
        wrote (the whole changelog; partitioned: those of the event ``partitions`` given, none
        for the replay feed), and the contacts with upserts waiting in the parking topic (their
        newer work parks). One restore at a time: a feed assigned while another's restore runs
        waits for it, then restores anew (what the previous owner wrote after that one began
        counts)."""
        log = self._profile_log
        async with self._restore_lock:
            if log is not None and (partitions or not log.partitioned):
                await log.assign(partitions)
            await self._dispatcher.load_parked()

    async def _intake_loop(self, feed: _Feed, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        ingest = (
            self._ingest_parked
            if feed is self._parking
            else self._ingest_stitch
            if feed is self._stitches
            else partial(self._ingest, feed)
        )
        while not stop.is_set():
            records = await feed.source.poll_batch(
                self._options.poll_batch, self._options.poll_timeout
            )
            if records:
                ingest(records, loop.time(), self._wall_clock())
            if feed.restores is not None:
                await feed.restores.step()
            decision = self._backpressure.decide(
                feed.tracker.owned(),
                feed.paused,
                buffered=self._buffered(),
                buffered_bytes=self._buffered_bytes(),
            )
            await feed.apply(decision)

    async def _drain(self) -> None:
        """Wait, bounded, for buffered work to finish after intake stopped."""
        deadline = asyncio.get_running_loop().time() + self._options.drain_timeout
        while buffered := self._buffered():
            if asyncio.get_running_loop().time() >= deadline:
                logger.warning(
                    "drain timeout: %d buffered records left undone (they will be re-read)",
                    buffered,
                )
                return
            await asyncio.sleep(0.05)

    # -- intake ---------------------------------------------------------------------------------

    def _ingest(self, feed: _Feed, records: Sequence[Record], now: float, wall: float) -> None:
        """One poll batch of the event feed, or of the replay feed (each record routed as the
        source topic its ``ghl.original_topic`` names, which must be configured), in one pass
        over its runs of one partition (one offset tracker lookup, one profile partition
        selected, per run): accept, map, route each outcome.

        A record that completes at once (every outcome a drop, no profile change) is done as
        soon as it is mapped: no ticket, never tracked (``PartitionOffsets.passed``; with
        nothing pending before it, the commit point simply moves past it). Counters are
        tallied per batch and flushed once (``_Tally``). The profile changes of the whole
        batch are produced together, one write per user (``_persist_profiles``); the records
        that made them wait for it. So do the records whose mapping met a profile to stitch
        held in another partition: a request to the stitch topic (``_stitch_requests``),
        confirmed before the profile writes."""
        tracker, mapper, log = feed.tracker, self._mapper, self._profile_log
        replays = feed is self._replays
        stitching = self._stitching is not None
        recorder = self._recorder
        dropped = recorder.dropped
        tally = _Tally()
        waiting: list[Ticket] = []  # records whose profile changes are in this batch's writes
        requests: list[tuple[int, StitchRequest]] = []  # (stitch partition, request)
        for (source, number), grouped in groupby(records, key=_PARTITION_OF):
            partition = tracker.get(source, number)
            if partition is None:
                continue  # revoked while the batch was in flight; the new owner reads it
            if log is not None:
                log.select(number)  # the profiles this run's mapping reads and writes
            run = list(grouped)
            tally.consumed[source] += len(run)
            for record in run:
                _, _, offset, key, value, headers, _ = record
                if not partition.accept(offset):
                    tally.skipped[source] += 1
                    continue
                topic = source
                if replays:
                    topic = original_topic(headers) or ""
                    if topic not in self._source_topics:
                        self._invalid_replay(record, partition, topic, wall)
                        continue
                    recorder.replayed(record, None, wall)
                changes = log.changes if log is not None else 0
                outcomes = mapper.map_record(
                    value=value or b"",
                    key=key,
                    topic=topic,
                    now=wall,
                    # a record re-read after its partition came back is not a duplicate of
                    # itself
                    origin=(source, number, offset),
                    # a replayed dead letter is not a duplicate of its original
                    replay_of=replayed_from(headers) if headers else None,
                )
                wrote = log is not None and log.changes != changes
                if stitching and (asked := self._stitch_requests(number)):
                    requests.extend(asked)
                    wrote = True
                if not wrote and len(outcomes) == 1 and type(outcome := outcomes[0]) is Drop:
                    tally.dropped[outcome.reason] += 1
                    dropped(record, outcome.reason, outcome.integration_id, wall)
                    partition.passed(offset)
                    continue
                partition.track(offset, record.size)
                ticket = Ticket(record, partition, len(outcomes) + wrote)
                if wrote:
                    waiting.append(ticket)
                self._route(ticket, outcomes, tally, now, wall)
        tally.flush(self.stats, self._metrics)
        if waiting:
            assert log is not None
            self._tasks.spawn(self._persist_profiles(log.take_writes(), waiting, requests))

    def _invalid_replay(
        self, record: Record, partition: PartitionOffsets, topic: str, wall: float
    ) -> None:
        """A replay feed record (just accepted) whose ``ghl.original_topic`` is not a source
        topic: dead-lettered (``invalid_replay``)."""
        failure = Failure(
            reason="invalid_replay",
            error=f"{ORIGINAL_TOPIC}: not one of kafka.topics ({topic[:64]!r})",
        )
        self._recorder.rejected(record, failure.reason, failure.error, None, wall)
        partition.track(record.offset, record.size)
        self._tasks.spawn(self._dead_letter(Ticket(record, partition, 1), failure))

    def _stitch_requests(self, partition: int) -> list[tuple[int, StitchRequest]]:
        """The stitch requests of the record of event ``partition`` just mapped: one per
        profile it could not stitch here (``Mapper.take_unstitched``) and per other partition
        that profile's events may be in."""
        assert self._stitching is not None
        partitions_of = self._stitching.partitions_of
        return [
            (where, StitchRequest(source=source, target=target, partition=partition))
            for source, target in self._mapper.take_unstitched()
            for where in sorted(partitions_of(source))
            if where != partition
        ]

    def _ingest_stitch(self, records: Sequence[Record], now: float, wall: float) -> None:
        """One poll batch of the stitch feed (``consumer.core.stitch``), each record in the
        profiles of its own partition (the follower owns only restored ones). A request: the
        profile it names, when one is held, is emptied here and sent as a merge to the
        requester's partition; the record completes once the merge, then the emptied profile,
        are confirmed. A merge: folded into its user's profile, the record completes once that
        write is confirmed. Nothing to do: complete at once. Neither, or a merge whose profile
        cannot be opened: dead-lettered (``invalid_stitch``). Counted in the consumed records
        of the stitch topic and in the stitch metrics (``EngineMetrics.stitch_requests``,
        ``stitch_merges``), never in the engine's event counts."""
        assert self._stitches is not None
        assert self._profile_log is not None
        tracker, log, mapper = self._stitches.tracker, self._profile_log, self._mapper
        metrics = self._metrics
        consumed: Counter[str] = Counter()  # by topic
        for record in records:
            partition = tracker.get(record.topic, record.partition)
            if partition is None:
                continue  # revoked while the batch was in flight
            consumed[record.topic] += 1
            if not partition.admit(record.offset, record.size):
                continue
            ticket = Ticket(record, partition, 1)
            stitch = decode_stitch(record.key, record.value)
            log.select(record.partition)
            if isinstance(stitch, StitchRequest):
                metrics.stitch_requests("handled")
                handed = mapper.hand_over(stitch.source)
                if handed is None:
                    metrics.stitch_merges("empty")
                    partition.complete(record.offset)
                    continue
                merge = StitchMerge(
                    source=stitch.source,
                    target=stitch.target,
                    profile=log.seal(stitch.target, handed.to_bytes()),
                )
                stitches = [(stitch.partition, merge)]
                self._tasks.spawn(self._persist_profiles(log.take_writes(), [ticket], stitches))
                continue
            if isinstance(stitch, StitchMerge):
                try:
                    other = Profile.from_bytes(log.open(stitch.target, stitch.profile))
                except ProfileDecodeError as exc:
                    stitch = BadStitch(f"stitch merge: {exc}")
                else:
                    if mapper.fold(stitch.target, other):
                        metrics.stitch_merges("folded")
                        self._tasks.spawn(self._persist_profiles(log.take_writes(), [ticket]))
                    else:
                        metrics.stitch_merges("unchanged")
                        partition.complete(record.offset)
                    continue
            failure = Failure(reason="invalid_stitch", error=stitch.error)
            self._recorder.rejected(record, failure.reason, failure.error, None, wall)
            self._tasks.spawn(self._dead_letter(ticket, failure))
        for topic, count in consumed.items():
            metrics.consumed(topic, count)

    def _route(
        self, ticket: Ticket, outcomes: Sequence[Outcome], tally: _Tally, now: float, wall: float
    ) -> None:
        """Send each outcome of ``ticket``'s record on: upserts to the dispatcher, drops settle,
        rejects to the dead-letter topic. ``now``: loop time; ``wall``: wall-clock time."""
        record = ticket.record
        for outcome in outcomes:
            if isinstance(outcome, ContactUpsert):
                if not self._credentials.serves(outcome.integration_id, outcome.location_id):
                    outcome = Reject(
                        Reason.UNKNOWN_LOCATION,
                        f"location {outcome.location_id[:64]!r}: the app is not installed there",
                        outcome.integration_id,
                    )
                    self._reject(ticket, outcome, tally, wall)
                    continue
                for omitted in outcome.omitted:
                    self._metrics.omitted_field(omitted.field, omitted.reason)
                self._dispatcher.offer(outcome, ticket, now)
            elif isinstance(outcome, Drop):
                tally.dropped[outcome.reason] += 1
                self._recorder.dropped(record, outcome.reason, outcome.integration_id, wall)
                ticket.settle()
            else:
                self._reject(ticket, outcome, tally, wall)

    def _reject(self, ticket: Ticket, outcome: Reject, tally: _Tally, wall: float) -> None:
        """Dead-letter ``ticket``'s record for ``outcome`` (its offset waits for the broker)."""
        tally.rejected[outcome.reason] += 1
        self._recorder.rejected(
            ticket.record, outcome.reason, outcome.error, outcome.integration_id, wall
        )
        failure = Failure(
            reason=outcome.reason, error=outcome.error, integration_id=outcome.integration_id
        )
        self._tasks.spawn(self._dead_letter(ticket, failure))

    def _ingest_parked(self, records: Sequence[Record], now: float, wall: float) -> None:
        for record in records:
            self._ingest_one_parked(record, now, wall)

    def _ingest_one_parked(self, record: Record, now: float, wall: float) -> None:
        partition = self._parking.tracker.get(record.topic, record.partition)
        if partition is None or not partition.admit(record.offset, record.size):
            return
        upsert = decode_parked(record.value)
        ticket = Ticket(record, partition, 1, replay=True)
        if upsert is None or upsert.integration_id not in self._locations:
            error = "not a parked upsert" if upsert is None else "integration not configured"
            failure = Failure(reason="invalid_parked", error=error)
            self._recorder.rejected(record, failure.reason, error, None, wall)
            self._tasks.spawn(self._dead_letter(ticket, failure))
            return
        self.stats.replayed += 1
        self._metrics.replayed(upsert.integration_id)
        self._recorder.replayed(record, upsert, wall)
        self._dispatcher.offer(upsert, ticket, now, replay=True)

    async def _dead_letter(self, ticket: Ticket, failure: Failure) -> None:
        with self._outbox.holding():
            await self._outbox.dead_letter(ticket.record, failure)
            self.stats.dead_lettered += 1
            self._metrics.dead_lettered(failure.reason)
            self._recorder.dead_lettered(ticket.record, failure, self._wall_clock())
            ticket.settle()

    async def _persist_profiles(
        self,
        writes: Sequence[tuple[int | None, str, bytes]],
        tickets: Sequence[Ticket],
        stitches: Sequence[tuple[int, StitchRequest | StitchMerge]] = (),
    ) -> None:
        """Produce one batch's profile writes together, each to the changelog partition it
        names (partitioned: the partition of the record that made it, never the
        partitioner's choice); once the broker has every one, the records that made them
        (``tickets``) settle. ``stitches`` ((stitch partition, record)) are produced first and
        confirmed before any write: a write that says "asked for" or "handed over" never
        reaches the changelog without the stitch record that does it (a crash between the two
        makes the record be read and asked again, which is harmless)."""
        log = self._profile_log
        assert log is not None
        by_partition: dict[int | None, list[tuple[bytes | None, bytes | None]]] = {}
        for partition, key, value in writes:
            by_partition.setdefault(partition, []).append((key.encode(), value))
        with self._outbox.holding(len(tickets)):
            if stitches:
                assert self._stitching is not None
                await self._produce_stitches(self._stitching.topic, stitches)
                requests = sum(isinstance(stitch, StitchRequest) for _, stitch in stitches)
                merges = len(stitches) - requests
                if requests:
                    self._metrics.stitch_requests("sent", requests)
                if merges:
                    self._metrics.stitch_merges("sent", merges)
            await asyncio.gather(
                *(
                    self._outbox.produce_many(log.topic, records, partition=partition)
                    for partition, records in by_partition.items()
                )
            )
            for partition, key, _ in writes:
                log.written(partition, key)
            for ticket in tickets:
                ticket.settle()

    async def _produce_stitches(
        self, topic: str, stitches: Sequence[tuple[int, StitchRequest | StitchMerge]]
    ) -> None:
        """Produce ``stitches`` to their partitions of ``topic``; returns once all are
        confirmed (the outbox retries failures)."""
        by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        for partition, stitch in stitches:
            by_partition.setdefault(partition, []).append((stitch.key(), stitch.value()))
        await asyncio.gather(
            *(
                self._outbox.produce_many(topic, records, partition=partition)
                for partition, records in by_partition.items()
            )
        )

    # -- commits --------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._options.commit_interval)
            for feed in self._feeds:
                await feed.commit()

    # -- state ----------------------------------------------------------------------------------

    def _buffered(self) -> int:
        """Records admitted and not done: in the dispatcher or being produced elsewhere."""
        return self._dispatcher.tickets + self._outbox.held

    def _buffered_bytes(self) -> int:
        """Bytes of the records admitted and not done, on every feed."""
        return sum(
            partition.incomplete_bytes
            for feed in self._feeds
            for partition in feed.tracker.owned()
        )

    def snapshot(self) -> EngineSnapshot:
        """The engine's state now, for readiness, ``/metrics`` and the demo (a copy)."""
        return EngineSnapshot(
            partitions=tuple(self._main.tracker.stats()),
            paused_partitions=len(self._main.paused),
            unhealthy=self._dispatcher.unhealthy,
            buffered_records=self._buffered(),
            buffered_bytes=self._buffered_bytes(),
            in_flight=self._dispatcher.in_flight,
        )

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self._options.progress_interval)
            logger.info("progress: %s", self.progress_line())

    def progress_line(self) -> str:
        """One readable line: counts since start and what is buffered now."""
        s = self.stats
        dropped = sum(s.dropped.values())
        rejected = sum(s.rejected.values())
        return (
            f"consumed={s.consumed} delivered={s.delivered_events} (calls={s.delivered_calls}, "
            f"coalesced={s.coalesced}) dropped={dropped} rejected={rejected} "
            f"dead_lettered={s.dead_lettered} parked={sum(s.parked.values())} "
            f"replayed={s.replayed} retries={s.retries} "
            f"buffered={self._dispatcher.tickets} in_flight={self._dispatcher.in_flight} "
            f"paused={len(self._main.paused)}"
        )
