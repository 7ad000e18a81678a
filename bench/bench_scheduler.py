"""What the keyed scheduler's hot path costs per upsert: offer, take, complete.

Run: ``.venv/bin/python bench/bench_scheduler.py``. Feeds 100,000 upserts of 20,000 contacts
(one location) through ``KeyedScheduler`` with up to 64 works in flight, completing the
oldest first, as the dispatcher does when HighLevel answers in order; prints the best of five
runs in upserts per second and nanoseconds per upsert.

With the identity lock (``consumer.engine.dispatch.upsert_identities``) it runs twice: every
contact with its own email, and every email shared by two keys (an anonymous and an identified
key), the case the lock serialises. Run from a tree without the lock (``PYTHONPATH=<tree>``),
it measures the scheduler alone, for a before/after comparison in one sitting.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable

from consumer.core.events import ContactUpsert
from consumer.engine import dispatch
from consumer.engine.scheduler import KeyedScheduler

UPSERTS, CONTACTS, IN_FLIGHT, LOCATION = 100_000, 20_000, 64, "loc-bench"
Identities = Callable[[ContactUpsert], Iterable[Hashable]]


def stream(shared: bool) -> list[ContactUpsert]:
    """``UPSERTS`` upserts cycling over ``CONTACTS`` keys; ``shared``: keys 2n and 2n+1 carry
    the same email (an anonymous id and a user id of one person)."""
    return [
        ContactUpsert(
            integration_id="default",
            location_id=LOCATION,
            contact_key=f"key-{i % CONTACTS}",
            fields={
                "email": f"user-{(i % CONTACTS) // 2 if shared else i % CONTACTS}@example.com",
                "firstName": f"v{i}",
            },
        )
        for i in range(UPSERTS)
    ]


def run(upserts: list[ContactUpsert], identities: Identities | None) -> float:
    """Seconds to push every upsert through offer, take and complete."""
    options = {} if identities is None else {"identities": identities}
    scheduler: KeyedScheduler[ContactUpsert, int] = KeyedScheduler(
        window=0.0, merge=ContactUpsert.merged_with, **options  # type: ignore[arg-type]
    )
    in_flight: deque[object] = deque()
    start = time.perf_counter()
    for ticket, upsert in enumerate(upserts):
        scheduler.offer(upsert.contact_key, LOCATION, upsert, ticket, now=0.0)
        while len(in_flight) < IN_FLIGHT:
            work = scheduler.take(LOCATION, now=0.0)
            if work is None:
                break
            in_flight.append(work)
        if len(in_flight) >= IN_FLIGHT:
            scheduler.complete(in_flight.popleft())  # type: ignore[arg-type]
    while in_flight or scheduler.keys:
        while len(in_flight) < IN_FLIGHT and (work := scheduler.take(LOCATION, now=0.0)):
            in_flight.append(work)
        scheduler.complete(in_flight.popleft())  # type: ignore[arg-type]
    return time.perf_counter() - start


def main() -> None:
    identities: Identities | None = getattr(dispatch, "upsert_identities", None)
    cases = [("no identity lock", False, None)]
    if identities is not None:
        cases += [
            ("identity lock, distinct emails", False, identities),
            ("identity lock, emails shared by 2 keys", True, identities),
        ]
    print(f"{UPSERTS:,} upserts, {CONTACTS:,} keys, {IN_FLIGHT} in flight, best of 5")
    for name, shared, lock in cases:
        upserts = stream(shared)
        best = min(run(upserts, lock) for _ in range(5))
        print(f"{name:40} {UPSERTS / best:12,.0f} upserts/s {best / UPSERTS * 1e9:8.0f} ns/upsert")


if __name__ == "__main__":
    main()
