"""``Outbox.produce_many``: every record confirmed before it returns; failed ones produced
again, the confirmed ones never twice."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from consumer.engine.outbox import Outbox
from tests.unit.engine_fakes import MemorySink

pytestmark = pytest.mark.virtual_time


class FlakySink(MemorySink):
    """Fails each key listed in ``fail`` the first time it is produced."""

    def __init__(self, fail: set[bytes]) -> None:
        super().__init__()
        self.fail = fail
        self.calls: list[list[bytes | None]] = []

    async def produce_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        partition: int | None = None,
    ) -> list[Exception | None]:
        self.calls.append([key for key, _ in records])
        results: list[Exception | None] = []
        for key, value in records:
            if key in self.fail:
                self.fail.discard(key)
                results.append(RuntimeError("broker unavailable"))
            else:
                await self.produce(topic, key=key, value=value, headers=())
                results.append(None)
        return results


async def test_failed_records_are_produced_again_until_confirmed() -> None:
    sink = FlakySink({b"b", b"d"})
    outbox = Outbox(
        sink=sink, dead_letter_topic="dlq", retry_base=0.01, retry_max=0.05, wall_clock=lambda: 0
    )
    await outbox.produce_many("profiles", [(k, b"v") for k in (b"a", b"b", b"c", b"d")])
    assert sink.calls == [[b"a", b"b", b"c", b"d"], [b"b", b"d"]]
    assert sorted(key for _, key, _, _ in sink.produced) == [b"a", b"b", b"c", b"d"]
