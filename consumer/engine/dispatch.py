"""Dispatch: from the keyed scheduler to HighLevel, one lane per location, and what each answer
means for the work (``docs/architecture.md``, "Delivery verdicts and retries" and "Parking").

Flow of an upsert once the engine has offered it (steps 3 and 4 of ``consumer.engine.engine``):

3. ``deliver``: one worker task per lane takes ready work when the location's rate limiter
   grants a permit and a global in-flight slot is free, then sends it. The answer decides
   (``consumer.highlevel.verdicts``): completed, retried with backoff, parked, or dead-lettered.
   Besides one work per contact key, the scheduler never has two upserts in flight for one
   HighLevel identity (``upsert_identities``: the location with the email, with the phone):
   an anonymous and an identified key, or two integrations of one location, carrying the same
   new email would otherwise race, and HighLevel can create two contacts then. The second
   waits for the first, and usually matches the contact it created.
   HighLevel's refusal to lift a permanent DND (400, ``permanent_dnd_refusal``) is a
   field-level outcome: counted, logged, and the upsert sent again without ``dnd``.
4. ``complete``: a record is done when every outcome of it is done (``Ticket.settle``); its
   offset completes.

Parking (``consumer.engine.parking``): work of an integration answering 401/403 (once its token,
read anew from its source, is still the refused one: a rotated token is sent at once), of a location
whose daily budget is spent, or of a contact failing past ``max_retry``, goes to the parking
topic and its offsets complete, so the partitions move on. A second feed, a consumer group on
the parking topic, brings parked upserts back through the same scheduler; they are delivered
when the integration works again (one probe per ``unauthorized_probe_interval``) and never
parked twice. A contact with an upsert in the parking topic parks its newer work too, until
the parking group has committed past it (``run_releases`` watches for that).

Revocation: work of a revoked partition that is already being sent or parked finishes (the
engine waits for it with ``wait_for_in_flight``); if it fails after all it is dropped, never
retried: a late re-send could set a contact back to an older state after the new owner
delivered a newer one. Its not-yet-sent work is discarded (``forget_revoked``).

Everything runs on the event loop thread; not thread-safe. Near 600 lines: ``Dispatcher`` is
one work's whole path after the scheduler (lane, permit, send, DND resend, settle, retry, park),
and its state (works in flight, the parking state) is shared by every step of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass

from consumer.core.deadletter import REJECTED_BY_HIGHLEVEL, Failure
from consumer.core.events import ContactUpsert, Record
from consumer.core.normalise import mask_email, mask_phone
from consumer.engine.deliveries import DeliveryLog, DeliveryRecord, contact_digest
from consumer.engine.offsets import PartitionOffsets
from consumer.engine.outbox import Outbox
from consumer.engine.parking import ParkingState, ParkReason, decode_parked, encode_parked
from consumer.engine.ports import (
    Credentials,
    DeliveryRecorder,
    Endpoint,
    EngineMetrics,
    Limiter,
    ParkingLog,
    Sender,
)
from consumer.engine.scheduler import KeyedScheduler, Work
from consumer.engine.stats import EngineStats
from consumer.engine.tasks import TaskSet
from consumer.errors import (
    DailyBudgetExhausted,
    InstallationBroken,
    OAuthError,
    TokenStoreError,
)
from consumer.highlevel.verdicts import (
    DND_FIELDS,
    Answer,
    Verdict,
    ignored_fields,
    permanent_dnd_refusal,
)
from consumer.ratelimit.limiter import Permit

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Ticket:
    """One admitted record and how many of its outcomes are still open; its offset completes
    when the last one settles. ``replay``: the record comes from the parking topic (its work is
    never parked again)."""

    record: Record
    partition: PartitionOffsets
    open_parts: int
    replay: bool = False

    def settle(self) -> None:
        """One outcome of the record is done (delivered, dropped, dead-lettered, parked)."""
        self.open_parts -= 1
        if self.open_parts == 0:
            self.partition.complete(self.record.offset)


# (integration id, location id, contact key, "replay" or ""): an integration whose events
# choose their location (OAuth) reaches one user key in several locations, each its own contact
_Key = tuple[str, str, str, str]
_Work = Work[ContactUpsert, Ticket]


def upsert_identities(upsert: ContactUpsert) -> tuple[tuple[str, str, str], ...]:
    """The identities HighLevel may match (or create) ``upsert``'s contact by:
    ``(location, "email", email lowercased)`` and ``(location, "phone", phone)``, for those it
    carries. Two upserts sharing one are never in flight together (``KeyedScheduler``)."""
    fields, location = upsert.fields, upsert.location_id
    email, phone = fields.get("email"), fields.get("phone")
    if isinstance(email, str):
        by_email = (location, "email", email.strip().lower())
        return (by_email, (location, "phone", phone)) if isinstance(phone, str) else (by_email,)
    return ((location, "phone", phone),) if isinstance(phone, str) else ()


class Dispatcher:
    """Lanes, delivery, retries and parking decisions (see the module docstring).

    Lanes are locations (each upsert's own); ``credentials`` gives each request's token;
    ``delivery_log``, when given, gets a ``DeliveryRecord`` per call. Times are in seconds;
    ``rng`` jitters the backoff. The engine calls ``offer`` for every upsert, runs
    ``run_releases`` as a background task and ``close`` at shutdown. No method raises for a
    delivery failure: failures are outcomes.
    """

    def __init__(
        self,
        *,
        limiter: Limiter,
        sender: Sender,
        credentials: Credentials,
        parking_log: ParkingLog,
        outbox: Outbox,
        metrics: EngineMetrics,
        recorder: DeliveryRecorder,
        delivery_log: DeliveryLog | None = None,
        stats: EngineStats,
        coalesce_window: float,
        max_in_flight: int,
        retry_base: float,
        retry_max: float,
        max_retry: float,
        unauthorized_probe_interval: float,
        parking_check_interval: float,
        rng: random.Random,
        wall_clock: Callable[[], float],
    ) -> None:
        self._limiter = limiter
        self._sender = sender
        self._credentials = credentials
        self._parking_log = parking_log
        self._outbox = outbox
        self._metrics = metrics
        self._recorder = recorder
        self._delivery_log = delivery_log
        self._stats = stats
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._max_retry = max_retry
        self._probe_interval = unauthorized_probe_interval
        self._parking_check_interval = parking_check_interval
        self._rng = rng
        self._wall_clock = wall_clock
        self._scheduler: KeyedScheduler[ContactUpsert, Ticket] = KeyedScheduler(
            window=coalesce_window, merge=ContactUpsert.merged_with, identities=upsert_identities
        )
        self._parking_state = ParkingState(probe_interval=unauthorized_probe_interval)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._lane_tasks: dict[Hashable, asyncio.Task[None]] = {}
        self._lane_wakeups: dict[Hashable, asyncio.Event] = {}
        self._tasks = TaskSet()
        self._active: set[_Work] = set()  # being delivered or parked
        self._active_shrank = asyncio.Event()

    # -- what the engine reads ------------------------------------------------------------------

    @property
    def tickets(self) -> int:
        """Tickets in the scheduler, pending or in flight."""
        return self._scheduler.tickets

    @property
    def in_flight(self) -> int:
        """Works handed out for delivery and not finished."""
        return self._scheduler.in_flight

    @property
    def unhealthy(self) -> frozenset[str]:
        """Integration ids whose last answer was 401/403 (their events park)."""
        return self._parking_state.unhealthy

    # -- intake ---------------------------------------------------------------------------------

    def offer(
        self, upsert: ContactUpsert, ticket: Ticket, now: float, *, replay: bool = False
    ) -> None:
        """Queue ``upsert`` (one outcome of ``ticket``'s record) in its location's lane; it
        folds into pending work of its contact. Replayed upserts get a key of their own: they
        never fold into new ones (which park behind them until the parking group has committed
        past the contact), so new events never wait on a replay that keeps failing."""
        key: _Key = (
            upsert.integration_id,
            upsert.location_id,
            upsert.contact_key,
            "replay" if replay else "",
        )
        if self._scheduler.offer(key, upsert.location_id, upsert, ticket, now=now):
            self._stats.coalesced += 1
            self._metrics.coalesced(upsert.integration_id)
        self._wake(upsert.location_id)

    # -- revocation -----------------------------------------------------------------------------

    async def wait_for_in_flight(self, partitions: Collection[PartitionOffsets]) -> None:
        """Return once no work with a ticket of ``partitions`` is being delivered or parked
        (the caller bounds the wait)."""
        leaving = {id(p) for p in partitions}
        while any(
            id(ticket.partition) in leaving for work in self._active for ticket in work.tickets
        ):
            self._active_shrank.clear()
            await self._active_shrank.wait()

    def forget_revoked(self) -> None:
        """Drop waiting work of revoked partitions (their new owner re-reads it)."""
        self._scheduler.discard(lambda ticket: not ticket.partition.revoked)

    # -- parking state --------------------------------------------------------------------------

    async def load_parked(self) -> None:
        """Learn the contacts with upserts waiting in the parking topic (read from the parking
        group's committed offsets to the end): their newer work parks too."""
        for record in await self._parking_log.unreplayed():
            upsert = decode_parked(record.value)
            if upsert is not None:
                key = (upsert.integration_id, upsert.contact_key)
                self._parking_state.parked(key, record.partition, record.offset)

    async def run_releases(self) -> None:
        """Every ``parking_check_interval``: release contacts whose parked upserts the parking
        group has replayed. Runs until cancelled; a failed read is logged and retried."""
        while True:
            await asyncio.sleep(self._parking_check_interval)
            partitions = sorted(self._parking_state.parked_partitions)
            if not partitions:
                continue
            try:
                committed = await self._parking_log.committed(partitions)
            except Exception:
                logger.exception("reading the parking group's offsets failed; will retry")
                continue
            if self._parking_state.replayed(committed):
                for lane in list(self._lane_wakeups):  # rare: the released contacts' lanes
                    self._wake(lane)

    # -- lanes ----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Cancel every lane and every delivery or park in flight; their work stays undone."""
        lanes = list(self._lane_tasks.values())
        for task in lanes:
            task.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        await self._tasks.cancel_all()
        self._lane_tasks.clear()

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
            ready_at = self._scheduler.next_ready_at(lane)
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
            head = self._scheduler.peek(lane)
            assert head is not None  # next_ready_at found it
            now = loop.time()
            if head.tickets[0].replay:  # replayed and new work never share a key
                held_until = self._parking_state.holding(
                    head.item.integration_id, head.item.location_id, now
                )
                if held_until is not None:  # wait for the probe or the budget, lane goes on
                    self._scheduler.retry(self._take(lane, head, now), at=held_until)
                    continue
            else:
                reason = self._park_reason(head, now)
                if reason is not None:
                    self._tasks.spawn(self._park(self._take(lane, head, now), reason))
                    continue
            asked = loop.time()
            try:
                permit = await self._limiter.acquire(location_id)
            except DailyBudgetExhausted as exhausted:
                self._daily_spent(location_id, exhausted.until)
                continue
            self._metrics.rate_wait(location_id, loop.time() - asked)
            await self._slots.acquire()
            work = self._scheduler.take(lane, now=loop.time())
            if work is None:
                permit.release(sent=False)
                self._slots.release()
                continue
            self._tasks.spawn(self._deliver(work, permit))

    def _take(self, lane: Hashable, head: _Work, now: float) -> _Work:
        work = self._scheduler.take(lane, now=now)
        assert work is head  # nothing ran between peek and take
        return work

    def _park_reason(self, work: _Work, now: float) -> ParkReason | None:
        """Why new (not replayed) ``work`` goes to the parking topic now; None to deliver it."""
        upsert = work.item
        return self._parking_state.reason_to_park(
            integration_id=upsert.integration_id,
            location_id=upsert.location_id,
            key=(upsert.integration_id, upsert.contact_key),
            now=now,
        )

    def _daily_spent(self, location_id: str, until: float) -> None:
        self._parking_state.daily_spent(location_id, until)
        logger.warning(
            "location %s: daily budget spent; parking its events for %.0fs",
            location_id,
            until - asyncio.get_running_loop().time(),
        )

    # -- delivery -------------------------------------------------------------------------------

    async def _deliver(self, work: _Work, permit: Permit) -> None:
        """Send one work, act on the answer, release the slot. Never raises."""
        loop = asyncio.get_running_loop()
        upsert = work.item
        self._active.add(work)
        try:
            try:
                token = await self._credentials.token(upsert.integration_id, upsert.location_id)
            except (InstallationBroken, OAuthError, TokenStoreError) as failure:
                permit.release(sent=False)
                await self._without_token(work, failure, loop.time())
                return
            payload = upsert.payload()
            with permit:
                answer = await self._sender.upsert(token=token, payload=payload)
            self._observe(work, Endpoint.UPSERT, payload, answer)
            channel = permanent_dnd_refusal(answer)
            if channel is not None and not DND_FIELDS.isdisjoint(payload):
                payload, answer = await self._without_dnd(work, token, payload, channel)
            if answer.verdict is Verdict.DELIVERED:
                self._check_answer(upsert, payload, answer)
            if answer.verdict is Verdict.DELIVERED and upsert.tags_to_add():
                answer = await self._add_tags(work, token, answer)
            await self._settle(work, answer, loop.time(), token)
        except Exception:  # a bug must not strand the key in flight forever
            logger.exception("delivery failed unexpectedly; retrying")
            if not self._drop_revoked(work):
                self._scheduler.retry(work, at=loop.time() + self._backoff(work.attempts))
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
            self._stats.ignored_fields[name] += 1
            self._metrics.ignored_field(upsert.integration_id, name)
        if ignored:
            logger.info(
                "integration %s: HighLevel did not apply %s (traceId %s)",
                upsert.integration_id,
                ", ".join(ignored),
                answer.trace_id,
            )

    async def _without_dnd(
        self, work: _Work, token: str, payload: Mapping[str, object], channel: str
    ) -> tuple[dict[str, object], Answer]:
        """HighLevel refused ``payload`` because the contact's ``channel`` DND is permanent:
        count and log it (contact masked), and send the same upsert without ``dnd`` and
        ``dndSettings``. Returns that payload and the answer that decides the work."""
        upsert = work.item
        self._stats.permanent_dnd_kept += 1
        self._metrics.permanent_dnd_kept(upsert.integration_id, channel)
        email, phone = upsert.fields.get("email"), upsert.fields.get("phone")
        contact = (
            mask_email(email)
            if isinstance(email, str)
            else mask_phone(phone) if isinstance(phone, str) else "(no email or phone)"
        )
        logger.warning(
            "integration %s: HighLevel keeps the permanent %s DND of contact %s; sending the "
            "update again without dnd",
            upsert.integration_id,
            channel,
            contact,
        )
        without = {name: value for name, value in payload.items() if name not in DND_FIELDS}
        try:
            permit = await self._limiter.acquire(upsert.location_id)
        except DailyBudgetExhausted as exhausted:
            self._daily_spent(upsert.location_id, exhausted.until)
            # Retried (then parked): the next attempt meets the same refusal and resends.
            return without, Answer(
                verdict=Verdict.RETRY, status=None, latency_s=0.0, error="daily budget"
            )
        with permit:
            answer = await self._sender.upsert(token=token, payload=without)
        self._observe(work, Endpoint.UPSERT, without, answer)
        return without, answer

    async def _add_tags(self, work: _Work, token: str, upserted: Answer) -> Answer:
        """Add the upsert's tags to the contact HighLevel answered with; the answer that
        decides the work (the upsert's own when there is no contact id to tag)."""
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
        self, work: _Work, endpoint: Endpoint, payload: Mapping[str, object], answer: Answer
    ) -> None:
        """Account for one HighLevel answer: counters, metrics, the limiter, the recorder."""
        upsert = work.item
        self._stats.http_calls += 1
        self._metrics.http(upsert.integration_id, endpoint, answer)
        if answer.status is not None:
            self._limiter.observe(
                upsert.location_id, status=answer.status, headers=answer.headers
            )
        now = self._wall_clock()
        if self._delivery_log is not None:
            contact = answer.contact
            contact_id = contact.get("id") if contact is not None else None
            self._delivery_log.add(
                DeliveryRecord(
                    time=now,
                    integration=upsert.integration_id,
                    location=upsert.location_id,
                    endpoint=endpoint.value,
                    status=answer.status,
                    verdict=answer.verdict.value,
                    trace_id=answer.trace_id,
                    latency_ms=answer.latency_s * 1000,
                    attempt=work.attempts + 1,
                    contact=contact_digest(upsert.contact_key),
                    sources=tuple(
                        (t.record.topic, t.record.partition, t.record.offset)
                        for t in work.tickets
                    ),
                    contact_id=contact_id if isinstance(contact_id, str) else None,
                )
            )
        self._recorder.record(
            integration=upsert.integration_id,
            location_id=upsert.location_id,
            endpoint=endpoint,
            events=upsert.events,
            contact_key=upsert.contact_key,
            payload=payload,
            answer=answer,
            attempts=work.attempts + 1,
            now=now,
            omitted=upsert.omitted,
            message_ids=upsert.message_ids,
            sources=[ticket.record for ticket in work.tickets],
        )

    # -- outcomes -------------------------------------------------------------------------------

    async def _without_token(
        self, work: _Work, failure: InstallationBroken | OAuthError | TokenStoreError, now: float
    ) -> None:
        """No token to send ``work`` with: a broken OAuth installation parks the integration's
        events (probed as after a 401); HighLevel refusing to mint one (not retriable) rejects
        the work; a failure that may pass (Redis, HighLevel's OAuth endpoints) retries it."""
        integration_id = work.item.integration_id
        if isinstance(failure, InstallationBroken):
            if self._parking_state.unauthorized(
                integration_id, now, ParkReason.INSTALLATION_BROKEN
            ):
                logger.error(
                    "integration %s: %s; parking its events, probing every %.0fs",
                    integration_id,
                    failure,
                    self._probe_interval,
                )
            answer = Answer(verdict=Verdict.UNAUTHORIZED, status=None, latency_s=0.0)
            await self._retry_or_park(work, answer, now, ParkReason.INSTALLATION_BROKEN)
            return
        if isinstance(failure, OAuthError) and not failure.retriable:
            answer = Answer(
                verdict=Verdict.REJECTED, status=failure.status, latency_s=0.0, message=str(failure)
            )
        else:
            logger.warning("integration %s: no token yet: %s", integration_id, failure)
            answer = Answer(verdict=Verdict.RETRY, status=None, latency_s=0.0, error="no token")
        await self._settle(work, answer, now, "")

    async def _settle(self, work: _Work, answer: Answer, now: float, token: str) -> None:
        """Act on the answer that decides ``work`` (sent with ``token``): complete,
        dead-letter, retry or park."""
        integration_id = work.item.integration_id
        verdict = answer.verdict
        if verdict is Verdict.DELIVERED:
            if self._parking_state.healthy(integration_id):
                logger.warning("integration %s: HighLevel accepts its token again", integration_id)
            self._stats.delivered_calls += 1
            self._stats.delivered_events += len(work.tickets)
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
            for ticket in work.tickets:
                await self._outbox.dead_letter(ticket.record, failure)
                self._stats.dead_lettered += 1
                self._recorder.dead_lettered(ticket.record, failure, self._wall_clock())
            self._metrics.dead_lettered(REJECTED_BY_HIGHLEVEL, len(work.tickets))
            self._complete(work)
        elif verdict is Verdict.UNAUTHORIZED and await self._reread(work, token) != token:
            # A rotated token (e.g. its Secret file changed), another OAuth location token:
            # sent again with it, nothing parks.
            logger.warning(
                "integration %s: HighLevel refused its token; sending again with the token "
                "read anew",
                integration_id,
            )
            if not self._drop_revoked(work):
                self._stats.retries += 1
                self._metrics.retry(integration_id, answer)
                self._scheduler.retry(work, at=now)
        elif verdict is Verdict.UNAUTHORIZED:
            if self._parking_state.unauthorized(integration_id, now):
                logger.error(
                    "integration %s: HighLevel answered %s (%s); parking its events, "
                    "probing every %.0fs",
                    integration_id,
                    answer.status,
                    answer.message,
                    self._probe_interval,
                )
            await self._retry_or_park(work, answer, now, ParkReason.UNAUTHORIZED)
        elif verdict is Verdict.RATE_LIMITED:
            # The limiter pauses the location (or, daily budget spent, raises on acquire).
            await self._retry_or_park(work, answer, now, None)
        else:
            first = work.first_taken_at  # None: never taken; 0.0 is a time like any other
            failing_for = 0.0 if first is None else now - first
            reason = ParkReason.RETRY_EXHAUSTED if failing_for >= self._max_retry else None
            await self._retry_or_park(work, answer, now, reason)

    async def _reread(self, work: _Work, refused: str) -> str:
        """``Credentials.reread`` for ``work``'s integration and location; ``refused`` when
        no other token could be obtained (the 401 is then handled as such)."""
        upsert = work.item
        try:
            return await self._credentials.reread(
                upsert.integration_id, upsert.location_id, refused
            )
        except (InstallationBroken, OAuthError, TokenStoreError) as failure:
            logger.warning(
                "integration %s: no other token after a 401: %s", upsert.integration_id, failure
            )
            return refused

    async def _retry_or_park(
        self, work: _Work, answer: Answer, now: float, park: ParkReason | None
    ) -> None:
        """Park ``work`` for ``park`` (None: retry it). Replayed work is never parked: it waits
        for the integration's next probe, or retries with backoff. Work of partitions revoked
        meanwhile is dropped: their new owner sends it, and a late re-send from here could set
        a contact back to an older state."""
        if self._drop_revoked(work):
            return
        if park is not None and not work.tickets[0].replay:
            await self._park(work, park)
            return
        self._stats.retries += 1
        self._metrics.retry(work.item.integration_id, answer)
        if answer.verdict is Verdict.RATE_LIMITED:
            at = now
        elif answer.verdict is Verdict.UNAUTHORIZED:
            at = now + self._probe_interval
        else:
            at = now + self._backoff(work.attempts)
        self._scheduler.retry(work, at=at)

    async def _park(self, work: _Work, reason: ParkReason) -> None:
        """Write ``work`` to the parking topic, then complete its offsets. The contact parks
        its newer work until this record is replayed."""
        if self._drop_revoked(work):
            return
        upsert = work.item
        key, value, headers = encode_parked(upsert, [t.record for t in work.tickets], reason)
        self._active.add(work)
        try:
            with self._outbox.holding():
                landed = await self._outbox.produce(self._parking_log.topic, key, value, headers)
        finally:
            self._finished(work)
        key_of_contact = (upsert.integration_id, upsert.contact_key)
        self._parking_state.parked(key_of_contact, landed.partition, landed.offset)
        self._stats.parked[reason] += len(work.tickets)
        records = [ticket.record for ticket in work.tickets]
        self._recorder.parked(records, upsert, reason, self._wall_clock())
        self._metrics.parked(upsert.integration_id, reason, len(work.tickets))
        self._complete(work)
        self._wake(upsert.location_id)

    def _complete(self, work: _Work) -> None:
        self._scheduler.complete(work)
        for ticket in work.tickets:
            ticket.settle()

    def _finished(self, work: _Work) -> None:
        self._active.discard(work)
        self._active_shrank.set()

    def _drop_revoked(self, work: _Work) -> bool:
        """Remove tickets of revoked partitions from in-flight ``work``; when none is left,
        finish the work without sending it and return True."""
        kept = [ticket for ticket in work.tickets if not ticket.partition.revoked]
        if len(kept) == len(work.tickets):
            return False
        work.tickets = kept
        if kept:
            return False
        self._scheduler.complete(work)
        return True

    def _backoff(self, attempts: int) -> float:
        """Exponential backoff with full jitter around the nominal delay (x0.5 .. x1.5)."""
        nominal = min(self._retry_max, self._retry_base * 2.0**attempts)
        return nominal * (0.5 + self._rng.random())
