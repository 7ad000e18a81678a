"""In-memory stand-ins for the engine's seams: a Kafka source, a sink, credentials and HighLevel.

They exist for fast engine tests. ``tests/contract`` runs the source contract the engine relies
on against both ``MemorySource`` and ``KafkaSource`` on a real broker; the engine's behaviours
are proven again against a real broker and the sandbox over HTTP in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from consumer.core.events import Record
from consumer.core.profiles import ChangelogProfileStore
from consumer.engine.offsets import Assignment, CommitPoint
from consumer.engine.ports import RebalanceListener
from consumer.highlevel.verdicts import Answer, Verdict, classify
from consumer.state.encryption import ProfileCipher
from consumer.state.profile_state import PartitionedProfileStore

TP = tuple[str, int]


@dataclass
class MemorySource:
    """Partitions as lists of records; ``poll_batch`` reads unpaused partitions in order.
    ``start`` assigns every partition, or none with ``subscribe=False`` (then ``follow``
    assigns, as ``KafkaSource(subscribe=False)``). ``journal``, when given (it may be shared by
    several sources), receives ``(kind, partitions)`` for every assignment change as it takes
    effect: an assignment before the listener hears of it, a revocation or loss once the
    listener returned."""

    records: dict[TP, list[Record]]
    committed: dict[TP, tuple[int, str]] = field(default_factory=dict)
    positions: dict[TP, int] = field(default_factory=dict)
    paused: set[TP] = field(default_factory=set)
    commits: list[list[CommitPoint]] = field(default_factory=list)
    listener: RebalanceListener | None = None
    closed: bool = False
    subscribe: bool = True
    journal: list[tuple[str, list[TP]]] | None = None

    async def start(self, listener: RebalanceListener) -> None:
        self.listener = listener
        if self.subscribe:
            await self.assign(list(self.records))

    async def assign(self, partitions: Sequence[TP]) -> None:
        assert self.listener is not None
        self._note("assigned", partitions)
        assignments = []
        for tp in partitions:
            offset, metadata = self.committed.get(tp, (None, None))
            self.positions[tp] = offset or 0
            assignments.append(Assignment(tp[0], tp[1], offset, metadata))
        await self.listener.on_assigned(assignments)

    async def revoke(self, partitions: Sequence[TP], *, lost: bool = False) -> None:
        assert self.listener is not None
        if lost:
            await self.listener.on_lost(partitions)
        else:
            await self.listener.on_revoked(partitions)
        self._note("lost" if lost else "revoked", partitions)
        for tp in partitions:
            self.positions.pop(tp, None)
            self.paused.discard(tp)

    async def follow(self, partitions: Collection[int], *, lost: bool = False) -> None:
        """As ``KafkaSource.follow``: own exactly ``partitions`` of the (one) topic."""
        assert not self.subscribe
        assert self.listener is not None
        (topic,) = {t for t, _ in self.records}
        wanted = {(topic, p) for p in partitions}
        gone = sorted(set(self.positions) - wanted)
        new = sorted(wanted - set(self.positions))
        if gone:
            await self.revoke(gone, lost=lost)
        if new:
            await self.assign(new)

    def _note(self, kind: str, partitions: Sequence[TP]) -> None:
        if self.journal is not None:
            self.journal.append((kind, list(partitions)))

    async def poll_batch(self, max_records: int, timeout_s: float) -> list[Record]:
        batch: list[Record] = []
        for tp, position in list(self.positions.items()):
            if tp in self.paused:
                continue
            chunk = self.records[tp][position : position + max_records - len(batch)]
            self.positions[tp] = position + len(chunk)
            batch.extend(chunk)
        if not batch:
            await asyncio.sleep(min(timeout_s, 0.01))
        return batch

    async def pause(self, partitions: Sequence[TP]) -> None:
        self.paused.update(partitions)

    async def resume(self, partitions: Sequence[TP]) -> None:
        self.paused.difference_update(partitions)

    async def commit(self, points: Sequence[CommitPoint]) -> None:
        self.commits.append(list(points))
        for p in points:
            self.committed[(p.topic, p.partition)] = (p.offset, p.metadata)

    async def close(self) -> None:
        """As ``KafkaSource.close``: ``on_revoked`` for every owned partition (commits made
        there hold), then closed. Idempotent."""
        if self.closed:
            return
        if self.listener is not None and self.positions:
            await self.revoke(list(self.positions))
        self.closed = True


@dataclass(frozen=True)
class Landed:
    topic: str
    partition: int
    offset: int


@dataclass
class MemorySink:
    """Records what is produced; topics in ``forward`` also land in that MemorySource's
    partition 0, or the partition ``produce_many`` names (so the engine can read back what it
    parked, or produced to its stitch topic)."""

    produced: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )
    forward: dict[str, MemorySource] = field(default_factory=dict)
    placed: list[tuple[str, bytes | None, int | None]] = field(default_factory=list)

    async def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> Landed:
        self.produced.append((topic, key, value, list(headers)))
        target = self.forward.get(topic)
        if target is None:
            return Landed(topic, 0, len(self.produced) - 1)
        return self._land(target, topic, 0, key, value, headers)

    @staticmethod
    def _land(
        target: MemorySource,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> Landed:
        log = target.records.setdefault((topic, partition), [])
        log.append(Record(topic, partition, len(log), key, value, tuple(headers)))
        return Landed(topic, partition, len(log) - 1)

    async def produce_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        partition: int | None = None,
    ) -> list[Exception | None]:
        """Each record through ``produce`` (so a subclass's refusals apply), failures kept;
        (topic, key, the ``partition`` asked for) of each in ``placed``."""
        results: list[Exception | None] = []
        for key, value in records:
            self.placed.append((topic, key, partition))
            target = self.forward.get(topic)
            try:
                if target is not None and partition is not None:
                    self.produced.append((topic, key, value, []))
                    self._land(target, topic, partition, key, value, ())
                    results.append(None)
                    continue
                await self.produce(topic, key=key, value=value, headers=())
            except Exception as exc:  # noqa: BLE001 - a failure is a result here
                results.append(exc)
            else:
                results.append(None)
        return results


class MemoryProfileLog:
    """The profile changelog without Kafka, whole-changelog shape: a ``ChangelogProfileStore``
    whose writes the engine produces through its sink to ``topic``; nothing to restore, no
    erasures to follow."""

    topic = "profiles"
    partitioned = False

    def __init__(self) -> None:
        self.store = ChangelogProfileStore()

    @property
    def changes(self) -> int:
        return self.store.changes

    def select(self, partition: int) -> bool:
        return True

    def take_writes(self) -> list[tuple[int | None, str, bytes]]:
        return [(None, key, value) for key, value in self.store.take_writes()]

    def written(self, partition: int | None, key: str) -> None:
        self.store.written(key)

    async def assign(self, partitions: Sequence[int]) -> None:
        return None

    def release(self, partitions: Sequence[int]) -> None:
        return None

    async def follow(self) -> None:
        await asyncio.Event().wait()

    def seal(self, key: str, value: bytes) -> bytes:
        return value

    def open(self, key: str, value: bytes) -> bytes:
        return value


class MemoryPartitionedLog:
    """The partitioned shape without Kafka: a real ``PartitionedProfileStore`` under
    ``state_dir`` whose ``assign`` opens the partitions (nothing to read) once ``gate`` is
    open; ``assigned`` and ``released`` remember the calls. ``cipher`` seals and opens
    profiles carried elsewhere (none: plain)."""

    topic = "profiles"
    partitioned = True

    def __init__(self, state_dir: Path, cipher: ProfileCipher | None = None) -> None:
        self.store = PartitionedProfileStore(state_dir, self.topic)
        self.cipher = cipher or ProfileCipher({})
        self.gate = asyncio.Event()
        self.gate.set()
        self.assigned: list[list[int]] = []
        self.released: list[list[int]] = []

    @property
    def changes(self) -> int:
        return self.store.changes

    def select(self, partition: int) -> bool:
        return self.store.select(partition)

    def take_writes(self) -> list[tuple[int | None, str, bytes]]:
        return list(self.store.take_writes())

    def written(self, partition: int | None, key: str) -> None:
        assert partition is not None
        self.store.written(partition, key)

    async def assign(self, partitions: Sequence[int]) -> None:
        self.assigned.append(list(partitions))
        await self.gate.wait()
        for p in partitions:
            self.store.open(p)

    def release(self, partitions: Sequence[int]) -> None:
        self.released.append(list(partitions))
        for p in partitions:
            if p in self.store.partitions:
                self.store.close(p)

    async def follow(self) -> None:
        await asyncio.Event().wait()

    def seal(self, key: str, value: bytes) -> bytes:
        return self.cipher.seal(key, value)

    def open(self, key: str, value: bytes) -> bytes:
        return self.cipher.open(key, value)


class MemoryParkingLog:
    """The parking topic as one in-memory partition, read back by its own MemorySource."""

    topic = "parking"

    def __init__(self) -> None:
        self.source = MemorySource({(self.topic, 0): []})

    async def committed(self, partitions: Sequence[int]) -> Mapping[int, int]:
        return {
            p: offset for (_, p), (offset, _) in self.source.committed.items() if p in partitions
        }

    async def unreplayed(self) -> list[Record]:
        return []


@dataclass
class StaticCredentials:
    """Tokens per integration id, as last read. ``rotated``: the tokens their source holds
    now, taken by ``reread`` (as after a 401); ``rereads`` counts those calls. ``installed``:
    the locations each OAuth-like integration serves (absent: every one); ``failure``: raised
    by ``token`` and ``reread`` while set (a broken installation, Redis down)."""

    tokens: dict[str, str]
    rotated: dict[str, str] = field(default_factory=dict)
    rereads: int = 0
    installed: dict[str, frozenset[str]] = field(default_factory=dict)
    failure: Exception | None = None
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def token(self, integration_id: str, location_id: str) -> str:
        self.asked.append((integration_id, location_id))
        if self.failure is not None:
            raise self.failure
        return self.tokens[integration_id]

    async def reread(self, integration_id: str, location_id: str, refused: str) -> str:
        self.rereads += 1
        if self.failure is not None:
            raise self.failure
        if integration_id in self.rotated:
            self.tokens[integration_id] = self.rotated[integration_id]
        return self.tokens[integration_id]

    def serves(self, integration_id: str, location_id: str) -> bool:
        installed = self.installed.get(integration_id)
        return installed is None or location_id in installed


PERMANENT_DND_REFUSAL = "Not authorized to update permanent dnd setting for SMS"


def answer(
    status: int | None,
    body: Mapping[str, object] | None = None,
    message: str = "property x should not exist",
) -> Answer:
    return Answer(
        verdict=classify(status) if status is not None else Verdict.RETRY,
        status=status,
        latency_s=0.001,
        trace_id="trace-1",
        message="" if status in (200, 201) else message,
        error=None if status is not None else "timeout",
        body=MappingProxyType(dict(body or {"contact": {"id": "c1"}})),
    )


@dataclass
class FakeHighLevel:
    """Records every call; ``script`` decides each answer (default: 200). ``permanent_dnd``:
    emails whose contact has a permanent SMS DND: an upsert carrying ``dnd`` for one is answered
    400 with HighLevel's refusal (and recorded in ``refused``)."""

    script: Callable[[Mapping[str, object]], int | None] = lambda payload: 200
    revoked: frozenset[str] = frozenset()  # tokens answered 401
    delay: Callable[[Mapping[str, object]], float] = lambda payload: 0.0
    upserts: list[dict[str, object]] = field(default_factory=list)
    tag_calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    in_flight: dict[object, int] = field(default_factory=dict)
    max_in_flight_per_contact: int = 0
    drops: frozenset[str] = frozenset()  # fields the answer leaves out, as if ignored
    calls: int = 0  # upsert requests received, answered or not
    permanent_dnd: frozenset[str] = frozenset()
    refused: list[dict[str, object]] = field(default_factory=list)

    async def upsert(self, *, token: str, payload: Mapping[str, object]) -> Answer:
        self.calls += 1
        contact = payload.get("email") or payload.get("phone")
        self.in_flight[contact] = self.in_flight.get(contact, 0) + 1
        self.max_in_flight_per_contact = max(
            self.max_in_flight_per_contact, self.in_flight[contact]
        )
        try:
            await asyncio.sleep(self.delay(payload))
            self.tokens.append(token)
            if "dnd" in payload and payload.get("email") in self.permanent_dnd:
                self.refused.append(dict(payload))
                return answer(400, message=PERMANENT_DND_REFUSAL)
            status = 401 if token in self.revoked else self.script(payload)
            if status in (200, 201):
                self.upserts.append(dict(payload))
                echoed = {k: v for k, v in payload.items() if k not in self.drops}
                return answer(status, {"contact": {"id": "c1", **echoed}})
            return answer(status)
        finally:
            self.in_flight[contact] -= 1

    async def add_tags(self, *, token: str, contact_id: str, tags: Sequence[str]) -> Answer:
        self.tag_calls.append((contact_id, tuple(tags)))
        return answer(201)
