"""``messageId`` deduplication: bounded in entries and in time.

SDKs retry sends and collectors may forward an event twice; the same ``messageId`` within the
TTL is a duplicate. Memory is bounded: past ``max_entries`` the oldest ids are forgotten first.
In-process only (a restart forgets), which is what at-least-once redelivery needs: a record
redelivered after a crash was never delivered and must be processed again. For the same reason a
duplicate is another *record* with a seen id: given the record's ``origin`` (its topic,
partition and offset), the same record read again (a partition revoked or lost, then assigned
back to this member, re-reads its undelivered records) is not a duplicate.
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
        # id -> (first seen, hash of the first record's origin), oldest first
        self._seen: OrderedDict[str, tuple[float, int | None]] = OrderedDict()
        self.evicted = 0  # forgotten because of the bound (not the TTL), for a metric

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, message_id: str, now: float, origin: Hashable | None = None) -> bool:
        """True when ``message_id`` was seen within the TTL in another record (a duplicate).
        Otherwise remember it as seen at ``now`` in ``origin`` and return False. The record
        first seen with the id, read again (same ``origin``, not None), is not a duplicate.
        A duplicate does not extend the TTL."""
        seen = self._seen
        horizon = now - self._ttl
        # Entries are in first-seen order, so expired ones are at the front.
        while seen:
            oldest_id, (first_seen, _) = next(iter(seen.items()))
            if first_seen > horizon:
                break
            del seen[oldest_id]
        where = None if origin is None else hash(origin)
        if message_id in seen:
            first_origin = seen[message_id][1]
            return where is None or first_origin != where
        seen[message_id] = (now, where)
        if len(seen) > self._max_entries:
            seen.popitem(last=False)
            self.evicted += 1
        return False
