"""The streaming engine: Kafka records in, HighLevel upserts out, offsets committed after.

Flow per record (DESIGN.md section 1), all on the event loop thread:

1. ``admit``: the partition's ``PartitionOffsets`` says whether the record still needs work
   (a restored offset map may say it was delivered before a restart).
2. ``map``: ``Mapper.map_record`` gives one outcome per routed integration. Drops complete at
   once; rejects go to the dead-letter topic; upserts go to the ``KeyedScheduler`` under the key
   (integration, contact) in the lane of their location, where they coalesce.
3. ``deliver``: one worker task per lane takes ready work when the location's rate limiter
   grants a permit and a global in-flight slot is free, then sends it. The answer decides
   (``consumer.delivery``): completed, retried with backoff, held while unauthorized, or
   dead-lettered.
4. ``complete``: a record is done when every outcome of it is done; its offset completes.
5. ``commit``: on a timer, on revoke and at shutdown, each owned partition commits its
   contiguous done offset plus the offset map of done offsets above it.

Backpressure: a partition pauses when its admitted-but-unfinished records reach
``max_buffered_per_partition`` or its offset map nears the metadata budget; every partition
pauses when all buffered records reach ``max_buffered``; they resume at half.

Revocation: partitions are committed inside ``on_revoked`` (before they move), then revoked in
the tracker, whose guard ignores late completions; their not-yet-sent work is discarded (the
new owner re-reads it). Work already in flight finishes: at most a duplicate upsert, which
HighLevel's upsert absorbs.

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
from typing import Protocol

from consumer.config import Integration
from consumer.deadletter import REJECTED_BY_HIGHLEVEL, Failure, dead_letter_headers
from consumer.debugger import Debugger
from consumer.delivery import Answer, Verdict
from consumer.events import ContactUpsert, Drop, Record, Reject
from consumer.mapping import Mapper
from consumer.metrics import Endpoint, Metrics, RebalanceKind
from consumer.offsets import Assignment, CommitPoint, OffsetTracker, PartitionOffsets
from consumer.ratelimit import DailyBudgetExhausted, Permit
from consumer.scheduler import KeyedScheduler, Work

logger = logging.getLogger(__name__)


# -- seams ---------------------------------------------------------------------------------------


class Source(Protocol):
    """The consumer-group side of Kafka (``consumer.kafka.KafkaSource``; tests use a fake)."""

    async def start(self, listener: RebalanceListener) -> None: ...

    async def poll_batch(self, max_records: int, timeout_s: float) -> list[Record]: ...

    async def pause(self, partitions: Sequence[tuple[str, int]]) -> None: ...

    async def resume(self, partitions: Sequence[tuple[str, int]]) -> None: ...

    async def commit(self, points: Sequence[CommitPoint]) -> None:
        """Commit synchronously (in a worker thread); raise on failure."""
        ...

    async def close(self) -> None: ...


class RebalanceListener(Protocol):
    async def on_assigned(self, partitions: Sequence[Assignment]) -> None: ...

    async def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None: ...

    async def on_lost(self, partitions: Sequence[tuple[str, int]]) -> None: ...


class Sink(Protocol):
    """Produces to the dead-letter (and parking) topics; returns once the broker confirmed."""

    async def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None: ...


class Sender(Protocol):
    """HighLevel's API (``consumer.delivery.HighLevelClient``)."""

    async def upsert(self, *, token: str, payload: Mapping[str, object]) -> Answer: ...

    async def add_tags(self, *, token: str, contact_id: str, tags: Sequence[str]) -> Answer: ...


class ProfileLog(Protocol):
    """Makes the mapper's profile store durable (``consumer.changelog.ProfileChangelog``)."""

    topic: str

    def take_writes(self) -> list[tuple[str, bytes]]:
        """Profile changes made by the last ``map_record`` call, as (key, value) records."""
        ...

    def written(self, key: str) -> None:
        """The broker confirmed one of those writes."""
        ...

    async def restore(self) -> None:
        """Read the changelog into the store (called on every assignment)."""
        ...


class Limiter(Protocol):
    """Per-location rate budgets (``consumer.ratelimit.RateLimiter``)."""

    async def acquire(self, location_id: str) -> Permit: ...

    def observe(self, location_id: str, *, status: int, headers: Mapping[str, str]) -> None: ...


