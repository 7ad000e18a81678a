# Over 500 lines: one cohesive, property-tested pure model (OffsetMap codec and tracker share it).
"""Per-partition offset tracking: the contiguous commit point and a compact map of the done
offsets above it, carried in the Kafka commit metadata (after confluentinc/parallel-consumer).

Records of one partition finish out of order (different contacts, retries, rate waits). Kafka
stores one committed offset per partition, so the commit point is the lowest offset that is not
done yet; everything below it is done. Offsets above it that are already done are encoded in the
commit's metadata string (``OffsetMap``), so that after a restart or a rebalance the next owner
skips them (``PartitionOffsets.admit`` returns False) instead of sending them to HighLevel again.

"Done" means delivered, dropped, dead-lettered or parked: the engine calls ``complete`` only then.

Size: the broker rejects metadata longer than ``offset.metadata.max.bytes`` (4096 by default).
``OffsetBudget`` sets the limit used here (4000, leaving margin) and when a partition's intake
should pause: ``PartitionOffsets.over_budget`` looks at a worst-case bound of the metadata that
the offsets admitted so far could need, whatever order they complete in, so intake pauses before
the limit can be reached. Should a commit still not fit (a batch admitted past the pause mark
across a wide gap), the map is cut to the done offsets nearest the commit point: at-least-once
holds, only some already-delivered records may be sent again after a restart.

Threading: nothing here is thread-safe, and nothing needs to be. Every call happens on the event
loop thread: the engine's tasks complete offsets there, and ``consumer.kafka.source`` runs the
rebalance callbacks (which revoke) there as well, so a revoke can never interleave with a
``complete``.
The ``revoked`` flag therefore needs no lock, unlike redpanda-data/connect's, whose acks arrive on
other goroutines. Anyone who moves a caller onto another thread must add a lock.

Pure: no I/O, no clock, no Kafka client import.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

MAGIC: Final = "ghl1"
"""Version prefix of the metadata format: ``ghl1;<commit offset>;<kind>;<base85 payload>``."""

_SEP: Final = ";"  # base85 uses ';' too, so the payload is always the last, unsplit field
_BITSET: Final = "b"  # bit i of the payload <=> offset commit+i is done
_RUNS: Final = "r"  # varints: gap, run, gap, run ... (not-done then done counts from commit)
# An upper-case kind marks a raw-deflated payload.
_MAX_INFLATED: Final = 1 << 18  # refuse to inflate more (2M offsets of bitset) from metadata
_HEADER_FIXED: Final = len(MAGIC) + 3 * len(_SEP) + 1  # "ghl1;" + digits + ";k;"


@dataclass(frozen=True, slots=True)
class CommitPoint:
    """What to commit for one partition: consumption resumes at ``offset``; ``metadata`` is the
    encoded ``OffsetMap`` of done offsets at or above it ("" when there are none)."""

    topic: str
    partition: int
    offset: int
    metadata: str


@dataclass(frozen=True, slots=True)
class Assignment:
    """A partition newly assigned to this member, with the group's commit for it (what
    ``OffsetTracker.assign`` takes): ``committed`` is the offset consumption starts at (None:
    the group has none, the consumer's auto offset reset applies) and ``metadata`` that
    commit's raw metadata. Built by ``consumer.kafka.source``; here so Kafka-free code can use
    it."""

    topic: str
    partition: int
    committed: int | None
    metadata: str | None


@dataclass(frozen=True, slots=True)
class OffsetBudget:
    """Limits for one partition's tracking. Keyword-only configuration, shared by partitions.

    ``max_metadata_chars``: hard limit of the encoded map; keep it below the broker's
    ``offset.metadata.max.bytes`` (default 4096; the encoding is ASCII, so chars are bytes).
    ``max_pending``: offsets tracked at or above the commit point (done or not); bounds memory
    (about 40 bytes each). Intake should pause at ``pause_fill`` of either limit (worst case) and
    may resume at ``resume_fill``; the gap between them stops pause/resume flapping.
    """

    max_metadata_chars: int = 4000
    max_pending: int = 20_000
    pause_fill: float = 0.75
    resume_fill: float = 0.5

    def __post_init__(self) -> None:
        if self.max_metadata_chars < 64:
            raise ValueError("max_metadata_chars must be at least 64")
        if self.max_pending < 1:
            raise ValueError("max_pending must be positive")
        if not 0 < self.resume_fill <= self.pause_fill <= 1:
            raise ValueError("need 0 < resume_fill <= pause_fill <= 1")


# ---------------------------------------------------------------------------------------------
# The codec


@dataclass(frozen=True, slots=True)
class OffsetMap:
    """Done offsets at or above a commit offset, as sorted disjoint ``range`` values.

    Set-like: ``offset in m``, ``len(m)``, ``iter(m)`` (ascending). Ranges rather than a set,
    because a short run encoding can stand for millions of offsets.
    """

    commit_offset: int
    ranges: tuple[range, ...] = ()
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        previous = self.commit_offset - 1
        for r in self.ranges:
            if r.step != 1 or not r or r.start <= previous:
                raise ValueError("ranges must be non-empty, ascending, disjoint, >= commit_offset")
            previous = r.stop  # a range touching the previous one must have been merged
        object.__setattr__(self, "_starts", tuple(r.start for r in self.ranges))

    @classmethod
    def from_offsets(cls, commit_offset: int, done: Iterable[int]) -> OffsetMap:
        """The map of ``done`` (any order, duplicates allowed; every offset >= commit_offset)."""
        ranges: list[range] = []
        start = stop = None
        for offset in sorted(set(done)):
            if offset < commit_offset:
                raise ValueError(f"done offset {offset} is below the commit offset {commit_offset}")
            if stop is not None and offset == stop:
                stop += 1
                continue
            if start is not None and stop is not None:
                ranges.append(range(start, stop))
            start, stop = offset, offset + 1
        if start is not None and stop is not None:
            ranges.append(range(start, stop))
        return cls(commit_offset, tuple(ranges))

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        i = bisect.bisect_right(self._starts, offset) - 1
        return i >= 0 and offset in self.ranges[i]

    def __len__(self) -> int:
        return sum(len(r) for r in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for r in self.ranges:
            yield from r

    def encode(self) -> str:
        """The metadata string: "" when empty, else ``ghl1;<commit>;<kind>;<payload>`` with the
        smaller of a bitset and a run-length payload, deflated when that is smaller still.
        Length is at most ``worst_case_chars(...)`` of this map; it is not capped here (see
        ``encode_within``)."""
        if not self.ranges:
            return ""
        raw, kind = _smaller_payload(self.commit_offset, self.ranges)
        packed = zlib.compressobj(9, zlib.DEFLATED, -15)
        deflated = packed.compress(raw) + packed.flush()
        if len(deflated) < len(raw):
            raw, kind = deflated, kind.upper()
        text = base64.b85encode(raw).decode("ascii")
        return f"{MAGIC}{_SEP}{self.commit_offset}{_SEP}{kind}{_SEP}{text}"

    def encode_within(self, max_chars: int) -> tuple[str, int]:
        """``encode()``, cut to the done offsets nearest the commit offset when the whole map does
        not fit in ``max_chars``. Returns the text and how many done offsets were left out (0 when
        it fits). Never longer than ``max_chars`` (given ``max_chars`` >= 64)."""
        text = self.encode()
        if len(text) <= max_chars:
            return text, 0
        # Binary search the longest prefix of ranges that fits; a single range always fits
        # (the run encoding of one range is at most two 10-byte varints).
        lo, hi = 1, len(self.ranges) - 1
        best = OffsetMap(self.commit_offset, self.ranges[:1]).encode()
        kept = 1
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = OffsetMap(self.commit_offset, self.ranges[:mid]).encode()
            if len(candidate) <= max_chars:
                best, kept, lo = candidate, mid, mid + 1
            else:
                hi = mid - 1
        return best, sum(len(r) for r in self.ranges[kept:])

    @classmethod
    def decode(cls, metadata: str | None, *, commit_offset: int) -> OffsetMap:
        """The map in ``metadata`` if it was written by ``encode`` for this ``commit_offset``.

        Anything else yields an empty map and never raises: None or "", metadata of another
        tool, garbage, and a map written for another commit offset (someone moved the group's
        offset, e.g. ``kafka-consumer-groups --reset-offsets`` to replay: the map must not make
        the replay skip records).
        """
        empty = cls(commit_offset)
        if not metadata or not metadata.startswith(MAGIC + _SEP):
            return empty
        parts = metadata.split(_SEP, 3)
        if len(parts) != 4 or parts[1] != str(commit_offset) or len(parts[2]) != 1:
            return empty
        kind = parts[2]
        try:
            raw = base64.b85decode(parts[3])
            if kind.isupper():
                unpacker = zlib.decompressobj(-15)
                raw = unpacker.decompress(raw, _MAX_INFLATED)
                if unpacker.unconsumed_tail or not unpacker.eof:
                    return empty
            if kind.lower() == _BITSET:
                ranges = _ranges_from_bitset(commit_offset, raw)
            elif kind.lower() == _RUNS:
                ranges = _ranges_from_runs(commit_offset, raw)
            else:
                return empty
            return cls(commit_offset, tuple(ranges))
        except (ValueError, zlib.error, binascii.Error):
            return empty


def worst_case_chars(commit_offset: int, span: int, not_done: int) -> int:
    """Upper bound of ``OffsetMap.encode()`` for any done set within ``span`` positions from
    ``commit_offset`` (offsets commit .. commit+span-1) that leaves ``not_done`` of them not done.

    ``encode`` takes the smaller of a bitset (ceil(span / 8) bytes) and run lengths (two varints
    per run, and a run needs a not-done position before it: at most ``not_done + 1`` runs), and
    deflates only when that shrinks it; base85 turns n bytes into n + ceil(n / 4) characters.
    """
    if span <= 0 or not_done >= span:
        return 0
    raw = min((span + 7) // 8, 2 * (not_done + 1) * _varint_len(span))
    return _HEADER_FIXED + len(str(commit_offset)) + raw + (raw + 3) // 4


def _smaller_payload(commit_offset: int, ranges: Sequence[range]) -> tuple[bytes, str]:
    span = ranges[-1].stop - commit_offset
    runs = _runs_payload(commit_offset, ranges)
    if (span + 7) // 8 < len(runs):
        return _bitset_payload(commit_offset, ranges, span), _BITSET
    return runs, _RUNS


def _bitset_payload(commit_offset: int, ranges: Sequence[range], span: int) -> bytes:
    bits = bytearray((span + 7) // 8)
    for r in ranges:
        for offset in r:
            rel = offset - commit_offset
            bits[rel >> 3] |= 1 << (rel & 7)
    return bytes(bits)


def _runs_payload(commit_offset: int, ranges: Sequence[range]) -> bytes:
    out = bytearray()
    position = commit_offset
    for r in ranges:
        _put_varint(out, r.start - position)
        _put_varint(out, len(r))
        position = r.stop
    return bytes(out)


def _ranges_from_bitset(commit_offset: int, raw: bytes) -> list[range]:
    ranges: list[range] = []
    start: int | None = None
    for index, byte in enumerate(raw):
        if byte == 0xFF and start is not None:
            continue  # eight more done offsets in the current run
        if byte == 0 and start is None:
            continue
        for bit in range(8):
            offset = commit_offset + index * 8 + bit
            if byte >> bit & 1:
                if start is None:
                    start = offset
            elif start is not None:
                ranges.append(range(start, offset))
                start = None
    if start is not None:
        ranges.append(range(start, commit_offset + len(raw) * 8))
    return ranges


def _ranges_from_runs(commit_offset: int, raw: bytes) -> list[range]:
    values = list(_read_varints(raw))
    if len(values) % 2:
        raise ValueError("odd number of run-length values")
    ranges: list[range] = []
    position = commit_offset
    for i in range(0, len(values), 2):
        gap, run = values[i], values[i + 1]
        if run == 0 or (ranges and gap == 0):
            raise ValueError("not a canonical run encoding")
        ranges.append(range(position + gap, position + gap + run))
        position += gap + run
    return ranges


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _read_varints(raw: bytes) -> Iterator[int]:
    value = shift = 0
    for byte in raw:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")
        else:
            yield value
            value = shift = 0
    if shift:
        raise ValueError("truncated varint")


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


# ---------------------------------------------------------------------------------------------
# Tracking


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """A snapshot of one partition's tracking, for metrics and the debug page."""

    topic: str
    partition: int
    commit_offset: int | None  # where consumption would resume now (None: nothing known yet)
    committed_offset: int | None  # last offset known to be committed (marked or restored)
    highest_admitted: int | None
    incomplete: int  # admitted, not done yet
    pending: int  # tracked at or above the commit point, done or not
    restored_remaining: int  # done per the restored map, not reached by the fetcher yet
    skipped_done: int  # records skipped because the restored map said they were done
    truncated_offsets: int  # done offsets left out of commit metadata because it was full
    budget_fill: float  # worst-case fraction of the budget in use (>= 1.0: over the hard limit)


class PartitionOffsets:
    """Offset state of one assignment of one partition (a new object per assignment).

    Created from the group's committed offset and its metadata. The engine calls ``admit`` for
    every fetched record in offset order, ``complete`` once a record is done, and on a timer
    ``commit_point`` then, after a successful commit, ``mark_committed``. Completion handles held
    by in-flight work refer to this object, so once it is revoked a late ``complete`` is ignored
    and ``commit_point`` stays None: a revoked partition never commits again from stale work.
    """

    def __init__(
        self,
        topic: str,
        partition: int,
        *,
        committed: int | None,
        metadata: str | None = None,
        budget: OffsetBudget | None = None,
    ) -> None:
        """``committed``: the group's committed offset (None when the group has none, then the
        first admitted offset becomes the base). ``metadata``: its commit metadata; a map written
        by ``OffsetMap.encode`` for that same offset is restored, anything else is ignored."""
        self.topic = topic
        self.partition = partition
        self._budget = budget or OffsetBudget()
        self._next = committed  # next offset expected from the fetcher
        self._admitted_any = False
        self._pending: deque[int] = deque()  # admitted offsets >= the commit point, ascending
        self._incomplete: dict[int, int] = {}  # admitted offset -> its record's bytes
        self._incomplete_bytes = 0
        restored = (
            OffsetMap.decode(metadata, commit_offset=committed)
            if committed is not None
            else OffsetMap(0)
        )
        self._restored: deque[range] = deque(restored.ranges)
        self._restored_count = len(restored)
        self._committed: tuple[int, str] | None = (
            (committed, metadata or "") if committed is not None else None
        )
        self._revoked = False
        self._version = 0
        self._cached_version = -1
        self._cached: tuple[int, str] | None = None
        self.skipped_done = 0
        self.truncated_offsets = 0

    # -- intake ---------------------------------------------------------------------------------

    def admit(self, offset: int, size: int = 0) -> bool:
        """Register a fetched record of ``size`` bytes (counted in ``incomplete_bytes`` until it
        completes). True: process it, and ``complete`` it when done. False: do not process it
        (``accept`` says why). ``accept`` then ``track``."""
        if not self.accept(offset):
            return False
        self.track(offset, size)
        return True

    def accept(self, offset: int) -> bool:
        """Whether a fetched record still needs processing. False: do not process it, because
        the restored map says it is already done (counted in ``skipped_done``; it counts as
        done here), or it is not ahead of the last accepted offset (a duplicate), or this
        partition is revoked. Offsets must come in ascending order, gaps allowed (compaction,
        transaction markers). One exception: the very first record may lie below the
        committed offset (the log was truncated or recreated and the fetcher reset); tracking
        then restarts from it and the restored map, which described another log, is dropped.

        True: the caller must say, before it accepts the next offset, whether the record is
        done at once (``passed``: the engine's hot path, nothing held for it) or needs work
        (``track``, then ``complete``). Between ``accept`` and that call the offset counts as
        done."""
        if self._revoked:
            return False
        if self._next is not None and offset < self._next:
            if self._admitted_any:
                return False
            self._restored.clear()
            self._restored_count = 0
        self._admitted_any = True
        self._next = offset + 1
        self._version += 1
        if self._restored and self._take_restored(offset):
            self.skipped_done += 1
            self.passed(offset)
            return False
        return True

    def passed(self, offset: int) -> None:
        """The offset just accepted is done at once. With nothing pending the commit point
        simply moves past it (``accept`` moved it); else it waits, done, behind the pending
        ones."""
        if self._pending:
            self._pending.append(offset)

    def track(self, offset: int, size: int = 0) -> None:
        """The offset just accepted needs work: it holds the commit point until ``complete``."""
        self._pending.append(offset)
        self._incomplete[offset] = size
        self._incomplete_bytes += size

    def _take_restored(self, offset: int) -> bool:
        """Drop restored ranges below ``offset`` (offsets the log no longer has); True when
        ``offset`` itself is in the restored map."""
        restored = self._restored
        while restored and restored[0].stop <= offset:
            self._restored_count -= len(restored.popleft())
        if not restored or restored[0].start > offset:
            return False
        head = restored.popleft()
        self._restored_count -= len(head)
        rest = range(offset + 1, head.stop)
        if rest:
            restored.appendleft(rest)
            self._restored_count += len(rest)
        return True

    def complete(self, offset: int) -> None:
        """Mark an admitted offset done. Idempotent; ignored for offsets not admitted and once
        the partition is revoked."""
        if self._revoked or offset not in self._incomplete:
            return
        self._incomplete_bytes -= self._incomplete.pop(offset)
        self._version += 1
        pending, incomplete = self._pending, self._incomplete
        while pending and pending[0] not in incomplete:
            pending.popleft()

    # -- state ----------------------------------------------------------------------------------

    @property
    def revoked(self) -> bool:
        return self._revoked

    @property
    def incomplete(self) -> int:
        """Admitted records not done yet."""
        return len(self._incomplete)

    @property
    def incomplete_bytes(self) -> int:
        """Bytes of the admitted records not done yet (as given to ``admit``)."""
        return self._incomplete_bytes

    @property
    def highest_admitted(self) -> int | None:
        return self._next - 1 if self._admitted_any and self._next is not None else None

    def _commit_offset(self) -> int | None:
        return self._pending[0] if self._pending else self._next

    def _done_map(self, commit_offset: int) -> OffsetMap:
        ranges: list[range] = []
        start = stop = -1
        incomplete = self._incomplete
        for offset in self._pending:
            if offset in incomplete:
                continue
            if offset == stop:
                stop += 1
                continue
            if stop > start:
                ranges.append(range(start, stop))
            start, stop = offset, offset + 1
        if stop > start:
            ranges.append(range(start, stop))
        if ranges and self._restored and self._restored[0].start == ranges[-1].stop:
            ranges[-1] = range(ranges[-1].start, self._restored[0].stop)
            ranges.extend(list(self._restored)[1:])
        else:
            ranges.extend(self._restored)
        return OffsetMap(commit_offset, tuple(ranges))

    def budget_fill(self) -> float:
        """Worst-case fraction of the budget in use by what is admitted so far, whatever order
        it completes in: the larger of (metadata bound / ``max_metadata_chars``) and
        (pending / ``max_pending``). It can only fall until more is admitted."""
        commit_offset = self._commit_offset()
        if commit_offset is None:
            return 0.0
        done = len(self._pending) - len(self._incomplete) + self._restored_count
        chars = 0
        if done:
            last = self._restored[-1].stop - 1 if self._restored else self._pending[-1]
            span = last - commit_offset + 1
            chars = worst_case_chars(commit_offset, span, span - done)
        return max(
            chars / self._budget.max_metadata_chars,
            len(self._pending) / self._budget.max_pending,
        )

    def over_budget(self) -> bool:
        """True when intake for this partition should pause (``budget_fill`` >= pause mark)."""
        return self.budget_fill() >= self._budget.pause_fill

    def may_resume(self) -> bool:
        """True when paused intake may resume (``budget_fill`` <= resume mark)."""
        return self.budget_fill() <= self._budget.resume_fill

    # -- committing -----------------------------------------------------------------------------

    def commit_point(self) -> CommitPoint | None:
        """What to commit now, or None: nothing known yet, nothing changed since the last
        ``mark_committed`` (or since the restored commit), or the partition is revoked."""
        if self._revoked:
            return None
        if self._version != self._cached_version:
            commit_offset = self._commit_offset()
            if commit_offset is None:
                self._cached = None
            else:
                text, left_out = self._done_map(commit_offset).encode_within(
                    self._budget.max_metadata_chars
                )
                self.truncated_offsets += left_out
                self._cached = (commit_offset, text)
            self._cached_version = self._version
        if self._cached is None or self._cached == self._committed:
            return None
        return CommitPoint(self.topic, self.partition, *self._cached)

    def mark_committed(self, point: CommitPoint) -> None:
        """Record that ``point`` (from ``commit_point``) was committed; later calls to
        ``commit_point`` return None until something changes. Ignored once revoked."""
        if not self._revoked:
            self._committed = (point.offset, point.metadata)

    def revoke(self) -> None:
        """The partition is no longer ours: never yield a commit point again, ignore late
        completions, release the tracked offsets. Idempotent."""
        self._revoked = True
        self._pending.clear()
        self._incomplete.clear()
        self._incomplete_bytes = 0
        self._restored.clear()
        self._restored_count = 0

    def stats(self) -> PartitionStats:
        return PartitionStats(
            topic=self.topic,
            partition=self.partition,
            commit_offset=None if self._revoked else self._commit_offset(),
            committed_offset=self._committed[0] if self._committed else None,
            highest_admitted=self.highest_admitted,
            incomplete=len(self._incomplete),
            pending=len(self._pending),
            restored_remaining=self._restored_count,
            skipped_done=self.skipped_done,
            truncated_offsets=self.truncated_offsets,
            budget_fill=self.budget_fill(),
        )


class OffsetTracker:
    """The ``PartitionOffsets`` of every partition this member owns, keyed by (topic, partition).

    The engine calls ``assign`` from its ``on_assigned`` callback, and from ``on_revoked``:
    ``commit_points(only=...)``, commits them, ``mark_committed``, then ``revoke``; from
    ``on_lost`` just ``revoke`` (the partitions already belong to someone else).
    """

    def __init__(self, *, budget: OffsetBudget | None = None) -> None:
        self._budget = budget or OffsetBudget()
        self._partitions: dict[tuple[str, int], PartitionOffsets] = {}

    def assign(
        self, topic: str, partition: int, *, committed: int | None, metadata: str | None
    ) -> PartitionOffsets:
        """Start tracking a newly assigned partition; a previous object for it is revoked."""
        previous = self._partitions.get((topic, partition))
        if previous is not None:
            previous.revoke()
        offsets = PartitionOffsets(
            topic, partition, committed=committed, metadata=metadata, budget=self._budget
        )
        self._partitions[(topic, partition)] = offsets
        return offsets

    def get(self, topic: str, partition: int) -> PartitionOffsets | None:
        """The owned partition's tracker, or None when not owned."""
        return self._partitions.get((topic, partition))

    def revoke(self, topic: str, partition: int) -> None:
        """Stop owning the partition (revoked or lost). Idempotent."""
        offsets = self._partitions.pop((topic, partition), None)
        if offsets is not None:
            offsets.revoke()

    def owned(self) -> list[PartitionOffsets]:
        return list(self._partitions.values())

    def commit_points(self, only: Iterable[tuple[str, int]] | None = None) -> list[CommitPoint]:
        """Commit points of the owned partitions (or of ``only`` among them) that have something
        new to commit."""
        keys = self._partitions.keys() if only is None else only
        points = []
        for key in keys:
            offsets = self._partitions.get(key)
            point = offsets.commit_point() if offsets is not None else None
            if point is not None:
                points.append(point)
        return points

    def mark_committed(self, points: Iterable[CommitPoint]) -> None:
        """Record successful commits; points of partitions no longer owned are ignored."""
        for point in points:
            offsets = self._partitions.get((point.topic, point.partition))
            if offsets is not None:
                offsets.mark_committed(point)

    def stats(self) -> list[PartitionStats]:
        return [offsets.stats() for offsets in self._partitions.values()]
