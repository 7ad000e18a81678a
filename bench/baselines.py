"""Baselines the consumer is compared with, in the same run, over the same topic and sandbox.

- ``bare``: the ceiling of reading. A bare confluent-kafka consume loop (``consume`` in batches
  of 500, nothing done per record) reading a topic from the start in a fresh group.
- ``ceiling``: the least work any consumer of these events must do, the yardstick of the
  engine's hot path: the same consume loop, plus per record ``orjson.loads``, reading the
  event's type and name, and keeping the last offset per partition (nothing is committed).
- ``naive``: the consumer a typical engineer writes first. Poll one message, map it with the
  same ``Mapper`` the consumer uses, one ``requests`` POST per upsert (on 429: sleep for
  Retry-After, else one second, and retry; any other failure is printed and skipped), then a
  synchronous commit of that message.
- ``client``: the ceiling of sending. A bare aiohttp client loop posting the upsert payloads
  the consumer would send for the same topic (mapped beforehand, not timed) to the same
  sandbox, ``--in-flight`` (64) at a time over one pooled session: requests/s and CPU per
  request, next to the consumer's CPU per delivered upsert. Its preparation (consume, decode,
  ``map_record``, serialise the body) is measured apart, as CPU per request: with the posting,
  the least CPU any consumer of that topic spends per upsert.
- ``produce``: the least work of keeping profiles durable. A bare confluent-kafka producer
  (idempotent, ``linger.ms`` 5, as the consumer's) writes ``--records`` records of
  ``--value-bytes`` bytes, each under its own key, with one delivery report each (one shared
  callback, served by a polling thread): CPU per record written. ``bench_e2e.py`` counts the
  profile changelog writes a workload makes per event; with them, this is the durability
  share of the floor.
- ``orjson_loads_rate``: the ceiling of decoding, ``orjson.loads`` over the same values
  (called in-process by ``bench_e2e.py``).

Each command runs in its own process, like the consumer, and prints one JSON line::

    python bench/baselines.py bare --bootstrap B --topic T --expect N
    python bench/baselines.py ceiling --bootstrap B --topic T --expect N
    python bench/baselines.py client --bootstrap B --topic T --url URL --expect N [--in-flight 64]
    python bench/baselines.py produce --bootstrap B --topic T --records N --value-bytes B
    python bench/baselines.py naive --bootstrap B --topic T --url URL --expect N --max-seconds S
        (the integration from GHL_LOCATION_ID / GHL_ACCESS_TOKEN, as ``ghl-consumer run``)

Timing excludes start-up and the group join: from the first record received to the last
record handled (the same way the consumer is timed, from its first commit to its last).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import aiohttp
import orjson
import requests
from confluent_kafka import Consumer, KafkaError, Message, Producer

from consumer.config import load_settings
from consumer.core.dedupe import MessageDeduper
from consumer.core.events import ContactUpsert
from consumer.core.mapping import Mapper
from consumer.core.profiles import InMemoryProfileStore
from consumer.kafka.clients import FETCH_QUEUE_BACKOFF_MS


def orjson_loads_rate(values: Sequence[bytes], repeats: int = 3) -> float:
    """Best-of-``repeats`` values per second of ``orjson.loads`` over ``values``."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for value in values:
            orjson.loads(value)
        best = min(best, time.perf_counter() - started)
    return len(values) / best


def _consumer(bootstrap: str, topic: str, group: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # as the consumer's members: librdkafka's default (1000 ms) stalls a partition for
            # a second whenever its prefetch queue fills, which caps the rate of the loop, not
            # its cost
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        }
    )
    consumer.subscribe([topic])
    return consumer


