"""``messageId`` deduplication: bounded in entries and in time.

SDKs retry sends and collectors may forward an event twice; the same ``messageId`` for the same
contact key within the TTL is a duplicate. Ids are remembered per contact key (the record key,
else userId, else anonymousId). Records keyed by user, as the integration guide asks, share a
partition per key and are read in offset order, so which copy is the duplicate never depends on
the order partitions are read in (the engine reads them concurrently, ``ghl-consumer audit``
one after another, and both decide alike). The same messageId under two keys (fixtures and test
tools reuse ids) is two events. Memory is bounded: past ``max_entries`` the oldest ids are
forgotten first.
In-process only (a restart forgets), which is what at-least-once redelivery needs: a record
redelivered after a crash was never delivered and must be processed again. For the same reason a
duplicate is another *record* with a seen id: given the record's ``origin`` (its topic,
partition and offset), the same record read again (a partition revoked or lost, then assigned
back to this member, re-reads its undelivered records) is not a duplicate.

A replayed dead letter (``ghl-consumer dlq replay``) is a new origin, never a duplicate of the
record it copies: the original was seen (and failed) within the TTL, by design. The caller
passes ``replay_of``, the dead letter the copy was made from (its ``ghl.replayed_from`` header,
``consumer.core.deadletter.replayed_from``), and the id is remembered per replay: a copy is a
duplicate only of another copy of the same dead letter (a rerun of a replay that re-sent it).
The header cannot be forged to any effect: whoever can write it to a source topic can as well
write a fresh messageId, and deduplication absorbs honest repeats (SDK retries, collectors
forwarding twice), which never carry ``ghl.*`` headers; it was never a defence against a
writer of the source topic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class MessageDeduper:
    """Remembers message ids for ``ttl_seconds``, at most ``max_entries`` of them.

    ``now`` is passed in (seconds, monotonic per instance) so tests move time by hand. Not
    thread-safe: one per mapper, called from one thread. ``len()`` is the number remembered.
    """

    def __init__(self, *, max_entries: int, ttl_seconds: float) -> None:
        if max_entries < 1 or ttl_seconds <= 0:
            raise ValueError("max_entries must be >= 1 and ttl_seconds > 0")
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        # (contact key, id, replay_of or None) -> (first seen, hash of the first record's
        # origin), oldest first
        self._seen: OrderedDict[tuple[str, str, str | None], tuple[float, int | None]] = (
            OrderedDict()
        )
        self.evicted = 0  # forgotten because of the bound (not the TTL), for a metric
        # When the oldest entry expires (-inf: unknown, look): most calls need not look.
        self._expires_at = float("inf")

    def __len__(self) -> int:
        return len(self._seen)

    def check(
        self,
        contact_key: str,
        message_id: str,
        now: float,
        origin: Hashable | None = None,
        replay_of: str | None = None,
    ) -> bool:
        """True when ``message_id`` was seen for ``contact_key`` within the TTL in another
        record (a duplicate). Otherwise remember it as seen at ``now`` in ``origin`` and return
        False. The record first seen with the id, read again (same ``origin``, not None), is
        not a duplicate.
        ``replay_of`` (a replayed dead letter's source, see the module docstring) keys the id
        apart: a replay is compared only with other replays of the same dead letter.
        A duplicate does not extend the TTL."""
        seen = self._seen
        if now >= self._expires_at:
            self._expire(now)
        where = None if origin is None else hash(origin)
        key = (contact_key, message_id, replay_of)
        if key in seen:
            first_origin = seen[key][1]
            return where is None or first_origin != where
        if not seen:
            self._expires_at = now + self._ttl
        seen[key] = (now, where)
        if len(seen) > self._max_entries:
            _, (first_seen, _) = seen.popitem(last=False)
            self.evicted += 1
            # the new oldest entry was seen no earlier: it expires no earlier than this
            self._expires_at = first_seen + self._ttl
        return False

    def _expire(self, now: float) -> None:
        """Forget the ids first seen a TTL or longer before ``now``; note when the next one
        expires. Entries are in first-seen order, so expired ones are at the front."""
        seen, horizon = self._seen, now - self._ttl
        while seen:
            oldest, (first_seen, _) = next(iter(seen.items()))
            if first_seen > horizon:
                self._expires_at = first_seen + self._ttl
                return
            del seen[oldest]
        self._expires_at = float("inf")
