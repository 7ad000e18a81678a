"""Key-ordered, coalescing work queue: the pure core of the engine's concurrency.

Contract (what the engine relies on):

- Work is addressed by a *key* (one contact of one integration) and belongs to a *lane* (the
  HighLevel location whose rate budget it spends). Lanes are independent queues, so one busy
  location never delays a quiet one.
- A key has at most one piece of work in flight. While it is in flight, or while its own work
  waits (for the coalescing window, for the lane's rate permit, for a retry backoff), later items
  for the same key fold into one *pending* work with ``merge(older, newer)``: one delivery then
  completes every ticket (an admitted source record) folded into it.
- Within a key, items are applied in the order offered; a retried work keeps its place ahead of
  newer items (they merge *into* it, older first).
- ``take`` hands out a lane's ready work, oldest ready time first.
- Optionally, work also has *identities* (``identities(item)``: in the engine the HighLevel
  location with the email, and with the phone, HighLevel matches a contact by). Two works
  sharing an identity are never in flight together, whatever their keys: ready work whose
  identity is held waits, out of its lane's queue, until the holder completes or is put back
  for a retry; then it is queued again with its own ready time (so it usually goes next).
  Identities must belong to one lane (the engine's include the location): releasing one only
  readies work of the holder's lane. Holding is for the time in flight only, never while
  waiting, so two works cannot wait on each other.

Pure: no clock, no I/O. Every method that depends on time takes ``now`` (seconds, any monotonic
origin). Not thread-safe: the engine calls it from the event loop thread only.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")  # the work item (a ContactUpsert in the engine)
K = TypeVar("K")  # a completion ticket (an admitted source record in the engine)


@dataclass(slots=True, eq=False)
class Work(Generic[T, K]):
    """One unit of delivery for one key: the merged item and every ticket folded into it.

    ``first_at`` is when the oldest folded item arrived; ``first_taken_at`` when the work was
    first handed out (retries keep it: how long a contact has been failing); ``attempts`` counts
    deliveries already tried (0 for new work); ``coalesced`` counts items merged into the first.
    """

    key: Hashable
    lane: Hashable
    item: T
    tickets: list[K]
    first_at: float
    ready_at: float
    attempts: int = 0
    coalesced: int = 0
    first_taken_at: float | None = None
    _version: int = field(default=0, repr=False)
    # identities(item), computed once per item (None: not yet, or the item changed).
    _identities: tuple[Hashable, ...] | None = field(default=None, repr=False)


@dataclass(slots=True)
class _KeyState(Generic[T, K]):
    pending: Work[T, K] | None = None
    in_flight: Work[T, K] | None = None


class KeyedScheduler(Generic[T, K]):
    """The queue described in the module docstring.

    ``window`` (seconds, >= 0) is how long new work waits for more items to fold in before it is
    ready; 0 turns the window off (work still coalesces while it waits for a permit or for an
    in-flight delivery of the same key). ``identities`` (optional) gives an item's identities,
    at most one work holding each in flight (module docstring); it must be cheap and pure.
    """

    def __init__(
        self,
        *,
        window: float,
        merge: Callable[[T, T], T],
        identities: Callable[[T], Iterable[Hashable]] | None = None,
    ) -> None:
        if window < 0:
            raise ValueError("window must be >= 0")
        self._window = window
        self._merge = merge
        self._identities_of = identities
        self._held: dict[Hashable, Work[T, K]] = {}  # identity -> the in-flight work holding it
        # identity -> (key, version) of pending works waiting for it, oldest first
        self._waiting: dict[Hashable, list[tuple[Hashable, int]]] = {}
        self._identity_waits = 0
        self._keys: dict[Hashable, _KeyState[T, K]] = {}
        # lane -> heap of (ready_at, sequence, key, version); stale entries are skipped lazily.
        self._lanes: dict[Hashable, list[tuple[float, int, Hashable, int]]] = {}
        self._sequence = itertools.count()
        self._in_flight = 0
        self._tickets = 0

    # -- intake ---------------------------------------------------------------------------

    def offer(self, key: Hashable, lane: Hashable, item: T, ticket: K, *, now: float) -> bool:
        """Add ``item`` for ``key``; return True when it folded into the key's pending work."""
        self._tickets += 1
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        pending = state.pending
        if pending is not None:
            pending.item = self._merge(pending.item, item)
            pending._identities = None
            pending.tickets.append(ticket)
            pending.coalesced += 1
            return True
        state.pending = Work(key, lane, item, [ticket], first_at=now, ready_at=now + self._window)
        if state.in_flight is None:
            self._schedule(state.pending)
        return False

    # -- dispatch -------------------------------------------------------------------------

    def take(self, lane: Hashable, *, now: float) -> Work[T, K] | None:
        """Pop the lane's oldest ready work and mark its key in flight; None when none is ready."""
        head = self._head(lane)
        if head is None or head.ready_at > now:
            return None
        heapq.heappop(self._lanes[lane])
        state = self._keys[head.key]
        state.pending = None
        state.in_flight = head
        if head.first_taken_at is None:
            head.first_taken_at = now
        if head._identities:
            for identity in head._identities:
                self._held[identity] = head
        self._in_flight += 1
        return head

    def peek(self, lane: Hashable) -> Work[T, K] | None:
        """The work ``take`` would consider next in ``lane`` (ready or not), without taking it."""
        return self._head(lane)

    def next_ready_at(self, lane: Hashable) -> float | None:
        """When the lane's earliest work becomes ready (may be in the past); None when empty."""
        head = self._head(lane)
        return None if head is None else head.ready_at

    def _head(self, lane: Hashable) -> Work[T, K] | None:
        """The lane's earliest schedulable work, after dropping stale heap entries and setting
        aside work whose identity another work holds (``_release`` queues it again)."""
        heap = self._lanes.get(lane)
        while heap:
            _, _, key, version = heap[0]
            state = self._keys.get(key)
            pending = state.pending if state is not None else None
            if (
                state is not None
                and pending is not None
                and state.in_flight is None
                and pending._version == version
            ):
                if self._identities_of is None:
                    return pending
                identities = pending._identities
                if identities is None:
                    identities = pending._identities = tuple(self._identities_of(pending.item))
                blocker = self._blocker(identities) if self._held else None
                if blocker is None:
                    return pending
                self._waiting.setdefault(blocker, []).append((key, version))
                self._identity_waits += 1
            heapq.heappop(heap)
        return None

    def _blocker(self, identities: tuple[Hashable, ...]) -> Hashable | None:
        """The first of ``identities`` held by work in flight, else None."""
        held = self._held
        for identity in identities:
            if identity in held:
                return identity
        return None

    def lanes(self) -> Iterator[Hashable]:
        """Lanes that may hold pending work (some may turn out empty)."""
        return iter([lane for lane, heap in self._lanes.items() if heap])

    # -- completion -----------------------------------------------------------------------

    def complete(self, work: Work[T, K]) -> None:
        """The in-flight ``work`` is finished (delivered, dead-lettered or parked): its key may
        dispatch its next pending work, which keeps its own ready time."""
        state = self._finish(work)
        self._tickets -= len(work.tickets)
        if state.pending is not None:
            self._schedule(state.pending)
        else:
            del self._keys[work.key]

    def retry(self, work: Work[T, K], *, at: float) -> Work[T, K]:
        """Put failed in-flight ``work`` back, ready at ``at``, ahead of newer items of its key:
        any pending work of the key is merged into it (older first). Returns the new pending."""
        state = self._finish(work)
        newer = state.pending
        if newer is not None:
            work.item = self._merge(work.item, newer.item)
            work._identities = None
            work.tickets.extend(newer.tickets)
            work.coalesced += newer.coalesced + 1
        work.attempts += 1
        work.ready_at = at
        state.pending = work
        self._schedule(work)
        return work

    def _finish(self, work: Work[T, K]) -> _KeyState[T, K]:
        state = self._keys.get(work.key)
        if state is None or state.in_flight is not work:
            raise ValueError("work is not in flight")
        state.in_flight = None
        self._in_flight -= 1
        if work._identities:
            self._release(work)
        return state

    def _release(self, work: Work[T, K]) -> None:
        """``work`` is no longer in flight: free its identities and queue again the works
        that waited for them (those still pending as they were set aside)."""
        held, waiting = self._held, self._waiting
        for identity in work._identities or ():
            if held.get(identity) is work:
                del held[identity]
            if not waiting:
                continue
            for key, version in waiting.pop(identity, ()):
                state = self._keys.get(key)
                pending = state.pending if state is not None else None
                if pending is not None and pending._version == version:
                    self._schedule(pending)

    # -- removal --------------------------------------------------------------------------

    def discard(self, keep: Callable[[K], bool]) -> list[K]:
        """Remove tickets for which ``keep`` is False from *pending* work (e.g. offsets of revoked
        partitions) and return them; pending work left without tickets is dropped. In-flight
        work is left alone: its delivery finishes, and the caller ignores its stale tickets."""
        removed: list[K] = []
        for key in list(self._keys):
            state = self._keys[key]
            pending = state.pending
            if pending is None:
                continue
            kept = [t for t in pending.tickets if keep(t)]
            if len(kept) == len(pending.tickets):
                continue
            removed.extend(t for t in pending.tickets if not keep(t))
            pending.tickets = kept
            if not kept:
                state.pending = None
                if state.in_flight is None:
                    del self._keys[key]
        self._tickets -= len(removed)
        return removed

    # -- introspection --------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Works currently handed out by ``take`` and not yet completed or retried."""
        return self._in_flight

    @property
    def tickets(self) -> int:
        """Tickets held (pending and in flight): the engine's measure of buffered records."""
        return self._tickets

    @property
    def keys(self) -> int:
        """Keys with pending or in-flight work."""
        return len(self._keys)

    @property
    def identity_waits(self) -> int:
        """Times ready work was set aside because another work held one of its identities."""
        return self._identity_waits

    def _schedule(self, work: Work[T, K]) -> None:
        work._version += 1
        heap = self._lanes.setdefault(work.lane, [])
        heapq.heappush(heap, (work.ready_at, next(self._sequence), work.key, work._version))
