"""The engine's ports: every seam between the engine and the world, each declared once.

The engine talks to Kafka, HighLevel, the rate limiter, the profile changelog, the credentials
store, the metrics and the Event Debugger only through these Protocols; ``consumer.kafka``,
``consumer.highlevel``, ``consumer.ratelimit``, ``consumer.state``, ``consumer.observe`` and
``consumer.commands.run`` implement them (structurally: nothing here is subclassed), and the
unit tests implement them in memory (``tests/unit/engine_fakes.py``). Values that cross a seam
(``Produced``, ``Endpoint``, ``RebalanceKind``) live here too.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from consumer.core.deadletter import Failure
from consumer.core.events import ContactUpsert, Omitted, Record
from consumer.engine.offsets import Assignment, CommitPoint
from consumer.engine.parking import ParkReason
from consumer.highlevel.verdicts import Answer
from consumer.ratelimit.limiter import Permit


class Source(Protocol):
    """The consumer-group side of Kafka (``consumer.kafka.source.KafkaSource``; tests use a
    fake)."""

    async def start(self, listener: RebalanceListener) -> None: ...

    async def poll_batch(self, max_records: int, timeout_s: float) -> list[Record]: ...

    async def pause(self, partitions: Sequence[tuple[str, int]]) -> None: ...

    async def resume(self, partitions: Sequence[tuple[str, int]]) -> None: ...

    async def commit(self, points: Sequence[CommitPoint]) -> None:
        """Commit synchronously (in a worker thread); raise on failure."""
        ...

    async def close(self) -> None: ...


class FollowingSource(Source, Protocol):
    """A source whose partitions the engine assigns instead of a consumer group
    (``KafkaSource(subscribe=False)``): the replay feed co-partitioned with the event feed."""

    async def follow(self, partitions: Collection[int], *, lost: bool = False) -> None:
        """Own exactly ``partitions`` of the source's one topic. Owned ones not named go first,
        through ``on_revoked`` (``on_lost`` with ``lost``: nothing of them is committed); new
        ones then through ``on_assigned``, before any of their records is returned."""
        ...


class RebalanceListener(Protocol):
    """What the engine implements to follow assignment changes. Called on the event loop,
    from inside ``poll_batch`` or ``close``; each call completes before records of the new
    assignment are returned."""

    async def on_assigned(self, partitions: Sequence[Assignment]) -> None:
        """New partitions, before any of their records is returned."""

    async def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Partitions about to go (rebalance or close). Still owned during the call: commit
        their final points now with ``await source.commit(points)``; commits for them are
        refused afterwards."""

    async def on_lost(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Partitions already owned by someone else (session timed out, fenced): committing is
        no longer possible; drop their work."""


@dataclass(frozen=True, slots=True)
class Produced:
    """Where a produced record landed, once the broker confirmed it."""

    topic: str
    partition: int
    offset: int


class Sink(Protocol):
    """Produces to the consumer's own topics; returns once the broker confirmed."""

    async def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> Produced: ...

    async def produce_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        partition: int | None = None,
    ) -> list[Exception | None]:
        """Produce ``records`` ((key, value), no headers) together, for one wake-up of the
        caller instead of one per record: returns once the broker answered for every one,
        per record (in order) None when confirmed, else its failure. Never raises for a
        record's failure. ``partition``: every record goes to that partition (None: the
        partitioner chooses by key)."""
        ...


class ParkingLog(Protocol):
    """The parking topic seen from one instance (``consumer.commands.run`` builds it on Kafka)."""

    @property
    def topic(self) -> str: ...

    @property
    def source(self) -> Source:
        """A member of the parking group: the feed that replays parked upserts."""
        ...

    async def committed(self, partitions: Sequence[int]) -> Mapping[int, int]:
        """The parking group's committed offset per parking partition (absent: none)."""
        ...

    async def unreplayed(self) -> list[Record]:
        """The parking records past the group's committed offsets (read once at start)."""
        ...


class Sender(Protocol):
    """HighLevel's API (``consumer.highlevel.client.HighLevelClient``)."""

    async def upsert(self, *, token: str, payload: Mapping[str, object]) -> Answer: ...

    async def add_tags(self, *, token: str, contact_id: str, tags: Sequence[str]) -> Answer: ...


