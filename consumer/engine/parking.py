"""Parking: where events go while their integration cannot take them, so that one broken
tenant never stalls the partitions it shares with healthy ones (``docs/architecture.md``,
"Parking").

When an integration answers 401/403, when its location's daily budget is spent, or when one
contact keeps failing past ``max_retry`` seconds, the engine writes that work (the merged
upsert, not the raw events) to the parking topic and completes the source offsets. The parking
topic is keyed by ``<integration>/<contact>``, so a contact's parked upserts stay in order in one
partition. A consumer group on the parking topic (``<group>.parking``) feeds them back into the
engine, which delivers them once the integration works again and never parks them twice.

Order per contact: once a contact has an upsert in the parking topic, its newer upserts are
parked behind it (``ParkingState.parked_keys``) until the parking group's committed offset has
passed the contact's last parked record, whichever instance replayed it. After a restart the
unreplayed part of the parking topic (from the group's committed offsets to the end) is read back
to rebuild that set.

This module is pure: the state machine and the record format. ``consumer.engine.dispatch``
makes the parking decisions and owns the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import orjson

from consumer.core.events import ContactUpsert, Record, TagMode

HEADER_REASON: Final = "ghl.park.reason"
HEADER_INTEGRATION: Final = "ghl.integration"
HEADER_SOURCE: Final = "ghl.park.source"  # one per folded source record: "topic/partition/offset"


class ParkReason(StrEnum):
    """Why work was parked; also a metric label."""

    UNAUTHORIZED = "unauthorized"
    DAILY_BUDGET = "daily_budget"
    RETRY_EXHAUSTED = "retry_exhausted"
    CONTACT_PARKED = "contact_parked"  # an older upsert of the contact waits in the topic
    INSTALLATION_BROKEN = "installation_broken"  # its OAuth installation needs a reconnect


# -- the record format ---------------------------------------------------------------------------


def parking_key(upsert: ContactUpsert) -> bytes:
    """The parking topic's record key: one contact of one integration."""
    return f"{upsert.integration_id}/{upsert.contact_key}".encode()


def encode_parked(
    upsert: ContactUpsert, sources: Sequence[Record], reason: ParkReason
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the parking record for ``upsert``, folded from ``sources``. The
    value is the upsert itself (JSON), so replay sends exactly what would have been sent."""
    value = orjson.dumps(
        {
            "v": 1,
            "integration": upsert.integration_id,
            "location": upsert.location_id,
            "contact": upsert.contact_key,
            "fields": dict(upsert.fields),
            "tags": list(upsert.tags),
            "customFields": {
                k: list(v) if isinstance(v, tuple) else v for k, v in upsert.custom_fields.items()
            },
            "tagMode": upsert.tag_mode.value,
            "events": list(upsert.events),
            "messageIds": list(upsert.message_ids),
        }
    )
    headers = [
        (HEADER_REASON, reason.value.encode()),
        (HEADER_INTEGRATION, upsert.integration_id.encode()),
    ]
    headers.extend(
        (HEADER_SOURCE, f"{r.topic}/{r.partition}/{r.offset}".encode()) for r in sources
    )
    return parking_key(upsert), value, headers


def decode_parked(value: bytes | None) -> ContactUpsert | None:
    """The upsert in a parking record; None when the value is not one (the engine dead-letters
    it rather than guess)."""
    try:
        doc = orjson.loads(value or b"")
        custom = {
            k: tuple(v) if isinstance(v, list) else v for k, v in doc["customFields"].items()
        }
        return ContactUpsert(
            integration_id=doc["integration"],
            location_id=doc["location"],
            contact_key=doc["contact"],
            fields=doc["fields"],
            tags=tuple(doc["tags"]),
            custom_fields=custom,
            tag_mode=TagMode(doc["tagMode"]),
            events=tuple(doc["events"]),
            message_ids=tuple(doc.get("messageIds", ())),  # absent in older parking records
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def parked_sources(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, int, int]]:
    """The (topic, partition, offset) of every source record folded into a parking record."""
    sources = []
    for name, raw in headers:
        if name != HEADER_SOURCE:
            continue
        topic, _, rest = raw.decode("utf-8", "replace").rpartition("/")
        topic, _, partition = topic.rpartition("/")
        if rest.isdigit() and partition.isdigit():
            sources.append((topic, int(partition), int(rest)))
    return sources


# -- the state machine ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    reason: ParkReason
    until: float  # when to try again (a probe for 401/403; the budget reset for daily)


class ParkingState:
    """Which integrations, locations and contacts park now. Times are the caller's clock.

    ``probe_interval``: while an integration is unauthorized, one work per interval is sent
    anyway (the probe); its answer decides whether the integration is healthy again.
    """

    def __init__(self, *, probe_interval: float) -> None:
        self._probe_interval = probe_interval
        self._integrations: dict[str, _Held] = {}
        self._locations: dict[str, float] = {}  # location -> daily budget back at
        # contact key (integration, contact) -> (parking partition, offset of its last record)
        self._keys: dict[tuple[str, str], tuple[int, int]] = {}

    def reason_to_park(
        self, *, integration_id: str, location_id: str, key: tuple[str, str], now: float
    ) -> ParkReason | None:
        """Why this contact's next work must be parked now, or None to deliver it. An
        unauthorized integration whose probe is due answers None once, then waits again."""
        if key in self._keys:
            return ParkReason.CONTACT_PARKED
        if self._locations.get(location_id, 0.0) > now:
            return ParkReason.DAILY_BUDGET
        held = self._integrations.get(integration_id)
        if held is None:
            return None
        if held.until <= now:
            held.until = now + self._probe_interval  # this work is the probe
            return None
        return held.reason

    def holding(self, integration_id: str, location_id: str, now: float) -> float | None:
        """Until when replayed work of this integration should wait (None: deliver now)."""
        until = max(
            self._locations.get(location_id, 0.0),
            held.until if (held := self._integrations.get(integration_id)) else 0.0,
        )
        return until if until > now else None

    def unauthorized(
        self, integration_id: str, now: float, reason: ParkReason = ParkReason.UNAUTHORIZED
    ) -> bool:
        """Record a 401/403 (or, ``reason`` INSTALLATION_BROKEN, no token at all); True when
        the integration was healthy until now."""
        new = integration_id not in self._integrations
        self._integrations[integration_id] = _Held(reason, now + self._probe_interval)
        return new

    def healthy(self, integration_id: str) -> bool:
        """Record a delivered answer; True when the integration was parked until now."""
        return self._integrations.pop(integration_id, None) is not None

    def daily_spent(self, location_id: str, until: float) -> None:
        self._locations[location_id] = until

    def parked(self, key: tuple[str, str], partition: int, offset: int) -> None:
        """A parking record of ``key`` landed at (partition, offset): park the key's newer work
        until that record is replayed."""
        self._keys[key] = (partition, offset)

    def replayed(self, committed: Mapping[int, int]) -> list[tuple[str, str]]:
        """Release keys whose last parking record lies below the parking group's committed
        offset of its partition; returns them."""
        released = [
            key
            for key, (partition, offset) in self._keys.items()
            if committed.get(partition, -1) > offset
        ]
        for key in released:
            del self._keys[key]
        return released

    @property
    def parked_partitions(self) -> frozenset[int]:
        """Parking partitions holding a record some parked key waits for."""
        return frozenset(partition for partition, _ in self._keys.values())

    @property
    def unhealthy(self) -> frozenset[str]:
        return frozenset(self._integrations)
