"""``KafkaParkingLog``: the parking topic on Kafka, the implementation of
``consumer.engine.ports.ParkingLog`` (see ``docs/architecture.md``, "Parking").

The parking group is named after its topic: one group for all instances, whose members replay
parked upserts. ``source`` is this instance's member of it (a ``KafkaSource``, started and
closed by the engine); ``committed`` and ``unreplayed`` read the group's commits and the records
past them with ``TopicReader``s (standalone reads: they never join the group).

Threads and the event loop
    Those of ``KafkaSource`` and ``TopicReader``: every librdkafka call runs off the loop thread.
    ``committed`` calls share one reader, so they must not overlap (the engine's release loop
    makes one at a time); ``unreplayed`` opens a reader of its own.

Errors
    ``ConfigError`` from the constructor (a bad setting); ``KafkaAdapterError`` from
    ``committed`` and ``unreplayed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from consumer.core.events import Record
from consumer.kafka.clients import GroupProtocol, Setting
from consumer.kafka.reader import TopicReader
from consumer.kafka.source import KafkaSource


class KafkaParkingLog:
    """The parking topic ``topic`` and its group (also named ``topic``) on the broker at
    ``bootstrap``. ``extra``: further librdkafka settings (security, ...), as for every client;
    ``group_protocol`` and ``session_timeout_ms`` as for ``KafkaSource``. Nothing connects
    before the source starts or a read begins. ``close`` releases the offsets reader; the
    engine closes ``source``."""

    def __init__(
        self,
        *,
        topic: str,
        bootstrap: str,
        extra: Mapping[str, Setting] | None = None,
        group_protocol: GroupProtocol = "classic",
        session_timeout_ms: int | None = None,
    ) -> None:
        self.topic = topic
        self._group = topic  # the parking group is named after its topic
        self._bootstrap = bootstrap
        self._extra = dict(extra or {})
        self.source = KafkaSource(
            bootstrap=bootstrap,
            group_id=self._group,
            topics=[topic],
            group_protocol=group_protocol,
            session_timeout_ms=session_timeout_ms,
            client_id="ghl-consumer-parking",
            extra=self._extra,
        )
        self._offsets = TopicReader(bootstrap=bootstrap, group_id=self._group, extra=self._extra)

    async def committed(self, partitions: Sequence[int]) -> Mapping[int, int]:
        """The parking group's committed offset per partition of ``partitions`` (absent: none)."""
        return await self._offsets.committed(self.topic, partitions)

    async def unreplayed(self) -> list[Record]:
        """Every parking record past the group's committed offsets, read once (a new reader)."""
        reader = TopicReader(bootstrap=self._bootstrap, group_id=self._group, extra=self._extra)
        records: list[Record] = []
        try:
            await reader.open([self.topic], from_committed=True)
            while batch := await reader.read(5_000):
                records.extend(batch)
        finally:
            await reader.close()
        return records

    async def close(self) -> None:
        """Release the offsets reader."""
        await self._offsets.close()