# -- settings and statistics ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    """Tuning of the engine; every time is in seconds."""

    coalesce_window: float = 0.25
    max_in_flight: int = 64
    max_buffered: int = 20_000
    max_buffered_per_partition: int = 5_000
    poll_batch: int = 500
    poll_timeout: float = 0.1
    commit_interval: float = 1.0
    drain_timeout: float = 10.0
    progress_interval: float = 10.0
    retry_base: float = 0.5
    retry_max: float = 30.0
    unauthorized_probe_interval: float = 30.0


@dataclass(slots=True)
class EngineStats:
    """Counters since start; the progress line, the demo and the metrics read them."""

    consumed: int = 0
    skipped_done: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    upserts_offered: int = 0
    coalesced: int = 0
    http_calls: int = 0
    delivered_calls: int = 0
    delivered_events: int = 0
    retries: int = 0
    dead_lettered: int = 0
    answers: Counter[str] = field(default_factory=Counter)


# -- the engine ----------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Ticket:
    """One admitted record and how many of its outcomes are still open."""

    record: Record
    partition: PartitionOffsets
    open_parts: int

    def settle(self) -> None:
        self.open_parts -= 1
        if self.open_parts == 0:
            self.partition.complete(self.record.offset)


_Key = tuple[str, str]  # (integration id, contact key)


