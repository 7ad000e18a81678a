"""``ghl-consumer demo``: the whole pipeline on one machine, end to end, in well under a minute.

1. Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else the repository's local KRaft launcher
   (``tools/kafka/kafka.sh up``, the same broker as ``make kafka-up``; left running).
2. HighLevel: the sandbox, in this process, at HighLevel's own rate limits.
3. A fresh topic receives a realistic sample stream (``consumer.commands.samples``: identifies,
   sign-ups, leads and analytics noise) plus two poison records.
4. The real consumer (``consumer.commands.run.running_consumer``) runs until every record is
   done and committed, then shuts down as on SIGTERM.
5. It prints what reached the sandbox, what coalescing saved, drops by reason, dead letters.

``ghl-consumer demo --load --rate R [--topic T] [--events N]``: a load generator instead (the
compose stack's ``loadgen``): the same sample stream without end (or ``N`` records), at a
steady ``R`` records a second, to topic ``T``, with ``POISON`` records (broken JSON, an
identify with no usable email or phone: both dead-lettered) mixed in, one every
``--poison-every`` records. It runs until SIGTERM or SIGINT, then waits for the broker to
acknowledge what it sent, prints how many records it produced and exits 0; a record the broker
refuses makes it exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, cast

import orjson

from consumer.commands.preamble import add_log_level_argument, configure_logging, stop_on_signals
from consumer.commands.run import running_consumer
from consumer.commands.samples import generate
from consumer.config import load_settings
from consumer.core.normalise import mask_email
from consumer.engine.engine import Engine
from consumer.engine.ports import Produced
from consumer.engine.stats import EngineStats
from consumer.errors import ConfigError
from consumer.kafka.admin import TopicSpec, ensure_topics
from consumer.kafka.producer import KafkaProducer
from consumer.sandbox.server import run_sandbox

LOCATION_ID = "ve9EPM428h8vShlRW1KT"  # the integration guide's example location
TOKEN = "demo-private-integration-token"  # noqa: S105 - the sandbox's own demo token
LAUNCHER = Path(__file__).resolve().parents[2] / "tools" / "kafka" / "kafka.sh"
PARTITIONS = 3
DEMO_EVENTS = 2_000
LOAD_IDENTITY_SHARE = 0.3  # more identity events than the demo's 0.2: the dashboard moves
PROGRESS_INTERVAL_S = 10.0
# Two records a real stream also carries: broken JSON, and an identify with no usable email or
# phone from a visitor never seen before. Both end in the dead-letter topic.
POISON: Final = (
    (b"user-0", b"{this is not json"),
    (
        b"visitor-x",
        orjson.dumps(
            {"type": "identify", "userId": "visitor-x", "traits": {"email": "not-an-email"}}
        ),
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        type=_positive(int),
        default=None,
        help=f"sample events (default {DEMO_EVENTS}; with --load: until stopped)",
    )
    parser.add_argument(
        "--users", type=_positive(int), default=150, help="distinct users (%(default)s)"
    )
    load = parser.add_argument_group("load generator (--load)")
    load.add_argument(
        "--load",
        action="store_true",
        help="only produce sample events at --rate until SIGTERM/SIGINT (no sandbox, no consumer)",
    )
    load.add_argument(
        "--rate",
        type=_positive(float),
        default=20.0,
        help="records a second (%(default)s)",
    )
    load.add_argument("--topic", default="events", help="topic written to (%(default)s)")
    load.add_argument(
        "--poison-every",
        type=_positive(int),
        default=200,
        metavar="N",
        help="one dead-letter record (broken JSON or no usable identity) every N (%(default)s)",
    )
    add_log_level_argument(parser, default="WARNING")
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep the metrics and the event debugger up this long after the drain",
    )


def main(args: argparse.Namespace) -> int:
    """The demo: 0 when every sample record was delivered, dropped or dead-lettered and
    committed. ``--load``: 0 when every record produced was acknowledged."""
    configure_logging(args.log_level, log_format=args.log_format, timestamps=True)
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or _local_broker()
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    if args.load:
        return asyncio.run(
            _load(bootstrap, args.topic, args.rate, args.events, args.users, args.poison_every)
        )
    events = DEMO_EVENTS if args.events is None else args.events
    return asyncio.run(_demo(bootstrap, events, args.users, args.linger))


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value

    return parse


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


async def _load(
    bootstrap: str, topic: str, rate: float, events: int | None, users: int, poison_every: int
) -> int:
    stop = stop_on_signals()
    await ensure_topics(bootstrap, [TopicSpec(topic, partitions=PARTITIONS)])
    producer = KafkaProducer(bootstrap=bootstrap, client_id="ghl-consumer-loadgen")
    kinds: Counter[str] = Counter()
    failed: list[BaseException] = []
    print(f"load: producing {rate:g} records/s to {topic} on {bootstrap} until stopped", flush=True)
    stream = generate(users=users, events=None, identity_share=LOAD_IDENTITY_SHARE, seed=23)
    started = last_report = time.monotonic()
    sent = 0
    try:
        while not stop.is_set() and (events is None or sent < events):
            if (sent + 1) % poison_every == 0:
                key, value = POISON[(sent // poison_every) % len(POISON)]
                kind = "poison"
            else:
                record = next(stream)
                key, value, kind = record.key, record.value, record.kind
            future = await producer.send(topic, key=key, value=value)
            future.add_done_callback(functools.partial(_failed, failed=failed))
            kinds[kind] += 1
            sent += 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL_S:
                last_report = now
                print(_load_line(kinds, now - started), flush=True)
            # Steady pace: record n leaves at started + n / rate, however long send took.
            delay = started + sent / rate - now
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
    finally:
        await producer.close()  # waits for the broker's acknowledgements
    print(_load_line(kinds, time.monotonic() - started) + "; stopped", flush=True)
    if failed:
        print(f"load: {len(failed)} records refused: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def _failed(future: asyncio.Future[Produced], failed: list[BaseException]) -> None:
    if not future.cancelled() and future.exception() is not None:
        failed.append(cast(BaseException, future.exception()))


def _load_line(kinds: Counter[str], elapsed: float) -> str:
    """``load: produced N records in T s (R/s): analytics a, identify i, ...``"""
    produced = sum(kinds.values())
    rate = produced / elapsed if elapsed > 0 else 0.0
    mix = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    return f"load: produced {produced} records in {elapsed:.1f}s ({rate:.1f}/s): {mix}"


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
        for key, value in POISON:
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
