"""The engine's own CPU per event, in process: no Kafka, no HTTP, no other process.

Run: ``.venv/bin/python bench/bench_engine.py``. Over the hot path's analytics-only workloads
(``bench_e2e.py --scenario hotpath``: 200,000 events, consent on every one, 2 and 20 events
per user, spread over 6 partitions by key), three loops, each the best of ``--repeats``:

- ``map_record``: ``Mapper.map_record`` alone over the records (a fresh mapper each pass), the
  mapping contract every consumer of these events applies;
- ``engine``: an ``Engine`` over in-memory fakes (``tests/harness/engine.build``: a memory
  source, the profile changelog written to a memory sink) draining the same records until
  every partition committed its end: intake, mapping, offset tracking, profile writes and
  their confirmation (a sink that confirms at once: the producer's cost is measured apart),
  commits, counters;
- ``bookkeeping``: the same engine with ``map_record`` answering a fixed drop at once: what the
  engine itself spends per event, mapping aside.

The end-to-end figures (``bench_e2e.py``) add librdkafka, the changelog producer and the
other processes; these have neither, but a shared machine still moves them (up to 30% between
two runs here): compare a change before and after in one sitting, best of several runs. Prints
a line per workload and writes ``bench/results/engine.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import loadavg, machine_facts, write_result  # noqa: E402
from consumer.commands import samples  # noqa: E402
from consumer.config import load_settings  # noqa: E402
from consumer.core.dedupe import MessageDeduper  # noqa: E402
from consumer.core.events import Drop, Reason, Record  # noqa: E402
from consumer.core.mapping import Mapper  # noqa: E402
from consumer.core.profiles import ChangelogProfileStore  # noqa: E402
from tests.harness.engine import build, committed, run_until  # noqa: E402
from tests.harness.guide import LOCATION  # noqa: E402
from tests.unit.engine_fakes import (  # noqa: E402
    FakeHighLevel,
    MemoryProfileLog,
    MemorySink,
    MemorySource,
)

EVENTS, PARTITIONS, TOPIC = 200_000, 6, "events"
WORKLOADS = (("analytics_only_2", 2), ("analytics_only_20", 20))
Partitions = dict[tuple[str, int], list[Record]]


class DiscardingSink(MemorySink):
    """Confirms every batch of writes at once and keeps nothing: the changelog's cost is the
    producer's (``bench_e2e.py``, ``baselines.py produce``), not the engine's."""

    async def produce_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        partition: int | None = None,
    ) -> list[Exception | None]:
        return [None] * len(records)


def workload(per_user: int) -> Partitions:
    """The hot path's records for ``per_user`` events per user, in partitions by key (a
    stable hash: every run places them alike)."""
    partitions: Partitions = {(TOPIC, p): [] for p in range(PARTITIONS)}
    for sample in samples.generate(
        users=EVENTS // per_user, events=EVENTS, identity_share=0.0, seed=11
    ):
        key = sample.key or b""
        partition = zlib.crc32(key) % PARTITIONS
        log = partitions[(TOPIC, partition)]
        log.append(Record(TOPIC, partition, len(log), key, sample.value))
    return partitions


def map_record_cpu(partitions: Partitions) -> float:
    """CPU us per record of ``map_record`` alone, over the records in partition order, with
    the mapper the engine below is given (``build``'s de-duplication memory, a changelog
    store whose writes are taken every 500 records, as after each poll batch)."""
    settings = load_settings(None, {"GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": "t"})
    store = ChangelogProfileStore()
    mapper = Mapper(
        settings.targets(),
        profiles=store,
        deduper=MessageDeduper(max_entries=10_000, ttl_seconds=3600),  # as ``build``'s
    )
    records = [record for log in partitions.values() for record in log]
    started = time.process_time()
    for index, record in enumerate(records):
        mapper.map_record(value=record.value or b"", key=record.key, topic=TOPIC, now=index)
        if index % 500 == 499:
            store.take_writes()
    return (time.process_time() - started) / len(records) * 1e6


async def engine_cpu(partitions: Partitions, *, stub_mapping: bool) -> float:
    """CPU us per record of an engine over fakes draining ``partitions`` until each committed
    its end offset; ``stub_mapping``: ``map_record`` answers one fixed drop."""
    source = MemorySource({tp: list(log) for tp, log in partitions.items()})
    engine = build(
        source,
        FakeHighLevel(),
        sink=DiscardingSink(),
        profile_log=MemoryProfileLog(),
        commit_interval=0.5,
    )
    if stub_mapping:
        drop = [Drop(Reason.NOT_MAPPED, "default")]
        engine._mapper.map_record = lambda **_: drop  # type: ignore[method-assign]
    ends = {tp: len(log) for tp, log in partitions.items()}

    def drained() -> bool:
        return all(committed(source, *tp) == end for tp, end in ends.items())

    started = time.process_time()
    await run_until(engine, drained, limit=600)
    return (time.process_time() - started) / EVENTS * 1e6


def measure(per_user: int, repeats: int) -> dict[str, Any]:
    partitions = workload(per_user)
    # As ``ghl-consumer run`` freezes its start-up: full collections would traverse the whole
    # workload held here, which a consumer never holds.
    gc.collect()
    gc.freeze()
    mapped = min(map_record_cpu(partitions) for _ in range(repeats))
    engine = min(asyncio.run(engine_cpu(partitions, stub_mapping=False)) for _ in range(repeats))
    own = min(asyncio.run(engine_cpu(partitions, stub_mapping=True)) for _ in range(repeats))
    result = {
        "events_per_user": per_user,
        "map_record_cpu_us_per_event": round(mapped, 2),
        "engine_cpu_us_per_event": round(engine, 2),
        "bookkeeping_cpu_us_per_event": round(own, 2),
        "engine_over_map_record_us": round(engine - mapped, 2),
    }
    gc.unfreeze()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.json")
    args = parser.parse_args(argv)
    load_start = loadavg()
    workloads = {}
    for name, per_user in WORKLOADS:
        result = measure(per_user, args.repeats)
        workloads[name] = result
        print(
            f"{name}: map_record {result['map_record_cpu_us_per_event']} us/ev, engine "
            f"{result['engine_cpu_us_per_event']} us/ev (+{result['engine_over_map_record_us']}"
            f"), bookkeeping alone {result['bookkeeping_cpu_us_per_event']} us/ev",
            flush=True,
        )
    write_result(
        args.out,
        {
            "benchmark": "engine in process",
            "command": ".venv/bin/python bench/bench_engine.py",
            "machine": machine_facts(),
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "events": EVENTS,
            "partitions": PARTITIONS,
            "repeats": args.repeats,
            "workloads": workloads,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