class Engine:
    """One consumer-group member's processing. Build it, then ``await run(stop)``.

    ``run`` returns after ``stop`` is set and the engine has drained (bounded by
    ``drain_timeout``), committed and closed the source. Raises only for programming errors;
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
        metrics: Metrics,
        debugger: Debugger,
        profile_log: ProfileLog | None = None,
        options: EngineOptions = EngineOptions(),
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._sink = sink
        self._mapper = mapper
        self._limiter = limiter
        self._sender = sender
        self._integrations = {i.id: i for i in integrations}
        self._dead_letter_topic = dead_letter_topic
        self._metrics = metrics
        self._debugger = debugger
        self._profile_log = profile_log
        self._options = options
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock
        self.stats = EngineStats()
        self.tracker = OffsetTracker()
        self.scheduler: KeyedScheduler[ContactUpsert, _Ticket] = KeyedScheduler(
            window=options.coalesce_window, merge=ContactUpsert.merged_with
        )
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self._lane_tasks: dict[Hashable, asyncio.Task[None]] = {}
        self._lane_wakeups: dict[Hashable, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._side_work = 0  # dead-letter produces in flight (outside the scheduler)
        self._paused: set[tuple[str, int]] = set()
        self._unauthorized: set[str] = set()  # integration ids answering 401/403
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then drain, commit and close (see the class doc)."""
        await self._source.start(self)
        background = [
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._progress_loop(), name="progress"),
        ]
        intake = asyncio.create_task(self._intake_loop(stop), name="intake")
        try:
            await intake
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._cancel_workers()
            await self._commit()
            await self._source.close()
            logger.info("engine stopped: %s", self.progress_line())

    async def _intake_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            records = await self._source.poll_batch(
                self._options.poll_batch, self._options.poll_timeout
            )
            if records:
                now = loop.time()
                wall = self._wall_clock()
                for record in records:
                    self._ingest(record, now, wall)
            await self._apply_backpressure()
        self._stopping = True

    async def _drain(self) -> None:
        """Wait, bounded, for buffered work to finish after intake stopped."""
        deadline = asyncio.get_running_loop().time() + self._options.drain_timeout
        while self.scheduler.tokens or self._side_work:
            if asyncio.get_running_loop().time() >= deadline:
                logger.warning(
                    "drain timeout: %d buffered records left undone (they will be re-read)",
                    self.scheduler.tokens + self._side_work,
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
        partition = self.tracker.get(record.topic, record.partition)
        if partition is None:
            return  # revoked while the batch was in flight; the new owner reads it
        self.stats.consumed += 1
        self._metrics.consumed(record.topic)
        if not partition.admit(record.offset):
            self.stats.skipped_done += 1
            self._metrics.skipped(record.topic)
            return
        outcomes = self._mapper.map_record(
            value=record.value or b"", key=record.key, topic=record.topic, now=wall
        )
        writes = self._profile_log.take_writes() if self._profile_log is not None else []
        ticket = _Ticket(record, partition, len(outcomes) + len(writes))
        for user_key, profile in writes:
            self._spawn(self._persist_profile(ticket, user_key, profile))
        for outcome in outcomes:
            if isinstance(outcome, ContactUpsert):
                key: _Key = (outcome.integration_id, outcome.contact_key)
                self.stats.upserts_offered += 1
                if self.scheduler.offer(key, outcome.location_id, outcome, ticket, now=now):
                    self.stats.coalesced += 1
                    self._metrics.coalesced(outcome.integration_id)
                self._wake(outcome.location_id)
            elif isinstance(outcome, Drop):
                self.stats.dropped[outcome.reason] += 1
                self._metrics.dropped(outcome.reason)
                ticket.settle()
            else:
                self.stats.rejected[outcome.reason] += 1
                self._metrics.rejected(outcome.reason)
                self._spawn(self._dead_letter_reject(ticket, outcome))

    async def _dead_letter_reject(self, ticket: _Ticket, reject: Reject) -> None:
        self._side_work += 1
        try:
            failure = Failure(
                reason=reject.reason, error=reject.error, integration_id=reject.integration_id
            )
            await self._dead_letter(ticket.record, failure)
            self._metrics.dead_lettered(reject.reason)
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
        headers = dead_letter_headers(record, failure, now=self._wall_clock())
        await self._produce(self._dead_letter_topic, record.key, record.value, headers)
        self.stats.dead_lettered += 1

    async def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        """Produce one record, retrying until the broker confirms: an offset whose dead letter
        or profile write is unconfirmed must not complete."""
        delay = self._options.retry_base
        while True:
            try:
                await self._sink.produce(topic, key=key, value=value, headers=headers)
            except Exception:
                logger.exception("produce to %s failed; retrying in %.1fs", topic, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._options.retry_max)
                continue
            return

    async def _apply_backpressure(self) -> None:
        options = self._options
        owned = self.tracker.owned()
        buffered = self.scheduler.tokens + self._side_work
        pause_all = buffered >= options.max_buffered
        resume_ok = buffered <= options.max_buffered // 2
        to_pause: list[tuple[str, int]] = []
        to_resume: list[tuple[str, int]] = []
        for partition in owned:
            tp = (partition.topic, partition.partition)
            full = partition.incomplete >= options.max_buffered_per_partition
            if tp not in self._paused and (pause_all or full or partition.over_budget()):
                to_pause.append(tp)
            elif (
                tp in self._paused
                and resume_ok
                and partition.incomplete <= options.max_buffered_per_partition // 2
                and partition.may_resume()
            ):
                to_resume.append(tp)
        if to_pause:
            await self._source.pause(to_pause)
            self._paused.update(to_pause)
            logger.debug("paused %s (buffered=%d)", to_pause, buffered)
        if to_resume:
            await self._source.resume(to_resume)
            self._paused.difference_update(to_resume)
            logger.debug("resumed %s (buffered=%d)", to_resume, buffered)

    # -- delivery -------------------------------------------------------------------------------

    def _wake(self, lane: Hashable) -> None:
        wakeup = self._lane_wakeups.get(lane)
        if wakeup is None:
            wakeup = self._lane_wakeups[lane] = asyncio.Event()
        wakeup.set()
        if lane not in self._lane_tasks:
            self._lane_tasks[lane] = asyncio.create_task(self._lane_loop(lane), name=f"lane-{lane}")

    async def _lane_loop(self, lane: Hashable) -> None:
        """One location's dispatcher: waits for ready work, a rate permit and a global slot,
        then starts its delivery. Exits when the lane is empty (``_wake`` restarts it)."""
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
            asked = loop.time()
            try:
                permit = await self._limiter.acquire(location_id)
                self._metrics.rate_wait(location_id, loop.time() - asked)
            except DailyBudgetExhausted as exhausted:
                wait = max(0.0, exhausted.until - loop.time())
                logger.warning(
                    "location %s: daily budget spent; holding its events for %.0fs",
                    location_id,
                    wait,
                )
                await asyncio.sleep(min(wait, self._options.unauthorized_probe_interval))
                continue
            await self._slots.acquire()
            work = self.scheduler.take(lane, now=loop.time())
            if work is None:
                permit.release(sent=False)
                self._slots.release()
                continue
            self._spawn(self._deliver(work, permit))

    async def _deliver(self, work: Work[ContactUpsert, _Ticket], permit: Permit) -> None:
        """Send one work, act on the answer, release the slot. Never raises."""
        loop = asyncio.get_running_loop()
        upsert = work.item
        integration = self._integrations[upsert.integration_id]
        token = integration.access_token.reveal()
        try:
            payload = upsert.payload()
            with permit:
                answer = await self._sender.upsert(token=token, payload=payload)
            self._observe(work, Endpoint.UPSERT, payload, answer)
            if answer.verdict is Verdict.DELIVERED and upsert.tags_to_add():
                answer = await self._add_tags(work, token, answer)
            await self._settle(work, answer, loop.time())
        finally:
            self._slots.release()
            self._wake(upsert.location_id)

    async def _add_tags(
        self, work: Work[ContactUpsert, _Ticket], token: str, upserted: Answer
    ) -> Answer:
        upsert = work.item
        contact = upserted.contact
        contact_id = contact.get("id") if contact is not None else None
        if not isinstance(contact_id, str):
            return upserted  # nothing to tag; the upsert itself succeeded
        body = {"tags": list(upsert.tags_to_add())}
        with await self._limiter.acquire(upsert.location_id):
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
        self.stats.answers[answer.verdict] += 1
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
            self._unauthorized.discard(integration_id)
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
        else:
            self.stats.retries += 1
            self._metrics.retry(integration_id, answer)
            if verdict is Verdict.RATE_LIMITED:
                at = now  # the limiter holds the location until its pause ends
            elif verdict is Verdict.UNAUTHORIZED:
                if integration_id not in self._unauthorized:
                    logger.error(
                        "integration %s: HighLevel answered %s (%s); holding its events and "
                        "probing every %.0fs",
                        integration_id,
                        answer.status,
                        answer.message,
                        self._options.unauthorized_probe_interval,
                    )
                self._unauthorized.add(integration_id)
                at = now + self._options.unauthorized_probe_interval
            else:
                at = now + self._backoff(work.attempts)
            self.scheduler.retry(work, at=at)

    def _complete(self, work: Work[ContactUpsert, _Ticket]) -> None:
        self.scheduler.complete(work)
        for ticket in work.tokens:
            ticket.settle()

    def _backoff(self, attempts: int) -> float:
        """Exponential backoff with full jitter around the nominal delay (x0.5 .. x1.5)."""
        nominal = min(self._options.retry_max, self._options.retry_base * 2.0**attempts)
        return nominal * (0.5 + self._rng.random())

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- offsets --------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._options.commit_interval)
            await self._commit()

    async def _commit(self, only: Sequence[tuple[str, int]] | None = None) -> None:
        points = self.tracker.commit_points(only)
        if not points:
            return
        try:
            await self._source.commit(points)
        except Exception:
            logger.exception("commit failed; will retry")
            return
        self.tracker.mark_committed(points)

    # -- rebalance (called by the source on the event loop) -------------------------------------

    async def on_assigned(self, partitions: Sequence[Assignment]) -> None:
        if self._profile_log is not None and partitions:
            # Before any record of the new partitions: profiles written by their previous
            # owner (another instance, or this one before a restart) must be known here.
            await self._profile_log.restore()
        for a in partitions:
            self.tracker.assign(a.topic, a.partition, committed=a.committed, metadata=a.metadata)
        self._metrics.rebalance(RebalanceKind.ASSIGNED)
        logger.info("assigned %s", [(a.topic, a.partition) for a in partitions])

    async def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        await self._commit(only=partitions)
        self._forget(partitions)
        self._metrics.rebalance(RebalanceKind.REVOKED)
        logger.info("revoked %s", list(partitions))

    async def on_lost(self, partitions: Sequence[tuple[str, int]]) -> None:
        self._forget(partitions)
        self._metrics.rebalance(RebalanceKind.LOST)
        logger.warning("lost %s (no commit possible)", list(partitions))

    def _forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        for topic, partition in partitions:
            self.tracker.revoke(topic, partition)
            self._paused.discard((topic, partition))
        self.scheduler.discard(lambda ticket: not ticket.partition.revoked)

    # -- state for metrics and readiness --------------------------------------------------------

    @property
    def paused_partitions(self) -> int:
        """Partitions paused by backpressure now."""
        return len(self._paused)

    @property
    def unhealthy(self) -> frozenset[str]:
        """Integration ids whose last answer was 401/403."""
        return frozenset(self._unauthorized)

    @property
    def buffered(self) -> int:
        """Records admitted and not done: in the scheduler or being dead-lettered."""
        return self.scheduler.tokens + self._side_work

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
            f"dead_lettered={s.dead_lettered} retries={s.retries} "
            f"buffered={self.scheduler.tokens} in_flight={self.scheduler.in_flight} "
            f"paused={len(self._paused)}"
        )
