"""The streaming engine: Kafka records in, HighLevel upserts out, offsets committed after.

Flow per record (DESIGN.md section 1), all on the event loop thread:

1. ``admit``: the partition's ``PartitionOffsets`` says whether the record still needs work
   (a restored offset map may say it was delivered before a restart).
2. ``map``: ``Mapper.map_record`` gives one outcome per routed integration. Drops complete at
   once; rejects go to the dead-letter topic; upserts go to the ``KeyedScheduler`` under the key
   (integration, contact) in the lane of their location, where they coalesce.
3. ``deliver``: one worker task per lane takes ready work when the location's rate limiter
   grants a permit and a global in-flight slot is free, then sends it. The answer decides
   (``consumer.highlevel.client``): completed, retried with backoff, parked, or dead-lettered.
4. ``complete``: a record is done when every outcome of it is done; its offset completes.
5. ``commit``: on a timer, on revoke and at shutdown, each owned partition commits its
   contiguous done offset plus the offset map of done offsets above it.

Backpressure: a partition pauses when its admitted-but-unfinished records reach
``max_buffered_per_partition`` or its offset map nears the metadata budget; every partition
pauses when all buffered records reach ``max_buffered``, or their keys, values and headers
``max_buffered_bytes`` (a waiting record keeps its value for a dead letter or parking, so
memory is bounded in bytes, not only in records); they resume at half.

Parking (``consumer.engine.parking``): work of an integration answering 401/403, of a location whose
daily budget is spent, or of a contact failing past ``max_retry``, goes to the parking topic
and its offsets complete, so the partitions move on. A second feed, a consumer group on the
parking topic, brings parked upserts back through the same scheduler; they are delivered when
the integration works again (one probe per ``unauthorized_probe_interval``) and never parked
twice. A contact with an upsert in the parking topic parks its newer work too, until the
parking group has committed past it.

Revocation: inside ``on_revoked`` (before the partitions move) the engine lets work of those
partitions already being sent or parked finish (bounded by ``revoke_wait``, longer than an HTTP
timeout), commits them, then revokes them in the tracker, whose guard ignores late completions;
their not-yet-sent work is discarded (the new owner re-reads it), and in-flight work that fails
after all is dropped, never retried: a late re-send could set a contact back to an older state
after the new owner delivered a newer one.

Not thread-safe by design: the Kafka adapter runs rebalance callbacks on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from consumer.config import Integration
from consumer.core.deadletter import REJECTED_BY_HIGHLEVEL, Failure, dead_letter
from consumer.core.events import ContactUpsert, Drop, Record
from consumer.core.mapping import Mapper
from consumer.engine.offsets import Assignment, OffsetTracker, PartitionOffsets
from consumer.engine.parking import ParkingState, ParkReason, decode_parked, encode_parked
from consumer.engine.ports import (
    Limiter,
    ParkingLog,
    Produced,
    ProfileLog,
    Sender,
    Sink,
    Source,
)
from consumer.engine.scheduler import KeyedScheduler, Work
from consumer.errors import DailyBudgetExhausted
from consumer.highlevel.verdicts import Answer, Verdict, ignored_fields
from consumer.observe.metrics import Endpoint, Metrics, RebalanceKind
from consumer.observe.recent_deliveries import RecentDeliveries
from consumer.ratelimit.limiter import Permit

logger = logging.getLogger(__name__)


# -- settings and statistics ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    """Tuning of the engine; every time is in seconds."""

    coalesce_window: float = 0.25
    max_in_flight: int = 64
    max_buffered: int = 20_000
    max_buffered_per_partition: int = 5_000
    max_buffered_bytes: int = 64 * 1024 * 1024
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


@dataclass(slots=True)
class EngineStats:
    """Counters since start; the progress line, the demo and the metrics read them."""

    consumed: int = 0
    skipped_done: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    coalesced: int = 0
    http_calls: int = 0
    delivered_calls: int = 0
    delivered_events: int = 0
    retries: int = 0
    dead_lettered: int = 0
    parked: Counter[str] = field(default_factory=Counter)
    replayed: int = 0
    ignored_fields: Counter[str] = field(default_factory=Counter)


# -- the engine ----------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Ticket:
    """One admitted record and how many of its outcomes are still open. ``replay``: the record
    comes from the parking topic (its work is never parked again)."""

    record: Record
    partition: PartitionOffsets
    open_parts: int
    replay: bool = False

    def settle(self) -> None:
        self.open_parts -= 1
        if self.open_parts == 0:
            self.partition.complete(self.record.offset)


_Key = tuple[str, str, str]  # (integration id, contact key, "replay" or "")


class _Feed:
    """One Kafka source the engine reads, its offsets and the partitions it paused."""

    def __init__(self, name: str, source: Source) -> None:
        self.name = name
        self.source = source
        self.tracker = OffsetTracker()
        self.paused: set[tuple[str, int]] = set()


class _FeedListener:
    """Rebalance callbacks of one feed (called by its source, on the event loop)."""

    def __init__(self, engine: Engine, feed: _Feed) -> None:
        self._engine = engine
        self._feed = feed

    async def on_assigned(self, partitions: Sequence[Assignment]) -> None:
        await self._engine._assigned(self._feed, partitions)

    async def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        await self._engine._revoked(self._feed, partitions)

    async def on_lost(self, partitions: Sequence[tuple[str, int]]) -> None:
        self._engine._lost(self._feed, partitions)


class Engine:
    """One consumer-group member's processing. Build it, then ``await run(stop)``.

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
        integrations: Sequence[Integration],
        dead_letter_topic: str,
        parking: ParkingLog,
        metrics: Metrics,
        debugger: RecentDeliveries,
        profile_log: ProfileLog | None = None,
        options: EngineOptions = EngineOptions(),
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._mapper = mapper
        self._limiter = limiter
        self._sender = sender
        self._integrations = {i.id: i for i in integrations}
        self._dead_letter_topic = dead_letter_topic
        self._parking_log = parking
        self._metrics = metrics
        self._debugger = debugger
        self._profile_log = profile_log
        self._options = options
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock
        self.stats = EngineStats()
        self._main = _Feed("events", source)
        self._replay = _Feed("parking", parking.source)
        self.tracker = self._main.tracker
        self.scheduler: KeyedScheduler[ContactUpsert, _Ticket] = KeyedScheduler(
            window=options.coalesce_window, merge=ContactUpsert.merged_with
        )
        self.parking = ParkingState(probe_interval=options.unauthorized_probe_interval)
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self._lane_tasks: dict[Hashable, asyncio.Task[None]] = {}
        self._lane_wakeups: dict[Hashable, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._side_work = 0  # produces in flight outside the scheduler (dead letters, profiles)
        self._active: set[Work[ContactUpsert, _Ticket]] = set()  # being delivered or parked
        self._active_shrank = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then drain, commit and close (see the class doc)."""
        feeds = (self._main, self._replay)
        for feed in feeds:
            await feed.source.start(_FeedListener(self, feed))
        background = [
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._progress_loop(), name="progress"),
            asyncio.create_task(self._release_loop(), name="parking-release"),
        ]
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
            await self._cancel_workers()
            for feed in feeds:
                await self._commit(feed)
                await feed.source.close()
            logger.info("engine stopped: %s", self.progress_line())

    async def _intake_loop(self, feed: _Feed, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        ingest = self._ingest if feed is self._main else self._ingest_parked
        while not stop.is_set():
            records = await feed.source.poll_batch(
                self._options.poll_batch, self._options.poll_timeout
            )
            if records:
                now = loop.time()
                wall = self._wall_clock()
                for record in records:
                    ingest(record, now, wall)
            await self._apply_backpressure(feed)

    async def _drain(self) -> None:
        """Wait, bounded, for buffered work to finish after intake stopped."""
        deadline = asyncio.get_running_loop().time() + self._options.drain_timeout
        while self.buffered:
            if asyncio.get_running_loop().time() >= deadline:
                logger.warning(
                    "drain timeout: %d buffered records left undone (they will be re-read)",
                    self.buffered,
                )
                return
            await asyncio.sleep(0.05)

    async def _cancel_workers(self) -> None:
        tasks = [*self._lane_tasks.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._lane_tasks.clear()

    # -- intake ---------------------------------------------------------------------------------

    def _ingest(self, record: Record, now: float, wall: float) -> None:
        partition = self._main.tracker.get(record.topic, record.partition)
        if partition is None:
            return  # revoked while the batch was in flight; the new owner reads it
        self.stats.consumed += 1
        self._metrics.consumed(record.topic)
        if not partition.admit(record.offset, record.size):
            self.stats.skipped_done += 1
            self._metrics.skipped(record.topic)
            return
        outcomes = self._mapper.map_record(
            value=record.value or b"",
            key=record.key,
            topic=record.topic,
            now=wall,
            # a record re-read after its partition came back is not a duplicate of itself
            origin=(record.topic, record.partition, record.offset),
        )
        writes = self._profile_log.take_writes() if self._profile_log is not None else []
        ticket = _Ticket(record, partition, len(outcomes) + len(writes))
        for user_key, profile in writes:
            self._spawn(self._persist_profile(ticket, user_key, profile))
        for outcome in outcomes:
            if isinstance(outcome, ContactUpsert):
                self._offer(outcome, ticket, now)
            elif isinstance(outcome, Drop):
                self.stats.dropped[outcome.reason] += 1
                self._metrics.dropped(outcome.reason)
                ticket.settle()
            else:
                self.stats.rejected[outcome.reason] += 1
                self._metrics.rejected(outcome.reason)
                failure = Failure(
                    reason=outcome.reason,
                    error=outcome.error,
                    integration_id=outcome.integration_id,
                )
                self._spawn(self._dead_letter_ticket(ticket, failure))

    def _ingest_parked(self, record: Record, now: float, wall: float) -> None:
        partition = self._replay.tracker.get(record.topic, record.partition)
        if partition is None or not partition.admit(record.offset, record.size):
            return
        upsert = decode_parked(record.value)
        ticket = _Ticket(record, partition, 1, replay=True)
        if upsert is None or upsert.integration_id not in self._integrations:
            error = "not a parked upsert" if upsert is None else "integration not configured"
            failure = Failure(reason="invalid_parked", error=error)
            self._spawn(self._dead_letter_ticket(ticket, failure))
            return
        self.stats.replayed += 1
        self._metrics.replayed(upsert.integration_id)
        # A key of its own: replayed upserts never fold into new ones (which park behind them
        # until the parking group has committed past the contact), so new events never wait
        # on a replay that keeps failing.
        self._offer(upsert, ticket, now, replay=True)

    def _offer(
        self, upsert: ContactUpsert, ticket: _Ticket, now: float, *, replay: bool = False
    ) -> None:
        key: _Key = (upsert.integration_id, upsert.contact_key, "replay" if replay else "")
        if self.scheduler.offer(key, upsert.location_id, upsert, ticket, now=now):
            self.stats.coalesced += 1
            self._metrics.coalesced(upsert.integration_id)
        self._wake(upsert.location_id)

    async def _dead_letter_ticket(self, ticket: _Ticket, failure: Failure) -> None:
        self._side_work += 1
        try:
            await self._dead_letter(ticket.record, failure)
            self._metrics.dead_lettered(failure.reason)
            ticket.settle()
        finally:
            self._side_work -= 1

    async def _persist_profile(self, ticket: _Ticket, user_key: str, profile: bytes) -> None:
        assert self._profile_log is not None
        self._side_work += 1
        try:
            await self._produce(self._profile_log.topic, user_key.encode(), profile, ())
            self._profile_log.written(user_key)
            ticket.settle()
        finally:
            self._side_work -= 1

    async def _dead_letter(self, record: Record, failure: Failure) -> None:
        """Produce ``record``'s dead-letter copy (see ``_produce``)."""
        letter = dead_letter(record, failure, now=self._wall_clock())
        await self._produce(self._dead_letter_topic, letter.key, letter.value, letter.headers)
        self.stats.dead_lettered += 1

    async def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> Produced:
        """Produce one record, retrying until the broker confirms: an offset whose dead letter,
        parking record or profile write is unconfirmed must not complete."""
        delay = self._options.retry_base
        while True:
            try:
                return await self._sink.produce(topic, key=key, value=value, headers=headers)
            except Exception:
                logger.exception("produce to %s failed; retrying in %.1fs", topic, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._options.retry_max)

    async def _apply_backpressure(self, feed: _Feed) -> None:
        options = self._options
        buffered, held = self.buffered, self.buffered_bytes
        pause_all = buffered >= options.max_buffered or held >= options.max_buffered_bytes
        resume_ok = (
            buffered <= options.max_buffered // 2 and held <= options.max_buffered_bytes // 2
        )
        to_pause: list[tuple[str, int]] = []
        to_resume: list[tuple[str, int]] = []
        for partition in feed.tracker.owned():
            tp = (partition.topic, partition.partition)
            full = partition.incomplete >= options.max_buffered_per_partition
            if tp not in feed.paused and (pause_all or full or partition.over_budget()):
                to_pause.append(tp)
            elif (
                tp in feed.paused
                and resume_ok
                and partition.incomplete <= options.max_buffered_per_partition // 2
                and partition.may_resume()
            ):
                to_resume.append(tp)
        if to_pause:
            await feed.source.pause(to_pause)
            feed.paused.update(to_pause)
            logger.debug("paused %s (buffered=%d, %d bytes)", to_pause, buffered, held)
        if to_resume:
            await feed.source.resume(to_resume)
            feed.paused.difference_update(to_resume)
            logger.debug("resumed %s (buffered=%d, %d bytes)", to_resume, buffered, held)

    # -- dispatch -------------------------------------------------------------------------------

    def _wake(self, lane: Hashable) -> None:
        wakeup = self._lane_wakeups.get(lane)
        if wakeup is None:
            wakeup = self._lane_wakeups[lane] = asyncio.Event()
        wakeup.set()
        if lane not in self._lane_tasks:
            self._lane_tasks[lane] = asyncio.create_task(self._lane_loop(lane), name=f"lane-{lane}")

    async def _lane_loop(self, lane: Hashable) -> None:
        """One location's dispatcher: takes ready work; parks it when its integration, location
        or contact parks; else waits for a rate permit and a global slot and delivers it. Exits
        when the lane is empty (``_wake`` restarts it)."""
        loop = asyncio.get_running_loop()
        wakeup = self._lane_wakeups[lane]
        location_id = str(lane)
        while True:
            ready_at = self.scheduler.next_ready_at(lane)
            if ready_at is None:
                del self._lane_tasks[lane]
                return
            delay = ready_at - loop.time()
            if delay > 0:
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wakeup.wait()
                continue
            head = self.scheduler.peek(lane)
            assert head is not None  # next_ready_at found it
            now = loop.time()
            if head.tokens[0].replay:  # replayed and new work never share a key
                held_until = self.parking.holding(
                    head.item.integration_id, head.item.location_id, now
                )
                if held_until is not None:  # wait for the probe or the budget, lane goes on
                    self.scheduler.retry(self._take(lane, head, now), at=held_until)
                    continue
            else:
                reason = self._park_reason(head, now)
                if reason is not None:
                    self._spawn(self._park(self._take(lane, head, now), reason))
                    continue
            asked = loop.time()
            try:
                permit = await self._limiter.acquire(location_id)
            except DailyBudgetExhausted as exhausted:
                self._daily_spent(location_id, exhausted.until)
                continue
            self._metrics.rate_wait(location_id, loop.time() - asked)
            await self._slots.acquire()
            work = self.scheduler.take(lane, now=loop.time())
            if work is None:
                permit.release(sent=False)
                self._slots.release()
                continue
            self._spawn(self._deliver(work, permit))

    def _take(
        self, lane: Hashable, head: Work[ContactUpsert, _Ticket], now: float
    ) -> Work[ContactUpsert, _Ticket]:
        work = self.scheduler.take(lane, now=now)
        assert work is head  # nothing ran between peek and take
        return work

    def _park_reason(self, work: Work[ContactUpsert, _Ticket], now: float) -> ParkReason | None:
        """Why new (not replayed) ``work`` goes to the parking topic now; None to deliver it."""
        upsert = work.item
        return self.parking.reason_to_park(
            integration_id=upsert.integration_id,
            location_id=upsert.location_id,
            key=(upsert.integration_id, upsert.contact_key),
            now=now,
        )

    def _daily_spent(self, location_id: str, until: float) -> None:
        self.parking.daily_spent(location_id, until)
        logger.warning(
            "location %s: daily budget spent; parking its events for %.0fs",
            location_id,
            until - asyncio.get_running_loop().time(),
        )

    # -- delivery -------------------------------------------------------------------------------

    async def _deliver(self, work: Work[ContactUpsert, _Ticket], permit: Permit) -> None:
        """Send one work, act on the answer, release the slot. Never raises."""
        loop = asyncio.get_running_loop()
        upsert = work.item
        token = self._integrations[upsert.integration_id].access_token.reveal()
        self._active.add(work)
        try:
            payload = upsert.payload()
            with permit:
                answer = await self._sender.upsert(token=token, payload=payload)
            self._observe(work, Endpoint.UPSERT, payload, answer)
            if answer.verdict is Verdict.DELIVERED:
                self._check_answer(upsert, payload, answer)
            if answer.verdict is Verdict.DELIVERED and upsert.tags_to_add():
                answer = await self._add_tags(work, token, answer)
            await self._settle(work, answer, loop.time())
        except Exception:  # a bug must not strand the key in flight forever
            logger.exception("delivery failed unexpectedly; retrying")
            if not self._drop_revoked(work):
                self.scheduler.retry(work, at=loop.time() + self._backoff(work.attempts))
        finally:
            self._finished(work)
            self._slots.release()
            self._wake(upsert.location_id)

    def _check_answer(
        self, upsert: ContactUpsert, payload: Mapping[str, object], answer: Answer
    ) -> None:
        """Count and log the fields HighLevel's answer shows it silently did not apply."""
        ignored = ignored_fields(payload, answer.contact)
        for name in ignored:
            self.stats.ignored_fields[name] += 1
            self._metrics.ignored_field(upsert.integration_id, name)
        if ignored:
            logger.info(
                "integration %s: HighLevel did not apply %s (traceId %s)",
                upsert.integration_id,
                ", ".join(ignored),
                answer.trace_id,
            )

    async def _add_tags(
        self, work: Work[ContactUpsert, _Ticket], token: str, upserted: Answer
    ) -> Answer:
        upsert = work.item
        contact = upserted.contact
        contact_id = contact.get("id") if contact is not None else None
        if not isinstance(contact_id, str):
            return upserted  # nothing to tag; the upsert itself succeeded
        body = {"tags": list(upsert.tags_to_add())}
        try:
            permit = await self._limiter.acquire(upsert.location_id)
        except DailyBudgetExhausted as exhausted:
            self._daily_spent(upsert.location_id, exhausted.until)
            # Retried (then parked): the upsert is sent again with its tags; upserts repeat.
            return Answer(verdict=Verdict.RETRY, status=None, latency_s=0.0, error="daily budget")
        with permit:
            answer = await self._sender.add_tags(
                token=token, contact_id=contact_id, tags=upsert.tags_to_add()
            )
        self._observe(work, Endpoint.ADD_TAGS, body, answer)
        return answer

    def _observe(
        self,
        work: Work[ContactUpsert, _Ticket],
        endpoint: Endpoint,
        payload: Mapping[str, object],
        answer: Answer,
    ) -> None:
        """Account for one HighLevel answer: counters, metrics, the limiter, the debugger."""
        upsert = work.item
        self.stats.http_calls += 1
        self._metrics.http(upsert.integration_id, endpoint, answer)
        if answer.status is not None:
            self._limiter.observe(
                upsert.location_id, status=answer.status, headers=answer.headers
            )
        self._debugger.record(
            integration=upsert.integration_id,
            location_id=upsert.location_id,
            endpoint=endpoint,
            events=upsert.events,
            contact_key=upsert.contact_key,
            payload=payload,
            answer=answer,
            attempts=work.attempts + 1,
            now=self._wall_clock(),
        )

    async def _settle(
        self, work: Work[ContactUpsert, _Ticket], answer: Answer, now: float
    ) -> None:
        integration_id = work.item.integration_id
        verdict = answer.verdict
        if verdict is Verdict.DELIVERED:
            if self.parking.healthy(integration_id):
                logger.warning("integration %s: HighLevel accepts its token again", integration_id)
            self.stats.delivered_calls += 1
            self.stats.delivered_events += len(work.tokens)
            self._complete(work)
        elif verdict is Verdict.REJECTED:
            failure = Failure(
                reason=REJECTED_BY_HIGHLEVEL,
                error=f"HighLevel answered {answer.status}",
                integration_id=integration_id,
                status=answer.status,
                message=answer.message,
                trace_id=answer.trace_id,
            )
            for ticket in work.tokens:
                await self._dead_letter(ticket.record, failure)
            self._metrics.dead_lettered(REJECTED_BY_HIGHLEVEL, len(work.tokens))
            self._complete(work)
        elif verdict is Verdict.UNAUTHORIZED:
            if self.parking.unauthorized(integration_id, now):
                logger.error(
                    "integration %s: HighLevel answered %s (%s); parking its events, "
                    "probing every %.0fs",
                    integration_id,
                    answer.status,
                    answer.message,
                    self._options.unauthorized_probe_interval,
                )
            await self._retry_or_park(work, answer, now, ParkReason.UNAUTHORIZED)
        elif verdict is Verdict.RATE_LIMITED:
            # The limiter pauses the location (or, daily budget spent, raises on acquire).
            await self._retry_or_park(work, answer, now, None)
        else:
            failing_for = now - (work.first_taken_at or now)
            reason = ParkReason.RETRY_EXHAUSTED if failing_for >= self._options.max_retry else None
            await self._retry_or_park(work, answer, now, reason)

    async def _retry_or_park(
        self,
        work: Work[ContactUpsert, _Ticket],
        answer: Answer,
        now: float,
        park: ParkReason | None,
    ) -> None:
        """Park ``work`` for ``park`` (None: retry it). Replayed work is never parked: it waits
        for the integration's next probe, or retries with backoff. Work of partitions revoked
        meanwhile is dropped: their new owner sends it, and a late re-send from here could set
        a contact back to an older state."""
        if self._drop_revoked(work):
            return
        if park is not None and not work.tokens[0].replay:
            await self._park(work, park)
            return
        self.stats.retries += 1
        self._metrics.retry(work.item.integration_id, answer)
        if answer.verdict is Verdict.RATE_LIMITED:
            at = now
        elif answer.verdict is Verdict.UNAUTHORIZED:
            at = now + self._options.unauthorized_probe_interval
        else:
            at = now + self._backoff(work.attempts)
        self.scheduler.retry(work, at=at)

    async def _park(self, work: Work[ContactUpsert, _Ticket], reason: ParkReason) -> None:
        """Write ``work`` to the parking topic, then complete its offsets. The contact parks
        its newer work until this record is replayed."""
        if self._drop_revoked(work):
            return
        upsert = work.item
        key, value, headers = encode_parked(upsert, [t.record for t in work.tokens], reason)
        self._side_work += 1
        self._active.add(work)
        try:
            landed = await self._produce(self._parking_log.topic, key, value, headers)
        finally:
            self._side_work -= 1
            self._finished(work)
        key_of_contact = (upsert.integration_id, upsert.contact_key)
        self.parking.parked(key_of_contact, landed.partition, landed.offset)
        self.stats.parked[reason] += len(work.tokens)
        self._metrics.parked(upsert.integration_id, reason, len(work.tokens))
        self._complete(work)
        self._wake(upsert.location_id)

    def _complete(self, work: Work[ContactUpsert, _Ticket]) -> None:
        self.scheduler.complete(work)
        for ticket in work.tokens:
            ticket.settle()

    def _finished(self, work: Work[ContactUpsert, _Ticket]) -> None:
        self._active.discard(work)
        self._active_shrank.set()

    def _drop_revoked(self, work: Work[ContactUpsert, _Ticket]) -> bool:
        """Remove tokens of revoked partitions from in-flight ``work``; when none is left,
        finish the work without sending it and return True."""
        kept = [ticket for ticket in work.tokens if not ticket.partition.revoked]
        if len(kept) == len(work.tokens):
            return False
        work.tokens = kept
        if kept:
            return False
        self.scheduler.complete(work)
        return True

    def _backoff(self, attempts: int) -> float:
        """Exponential backoff with full jitter around the nominal delay (x0.5 .. x1.5)."""
        nominal = min(self._options.retry_max, self._options.retry_base * 2.0**attempts)
        return nominal * (0.5 + self._rng.random())

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release_loop(self) -> None:
        """Release contacts whose parked upserts the parking group has replayed."""
        while True:
            await asyncio.sleep(self._options.parking_check_interval)
            partitions = sorted(self.parking.parked_partitions)
            if not partitions:
                continue
            try:
                committed = await self._parking_log.committed(partitions)
            except Exception:
                logger.exception("reading the parking group's offsets failed; will retry")
                continue
            for integration_id, _ in self.parking.replayed(committed):
                self._wake(self._integrations[integration_id].location_id)

    # -- offsets --------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._options.commit_interval)
            for feed in (self._main, self._replay):
                await self._commit(feed)

    async def _commit(self, feed: _Feed, only: Sequence[tuple[str, int]] | None = None) -> None:
        points = feed.tracker.commit_points(only)
        if not points:
            return
        try:
            await feed.source.commit(points)
        except Exception as exc:  # noqa: BLE001 - any commit failure is retried next tick
            logger.warning("%s commit failed, will retry: %s", feed.name, exc)
            return
        feed.tracker.mark_committed(points)

    # -- rebalance (called by the sources on the event loop) ------------------------------------

    async def _assigned(self, feed: _Feed, partitions: Sequence[Assignment]) -> None:
        if feed is self._main and partitions:
            # Before any record of the new partitions, learn what their previous owner (another
            # instance, or this one before a restart) left: the profiles it wrote, and the
            # contacts with upserts waiting in the parking topic (their newer work parks too).
            if self._profile_log is not None:
                await self._profile_log.restore()
            await self._load_parked()
        for a in partitions:
            feed.tracker.assign(a.topic, a.partition, committed=a.committed, metadata=a.metadata)
        self._metrics.rebalance(RebalanceKind.ASSIGNED)
        logger.info("%s: assigned %s", feed.name, [(a.topic, a.partition) for a in partitions])

    async def _load_parked(self) -> None:
        for record in await self._parking_log.unreplayed():
            upsert = decode_parked(record.value)
            if upsert is not None:
                key = (upsert.integration_id, upsert.contact_key)
                self.parking.parked(key, record.partition, record.offset)

    async def _revoked(self, feed: _Feed, partitions: Sequence[tuple[str, int]]) -> None:
        # Work of these partitions already sent (or being parked) finishes first, bounded by
        # ``revoke_wait``: otherwise a slow answer, or its retry, could land after the new
        # owner's newer upsert. Its completions then make it into the final commit.
        leaving = {id(p) for tp in partitions if (p := feed.tracker.get(*tp)) is not None}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._options.revoke_wait):
                while any(
                    id(ticket.partition) in leaving
                    for work in self._active
                    for ticket in work.tokens
                ):
                    self._active_shrank.clear()
                    await self._active_shrank.wait()
        await self._commit(feed, only=partitions)
        self._forget(feed, partitions)
        self._metrics.rebalance(RebalanceKind.REVOKED)
        logger.info("%s: revoked %s", feed.name, list(partitions))

    def _lost(self, feed: _Feed, partitions: Sequence[tuple[str, int]]) -> None:
        self._forget(feed, partitions)
        self._metrics.rebalance(RebalanceKind.LOST)
        logger.warning("%s: lost %s (no commit possible)", feed.name, list(partitions))

    def _forget(self, feed: _Feed, partitions: Sequence[tuple[str, int]]) -> None:
        for topic, partition in partitions:
            feed.tracker.revoke(topic, partition)
            feed.paused.discard((topic, partition))
        self.scheduler.discard(lambda ticket: not ticket.partition.revoked)

    # -- state for metrics and readiness --------------------------------------------------------

    @property
    def paused_partitions(self) -> int:
        """Partitions (of the event topics) paused by backpressure now."""
        return len(self._main.paused)

    @property
    def unhealthy(self) -> frozenset[str]:
        """Integration ids whose last answer was 401/403 (their events park)."""
        return self.parking.unhealthy

    @property
    def buffered(self) -> int:
        """Records admitted and not done: in the scheduler or being produced elsewhere."""
        return self.scheduler.tokens + self._side_work

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the records admitted and not done, on both feeds."""
        return sum(
            partition.incomplete_bytes
            for feed in (self._main, self._replay)
            for partition in feed.tracker.owned()
        )

    # -- progress -------------------------------------------------------------------------------

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
            f"buffered={self.scheduler.tokens} in_flight={self.scheduler.in_flight} "
            f"paused={len(self._main.paused)}"
        )
