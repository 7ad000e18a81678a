"""The engine's own records: dead letters, parking records and profile writes.

An offset whose dead letter, parking record or profile write the broker has not confirmed must
not complete (``docs/architecture.md``, "Guarantees"), so ``Outbox.produce`` retries, with
backoff, until the broker confirms; it never gives up on its own (shutdown cancels it, and the
record's offset then stays undone: it is read again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

from consumer.core.deadletter import Failure, dead_letter
from consumer.core.events import Record
from consumer.engine.ports import Produced, Sink

logger = logging.getLogger(__name__)


class Outbox:
    """Produces through ``sink``; ``retry_base`` / ``retry_max`` bound the backoff (seconds),
    ``wall_clock`` stamps dead letters. ``held`` counts admitted records whose only hold on
    memory is a produce in flight (they are in no scheduler), for backpressure and the drain."""

    def __init__(
        self,
        *,
        sink: Sink,
        dead_letter_topic: str,
        retry_base: float,
        retry_max: float,
        wall_clock: Callable[[], float],
    ) -> None:
        self._sink = sink
        self._dead_letter_topic = dead_letter_topic
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._wall_clock = wall_clock
        self._held = 0

    @property
    def held(self) -> int:
        """Records inside a ``holding`` block now."""
        return self._held

    @contextlib.contextmanager
    def holding(self, records: int = 1) -> Iterator[None]:
        """Count ``records`` records as buffered while the block runs (see the class doc)."""
        self._held += records
        try:
            yield
        finally:
            self._held -= records

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> Produced:
        """Produce one record; returns once the broker confirmed it, retrying every failure
        (logged) with exponential backoff from ``retry_base`` up to ``retry_max``."""
        delay = self._retry_base
        while True:
            try:
                return await self._sink.produce(topic, key=key, value=value, headers=headers)
            except Exception:
                logger.exception("produce to %s failed; retrying in %.1fs", topic, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)

    async def produce_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        partition: int | None = None,
    ) -> None:
        """Produce ``records`` ((key, value)) together, to ``partition`` (None: by key);
        returns once the broker confirmed every one, producing the failed ones again (logged)
        with the backoff of ``produce``. Two records of one key keep their order only across
        calls: within a call, give each key once."""
        delay = self._retry_base
        left = list(records)
        while left:
            results = await self._sink.produce_many(topic, left, partition=partition)
            failed = [record for record, error in zip(left, results, strict=True) if error]
            if failed:
                error = next(error for error in results if error)
                logger.warning(
                    "produce of %d record(s) to %s failed (%s); retrying in %.1fs",
                    len(failed), topic, error, delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
            left = failed

    async def dead_letter(self, record: Record, failure: Failure) -> None:
        """Produce ``record``'s dead-letter copy, explained by ``failure`` (see ``produce``)."""
        letter = dead_letter(record, failure, now=self._wall_clock())
        await self.produce(self._dead_letter_topic, letter.key, letter.value, letter.headers)
