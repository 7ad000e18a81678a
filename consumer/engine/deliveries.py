"""Delivery records: one compact record per HighLevel call on the delivery topic
(``kafka.delivery_topic``), so that ``ghl-consumer trace`` can name the call that carried any
source record without the Event Debugger's memory (README, "Tracing one person").

A record holds no personal data: the integration, location, endpoint, HTTP status, verdict,
HighLevel's traceId and contact id, latency, attempt, time, the source records folded into the
call (topic, partition, offset) and the contact key as ``contact_digest`` (a SHA-256 prefix,
never the key itself: a user id may identify a person; ``trace`` computes the digest of the id
it is given). The digest is the record key, so one contact's calls share a partition.

Best effort, off the hot path: ``DeliveryLog.add`` only appends to a bounded buffer;
``DeliveryLog.run`` produces it every ``flush_interval`` seconds with one ``produce_many``. A
record the broker refuses, or that does not fit the buffer, is counted
(``ghl_delivery_records{result="failed"}``) and logged, never retried: source offsets do not wait
for their delivery record. A crash between a call and the next flush loses that call's records;
``trace`` then shows the source record committed with no delivery record (never silently
"delivered").
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from consumer.engine.ports import EngineMetrics, Sink

logger = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1


def contact_digest(contact_key: str) -> str:
    """The delivery records' key for ``contact_key``: 32 hex digits of its SHA-256."""
    return hashlib.sha256(b"ghl-contact:" + contact_key.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRecord:
    """One HighLevel call. ``time``: wall-clock seconds of the answer; ``status`` None: no HTTP
    answer; ``verdict``: ``consumer.highlevel.verdicts.Verdict`` value; ``sources``: the
    (topic, partition, offset) of every record folded into the call (a replayed upsert names
    its parking record); ``contact_id``: HighLevel's, when the answer carried one."""

    time: float
    integration: str
    location: str
    endpoint: str
    status: int | None
    verdict: str
    trace_id: str | None
    latency_ms: float
    attempt: int
    contact: str
    sources: tuple[tuple[str, int, int], ...]
    contact_id: str | None = None

    def encode(self) -> tuple[bytes, bytes]:
        """(key, value) to produce: the contact digest and compact JSON."""
        value = {
            "v": FORMAT_VERSION,
            "time": round(self.time, 3),
            "integration": self.integration,
            "location": self.location,
            "endpoint": self.endpoint,
            "status": self.status,
            "verdict": self.verdict,
            "traceId": self.trace_id,
            "latencyMs": round(self.latency_ms, 1),
            "attempt": self.attempt,
            "contact": self.contact,
            "sources": self.sources,  # tuples: JSON arrays
            "contactId": self.contact_id,
        }
        return self.contact.encode(), orjson.dumps(value)

    @classmethod
    def decode(cls, value: bytes | None) -> DeliveryRecord | None:
        """The record in ``value``; None when it is not one this version wrote."""
        try:
            doc = orjson.loads(value or b"")
            if doc.get("v") != FORMAT_VERSION:
                return None
            return cls(
                time=float(doc["time"]),
                integration=str(doc["integration"]),
                location=str(doc["location"]),
                endpoint=str(doc["endpoint"]),
                status=None if doc["status"] is None else int(doc["status"]),
                verdict=str(doc["verdict"]),
                trace_id=doc["traceId"],
                latency_ms=float(doc["latencyMs"]),
                attempt=int(doc["attempt"]),
                contact=str(doc["contact"]),
                sources=tuple((str(t), int(p), int(o)) for t, p, o in doc["sources"]),
                contact_id=doc.get("contactId"),
            )
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            return None


class DeliveryLog:
    """The buffer of delivery records and its producer (see the module docstring). ``add`` on
    the event loop thread; ``run`` as a background task; ``flush`` once more at shutdown."""

    def __init__(
        self,
        *,
        sink: Sink,
        topic: str,
        metrics: EngineMetrics,
        flush_interval: float = 0.2,
        max_buffered: int = 10_000,
    ) -> None:
        self.topic = topic
        self._sink = sink
        self._metrics = metrics
        self._flush_interval = flush_interval
        self._max_buffered = max_buffered
        self._buffer: list[tuple[bytes | None, bytes | None]] = []
        self._overflowed = 0

    def add(self, record: DeliveryRecord) -> None:
        """Queue ``record`` for the next flush; counted failed when the buffer is full."""
        if len(self._buffer) >= self._max_buffered:
            self._overflowed += 1
            return
        self._buffer.append(record.encode())

    async def run(self) -> None:
        """Flush every ``flush_interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._flush_interval)
            await self.flush()

    async def flush(self, within: float | None = None) -> None:
        """Produce what is buffered; count written and failed records (those the broker has
        not confirmed ``within`` seconds count as failed: shutdown must not wait out
        a broker outage). Never raises for a produce failure."""
        if self._overflowed:
            logger.warning(
                "delivery records: buffer full, %d record(s) not written", self._overflowed
            )
            self._metrics.delivery_records("failed", self._overflowed)
            self._overflowed = 0
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        try:
            async with asyncio.timeout(within):
                results: Sequence[Exception | None] = await self._sink.produce_many(
                    self.topic, batch
                )
        except asyncio.CancelledError:  # shutdown while the broker had not confirmed them
            self._metrics.delivery_records("failed", len(batch))
            raise
        except Exception as exc:  # noqa: BLE001 - best effort: counted and logged
            results = [exc] * len(batch)
        failed = [error for error in results if error is not None]
        if failed:
            logger.warning(
                "delivery records: %d of %d not written to %s (%s)",
                len(failed), len(batch), self.topic, failed[0],
            )
            self._metrics.delivery_records("failed", len(failed))
        if len(batch) > len(failed):
            self._metrics.delivery_records("written", len(batch) - len(failed))
