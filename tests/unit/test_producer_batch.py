"""``KafkaProducer.produce_many`` over a fake librdkafka producer: which record each delivery
report's failure lands on, with reports arriving on the serving thread while records are still
being enqueued. (The real broker's paths, a refused record and a partition, are in
``tests/integration/test_kafka_source.py``.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

import consumer.kafka.producer as producer_module
from consumer.errors import ProduceFailedError
from consumer.kafka.producer import KafkaProducer

Report = Callable[[KafkaError | None, Message], None]


class FakeProducer:
    """librdkafka's producer as ``KafkaProducer`` uses it. ``poll`` reports what was produced,
    in order; report number n (from 1) fails when n is in ``fail``. ``produce`` refuses with
    ``BufferError`` once ``queue_limit`` records wait, as a full local queue does."""

    fail: frozenset[int] = frozenset()
    queue_limit = 1_000_000

    def __init__(self, config: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[Message, Report]] = []
        self.reports = 0

    def produce(self, topic: str, **kwargs: Any) -> None:
        with self._lock:
            if len(self._queue) >= self.queue_limit:
                raise BufferError("queue full")
            message = Message(topic=topic, key=kwargs["key"], value=kwargs["value"])
            self._queue.append((message, kwargs["on_delivery"]))

    def poll(self, timeout: float) -> int:
        with self._lock:
            queue, self._queue = self._queue, []
        for message, report in queue:
            self.reports += 1
            failed = self.reports in self.fail
            report(KafkaError(KafkaError._MSG_TIMED_OUT) if failed else None, message)
        if not queue:
            threading.Event().wait(min(timeout, 0.001))
        return len(queue)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    class Fake(FakeProducer):
        pass

    monkeypatch.setattr(producer_module, "Producer", Fake)
    return Fake


async def produce_many(records: list[tuple[bytes | None, bytes | None]]) -> list[str | None]:
    producer = KafkaProducer(bootstrap="fake:9092")
    try:
        results = await asyncio.wait_for(producer.produce_many("t", records), 10)
    finally:
        await producer.close(timeout_s=1)
    assert all(r is None or isinstance(r, ProduceFailedError) for r in results)
    return [None if r is None else str(r) for r in results]


async def test_each_failed_report_lands_on_its_own_record(fake: type[FakeProducer]) -> None:
    fake.fail = frozenset({2, 5})
    records: list[tuple[bytes | None, bytes | None]] = [
        (f"k{i}".encode(), f"v{i}".encode()) for i in range(6)
    ]
    results = await produce_many(records)
    assert [i for i, r in enumerate(results) if r is not None] == [1, 4]
    assert "not delivered" in (results[1] or "")


async def test_records_of_equal_content_share_out_the_failures(fake: type[FakeProducer]) -> None:
    # A report names no index: two equal records, one failed, one delivered. Which of the two
    # is failed does not matter to a caller that produces the failed ones again, but exactly
    # one must be, and a record of other content never.
    fake.fail = frozenset({3})
    records: list[tuple[bytes | None, bytes | None]] = [
        (b"a", b"1"),
        (b"b", None),  # a tombstone
        (b"b", None),
        (b"c", b"3"),
    ]
    results = await produce_many(records)
    assert [r is not None for r in results] == [False, True, False, False]


async def test_reports_while_enqueuing_never_end_the_batch_early(
    fake: type[FakeProducer],
) -> None:
    # A queue of 3: enqueuing waits for the serving thread, which reports the first records
    # (one failing) before the last ones are even produced.
    fake.queue_limit = 3
    fake.fail = frozenset({4})
    records: list[tuple[bytes | None, bytes | None]] = [
        (f"k{i}".encode(), b"v") for i in range(10)
    ]
    results = await produce_many(records)
    assert [i for i, r in enumerate(results) if r is not None] == [3]
