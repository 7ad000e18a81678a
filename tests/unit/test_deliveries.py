"""Delivery records: the format, and what the engine writes per HighLevel call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from consumer.engine.deliveries import DeliveryRecord, contact_digest
from consumer.errors import ProduceFailedError
from consumer.observe.metrics import Metrics
from tests.harness.engine import build, committed, records, run_until
from tests.harness.guide import GUIDE_IDENTIFY, GUIDE_LEAD, LOCATION
from tests.unit.engine_fakes import FakeHighLevel, MemorySink, MemorySource

pytestmark = pytest.mark.virtual_time

TOPIC = "ghl-consumer.deliveries"


def delivered(sink: MemorySink) -> list[tuple[bytes | None, DeliveryRecord]]:
    found = []
    for topic, key, value, _headers in sink.produced:
        if topic == TOPIC:
            record = DeliveryRecord.decode(value)
            assert record is not None
            found.append((key, record))
    return found


def test_a_record_round_trips_and_holds_no_identifier() -> None:
    record = DeliveryRecord(
        time=1_765_000_000.123,
        integration="default",
        location=LOCATION,
        endpoint="upsert",
        status=200,
        verdict="delivered",
        trace_id="trace-1",
        latency_ms=12.3,
        attempt=1,
        contact=contact_digest("lead-987"),
        sources=(("events", 3, 17), ("events", 3, 18)),
        contact_id="c1",
    )
    key, value = record.encode()
    assert key == contact_digest("lead-987").encode()
    assert b"lead-987" not in key + value
    assert DeliveryRecord.decode(value) == record
    assert len(value) < 330  # BENCHMARKS.md, "Delivery records": size per record


@pytest.mark.parametrize(
    "value", [b"", b"not json", b"[]", b'{"v": 2}', orjson.dumps({"v": 1, "time": "x"})]
)
def test_what_is_not_a_record_decodes_to_none(value: bytes) -> None:
    assert DeliveryRecord.decode(value) is None


def test_the_digest_is_stable_and_distinguishes_keys() -> None:
    assert contact_digest("lead-987") == contact_digest("lead-987")
    assert contact_digest("lead-987") != contact_digest("lead-988")
    assert len(contact_digest("x")) == 32


async def test_a_coalesced_call_names_every_source_record() -> None:
    sink = MemorySink()
    events = [("lead-987", GUIDE_IDENTIFY), ("lead-987", GUIDE_LEAD)]
    source = MemorySource({("events", 0): records("events", 0, events)})
    metrics = Metrics(integrations={"default": LOCATION}, topics=["events"])
    engine = build(
        source, FakeHighLevel(), sink=sink, metrics=metrics, delivery_topic=TOPIC,
        coalesce_window=0.2,
    )
    await run_until(engine, lambda: committed(source) == 2)
    [(key, record)] = delivered(sink)  # flushed at shutdown at the latest
    assert key == contact_digest("lead-987").encode()
    assert record.sources == (("events", 0, 0), ("events", 0, 1))
    assert (record.endpoint, record.status, record.verdict) == ("upsert", 200, "delivered")
    assert (record.attempt, record.contact_id, record.trace_id) == (1, "c1", "trace-1")
    assert metrics.registry.get_sample_value(
        "ghl_delivery_records_total", {"result": "written"}
    ) == 1


async def test_a_rejected_call_is_recorded_with_its_status() -> None:
    sink = MemorySink()
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    engine = build(
        source, FakeHighLevel(script=lambda payload: 422), sink=sink, delivery_topic=TOPIC
    )
    await run_until(engine, lambda: committed(source) == 1)
    [(_key, record)] = delivered(sink)
    assert (record.status, record.verdict) == (422, "rejected")


class _RefusingDeliveries(MemorySink):
    async def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> object:
        if topic == TOPIC:
            raise ProduceFailedError("not delivered: topic authorization failed")
        return await super().produce(topic, key=key, value=value, headers=headers)


async def test_a_record_the_broker_refuses_is_counted_and_never_holds_the_offsets() -> None:
    sink = _RefusingDeliveries()
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    metrics = Metrics(integrations={"default": LOCATION}, topics=["events"])
    engine = build(source, FakeHighLevel(), sink=sink, metrics=metrics, delivery_topic=TOPIC)
    await run_until(engine, lambda: committed(source) == 1)
    assert delivered(sink) == []
    assert metrics.registry.get_sample_value(
        "ghl_delivery_records_total", {"result": "failed"}
    ) == 1


class _SilentBroker(MemorySink):
    async def produce_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        partition: int | None = None,
    ) -> list[Exception | None]:
        if topic == TOPIC:
            await asyncio.sleep(3600)  # a broker outage: no delivery report comes
        return await super().produce_many(topic, records, partition=partition)


async def test_shutdown_waits_for_the_last_records_no_longer_than_the_drain_timeout() -> None:
    sink = _SilentBroker()
    source = MemorySource({("events", 0): records("events", 0, [("lead-987", GUIDE_IDENTIFY)])})
    metrics = Metrics(integrations={"default": LOCATION}, topics=["events"])
    engine = build(
        source, FakeHighLevel(), sink=sink, metrics=metrics, delivery_topic=TOPIC,
        drain_timeout=2.0,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await run_until(engine, lambda: committed(source) == 1)
    assert loop.time() - started < 10
    assert metrics.registry.get_sample_value(
        "ghl_delivery_records_total", {"result": "failed"}
    ) == 1
