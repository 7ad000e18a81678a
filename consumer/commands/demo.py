"""``ghl-consumer demo``: the whole pipeline on one machine, end to end, in well under a minute.

1. Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else the repository's local KRaft launcher
   (``tools/kafka/kafka.sh up``, the same broker as ``make kafka-up``; left running).
2. HighLevel: the sandbox, in this process, at HighLevel's own rate limits.
3. A fresh topic receives a realistic sample stream (``consumer.commands.samples``: identifies,
   sign-ups, leads and analytics noise) plus two poison records.
4. The real consumer (``consumer.commands.run.running_consumer``) runs until every record is
   done and committed, then shuts down as on SIGTERM.
5. It prints what reached the sandbox, what coalescing saved, drops by reason, dead letters.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from consumer.commands.run import running_consumer
from consumer.commands.samples import generate
from consumer.config import load_settings
from consumer.core.normalise import mask_email
from consumer.engine.engine import Engine
from consumer.engine.stats import EngineStats
from consumer.errors import ConfigError
from consumer.kafka.admin import TopicSpec, ensure_topics
from consumer.kafka.producer import KafkaProducer
from consumer.sandbox.server import run_sandbox

LOCATION_ID = "ve9EPM428h8vShlRW1KT"  # the integration guide's example location
TOKEN = "demo-private-integration-token"  # noqa: S105 - the sandbox's own demo token
LAUNCHER = Path(__file__).resolve().parents[2] / "tools" / "kafka" / "kafka.sh"
PARTITIONS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=2_000, help="sample events (%(default)s)")
    parser.add_argument("--users", type=int, default=150, help="distinct users (%(default)s)")
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep the metrics and the event debugger up this long after the drain",
    )


def main(args: argparse.Namespace) -> int:
    """0 when every sample record was delivered, dropped or dead-lettered and committed."""
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or _local_broker()
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_demo(bootstrap, args.events, args.users, args.linger))


def _local_broker() -> str:
    if not LAUNCHER.exists():
        raise RuntimeError(
            "no Kafka: set KAFKA_BOOTSTRAP_SERVERS, or run the demo from a repository checkout"
        )
    port = os.environ.get("KAFKA_PORT", "9092")
    result = subprocess.run([str(LAUNCHER), "up"], check=False)  # noqa: S603 - our own script
    if result.returncode != 0:
        raise RuntimeError("the local Kafka broker did not start (see the lines above)")
    print("demo: the local broker keeps running afterwards; `make kafka-down` stops it")
    return f"127.0.0.1:{port}"


async def _demo(bootstrap: str, events: int, users: int, linger: float) -> int:
    run_id = time.strftime("%Y%m%d-%H%M%S")
    topic, group = f"ghl-demo-{run_id}", f"ghl-demo-{run_id}"
    await ensure_topics(bootstrap, [TopicSpec(topic, partitions=PARTITIONS)])
    kinds = await _produce(bootstrap, topic, events, users)
    produced = sum(kinds.values())

    async with run_sandbox(locations={LOCATION_ID: TOKEN}) as sandbox:
        environ = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "GHL_LOCATION_ID": LOCATION_ID,
            "GHL_ACCESS_TOKEN": TOKEN,
            "GHL_API_BASE_URL": sandbox.url,
            "METRICS_PORT": os.environ.get("METRICS_PORT", "0"),
            "DEBUG_PORT": os.environ.get("DEBUG_PORT", "0"),
        }
        try:
            settings = load_settings(None, environ)
        except ConfigError as exc:
            print(f"demo: configuration error: {exc}", file=sys.stderr)
            return 2
        started = time.monotonic()
        print(f"demo: {produced} records on topic {topic}; consuming as group {group}")
        async with running_consumer(settings) as consumer:
            url, debug_url = consumer.web.url, consumer.debug_web.url
            print(f"demo: metrics at {url}/metrics, event debugger at {debug_url}/debug")
            stop = asyncio.Event()
            run = asyncio.create_task(consumer.engine.run(stop))
            engine = consumer.engine
            while not _drained(engine, produced):
                if run.done():
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(settings.engine.commit_interval_ms / 1000 * 2)
            if linger > 0:
                print(f"demo: lingering {linger:.0f}s; open {debug_url}/debug")
                await asyncio.sleep(linger)
            stop.set()
            await run
            elapsed = time.monotonic() - started
            contacts = sandbox.contacts(LOCATION_ID)
        _summary(engine.stats, kinds, contacts, elapsed)
    done = engine.stats.consumed >= produced and engine.snapshot().buffered_records == 0
    return 0 if done else 1


def _drained(engine: Engine, produced: int) -> bool:
    snapshot = engine.snapshot()
    return (
        engine.stats.consumed >= produced
        and snapshot.buffered_records == 0
        and all(p.incomplete == 0 for p in snapshot.partitions)
    )


async def _produce(bootstrap: str, topic: str, events: int, users: int) -> Counter[str]:
    producer = KafkaProducer(bootstrap=bootstrap)
    kinds: Counter[str] = Counter()
    try:
        pending = []
        for record in generate(users=users, events=events):
            pending.append(await producer.send(topic, key=record.key, value=record.value))
            kinds[record.kind] += 1
        # Two records a real stream also carries: broken JSON, and an identify with no usable
        # email or phone from a visitor never seen before. Both end in the dead-letter topic.
        poison = [
            (b"user-0", b"{this is not json"),
            (
                b"visitor-x",
                orjson.dumps(
                    {"type": "identify", "userId": "visitor-x", "traits": {"email": "not-an-email"}}
                ),
            ),
        ]
        for key, value in poison:
            pending.append(await producer.send(topic, key=key, value=value))
            kinds["poison"] += 1
        await asyncio.gather(*pending)
    finally:
        await producer.close()
    return kinds


def _summary(
    stats: EngineStats, kinds: Counter[str], contacts: list[dict[str, object]], elapsed: float
) -> None:
    identity = kinds["identify"] + kinds["signed_up"] + kinds["lead"]
    produced = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(stats.dropped.items()))
    rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(stats.rejected.items()))
    lines = [
        "",
        f"produced      {sum(kinds.values())} records: {produced}",
        f"consumed      {stats.consumed} in {elapsed:.1f}s",
        f"delivered     {stats.delivered_events} identity upserts in {stats.delivered_calls} "
        f"HighLevel calls ({stats.coalesced} folded in by coalescing)",
        f"              {identity} identity events -> {stats.delivered_calls} calls",
        f"dropped       {dropped or 'none'}",
        f"dead-lettered {stats.dead_lettered} ({rejected or 'none'})",
        f"retries       {stats.retries}",
        f"sandbox       {len(contacts)} contacts in location {LOCATION_ID}; the first five:",
    ]
    for contact in contacts[:5]:
        lines.append(
            f"              {contact.get('firstName')} {contact.get('lastName')} "
            f"<{mask_email(str(contact.get('email')))}> tags={contact.get('tags')} "
            f"source={contact.get('source')!r} dnd={contact.get('dnd')}"
        )
    print("\n".join(lines))