def _timed_loop(
    bootstrap: str,
    topic: str,
    group: str,
    expect: int,
    timeout: float,
    handle: Callable[[list[Message]], int],
) -> dict[str, object]:
    """``consume(500)`` from the start of ``topic`` until ``expect`` records were handled
    (``handle`` takes a batch, returns how many it counted) or ``timeout``; timed from the
    first record received to the last, wall clock and process CPU."""
    consumer = _consumer(bootstrap, topic, group)
    count = 0
    first = last = 0.0
    cpu_first = 0.0
    timeline: list[list[float]] = []
    started = time.monotonic()
    try:
        while count < expect and time.monotonic() - started < timeout:
            messages = consumer.consume(500, 0.5)
            if not messages:
                continue
            now = time.monotonic()
            if count == 0:
                first, cpu_first = now, time.process_time()
            count += handle(messages)
            last = now
            if not timeline or now - started - timeline[-1][0] >= 0.1:
                timeline.append([round(now - started, 3), count])
        cpu = time.process_time() - cpu_first
    finally:
        consumer.close()
    timeline.append([round(last - started, 3), count])
    seconds = last - first
    return {
        "events": count,
        "seconds": round(seconds, 3),
        "events_per_s": round(count / seconds, 1) if seconds > 0 else 0.0,
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_event": round(cpu / max(1, count) * 1e6, 2),
        "wall_seconds": round(last - started, 3),
        "timeline": timeline,
    }


def bare(bootstrap: str, topic: str, group: str, expect: int, timeout: float) -> dict[str, object]:
    return _timed_loop(
        bootstrap,
        topic,
        group,
        expect,
        timeout,
        lambda messages: sum(1 for m in messages if m.error() is None),
    )


def ceiling(
    bootstrap: str, topic: str, group: str, expect: int, timeout: float
) -> dict[str, object]:
    offsets: dict[int | None, int | None] = {}
    kinds: dict[object, int] = {}

    def decode_and_dispatch(messages: list[Message]) -> int:
        count = 0
        for message in messages:
            if message.error() is not None:
                continue
            event = orjson.loads(message.value() or b"{}")
            kind = event.get("event") if event.get("type") == "track" else event.get("type")
            kinds[kind] = kinds.get(kind, 0) + 1
            offsets[message.partition()] = message.offset()
            count += 1
        return count

    result = _timed_loop(bootstrap, topic, group, expect, timeout, decode_and_dispatch)
    del result["timeline"]
    return {**result, "partitions": len(offsets)}


def produce(bootstrap: str, topic: str, records: int, value_bytes: int) -> dict[str, object]:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    value = b"x" * value_bytes
    reported = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            producer.poll(0.1)

    def on_delivery(err: KafkaError | None, _message: Message) -> None:
        reported.append(err)

    producer.produce(topic, value=value, key=b"warm-up", on_delivery=on_delivery)
    producer.flush(30)  # the connection and the producer id, not timed
    reported.clear()
    thread = threading.Thread(target=serve)
    thread.start()
    started, cpu_started = time.monotonic(), time.process_time()
    try:
        for index in range(records):
            while True:
                try:
                    producer.produce(
                        topic, value=value, key=b"user-%d" % index, on_delivery=on_delivery
                    )
                    break
                except BufferError:  # librdkafka's queue is full: the serving thread drains it
                    time.sleep(0.001)
        while len(reported) < records:
            time.sleep(0.001)
        cpu, seconds = time.process_time() - cpu_started, time.monotonic() - started
    finally:
        stop.set()
        thread.join()
    return {
        "records": records,
        "value_bytes": value_bytes,
        "failed": sum(1 for err in reported if err is not None),
        "records_per_s": round(records / seconds, 1),
        "cpu_us_per_record": round(cpu / records * 1e6, 2),
    }


def client(bootstrap: str, topic: str, url: str, expect: int, in_flight: int) -> dict[str, object]:
    settings = load_settings(None, os.environ)
    integration = settings.integrations[0]
    mapper = Mapper(
        settings.targets(),
        profiles=InMemoryProfileStore(),
        deduper=MessageDeduper(max_entries=1_000_000, ttl_seconds=86_400),
    )
    consumer = _consumer(bootstrap, topic, f"bench-client-{uuid.uuid4().hex[:8]}")
    bodies: list[bytes] = []
    read = 0
    prepare_cpu = time.process_time()
    try:
        while read < expect:
            for message in consumer.consume(500, 1.0):
                if message.error() is not None:
                    continue
                read += 1
                for outcome in mapper.map_record(
                    value=message.value() or b"", key=message.key(), topic=topic, now=0.0
                ):
                    if isinstance(outcome, ContactUpsert):
                        bodies.append(orjson.dumps(outcome.payload()))
    finally:
        consumer.close()
    prepare_cpu = time.process_time() - prepare_cpu
    headers = {
        "Authorization": f"Bearer {integration.access_token.reveal()}",
        "Version": "2021-07-28",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }

    async def post_all() -> tuple[float, float, int]:
        queue = iter(bodies)
        failed = 0
        connector = aiohttp.TCPConnector(limit=in_flight)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def worker() -> None:
                nonlocal failed
                for body in queue:
                    async with session.post(f"{url}/contacts/upsert", data=body) as response:
                        orjson.loads(await response.read())
                        failed += response.status >= 300

            started, cpu = time.monotonic(), time.process_time()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return time.monotonic() - started, time.process_time() - cpu, failed

    seconds, cpu, failed = asyncio.run(post_all())
    return {
        "requests": len(bodies),
        "failed": failed,
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(bodies) / seconds, 1),
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_request": round(cpu / max(1, len(bodies)) * 1e6, 1),
        # consuming, decoding and mapping the events into those bodies (before any request)
        "prepare_cpu_us_per_request": round(prepare_cpu / max(1, len(bodies)) * 1e6, 1),
    }


