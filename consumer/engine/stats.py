"""What the engine reports: counters since start (``EngineStats``) and its state now
(``EngineSnapshot``, what readiness and ``/metrics`` read)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from consumer.engine.offsets import PartitionStats


@dataclass(slots=True)
class EngineStats:
    """Counters since start; the progress line, the demo and ``run_consumer``'s caller read
    them. Only the engine writes them, on the event loop thread."""

    consumed: int = 0
    skipped_done: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    coalesced: int = 0
    http_calls: int = 0
    delivered_calls: int = 0
    delivered_events: int = 0
    retries: int = 0
    dead_lettered: int = 0
    parked: Counter[str] = field(default_factory=Counter)
    replayed: int = 0
    ignored_fields: Counter[str] = field(default_factory=Counter)
    permanent_dnd_kept: int = 0  # upserts sent again without dnd (HighLevel kept its DND)


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSnapshot:
    """The engine's state at one moment (``Engine.snapshot``); a copy, never updated.

    ``partitions``: the owned partitions of the event topics (not the parking feed's).
    ``paused_partitions``: how many of them backpressure paused. ``unhealthy``: integration ids
    whose last answer was 401/403 (their events park). ``buffered_records``: records admitted
    and not done, on both feeds; ``buffered_bytes``: their keys, values and headers.
    ``in_flight``: deliveries handed out and not finished (HighLevel requests in flight).
    """

    partitions: tuple[PartitionStats, ...]
    paused_partitions: int
    unhealthy: frozenset[str]
    buffered_records: int
    buffered_bytes: int
    in_flight: int
