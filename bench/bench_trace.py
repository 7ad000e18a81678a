"""Benchmark of ``ghl-consumer trace``: one person's records found in a 1,000,000-record topic.

Workload: ``samples.generate`` events (90% analytics, 10% identity) over 100,000 users, keyed by
user id, produced by librdkafka's default partitioner to a topic of ``--partitions`` (12)
partitions. ``trace --user-id`` (a subprocess, as an operator runs it: interpreter start and
Kafka connections included) reads the partition(s) the key hashes to; the same trace with
``--partitioner all`` reads the whole topic, for comparison. Also measured: the size of one
delivery record (key + value as produced) and, from that, the delivery topic's size per
million HighLevel calls.

Usage: ``.venv/bin/python bench/bench_trace.py [--events N] [--partitions P] [--repeats R]``.
Prints a table and writes ``bench/results/trace.json``. Uses ``KAFKA_BOOTSTRAP_SERVERS`` when
set, else starts a broker (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    broker,
    machine_facts,
    new_topic,
    produce,
    results_dir,
    write_result,
)
from consumer.commands import samples
from consumer.engine.deliveries import DeliveryRecord, contact_digest

# Kafka's per-record overhead inside a batch (attributes, deltas, lengths), roughly, plus the
# batch header spread over a full batch: what a record costs on disk besides key and value.
RECORD_OVERHEAD_BYTES = 20


def delivery_record_size() -> int:
    """Bytes of a typical delivery record's key and value: one source, a traceId, a contact
    id (HighLevel's ids are 20 characters; traceIds are UUIDs)."""
    record = DeliveryRecord(
        time=time.time(),
        integration="default",
        location="ve9EPM428h8vShlRW1KT",
        endpoint="upsert",
        status=200,
        verdict="delivered",
        trace_id=str(uuid.uuid4()),
        latency_ms=123.4,
        attempt=1,
        contact=contact_digest("user-000123"),
        sources=(("events", 11, 1_234_567),),
        contact_id="kQ7n3PZr9sLm2XyT4vBc",
    )
    key, value = record.encode()
    return len(key) + len(value)


def run_trace(env: dict[str, str], user: str, *extra: str) -> tuple[float, int]:
    """Seconds of one ``trace --user-id user --json`` run and how many records it found."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "trace", "--user-id", user, "--json", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"trace failed: {done.stderr.decode()[-2000:]}")
    return seconds, len(orjson.loads(done.stdout)["records"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100,000 events, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.events, args.users, args.repeats = 100_000, 10_000, 1
    load_before = os.getloadavg()[0]
    with broker() as bootstrap:
        topic = new_topic(bootstrap, args.partitions, "trace-bench")
        # The person traced: the user with the most events, among the first identity events.
        counts: dict[bytes, int] = {}

        def events() -> Iterator[tuple[bytes, bytes]]:
            for r in samples.generate(
                users=args.users, events=args.events, identity_share=0.1, seed=17
            ):
                counts[r.key] = counts.get(r.key, 0) + 1
                yield r.key, r.value

        produced, produce_s = produce(bootstrap, topic, events())
        user = max(counts, key=lambda k: counts[k]).decode()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("GHL_", "KAFKA_"))},
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": f"trace-bench-{uuid.uuid4().hex[:8]}",
            "GHL_LOCATION_ID": "ve9EPM428h8vShlRW1KT",
        }
        one: list[float] = []
        whole: list[float] = []
        found = found_all = 0
        for _ in range(args.repeats):
            seconds, found = run_trace(env, user, "--partitioner", "crc32")
            one.append(seconds)
            seconds, found_all = run_trace(env, user, "--partitioner", "all")
            whole.append(seconds)
        both, _found_both = run_trace(env, user)  # the default: crc32 and murmur2 partitions
    size = delivery_record_size()
    doc: dict[str, Any] = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "command": ".venv/bin/python bench/bench_trace.py"
        + (" --quick" if args.quick else ""),
        "machine": machine_facts(),
        "events": produced,
        "users": args.users,
        "partitions": args.partitions,
        "produce_s": round(produce_s, 1),
        "records_found": found,
        "records_found_reading_all": found_all,
        "trace_one_partition_s": {
            "median": round(statistics.median(one), 2), "min": round(min(one), 2),
            "max": round(max(one), 2),
        },
        "trace_default_both_s": round(both, 2),
        "trace_all_partitions_s": {
            "median": round(statistics.median(whole), 2), "min": round(min(whole), 2),
            "max": round(max(whole), 2),
        },
        "delivery_record_bytes": size,
        "delivery_topic_mb_per_million_calls": round(
            (size + RECORD_OVERHEAD_BYTES) * 1_000_000 / 1e6
        ),
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
    }
    write_result(results_dir(args.quick) / "trace.json", doc)
    print(f"{produced:,} events over {args.users:,} users, {args.partitions} partitions")
    print(f"trace --partitioner crc32 : {doc['trace_one_partition_s']} s, {found} records")
    print(f"trace (default, both)     : {both:.2f} s")
    print(f"trace --partitioner all   : {doc['trace_all_partitions_s']} s, {found_all} records")
    print(
        f"delivery record: {size} B (key + value); about "
        f"{doc['delivery_topic_mb_per_million_calls']} MB per million calls before compression"
    )
    return 0 if found == found_all and found > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