def naive(
    bootstrap: str, topic: str, group: str, url: str, expect: int, max_seconds: float
) -> dict[str, object]:
    settings = load_settings(None, os.environ)
    integration = settings.integrations[0]
    mapper = Mapper(
        settings.targets(),
        profiles=InMemoryProfileStore(),
        deduper=MessageDeduper(max_entries=100_000, ttl_seconds=86_400),
    )
    session = requests.Session()
    headers = {
        "Authorization": f"Bearer {integration.access_token.reveal()}",
        "Version": "2021-07-28",
    }
    consumer = _consumer(bootstrap, topic, group)
    count = posts = rate_limited = failed = 0
    first = last = 0.0
    started = time.monotonic()
    try:
        while count < expect:
            now = time.monotonic()
            if (first and now - first > max_seconds) or now - started > max_seconds + 60:
                break  # time-boxed: the naive consumer is far slower than a whole backlog
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            if count == 0:
                first = time.monotonic()
            outcomes = mapper.map_record(
                value=msg.value() or b"", key=msg.key(), topic=msg.topic(), now=time.time()
            )
            for outcome in outcomes:
                if not isinstance(outcome, ContactUpsert):
                    continue
                while True:
                    response = session.post(
                        f"{url}/contacts/upsert", json=outcome.payload(), headers=headers
                    )
                    posts += 1
                    if response.status_code != 429:
                        break
                    rate_limited += 1
                    time.sleep(float(response.headers.get("Retry-After", "1")))
                if response.status_code >= 300:
                    failed += 1
                    print(f"upsert failed: {response.status_code}", file=sys.stderr)
            consumer.commit(message=msg, asynchronous=False)
            count += 1
            last = time.monotonic()
    finally:
        consumer.close()
        session.close()
    seconds = last - first
    return {
        "events": count,
        "http_calls": posts,
        "answers_429": rate_limited,
        "failed": failed,
        "seconds": round(seconds, 3),
        "events_per_s": round(count / seconds, 1) if seconds > 0 else 0.0,
        "http_calls_per_s": round(posts / seconds, 1) if seconds > 0 else 0.0,
        "finished": count >= expect,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--value-bytes", type=int, required=True)
    for name in ("bare", "ceiling", "client", "naive"):
        p = sub.add_parser(name)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic", required=True)
        p.add_argument("--expect", type=int, required=True, help="records to read, then stop")
        p.add_argument("--group", default=f"bench-{name}-{uuid.uuid4().hex[:8]}")
        p.add_argument("--max-seconds", type=float, default=600.0)
        if name in ("client", "naive"):
            p.add_argument("--url", required=True, help="HighLevel (sandbox) base URL")
        if name == "client":
            p.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args(argv)
    if args.command == "bare":
        result = bare(args.bootstrap, args.topic, args.group, args.expect, args.max_seconds)
    elif args.command == "ceiling":
        result = ceiling(args.bootstrap, args.topic, args.group, args.expect, args.max_seconds)
    elif args.command == "produce":
        result = produce(args.bootstrap, args.topic, args.records, args.value_bytes)
    elif args.command == "client":
        result = client(args.bootstrap, args.topic, args.url, args.expect, args.in_flight)
    else:
        result = naive(
            args.bootstrap, args.topic, args.group, args.url, args.expect, args.max_seconds
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
