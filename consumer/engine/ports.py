"""The engine's ports: every seam between the engine and the world, each declared once.

The engine talks to Kafka, HighLevel, the rate limiter and the profile changelog only through
these Protocols; ``consumer.kafka``, ``consumer.highlevel``, ``consumer.ratelimit`` and
``consumer.state`` implement them, and the unit tests implement them in memory
(``tests/unit/engine_fakes.py``). Values that cross a seam (``Produced``) live here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from consumer.core.events import Record
from consumer.engine.offsets import Assignment, CommitPoint
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
    """Makes the mapper's profile store durable (``consumer.state.changelog.ProfileChangelog``)."""

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
    """Per-location rate budgets (``consumer.ratelimit.limiter.RateLimiter``)."""

    async def acquire(self, location_id: str) -> Permit: ...

    def observe(self, location_id: str, *, status: int, headers: Mapping[str, str]) -> None: ...