class ProfileLog(Protocol):
    """Makes the mapper's profile store durable (``consumer.state.changelog``): the whole
    changelog in memory (``ProfileChangelog``) or, ``partitioned``, only the changelog
    partitions of the event partitions this member owns (``PartitionedProfileChangelog``).

    Partitions are the event partitions, which in the partitioned mode are the changelog's
    (one input topic, the same partition count). The engine ``select``s a record's partition
    before mapping it; each write of ``take_writes`` names the changelog partition it must be
    produced to (None: the partitioner's choice by key, in the whole-changelog mode)."""

    topic: str

    @property
    def partitioned(self) -> bool:
        """True: ``assign`` restores only the partitions it names, so the engine runs it in the
        background while those partitions are paused; False: ``assign`` reads the whole
        changelog, inside the rebalance callback, before any new record is admitted."""
        ...

    @property
    def changes(self) -> int:
        """How many profile changes were recorded so far: a record whose ``map_record`` moved
        it changed a profile, and its offset waits for the next ``take_writes`` to be
        confirmed."""
        ...

    def select(self, partition: int) -> bool:
        """The partition of the record mapped next. False when its profiles are not held here
        (partitioned mode, a partition this member does not own): that record is then mapped
        without stored profiles and changes none."""
        ...

    def take_writes(self) -> list[tuple[int | None, str, bytes]]:
        """The profile changes recorded since the last call, one record per partition and user
        key (its latest profile: changes to one key coalesce), as (partition, key, value)."""
        ...

    def written(self, partition: int | None, key: str) -> None:
        """The broker confirmed one of those writes."""
        ...

    async def assign(self, partitions: Sequence[int]) -> None:
        """Restore the profiles of newly assigned event ``partitions`` (the whole changelog
        when not ``partitioned``). Raises ``consumer.errors.KafkaAdapterError`` when the
        changelog cannot be read (after its own retries)."""
        ...

    def release(self, partitions: Sequence[int]) -> None:
        """Event ``partitions`` were revoked or lost: drop their profiles (partitioned mode)."""
        ...

    async def follow(self) -> None:
        """Drop the profiles erased by ``ghl-consumer forget`` while running; runs until
        cancelled (the engine runs it beside its other background tasks)."""
        ...

    def seal(self, key: str, value: bytes) -> bytes:
        """``value`` (a profile's bytes) sealed with the ``[profiles]`` encryption for a record
        keyed ``key``, as the changelog's values are (unchanged without encryption): for a
        profile carried by another topic (a stitch merge)."""
        ...

    def open(self, key: str, value: bytes) -> bytes:
        """The inverse of ``seal``. Raises ``consumer.errors.ProfileDecodeError`` when
        ``value`` cannot be opened (key id not configured, tampered, moved to another key)."""
        ...


class Limiter(Protocol):
    """Per-location rate budgets (``consumer.ratelimit.limiter.RateLimiter``)."""

    async def acquire(self, location_id: str) -> Permit: ...

    def observe(self, location_id: str, *, status: int, headers: Mapping[str, str]) -> None: ...


class Credentials(Protocol):
    """The integrations' HighLevel tokens (``consumer.commands.run`` adapts the settings'
    private integration tokens and the OAuth installations). Asked once per request, so a token
    may change between calls.

    ``token`` and ``reread`` may raise ``consumer.errors.InstallationBroken`` (the OAuth
    installation needs ``ghl-consumer oauth reconnect``: the integration's events park),
    ``OAuthError`` (HighLevel did not mint a token: retried when ``retriable``, else the work is
    refused) or ``TokenStoreError`` (Redis did not answer: retried)."""

    async def token(self, integration_id: str, location_id: str) -> str:
        """The token to send for ``integration_id`` to ``location_id`` (one the engine was
        configured with). Cheap while the token is cached (no I/O): called for every
        request."""
        ...

    async def reread(self, integration_id: str, location_id: str, refused: str) -> str:
        """A token obtained again from its source now, after HighLevel refused ``refused``
        (401/403): a rotated private token, or another OAuth location token (re-read from the
        shared store, else minted once: a token that was itself obtained this way is not
        replaced again), is sent before the integration's events park. ``refused`` when the
        source has no other."""
        ...

    def serves(self, integration_id: str, location_id: str) -> bool:
        """Whether ``integration_id`` may send to ``location_id``: always for an integration
        with a fixed location; for an OAuth integration that takes its location from the
        event, whether the app is installed there (as listed, or as last discovered; True
        while the installation's locations were never discovered). Cheap, no I/O."""
        ...


class Endpoint(StrEnum):
    """The HighLevel endpoint a request went to (a metric label, shown by the debugger)."""

    UPSERT = "upsert"
    ADD_TAGS = "add_tags"


class RebalanceKind(StrEnum):
    """Which rebalance callback ran (a metric label)."""

    ASSIGNED = "assigned"
    REVOKED = "revoked"
    LOST = "lost"


