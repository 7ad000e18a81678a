"""Partitioned, disk-backed profile state (issue 19): each changelog partition's profiles in
its own SQLite file under a state directory, with the changelog offset that file reflects, so
a member holds only the partitions it owns, memory is bounded by a cache and not by the number
of users, and reopening a partition restores only the changelog's tail.

Why SQLite (``bench/bench_state.py``, ``docs/architecture.md``, "Profiles"): in the standard
library, bounded anonymous memory (its page cache is a setting; LMDB's pages of a memory-mapped
file count as RSS and grow with the state), one transaction holds a batch and its checkpoint,
and its rates (at 1,000,000 profiles about 100,000 restored records/s and 146,000 reads/s
from the file on this machine) are above what one member maps.

Layout: ``<state_dir>/<changelog topic>/<partition>.db``, tables ``p`` (key -> encoded profile,
``Profile.to_bytes``) and ``meta`` (format, topic, topic id, partition, checkpoint, clean).

Trust: a partition's file is used only when its ``meta`` names this format, topic, topic id
(KIP-516: a changelog deleted and created again has a new one, even when its offsets reach as
far as the file's checkpoint) and partition, says it was closed cleanly (``clean``, written
last by ``close`` in the transaction that flushes the rest, and cleared by ``open`` before
anything else is written) and SQLite's ``quick_check`` passes. Anything else (no file,
another topic or topic id, a crash or a kill while open, a damaged file) discards the file and
the partition is rebuilt from the changelog's start. ``open`` says which, and why.

Checkpoint contract: ``checkpoint(partition, offset)`` states that every record of that
changelog partition below ``offset`` is reflected here (applied, or superseded by a newer write
of ours, which is itself in the changelog after that offset); it is written in the same
transaction as the writes waiting in memory. Replaying the changelog from the checkpoint, in
order, therefore ends with every key as the changelog leaves it.

Writes are coalesced in memory per partition (at most ``flush_entries`` of them; a read sees
them first) and written, sorted, in one transaction when that many are waiting, at a
checkpoint and at ``close``: SQLite writes a B-tree page per row inserted at random, so few
large sorted transactions are what make a restore as fast as Kafka is read (``flush_entries``
50,000: about 12 MB waiting at most per partition). Event-loop thread only (SQLite
connections are checked for it).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from consumer.core.profiles import Profile, consent_suffix

logger = logging.getLogger(__name__)

_FORMAT: Final = "1"
_ABSENT: Final = b""  # cached: the key has no profile (an encoded profile is never empty)


@dataclass(frozen=True, slots=True)
class Opened:
    """What ``open`` found: restore the partition's changelog from ``start``. ``rebuilt`` says
    why the local state was discarded (None: it was kept, ``start`` is its checkpoint)."""

    partition: int
    start: int
    rebuilt: str | None


class _Partition:
    """One partition's file, its checkpoint and its writes not yet in the file
    (key -> encoded profile, or None for a deletion)."""

    __slots__ = ("checkpoint", "db", "number", "pending", "size", "topic_id")

    def __init__(
        self, number: int, db: sqlite3.Connection, checkpoint: int, topic_id: str
    ) -> None:
        self.number = number
        self.db = db
        self.checkpoint = checkpoint
        self.topic_id = topic_id
        self.pending: dict[str, bytes | None] = {}
        self.size = 0  # profiles held: counted by ``recount``, then kept by put and forget


class PartitionedProfileStore:
    """Profiles of the changelog partitions this member owns, on disk, with a bounded cache.

    The mapper's side (``core.profiles.ProfileStore``): ``get``, ``put`` and ``consent_holds``
    act on the partition ``select`` named last (the partition of the record being mapped).

    The changelog's side (the contract of ``core.profiles.ChangelogProfileStore``, each call
    naming its partition): ``put`` of a changed profile counts in ``changes`` and becomes an
    unsent write; ``take_writes`` returns them as (partition, key, value), one per partition
    and key (its latest profile), in the order they first changed, to be produced to that
    changelog partition; ``written`` confirms one. ``restore`` applies a changelog record and
    skips a key with a write of ours unconfirmed (what we hold is newer); ``forget`` erases a
    key even then (erasure wins). ``open`` and ``close`` bracket a partition's ownership.

    ``cache_entries`` bounds the profiles (and known absences) held in memory over every
    partition; ``page_cache_kib`` is SQLite's page cache per open partition.
    """

    def __init__(
        self,
        state_dir: Path,
        topic: str,
        *,
        cache_entries: int = 100_000,
        page_cache_kib: int = 8192,
        flush_entries: int = 50_000,
    ) -> None:
        if cache_entries < 1 or flush_entries < 1 or page_cache_kib < 1:
            raise ValueError("cache_entries, flush_entries and page_cache_kib must be >= 1")
        self._dir = state_dir / topic
        self._topic = topic
        self._cache_entries = cache_entries
        self._page_cache_kib = page_cache_kib
        self._flush_entries = flush_entries
        self._parts: dict[int, _Partition] = {}
        self._current: _Partition | None = None
        self._detached = False  # the partition selected last is not open here
        self._cache: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._unsent: dict[tuple[int, str], bytes] = {}
        self._unconfirmed: dict[tuple[int, str], int] = {}
        self.changes = 0
        self.hits = self.misses = 0  # cache, for a metric

    # -- ownership ------------------------------------------------------------------------------

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions open now."""
        return frozenset(self._parts)

    def __len__(self) -> int:
        """Profiles held over every open partition (see ``sizes``)."""
        return sum(part.size for part in self._parts.values())

    def sizes(self) -> dict[int, int]:
        """Profiles held per open partition: exact after ``recount``, then kept up to date by
        the mapper's ``put`` and by ``forget`` (a restore's records count at its ``recount``)."""
        return {number: part.size for number, part in self._parts.items()}

    def recount(self, partition: int) -> int:
        """Count ``partition``'s profiles (written and waiting): a scan of its file, so called
        once a restore is done, not per record."""
        part = self._parts[partition]
        self._flush(part, clean=False)
        part.size = part.db.execute("SELECT count(*) FROM p").fetchone()[0]
        return part.size

    def open(self, partition: int, *, topic_id: str = "") -> Opened:
        """Open ``partition``'s local state (see the module doc for when it is trusted) and
        mark it in use. ``topic_id``: the changelog topic's id as it is now (``kafka.admin.
        topic_id``; a file written under another is rebuilt; "" where no broker is involved).
        Raises ``OSError`` when the state directory cannot be written."""
        if partition in self._parts:
            raise ValueError(f"profile state: partition {partition} is already open")
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / f"{partition}.db"
        db, why = (None, "no local state")
        if path.exists():
            db, why = self._connect_checked(path, partition, topic_id)
        reason: str | None = why
        if db is None:
            db = self._create(path, partition, topic_id)
            checkpoint = 0
        else:
            checkpoint = int(_read_meta(db)["checkpoint"])
            with db:
                db.execute("BEGIN")
                db.execute("UPDATE meta SET value = '0' WHERE name = 'clean'")
            reason = None
        self._parts[partition] = _Partition(partition, db, checkpoint, topic_id)
        if reason is not None:
            logger.info(
                "profile state %s/%d: rebuilt from the changelog (%s)",
                self._topic, partition, reason,
            )
        return Opened(partition=partition, start=checkpoint, rebuilt=reason)

    def close(self, partition: int) -> None:
        """Write ``partition``'s waiting writes and close its file; its profiles leave the cache
        and its unsent writes are dropped (the partition's next owner maps those records
        again). The file is marked clean only when every write of ours was confirmed: else the
        next ``open`` rebuilds it."""
        part = self._parts.pop(partition)
        if self._current is part:
            self._current = None
        clean = not any(p == partition for p, _ in self._unconfirmed)
        self._drop_memory(partition)
        self._flush(part, clean=clean)
        part.db.close()

    def reset(self, partition: int) -> None:
        """Discard open ``partition``'s local state (the changelog cannot continue its
        checkpoint): it stays open, empty, with checkpoint 0, to be restored from the start."""
        part = self._parts[partition]
        part.db.close()
        self._drop_memory(partition)
        part.pending.clear()
        part.db = self._create(self._dir / f"{partition}.db", partition, part.topic_id)
        part.checkpoint = part.size = 0

    def select(self, partition: int) -> bool:
        """The partition ``get``, ``put`` and ``consent_holds`` act on from now. False when it
        is not open: until the next ``select`` the store is then detached (``get`` finds
        nothing, ``consent_holds`` holds only for no decisions, ``put`` records nothing), so a
        record of a partition whose profiles live elsewhere is mapped without them."""
        self._current = part = self._parts.get(partition)
        self._detached = part is None
        return part is not None

    # -- the mapper's side ----------------------------------------------------------------------

    def get(self, key: str) -> Profile | None:
        if self._detached:
            return None
        data = self._lookup(self._selected(), key)
        return Profile.from_own_bytes(data) if data else None

    def put(self, key: str, profile: Profile) -> None:
        if self._detached:
            return
        part = self._selected()
        data = memoryview(profile.to_bytes()).tobytes()  # orjson's buffer is not kept alive
        previous = self._lookup(part, key)
        if previous == data:
            return
        part.size += not previous
        self._set(part, key, data)
        self.changes += 1
        ident = (part.number, key)
        if ident not in self._unsent:
            self._unconfirmed[ident] = self._unconfirmed.get(ident, 0) + 1
        self._unsent[ident] = data

    def consent_holds(self, key: str, decisions: Mapping[str, bool]) -> bool:
        data = _ABSENT if self._detached else self._lookup(self._selected(), key)
        if not data:
            return not decisions
        if data.endswith(consent_suffix(decisions)):
            return True
        consent = Profile.from_own_bytes(data).consent
        return all(consent.get(category) == granted for category, granted in decisions.items())

    # -- the changelog's side -------------------------------------------------------------------

    def take_writes(self) -> list[tuple[int, str, bytes]]:
        """The changes since the last call: (partition, key, latest value), one per partition
        and key, in the order they first changed."""
        writes = [(p, key, value) for (p, key), value in self._unsent.items()]
        self._unsent = {}
        return writes

    def written(self, partition: int, key: str) -> None:
        """The broker confirmed one write of ``key`` to ``partition`` (from ``take_writes``)."""
        ident = (partition, key)
        left = self._unconfirmed.get(ident, 0) - 1
        if left > 0:
            self._unconfirmed[ident] = left
        else:
            self._unconfirmed.pop(ident, None)

    def restore(self, partition: int, key: str, value: bytes | None) -> bool:
        """Apply one record of ``partition``'s changelog (None: a tombstone). False when
        skipped (a write of ours for the key is unconfirmed). Raises ``ProfileDecodeError``
        for bytes that are not a profile; the caller counts it and goes on."""
        if (partition, key) in self._unconfirmed:
            return False
        data = None
        if value is not None:  # validated, canonical bytes, copied
            data = memoryview(Profile.from_bytes(value).to_bytes()).tobytes()
        self._set(self._parts[partition], key, data)
        return True

    def forget(self, partition: int, key: str) -> bool:
        """Erase ``key``'s profile in ``partition`` (a tombstone of ``ghl-consumer forget``),
        even with a write of ours unconfirmed, and drop its unsent write. Returns whether a
        profile was held."""
        part = self._parts[partition]
        held = bool(self._lookup(part, key))
        part.size -= held
        self._unsent.pop((partition, key), None)
        self._unconfirmed.pop((partition, key), None)
        self._set(part, key, None)
        return held

    def checkpoint(self, partition: int, offset: int) -> None:
        """Every record of ``partition``'s changelog below ``offset`` is reflected here (see
        the module doc): write the waiting writes and the checkpoint in one transaction."""
        part = self._parts[partition]
        part.checkpoint = offset
        self._flush(part, clean=False)

    def checkpoint_of(self, partition: int) -> int:
        """The last checkpoint of an open partition."""
        return self._parts[partition].checkpoint

    def close_all(self) -> None:
        """``close`` every open partition (shutdown)."""
        for partition in list(self._parts):
            self.close(partition)

    # -- internals ------------------------------------------------------------------------------

    def _selected(self) -> _Partition:
        if self._current is None:
            raise RuntimeError("profile state: no partition selected")
        return self._current

    def _lookup(self, part: _Partition, key: str) -> bytes:
        """``key``'s encoded profile in ``part``, or ``_ABSENT``: the waiting writes, then the
        cache, then the file (what the file says is cached, absences included)."""
        if key in part.pending:
            return part.pending[key] or _ABSENT  # None: a deletion waiting
        ident = (part.number, key)
        data = self._cache.get(ident)
        if data is not None:
            self.hits += 1
            self._cache.move_to_end(ident)
            return data
        self.misses += 1
        row = part.db.execute("SELECT v FROM p WHERE k = ?", (key,)).fetchone()
        data = _ABSENT if row is None else bytes(row[0])
        self._remember(ident, data)
        return data

    def _set(self, part: _Partition, key: str, data: bytes | None) -> None:
        part.pending[key] = data
        self._remember((part.number, key), data or _ABSENT)
        if len(part.pending) >= self._flush_entries:
            self._flush(part, clean=False)

    def _remember(self, ident: tuple[int, str], data: bytes) -> None:
        cache = self._cache
        cache[ident] = data
        cache.move_to_end(ident)
        if len(cache) > self._cache_entries:
            cache.popitem(last=False)

    def _flush(self, part: _Partition, *, clean: bool) -> None:
        """Write ``part``'s waiting writes, its checkpoint and ``clean`` in one transaction
        (the meta rows last)."""
        # sorted: consecutive keys share B-tree pages (3x the rate of random order, measured)
        pending, part.pending = sorted(part.pending.items()), {}
        db = part.db
        with db:
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR REPLACE INTO p VALUES (?, ?)",
                [(k, v) for k, v in pending if v is not None],
            )
            db.executemany("DELETE FROM p WHERE k = ?", [(k,) for k, v in pending if v is None])
            db.executemany(
                "UPDATE meta SET value = ? WHERE name = ?",
                [(str(part.checkpoint), "checkpoint"), ("1" if clean else "0", "clean")],
            )

    def _drop_memory(self, partition: int) -> None:
        """Forget ``partition``'s cached profiles and its unsent and unconfirmed writes."""
        for held in (self._unsent, self._unconfirmed, self._cache):
            for ident in [i for i in held if i[0] == partition]:
                del held[ident]

    def _create(self, path: Path, partition: int, topic_id: str) -> sqlite3.Connection:
        """A new, empty file for ``partition`` in place of any at ``path``."""
        _remove(path)
        db = self._connect(path)
        db.executescript(
            "CREATE TABLE p (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
        )
        _write_meta(
            db,
            partition=partition,
            topic=self._topic,
            topic_id=topic_id,
            checkpoint=0,
            clean=False,
        )
        return db

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA cache_size=-{self._page_cache_kib}")
        return db

    def _connect_checked(
        self, path: Path, partition: int, topic_id: str
    ) -> tuple[sqlite3.Connection | None, str]:
        """The file's connection when it can be trusted, else (None, why not)."""
        db: sqlite3.Connection | None = None
        try:
            db = self._connect(path)
            meta = _read_meta(db)
            expected = {
                "format": _FORMAT,
                "topic": self._topic,
                "topic id": topic_id,  # absent in files written before it was recorded
                "partition": str(partition),
            }
            wrong = [name for name, value in expected.items() if meta.get(name) != value]
            if wrong:
                reason = f"written for another {', '.join(wrong)}"
            elif meta.get("clean") != "1":
                reason = "not closed cleanly"
            elif not meta.get("checkpoint", "").isdigit():
                reason = "no checkpoint"
            elif (check := db.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
                reason = f"damaged: {check}"
            else:
                return db, ""
        except sqlite3.DatabaseError as exc:
            reason = f"unreadable: {exc}"
        if db is not None:
            db.close()
        return None, reason


def _read_meta(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT name, value FROM meta").fetchall())


def _write_meta(
    db: sqlite3.Connection,
    *,
    partition: int,
    topic: str,
    topic_id: str,
    checkpoint: int,
    clean: bool,
) -> None:
    rows = {
        "format": _FORMAT,
        "topic": topic,
        "topic id": topic_id,
        "partition": str(partition),
        "checkpoint": str(checkpoint),
        "clean": "1" if clean else "0",
    }
    with db:
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", rows.items())


def _remove(path: Path) -> None:
    """Delete a partition's file and SQLite's companions (write-ahead log, shared memory)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