class EngineMetrics(Protocol):
    """The counters the engine drives on its hot path (``consumer.observe.metrics.Metrics``).
    Called on the event loop thread; each call is cheap and never raises for an unknown label
    value (the implementation bounds its labels)."""

    def consumed(self, topic: str, count: int = 1) -> None: ...

    def skipped(self, topic: str, count: int = 1) -> None: ...

    def dropped(self, reason: str, count: int = 1) -> None: ...

    def rejected(self, reason: str, count: int = 1) -> None: ...

    def coalesced(self, integration: str) -> None: ...

    def http(self, integration: str, endpoint: Endpoint, answer: Answer) -> None: ...

    def retry(self, integration: str, answer: Answer) -> None: ...

    def rate_wait(self, location: str, seconds: float) -> None: ...

    def dead_lettered(self, reason: str, count: int = 1) -> None: ...

    def parked(self, integration: str, reason: ParkReason, count: int = 1) -> None: ...

    def replayed(self, integration: str, count: int = 1) -> None: ...

    def rebalance(self, kind: RebalanceKind) -> None: ...

    def ignored_field(self, integration: str, field_name: str) -> None: ...

    def omitted_field(self, field_name: str, reason: str) -> None: ...

    def permanent_dnd_kept(self, integration: str, channel: str) -> None: ...

    def delivery_records(self, result: str, count: int) -> None:
        """``count`` delivery records were ``written`` to the delivery topic, or ``failed``."""
        ...

    def stitch_requests(self, direction: str, count: int = 1) -> None:
        """``count`` identity stitching requests were ``sent`` (confirmed on the stitch topic)
        or ``handled`` (read from it and answered)."""
        ...

    def stitch_merges(self, result: str, count: int = 1) -> None:
        """``count`` identity stitching merges: ``sent`` (confirmed) or ``empty`` (a request
        found nothing to hand over), ``folded`` or ``unchanged`` (a merge received)."""
        ...


class OutcomeRecorder(Protocol):
    """Remembers what happened to records that did not (or not only) become a HighLevel
    request, for the Event Debugger (``consumer.observe.recent_deliveries.RecentDeliveries``):
    drops (a ``duplicate`` drop included), rejects, dead letters, parked work and replays.
    Called on the event loop thread; never given a token. ``now`` is wall-clock seconds.

    ``dropped`` is on the hot path (once per dropped record): it must keep a reference and
    return, leaving decoding, masking and formatting to whoever reads the entries."""

    def dropped(self, record: Record, reason: str, integration: str | None, now: float) -> None:
        """``record`` was dropped for ``reason`` (for ``integration``; None: record-level)."""
        ...

    def rejected(
        self, record: Record, reason: str, error: str, integration: str | None, now: float
    ) -> None:
        """``record`` cannot be used (``error`` names the field and any omitted fields, never a
        value); its dead letter is being written."""
        ...

    def dead_lettered(self, record: Record, failure: Failure, now: float) -> None:
        """The broker confirmed ``record``'s dead letter."""
        ...

    def parked(
        self, records: Sequence[Record], upsert: ContactUpsert, reason: ParkReason, now: float
    ) -> None:
        """``upsert``, folded from ``records``, is in the parking topic (broker confirmed)."""
        ...

    def replayed(self, record: Record, upsert: ContactUpsert | None, now: float) -> None:
        """``record`` came back through a replay feed: a parking record (``upsert`` is what it
        holds) or a ``dlq replay`` copy of the replay topic (``upsert`` None)."""
        ...


class DeliveryRecorder(OutcomeRecorder, Protocol):
    """The Event Debugger's port (``consumer.observe.recent_deliveries.RecentDeliveries``):
    each HighLevel request (``record``, called on the event loop thread after every answer)
    and every other outcome (``OutcomeRecorder``). Never given a token; masks what it shows."""

    def record(
        self,
        *,
        integration: str,
        location_id: str,
        endpoint: str,
        events: Sequence[str],
        contact_key: str,
        payload: Mapping[str, object],
        answer: Answer,
        attempts: int,
        now: float,
        omitted: Sequence[Omitted] = (),
        message_ids: Sequence[str] = (),
        sources: Sequence[Record] = (),
    ) -> object:
        """``attempts``: this request's attempt number (1 for the first); ``now``: wall-clock
        seconds; ``omitted``: fields of the events left out of the payload; ``message_ids``:
        the events' messageIds; ``sources``: the records folded into the request. The return
        value is the implementation's own (the engine ignores it)."""
        ...
