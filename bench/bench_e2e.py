"""End-to-end benchmarks: the real consumer (``python -m consumer run``), a real Kafka broker and
the sandbox (a separate process) over loopback, with the baselines measured in the same run.

Scenarios (``--scenario NAME``, repeatable; default all):

  analytics90   a pre-produced backlog, 90% analytics events: the consumer's drain rate (read,
                map, deliver, commit) vs a bare confluent-kafka consume loop over the same
                topic, vs the naive consumer; plus ``orjson.loads`` over the same values
  hotpath       the engine's hot path against the decode-and-dispatch ceiling
                (``baselines.py ceiling``): 100% analytics events with 2 and with 20 events
                per user, and 90% analytics with 20 per user; events/s and CPU per event
  upserts       upsert-heavy backlog of distinct contacts to an unlimited sandbox, coalescing
                window 0: upserts delivered per second, vs the naive consumer
  backlogged    one location at HighLevel's limits scaled down to 20 requests per 1 s (sandbox
                and consumer alike): achieved request rate / configured budget, 429 answers,
                vs the naive consumer (sleeps 1 s on a 429)
  locations     1,000 locations (1,000 integrations routed by ``context.site``), the sandbox at
                HighLevel's limits per location, budgets to spare: requests per second and the
                consumer's CPU per request
  bursty        identify -> "Signed Up" -> "Lead Generated" per contact, 50 ms apart, in waves,
                produced live: HTTP calls per contact and delivery latency with the default
                coalescing window (250 ms), with none, and for the naive consumer
  backlog1m     1,000,000 events over 100,000 users (90% analytics): peak RSS and drain time
                (one run in full mode unless --repeats is given: a drain takes a minute)
  memory        where that RSS goes: 400,000 events over 100,000 users drained under
                settings that each shrink one user of memory (glibc arenas, librdkafka
                fetch queues, the engine's buffer), one run each unless --repeats is given
  scaling       the analytics90 backlog drained by 1, 2 and 3 consumer processes in one group

Timing: a consumer is measured from its first commit to the commit that covers the whole
backlog (committed offsets, polled every 0.1 s; the consumer commits every 250 ms here), so
start-up and the group join are excluded; the baselines are timed from their first record to
their last. Each figure is the median, with min..max, over ``--repeats`` (default 3; quick 1).

    .venv/bin/python bench/bench_e2e.py [--scenario NAME ...] [--repeats N] [--quick] [--profile]

Writes ``bench/results/e2e_<scenario>.json`` (``bench/results/quick/`` with ``--quick``) and
prints a table per scenario. ``--profile`` adds one extra run of the scenario's consumer under
cProfile and stores its top functions (cumulative and own time) in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import pstats
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baselines import orjson_loads_rate
from bench.common import (
    CommitWatcher,
    Drain,
    broker,
    consumer_config,
    consumer_processes,
    cpu_seconds,
    end_offsets,
    loadavg,
    machine_facts,
    new_topic,
    percentile,
    produce,
    results_dir,
    run_script,
    spread,
    watch_drain,
    write_result,
)
from consumer.commands import samples
from consumer.config import load_settings
from consumer.core.dedupe import MessageDeduper
from consumer.core.mapping import Mapper
from consumer.core.profiles import ChangelogProfileStore, InMemoryProfileStore
from consumer.sandbox import sandbox_process

LOCATION, TOKEN = "benchLocation0000001", "bench-token-0000001"
PARTITIONS = 6
BASELINES = str(Path(__file__).resolve().parent / "baselines.py")
# Budgets the consumer never reaches, for scenarios that measure anything but rate limiting.
UNLIMITED = {
    "rate_burst": 1_000_000,
    "rate_sustained": 1_000_000,
    "rate_interval_seconds": 1.0,
    "rate_daily": 1_000_000_000,
}
# The sandbox never answers 429 and announces limits the consumer never reaches (the consumer's
# limiter adopts the stricter of its budget and the server's X-RateLimit-* headers).
UNLIMITED_SANDBOX = ("--unlimited", "--burst", "1000000", "--interval-ms", "1000")
UNLIMITED_SANDBOX += ("--daily", "1000000000")
ENGINE = {"commit_interval_ms": 250}  # resolves the drain time to 0.25 s; defaults otherwise


@dataclass
class Bench:
    bootstrap: str
    quick: bool
    repeats: int
    profile: bool
    explicit_repeats: bool = False
    topics: dict[str, tuple[str, int, list[bytes]]] = field(default_factory=dict)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def single_env(bench: Bench, topic: str, group: str, url: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bench.bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "GHL_LOCATION_ID": LOCATION,
        "GHL_ACCESS_TOKEN": TOKEN,
        "GHL_API_BASE_URL": url,
    }


def group_id(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:8]}"


# -- the sandbox, observed over HTTP -------------------------------------------------------------


class SandboxProbe:
    """Reads the sandbox's admin endpoints: answers by status, request log, contacts, CPU."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self._session.close()

    async def _get(self, path: str) -> Any:
        async with self._session.get(f"{self.url}{path}") as response:
            return orjson.loads(await response.read())

    async def answers(self) -> dict[str, int]:
        """Totals over every location: requests, status.200, status.429, ..."""
        totals: dict[str, int] = {}
        for counters in (await self._get("/_sandbox/counters"))["locations"].values():
            for name, value in counters.items():
                if isinstance(value, int):
                    totals[name] = totals.get(name, 0) + value
        return totals

    async def sample(self) -> list[float]:
        """[answered 2xx so far, 429s so far, sandbox CPU seconds]: a watch_drain column."""
        totals = await self.answers()
        ok = totals.get("status.200", 0) + totals.get("status.201", 0)
        return [ok, totals.get("status.429", 0), round(cpu_seconds(self.pid), 3)]

    async def request_log(self) -> list[tuple[float, int]]:
        """(epoch seconds, status) of every logged request, oldest first."""
        entries = (await self._get("/_sandbox/requests"))["requests"]
        return [
            (datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp(), e["status"])
            for e in entries
        ]

    async def contacts(self, location: str = LOCATION) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (
            await self._get(f"/_sandbox/contacts?locationId={location}")
        )["contacts"]
        return result


@contextlib.asynccontextmanager
async def sandbox(
    locations: dict[str, str] | None = None, args: Sequence[str] = UNLIMITED_SANDBOX
) -> AsyncIterator[SandboxProbe]:
    """A fresh sandbox process (so repeats start from no contacts), with a probe."""
    async with sandbox_process(locations or {LOCATION: TOKEN}, list(args)) as process:
        probe = SandboxProbe(process.url, process.pid)
        try:
            yield probe
        finally:
            await probe.close()


# -- workloads ----------------------------------------------------------------------------------


def backlog_topic(
    bench: Bench, name: str, make: Callable[[], Iterator[tuple[bytes, bytes]]]
) -> tuple[str, int, list[bytes]]:
    """Create and fill a topic once per run (scenarios sharing a workload share the topic)."""
    if name not in bench.topics:
        topic = new_topic(bench.bootstrap, PARTITIONS, f"bench-{name}")
        records = list(make())
        count, seconds = produce(bench.bootstrap, topic, records)
        assert sum(end_offsets(bench.bootstrap, topic).values()) == count
        print(f"  produced {count:,} records to {topic} in {seconds:.1f}s", flush=True)
        bench.topics[name] = (topic, count, [value for _, value in records])
    return bench.topics[name]


def analytics_backlog(bench: Bench) -> tuple[str, int, list[bytes]]:
    events = bench.size(200_000, 30_000)

    def make() -> Iterator[tuple[bytes, bytes]]:
        for r in samples.generate(users=events // 2, events=events, identity_share=0.1, seed=11):
            yield r.key, r.value

    return backlog_topic(bench, "analytics90", make)


def identify(user: int, *, site: str | None = None) -> tuple[bytes, bytes]:
    event: dict[str, Any] = {
        "type": "identify",
        "userId": f"u-{user}",
        "messageId": f"id-{user}",
        "traits": {
            "email": f"contact{user}@bench.example.com",
            "phone": f"+1 415 {user // 10_000 % 1000:03d} {user % 10_000:04d}",
            "first_name": "Bench",
            "last_name": f"User{user}",
        },
        "context": {"consent": {"marketing": "granted"}},
    }
    if site is not None:
        event["context"]["site"] = site
    return f"u-{user}".encode(), orjson.dumps(event)


# -- running the consumer -------------------------------------------------------------------------


async def run_naive(
    bench: Bench, topic: str, url: str, *, expect: int, seconds: float, group: str | None = None
) -> dict[str, Any]:
    """The naive consumer (``baselines.py naive``) over ``topic`` into the sandbox at ``url``,
    time-boxed to ``seconds`` from its first record."""
    argv = [BASELINES, "naive", "--bootstrap", bench.bootstrap, "--topic", topic, "--url", url]
    argv += ["--expect", str(expect), "--max-seconds", str(seconds)]
    if group is not None:
        argv += ["--group", group]
    env = {"GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": TOKEN}
    return await asyncio.to_thread(run_script, argv, timeout=600, env=env)


async def drain_with_consumer(
    bench: Bench,
    name: str,
    *,
    topic: str,
    total: int,
    probe: SandboxProbe,
    config: str,
    env: dict[str, str],
    instances: int = 1,
    profile: Path | None = None,
) -> Drain:
    group = env["KAFKA_GROUP_ID"]
    watcher = CommitWatcher(bench.bootstrap, topic, range(PARTITIONS))
    async with consumer_processes(
        instances, config=config, env=env, name=name, profile=profile
    ) as children:
        drain = await watch_drain(
            watcher, group, total, children, give_up_after=900, extra=probe.sample
        )
    if not drain.done:
        raise RuntimeError(f"{name}: backlog not drained in time ({drain.timeline[-1]})")
    return drain


def deliveries(drain: Drain) -> dict[str, float]:
    """Sandbox answers and CPU between the first and the last commit (from the timeline)."""
    first = next(row for row in drain.timeline if row[1] > 0)
    last = drain.timeline[-1]
    ok = last[-3] - first[-3]
    return {
        "answers_2xx": last[-3],
        "answers_429": last[-2],
        "upserts_per_s": round(ok / drain.drain_seconds, 1),
        "sandbox_cpu_share": round((last[-1] - first[-1]) / drain.drain_seconds, 2),
    }


def consumer_figures(drain: Drain) -> dict[str, Any]:
    cpu = sum(drain.cpu_seconds.values())
    return {
        "events_per_s": round(drain.events_per_s, 1),
        "drain_seconds": round(drain.drain_seconds, 3),
        "drained_events": drain.drained_events,
        "seconds_to_first_commit": round(drain.seconds_to_first_commit, 2),
        "wall_seconds": round(drain.wall_seconds, 2),
        "consumer_cpu_share": round(cpu / drain.drain_seconds, 2),
        "consumer_cpu_us_per_event": round(cpu / max(1, drain.drained_events) * 1e6, 1),
        "peak_rss_mb": max(drain.peak_rss_mb.values()),
        **deliveries(drain),
    }


def thin(rows: list[list[float]], keep: int = 400) -> list[list[float]]:
    step = max(1, len(rows) // keep)
    return rows[::step] + ([rows[-1]] if rows and (len(rows) - 1) % step else [])


async def profile_run(
    bench: Bench, name: str, run: Callable[[Path], Awaitable[object]]
) -> dict[str, Any]:
    """One extra run under cProfile (not timed): the top functions, for diagnosing misses."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.prof"
        await run(path)
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        rows: dict[str, list[dict[str, Any]]] = {}
        for order in ("cumulative", "tottime"):
            stats.sort_stats(order)
            top = []
            for func in stats.fcn_list[:25]:  # type: ignore[attr-defined]
                _, nc, tt, ct, _ = stats.stats[func]  # type: ignore[attr-defined]
                top.append(
                    {
                        "function": f"{Path(func[0]).name}:{func[1]}({func[2]})",
                        "calls": nc,
                        "own_s": round(tt, 3),
                        "cumulative_s": round(ct, 3),
                    }
                )
            rows[order] = top
        total = max(r["cumulative_s"] for r in rows["cumulative"])
        return {"total_s": total, "top_cumulative": rows["cumulative"], "top_own": rows["tottime"]}


# -- scenarios ----------------------------------------------------------------------------------


async def scenario_analytics90(bench: Bench) -> dict[str, Any]:
    topic, total, values = analytics_backlog(bench)
    loads_rate = orjson_loads_rate(values)
    config = consumer_config(engine=ENGINE, delivery=UNLIMITED)
    runs: list[dict[str, Any]] = []
    timelines: dict[str, Any] = {}
    naive_seconds = bench.size(10, 3)
    for repeat in range(bench.repeats):
        bare = await asyncio.to_thread(
            run_script,
            [
                BASELINES,
                "bare",
                "--bootstrap",
                bench.bootstrap,
                "--topic",
                topic,
                "--expect",
                str(total),
            ],
            timeout=600,
        )
        async with sandbox() as probe:
            group = group_id("a90")
            drain = await drain_with_consumer(
                bench,
                "a90",
                topic=topic,
                total=total,
                probe=probe,
                config=config,
                env=single_env(bench, topic, group, probe.url),
            )
        async with sandbox() as probe:
            naive = await run_naive(bench, topic, probe.url, expect=total, seconds=naive_seconds)
        consumer = consumer_figures(drain)
        runs.append(
            {
                "consumer": consumer,
                "bare": {k: v for k, v in bare.items() if k != "timeline"},
                "naive": naive,
                "ratio_to_bare": round(consumer["events_per_s"] / bare["events_per_s"], 3),
            }
        )
        if repeat == 0:
            timelines = {"consumer": thin(drain.timeline), "bare": thin(bare["timeline"])}
        print(
            f"  repeat {repeat + 1}: consumer {consumer['events_per_s']:,.0f} ev/s, bare "
            f"{bare['events_per_s']:,.0f} ev/s, naive {naive['events_per_s']:,.0f} ev/s",
            flush=True,
        )
    doc = {
        "events": total,
        "partitions": PARTITIONS,
        "mix": "samples.generate(identity_share=0.1): 90% analytics, 10% identity events",
        "orjson_loads_per_s": round(loads_rate, 1),
        "consumer_events_per_s": spread([r["consumer"]["events_per_s"] for r in runs]),
        "bare_events_per_s": spread([r["bare"]["events_per_s"] for r in runs]),
        "naive_events_per_s": spread([r["naive"]["events_per_s"] for r in runs]),
        "ratio_to_bare": spread([r["ratio_to_bare"] for r in runs], 3),
        "ratio_to_naive": round(
            spread([r["consumer"]["events_per_s"] for r in runs])["median"]
            / spread([r["naive"]["events_per_s"] for r in runs])["median"],
            1,
        ),
        "naive_seconds": naive_seconds,
        "runs": runs,
        "timelines": timelines,
        "target": {"ratio_to_bare": 0.40},
    }
    if bench.profile:

        async def one(path: Path) -> object:
            async with sandbox() as probe:
                return await drain_with_consumer(
                    bench,
                    "a90-prof",
                    topic=topic,
                    total=total,
                    probe=probe,
                    config=config,
                    env=single_env(bench, topic, group_id("a90p"), probe.url),
                    profile=path,
                )

        doc["profile"] = await profile_run(bench, "analytics90", one)
    return doc


# The hot path's workloads (issue 21): (name, events per user, share of identity events).
HOT_PATH_WORKLOADS = (
    ("analytics_only_2", 2, 0.0),
    ("analytics_only_20", 20, 0.0),
    ("analytics90_20", 20, 0.1),
)


def hot_path_events(bench: Bench, per_user: int, share: float) -> list[tuple[bytes, bytes]]:
    """A hot-path workload's records (key, value): consent on every event, as Datafly.js
    sends it (``samples.generate``'s default)."""
    events = bench.size(400_000, 30_000)  # a drain of 6-15 s: commits every 0.25 s move it <3%
    return [
        (r.key or b"", r.value or b"")
        for r in samples.generate(
            users=events // per_user, events=events, identity_share=share, seed=11
        )
    ]


def mapping_cpu(records: Sequence[tuple[bytes, bytes]], topic: str) -> dict[str, float]:
    """CPU per record, in this process, of ``Mapper.map_record`` over ``records`` (a fresh
    mapper of the bench's integration, as the consumer maps them) and of ``orjson.loads``
    alone (its decode, counted once in the floor): the medians of 3 passes. Then, untimed, the
    profile changelog writes the consumer makes for them: a ``ChangelogProfileStore``'s
    writes taken after every 500 records (a poll batch; changes of one user within it are one
    write), per record, and their mean value size."""
    settings = load_settings(None, {"GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": TOKEN})

    def mapper(profiles: InMemoryProfileStore) -> Mapper:
        deduper = MessageDeduper(max_entries=100_000, ttl_seconds=86_400)
        return Mapper(settings.targets(), profiles=profiles, deduper=deduper)

    mapped, loaded = [], []
    for _ in range(3):
        map_record = mapper(InMemoryProfileStore()).map_record
        started = time.process_time()
        for index, (key, value) in enumerate(records):
            map_record(value=value, key=key, topic=topic, now=float(index))
        mapped.append((time.process_time() - started) / len(records) * 1e6)
        started = time.process_time()
        for _key, value in records:
            orjson.loads(value)
        loaded.append((time.process_time() - started) / len(records) * 1e6)
    store = ChangelogProfileStore()
    map_record = mapper(store).map_record
    writes = written = 0
    for index, (key, value) in enumerate(records):
        map_record(value=value, key=key, topic=topic, now=float(index))
        if index % 500 == 499 or index == len(records) - 1:
            taken = store.take_writes()
            writes += len(taken)
            written += sum(len(data) for _, data in taken)
    return {
        "map_record_cpu_us_per_event": round(sorted(mapped)[1], 2),
        "orjson_loads_cpu_us_per_event": round(sorted(loaded)[1], 2),
        "changelog_writes_per_event": round(writes / len(records), 4),
        "changelog_value_bytes": round(written / max(1, writes)),
    }


def produce_cpu(bench: Bench, mapping: dict[str, float], events: int) -> dict[str, Any]:
    """The bare producer's CPU per record (``baselines.py produce``) over as many records as
    the workload's changelog writes, of their mean size, to a fresh topic of the changelog's
    shape (the input's partition count)."""
    writes = round(mapping["changelog_writes_per_event"] * events)
    if writes == 0:
        return {"records": 0, "cpu_us_per_record": 0.0}
    topic = new_topic(bench.bootstrap, PARTITIONS, "bench-changelog")
    argv = [BASELINES, "produce", "--bootstrap", bench.bootstrap, "--topic", topic]
    argv += ["--records", str(writes), "--value-bytes", str(mapping["changelog_value_bytes"])]
    return run_script(argv, timeout=600)


async def scenario_hotpath(bench: Bench) -> dict[str, Any]:
    """Each workload drained by the consumer and read by the decode-and-dispatch ceiling
    (``baselines.py ceiling``), alternately, ``repeats`` times: events/s and CPU per event of
    each, and their ratios."""
    config = consumer_config(engine=ENGINE, delivery=UNLIMITED)
    workloads: dict[str, Any] = {}
    for name, per_user, share in HOT_PATH_WORKLOADS:
        records = hot_path_events(bench, per_user, share)
        topic, total, _ = backlog_topic(bench, f"hot-{name}", lambda: iter(records))  # noqa: B023
        runs = []
        for _ in range(bench.repeats):
            mapping = mapping_cpu(records, topic)
            produced = await asyncio.to_thread(produce_cpu, bench, mapping, len(records))
            argv = [BASELINES, "ceiling", "--bootstrap", bench.bootstrap, "--topic", topic]
            argv += ["--expect", str(total)]
            ceiling = await asyncio.to_thread(run_script, argv, timeout=600)
            async with sandbox() as probe:
                drain = await drain_with_consumer(
                    bench,
                    name,
                    topic=topic,
                    total=total,
                    probe=probe,
                    config=config,
                    env=single_env(bench, topic, group_id("hot"), probe.url),
                )
            consumer = consumer_figures(drain)
            # The least any consumer of these events spends: reading and decoding them (the
            # ceiling), applying the mapping contract (map_record, its decode not twice) and
            # making the profile changes it makes durable (a bare producer's writes).
            # Analytics only: with identity events the floor would also post their upserts
            # (the upserts scenario's floor).
            durability = mapping["changelog_writes_per_event"] * produced["cpu_us_per_record"]
            floor = (
                ceiling["cpu_us_per_event"]
                + mapping["map_record_cpu_us_per_event"]
                - mapping["orjson_loads_cpu_us_per_event"]
                + durability
            )
            runs.append(
                {
                    "consumer": consumer,
                    "ceiling": ceiling,
                    "mapping": mapping,
                    "produce": produced,
                    "durability_cpu_us_per_event": round(durability, 2),
                    "floor_cpu_us_per_event": round(floor, 2),
                    "cpu_ratio_to_floor": round(consumer["consumer_cpu_us_per_event"] / floor, 2),
                    "ratio_to_ceiling": round(
                        consumer["events_per_s"] / ceiling["events_per_s"], 3
                    ),
                    "cpu_ratio": round(
                        ceiling["cpu_us_per_event"] / consumer["consumer_cpu_us_per_event"], 3
                    ),
                }
            )
            print(
                f"  {name}: consumer {consumer['events_per_s']:,.0f} ev/s "
                f"({consumer['consumer_cpu_us_per_event']} us CPU/ev), ceiling "
                f"{ceiling['events_per_s']:,.0f} ev/s ({ceiling['cpu_us_per_event']} us CPU/ev), "
                f"map_record {mapping['map_record_cpu_us_per_event']} us CPU/ev, "
                f"{mapping['changelog_writes_per_event']} profile writes/ev at "
                f"{produced['cpu_us_per_record']} us"
                + (f": {runs[-1]['cpu_ratio_to_floor']}x the floor" if share == 0 else ""),
                flush=True,
            )
        workloads[name] = {
            "events": total,
            "events_per_user": per_user,
            "identity_share": share,
            "consumer_events_per_s": spread([r["consumer"]["events_per_s"] for r in runs]),
            "consumer_cpu_us_per_event": spread(
                [r["consumer"]["consumer_cpu_us_per_event"] for r in runs]
            ),
            "ceiling_events_per_s": spread([r["ceiling"]["events_per_s"] for r in runs]),
            "ceiling_cpu_us_per_event": spread([r["ceiling"]["cpu_us_per_event"] for r in runs], 2),
            "ratio_to_ceiling": spread([r["ratio_to_ceiling"] for r in runs], 3),
            "cpu_ratio": spread([r["cpu_ratio"] for r in runs], 3),
            "map_record_cpu_us_per_event": spread(
                [r["mapping"]["map_record_cpu_us_per_event"] for r in runs], 2
            ),
            "changelog_writes_per_event": runs[-1]["mapping"]["changelog_writes_per_event"],
            "produce_cpu_us_per_record": spread(
                [r["produce"]["cpu_us_per_record"] for r in runs], 2
            ),
            "durability_cpu_us_per_event": spread(
                [r["durability_cpu_us_per_event"] for r in runs], 2
            ),
            **(
                {
                    "floor_cpu_us_per_event": spread(
                        [r["floor_cpu_us_per_event"] for r in runs], 2
                    ),
                    "cpu_ratio_to_floor": spread([r["cpu_ratio_to_floor"] for r in runs], 2),
                }
                if share == 0
                else {}
            ),
            "runs": runs,
        }
    return {
        "partitions": PARTITIONS,
        "workloads": workloads,
        "target": {
            "analytics_only_20": 0.5,
            "analytics_only_2": 0.3,
            "analytics90_20": 0.25,
            "cpu_ratio_to_floor": 1.5,
        },
    }


async def scenario_upserts(bench: Bench) -> dict[str, Any]:
    events = bench.size(40_000, 8_000)
    rng = random.Random(5)
    users = rng.sample(range(10_000_000), events)

    def make() -> Iterator[tuple[bytes, bytes]]:
        for user in users:
            yield identify(user)

    topic, total, _ = backlog_topic(bench, "upserts", make)
    config = consumer_config(engine={**ENGINE, "coalesce_window_ms": 0}, delivery=UNLIMITED)
    runs = []
    naive_seconds = bench.size(10, 3)
    for _ in range(bench.repeats):
        async with sandbox() as probe:
            drain = await drain_with_consumer(
                bench,
                "upserts",
                topic=topic,
                total=total,
                probe=probe,
                config=config,
                env=single_env(bench, topic, group_id("ups"), probe.url),
            )
            contacts = len(await probe.contacts())
        async with sandbox() as probe:
            naive = await run_naive(bench, topic, probe.url, expect=total, seconds=naive_seconds)
        async with sandbox() as probe:
            argv = [BASELINES, "client", "--bootstrap", bench.bootstrap, "--topic", topic]
            argv += ["--url", probe.url, "--expect", str(total)]
            env = {"GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": TOKEN}
            client = await asyncio.to_thread(run_script, argv, timeout=600, env=env)
        figures = consumer_figures(drain)
        cpu_per_upsert = round(
            figures["consumer_cpu_us_per_event"]
            * figures["drained_events"]
            / max(1, figures["answers_2xx"]),
            1,
        )
        runs.append(
            {
                "consumer": figures,
                "contacts": contacts,
                "naive": naive,
                "client": client,
                "consumer_cpu_us_per_upsert": cpu_per_upsert,
                "cpu_ratio_to_client": round(cpu_per_upsert / client["cpu_us_per_request"], 2),
                # the least any consumer spends: the client's preparation plus its posting
                "cpu_ratio_to_floor": round(
                    cpu_per_upsert
                    / (client["cpu_us_per_request"] + client["prepare_cpu_us_per_request"]),
                    2,
                ),
            }
        )
        print(
            f"  consumer {figures['upserts_per_s']:,.0f} upserts/s (consumer CPU "
            f"{figures['consumer_cpu_share']}, {cpu_per_upsert} us per upsert; sandbox CPU "
            f"{figures['sandbox_cpu_share']}), naive {naive['http_calls_per_s']:,.0f}/s, "
            f"bare client {client['requests_per_s']:,.0f}/s ({client['cpu_us_per_request']} us "
            f"per request, {client['prepare_cpu_us_per_request']} us preparing it)",
            flush=True,
        )
    median = spread([r["consumer"]["upserts_per_s"] for r in runs])
    naive_median = spread([r["naive"]["http_calls_per_s"] for r in runs])
    doc = {
        "events": total,
        "distinct_contacts": len(set(users)),
        "coalesce_window_ms": 0,
        "upserts_per_s": median,
        "naive_upserts_per_s": naive_median,
        "ratio_to_naive": round(median["median"] / naive_median["median"], 1),
        "consumer_cpu_share": spread([r["consumer"]["consumer_cpu_share"] for r in runs], 2),
        "sandbox_cpu_share": spread([r["consumer"]["sandbox_cpu_share"] for r in runs], 2),
        "consumer_cpu_us_per_upsert": spread([r["consumer_cpu_us_per_upsert"] for r in runs]),
        "client_cpu_us_per_request": spread([r["client"]["cpu_us_per_request"] for r in runs]),
        "client_requests_per_s": spread([r["client"]["requests_per_s"] for r in runs]),
        "cpu_ratio_to_client": spread([r["cpu_ratio_to_client"] for r in runs], 2),
        "client_prepare_cpu_us_per_request": spread(
            [r["client"]["prepare_cpu_us_per_request"] for r in runs]
        ),
        "cpu_ratio_to_floor": spread([r["cpu_ratio_to_floor"] for r in runs], 2),
        "runs": runs,
        "target": {
            "upserts_per_s": 2000,
            "cpu_ratio_to_client": 1.5,
            "cpu_ratio_to_floor": 1.5,
        },
    }
    if bench.profile:

        async def one(path: Path) -> object:
            async with sandbox() as probe:
                return await drain_with_consumer(
                    bench,
                    "upserts-prof",
                    topic=topic,
                    total=total,
                    probe=probe,
                    config=config,
                    env=single_env(bench, topic, group_id("upsp"), probe.url),
                    profile=path,
                )

        doc["profile"] = await profile_run(bench, "upserts", one)
    return doc


def window_rate(log: list[tuple[float, int]], interval: float) -> dict[str, float]:
    """Achieved 2xx rate over the server's own windows. The sandbox opens a fixed window at
    the first request after the previous one expired; the windows are rebuilt from the log.
    The first (the idle location's burst) and the last (cut by the stop) are left out: the
    rate is the 2xx answers in windows 2..n-1 over the time from window 2's start to window
    n's start, so late-opened windows (idle gaps) lower it and nothing can raise it above
    ``max / interval``."""
    starts: list[float] = []
    counts: list[int] = []
    for t, status in sorted(log, key=lambda entry: entry[0]):
        if not starts or t >= starts[-1] + interval:
            starts.append(t)
            counts.append(0)
        if status is not None and 200 <= status < 300:
            counts[-1] += 1
    if len(starts) < 3:
        return {"rate": 0.0, "ok": sum(counts), "windows": 0}
    seconds = starts[-1] - starts[1]
    return {"rate": sum(counts[1:-1]) / seconds, "ok": sum(counts), "windows": len(starts) - 2}


def per_second(log: list[tuple[float, int]], origin: float) -> list[list[int]]:
    """[second, 2xx, 429] buckets since ``origin``, for the budget plot."""
    buckets: dict[int, list[int]] = {}
    for t, status in log:
        second = int(t - origin)
        row = buckets.setdefault(second, [second, 0, 0])
        if status == 429:
            row[2] += 1
        elif status is not None and 200 <= status < 300:
            row[1] += 1
    return [buckets[k] for k in sorted(buckets)]


async def scenario_backlogged(bench: Bench) -> dict[str, Any]:
    burst, interval_ms = 20, 1000
    seconds = bench.size(20, 6)
    budget = burst / (interval_ms / 1000)

    def make() -> Iterator[tuple[bytes, bytes]]:
        for user in range(20_000_000, 20_000_000 + 5_000):
            yield identify(user)

    topic, total, _ = backlog_topic(bench, "backlogged", make)
    sandbox_args = [
        "--burst",
        str(burst),
        "--interval-ms",
        str(interval_ms),
        "--daily",
        "100000000",
        "--request-log-size",
        "200000",
    ]
    delivery = {
        "rate_burst": burst,
        "rate_interval_seconds": interval_ms / 1000,
        "rate_sustained": burst,
        "rate_daily": 100_000_000,
    }
    config = consumer_config(engine=ENGINE, delivery=delivery)
    runs = []
    plot: dict[str, Any] = {}
    for repeat in range(bench.repeats):
        async with sandbox(args=sandbox_args) as probe:
            env = single_env(bench, topic, group_id("blog"), probe.url)
            async with consumer_processes(1, config=config, env=env, name="backlogged"):
                while not (await probe.answers()).get("requests"):  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.05)
                await asyncio.sleep(seconds)
                log = await probe.request_log()
        consumer = window_rate(log, interval_ms / 1000)
        consumer_429 = sum(1 for _, status in log if status == 429)
        async with sandbox(args=sandbox_args) as probe:
            await run_naive(bench, topic, probe.url, expect=total, seconds=seconds)
            naive_log = await probe.request_log()
        naive = window_rate(naive_log, interval_ms / 1000)
        naive_429 = sum(1 for _, status in naive_log if status == 429)
        runs.append(
            {
                "consumer_rate": round(consumer["rate"], 3),
                "consumer_of_budget": round(consumer["rate"] / budget, 4),
                "consumer_429": consumer_429,
                "consumer_ok": consumer["ok"],
                "naive_rate": round(naive["rate"], 3),
                "naive_of_budget": round(naive["rate"] / budget, 4),
                "naive_429": naive_429,
                "naive_ok": naive["ok"],
            }
        )
        if repeat == 0:
            plot = {
                "consumer": per_second(log, log[0][0]),
                "naive": per_second(naive_log, naive_log[0][0]),
            }
        print(f"  {runs[-1]}", flush=True)
    return {
        "budget": {"burst": burst, "interval_ms": interval_ms, "per_s": budget},
        "scaled_from": "HighLevel's 100 per 10,000 ms, scaled to 20 per 1,000 ms on both sides",
        "seconds_per_run": seconds,
        "of_budget": spread([r["consumer_of_budget"] for r in runs], 4),
        "answers_429": sum(r["consumer_429"] for r in runs),
        "naive_of_budget": spread([r["naive_of_budget"] for r in runs], 4),
        "naive_429": sum(r["naive_429"] for r in runs),
        "runs": runs,
        "per_second": plot,
        "target": {"of_budget": 0.95, "answers_429": 0},
    }


async def scenario_locations(bench: Bench) -> dict[str, Any]:
    count = 1000
    events = bench.size(30_000, 6_000)
    locations = {f"benchLoc{i:06d}": f"bench-token-{i:06d}" for i in range(count)}
    ids = list(locations)
    rng = random.Random(9)
    users = rng.sample(range(30_000_000, 40_000_000), events)

    def make() -> Iterator[tuple[bytes, bytes]]:
        for n, user in enumerate(users):
            yield identify(user, site=f"site-{n % count}")

    topic, total, _ = backlog_topic(bench, "locations", make)
    integrations = [
        {
            "id": f"loc{i}",
            "location_id": ids[i],
            "access_token_env": f"BENCH_TOKEN_{i}",
            "routing": {"field": "context.site", "values": [f"site-{i}"]},
        }
        for i in range(count)
    ]
    # HighLevel's default budget per location (100 / 10 s, paced at 80): never reached here.
    config = consumer_config(engine={**ENGINE, "coalesce_window_ms": 0}, integrations=integrations)
    tokens = {f"BENCH_TOKEN_{i}": locations[ids[i]] for i in range(count)}
    runs = []

    def env_for(url: str, group: str) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": bench.bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "GHL_API_BASE_URL": url,
            **tokens,
        }

    for _ in range(bench.repeats):
        async with sandbox(locations, args=[]) as probe:
            drain = await drain_with_consumer(
                bench,
                "locations",
                topic=topic,
                total=total,
                probe=probe,
                config=config,
                env=env_for(probe.url, group_id("locs")),
            )
        figures = consumer_figures(drain)
        figures["consumer_cpu_us_per_request"] = round(
            sum(drain.cpu_seconds.values()) / max(1, drain.drained_events) * 1e6, 1
        )
        runs.append(figures)
        print(
            f"  {figures['upserts_per_s']:,.0f} requests/s, 429s {figures['answers_429']}, "
            f"consumer CPU {figures['consumer_cpu_us_per_request']} us/request",
            flush=True,
        )
    doc: dict[str, Any] = {
        "locations": count,
        "events": total,
        "routing": "one integration per location, routed by context.site",
        "sandbox_limits": "HighLevel's (100 per 10 s per location, enforced)",
        "consumer_budget": "default (burst 100 per 10 s, sustained 80) per location",
        "requests_per_s": spread([r["upserts_per_s"] for r in runs]),
        "answers_429": sum(r["answers_429"] for r in runs),
        "consumer_cpu_us_per_request": spread([r["consumer_cpu_us_per_request"] for r in runs]),
        "consumer_cpu_share": spread([r["consumer_cpu_share"] for r in runs], 2),
        "runs": runs,
        "target": {"requests_per_s": 2000},
    }
    if bench.profile:

        async def one(path: Path) -> object:
            async with sandbox(locations, args=[]) as probe:
                return await drain_with_consumer(
                    bench,
                    "locations-prof",
                    topic=topic,
                    total=total,
                    probe=probe,
                    config=config,
                    env=env_for(probe.url, group_id("locsp")),
                    profile=path,
                )

        doc["profile"] = await profile_run(bench, "locations", one)
    return doc


def flow_events(user: int, step: int) -> tuple[bytes, bytes]:
    """Step 0 identify, 1 "Signed Up" (context.traits), 2 "Lead Generated" (no traits: the
    stored profile supplies the identifiers)."""
    key = f"f-{user}".encode()
    base: dict[str, Any] = {"userId": f"f-{user}", "messageId": f"f-{user}-{step}"}
    email = f"flow{user}@bench.example.com"
    if step == 0:
        event = {
            **base,
            "type": "identify",
            "traits": {"email": email, "first_name": "Flow"},
            "context": {"consent": {"marketing": "granted"}},
        }
    elif step == 1:
        event = {
            **base,
            "type": "track",
            "event": "Signed Up",
            "properties": {"method": "email"},
            "context": {"traits": {"email": email, "last_name": f"N{user}"}},
        }
    else:
        event = {
            **base,
            "type": "track",
            "event": "Lead Generated",
            "properties": {"source": "Pricing Page Form", "lead_tag": "website-lead"},
        }
    return key, orjson.dumps(event)


async def produce_waves(
    bench: Bench, topic: str, first_user: int, waves: int, per_wave: int
) -> dict[str, float]:
    """Every 50 ms: identify for wave k, "Signed Up" for k-1, "Lead Generated" for k-2.
    Returns the send time (epoch) of each contact's last event, by email."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bench.bootstrap, "linger.ms": 2})
    last_sent: dict[str, float] = {}
    started = time.monotonic()
    for tick in range(waves + 2):
        for step in range(3):
            wave = tick - step
            if not 0 <= wave < waves:
                continue
            for i in range(per_wave):
                user = first_user + wave * per_wave + i
                key, value = flow_events(user, step)
                producer.produce(topic, key=key, value=value)
                if step == 2:
                    last_sent[f"flow{user}@bench.example.com"] = time.time()
        producer.poll(0)
        delay = started + (tick + 1) * 0.05 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.to_thread(producer.flush, 30)
    return last_sent


async def scenario_bursty(bench: Bench) -> dict[str, Any]:
    seconds = bench.size(10, 4)
    per_wave = 10
    waves = int(seconds / 0.05)
    contacts = waves * per_wave
    modes = {
        "window_250ms": consumer_config(engine=ENGINE, delivery=UNLIMITED),
        "window_0": consumer_config(engine={**ENGINE, "coalesce_window_ms": 0}, delivery=UNLIMITED),
        "naive": "",
    }
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    first_user = 0
    for _ in range(bench.repeats):
        for mode, config in modes.items():
            topic = new_topic(bench.bootstrap, PARTITIONS, "bench-bursty")
            warm_key, warm_value = identify(99_000_000)
            produce(bench.bootstrap, topic, [(warm_key, warm_value)])
            group = group_id("burst")
            watcher = CommitWatcher(bench.bootstrap, topic, range(PARTITIONS))
            async with sandbox() as probe, contextlib.AsyncExitStack() as stack:
                env = single_env(bench, topic, group, probe.url)
                naive_task = None
                if mode == "naive":
                    naive_task = asyncio.create_task(
                        run_naive(
                            bench,
                            topic,
                            probe.url,
                            expect=1 + 3 * contacts,
                            seconds=120,
                            group=group,
                        )
                    )
                else:
                    await stack.enter_async_context(
                        consumer_processes(1, config=config, env=env, name=f"bursty-{mode}")
                    )
                while await asyncio.to_thread(watcher.committed, group) < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)  # joined and working: the warm-up is committed
                sent = await produce_waves(bench, topic, first_user, waves, per_wave)
                first_user += contacts
                total = 1 + 3 * contacts
                deadline = time.monotonic() + 180
                while await asyncio.to_thread(watcher.committed, group) < total:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"bursty {mode}: not drained")
                    await asyncio.sleep(0.1)
                if naive_task is not None:
                    await naive_task
                answers = await probe.answers()
                stored = await probe.contacts()
            latencies = []
            wrong = 0
            for contact in stored:
                email = contact.get("email")
                if email not in sent:
                    continue
                updated = datetime.fromisoformat(contact["dateUpdated"].replace("Z", "+00:00"))
                latencies.append((updated.timestamp() - sent[email]) * 1000)
                if contact.get("source") != "Pricing Page Form" or "website-lead" not in (
                    contact.get("tags") or []
                ):
                    wrong += 1
            calls = answers.get("requests", 0) - 1  # minus the warm-up's
            runs[mode].append(
                {
                    "contacts": contacts,
                    "contacts_stored": len(latencies),
                    "final_state_wrong": wrong,
                    "http_calls": calls,
                    "calls_per_contact": round(calls / contacts, 3),
                    "latency_ms": {
                        q: round(percentile(latencies, share), 1)
                        for q, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
                    },
                }
            )
            print(f"  {mode}: {runs[mode][-1]}", flush=True)
    return {
        "contacts_per_run": contacts,
        "flow": "identify, +50 ms Signed Up, +50 ms Lead Generated; 10 new contacts every 50 ms",
        "seconds_of_production": seconds,
        "modes": {
            mode: {
                "calls_per_contact": spread([r["calls_per_contact"] for r in rows], 3),
                "latency_p50_ms": spread([r["latency_ms"]["p50"] for r in rows]),
                "latency_p99_ms": spread([r["latency_ms"]["p99"] for r in rows]),
                "final_state_wrong": sum(r["final_state_wrong"] for r in rows),
                "runs": rows,
            }
            for mode, rows in runs.items()
        },
    }


async def scenario_backlog1m(bench: Bench) -> dict[str, Any]:
    events = bench.size(1_000_000, 100_000)
    users = bench.size(100_000, 10_000)

    def make() -> Iterator[tuple[bytes, bytes]]:
        for r in samples.generate(users=users, events=events, identity_share=0.1, seed=13):
            yield r.key, r.value

    topic, total, _ = backlog_topic(bench, "backlog1m", make)
    bench.topics["backlog1m"] = (topic, total, [])  # free the values: the driver's RSS is noise
    config = consumer_config(engine=ENGINE, delivery=UNLIMITED)
    runs = []
    timeline: list[list[float]] = []
    # A full-size drain takes a minute or more: once, unless --repeats asks for more.
    repeats = bench.repeats if bench.explicit_repeats or bench.quick else 1
    for repeat in range(repeats):
        async with sandbox() as probe:
            drain = await drain_with_consumer(
                bench,
                "1m",
                topic=topic,
                total=total,
                probe=probe,
                config=config,
                env=single_env(bench, topic, group_id("1m"), probe.url),
            )
        figures = consumer_figures(drain)
        runs.append(figures)
        if repeat == 0:
            timeline = thin(drain.timeline)
        print(
            f"  drained {total:,} in {figures['wall_seconds']}s from launch "
            f"({figures['events_per_s']:,.0f} ev/s), peak RSS {figures['peak_rss_mb']} MB",
            flush=True,
        )
    return {
        "events": total,
        "users": users,
        "repeats": len(runs),
        "peak_rss_mb": spread([r["peak_rss_mb"] for r in runs]),
        "drain_seconds_from_launch": spread([r["wall_seconds"] for r in runs]),
        "events_per_s": spread([r["events_per_s"] for r in runs]),
        "runs": runs,
        "timeline": timeline,
        "target": {"peak_rss_mb": 300},
    }


async def scenario_scaling(bench: Bench) -> dict[str, Any]:
    topic, total, _ = analytics_backlog(bench)
    config = consumer_config(engine=ENGINE, delivery=UNLIMITED)
    rates: dict[int, list[float]] = {1: [], 2: [], 3: []}
    cpu: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for _ in range(bench.repeats):
        for instances in rates:
            async with sandbox() as probe:
                drain = await drain_with_consumer(
                    bench,
                    f"scale{instances}",
                    topic=topic,
                    total=total,
                    probe=probe,
                    config=config,
                    env=single_env(bench, topic, group_id("scale"), probe.url),
                    instances=instances,
                )
            rates[instances].append(round(drain.events_per_s, 1))
            cpu[instances].append(round(sum(drain.cpu_seconds.values()) / drain.drain_seconds, 2))
            print(f"  {instances} instance(s): {drain.events_per_s:,.0f} ev/s", flush=True)
    medians = {k: spread(v) for k, v in rates.items()}
    return {
        "events": total,
        "partitions": PARTITIONS,
        "events_per_s": {str(k): v for k, v in medians.items()},
        "consumers_cpu_share": {str(k): spread(v, 2) for k, v in cpu.items()},
        "scaling_ratio": {
            str(k): round(medians[k]["median"] / medians[1]["median"], 2) for k in medians
        },
        "note": "2 CPUs shared by the consumers, the sandbox and the broker: sublinear by force",
    }


async def scenario_memory(bench: Bench) -> dict[str, Any]:
    """Where the 1M-backlog RSS goes: the same kind of backlog drained under settings that
    each shrink one consumer of memory (configuration and environment only, no code change)."""
    events = bench.size(400_000, 50_000)
    users = bench.size(100_000, 5_000)

    def make() -> Iterator[tuple[bytes, bytes]]:
        for r in samples.generate(users=users, events=events, identity_share=0.1, seed=17):
            yield r.key, r.value

    topic, total, _ = backlog_topic(bench, "memory", make)
    bench.topics["memory"] = (topic, total, [])
    base = consumer_config(engine=ENGINE, delivery=UNLIMITED)
    small_queues = (
        '[kafka.librdkafka]\n"queued.max.messages.kbytes" = "2048"\n"fetch.max.bytes" = "2097152"\n'
    )
    buffered = {**ENGINE, "max_buffered": 2000, "max_buffered_per_partition": 500}
    variants: dict[str, tuple[str, dict[str, str]]] = {
        "defaults": (base, {}),
        "MALLOC_ARENA_MAX=2 (glibc arenas)": (base, {"MALLOC_ARENA_MAX": "2"}),
        "librdkafka queued.max.messages.kbytes=2048, fetch.max.bytes=2 MB": (
            base + small_queues,
            {},
        ),
        "engine max_buffered=2000 (per partition 500)": (
            consumer_config(engine=buffered, delivery=UNLIMITED),
            {},
        ),
    }
    # Peak RSS varies from run to run (allocator state): once each, unless --repeats.
    repeats = bench.repeats if bench.explicit_repeats or bench.quick else 1
    rows = []
    for name, (config, extra_env) in variants.items():
        peaks, rates = [], []
        for _ in range(repeats):
            async with sandbox() as probe:
                env = {**single_env(bench, topic, group_id("mem"), probe.url), **extra_env}
                drain = await drain_with_consumer(
                    bench, "memory", topic=topic, total=total, probe=probe, config=config, env=env
                )
            figures = consumer_figures(drain)
            peaks.append(figures["peak_rss_mb"])
            rates.append(figures["events_per_s"])
        rows.append({"variant": name, "peak_rss_mb": spread(peaks), "events_per_s": spread(rates)})
        print(f"  {name}: peak RSS {peaks} MB, {rates} ev/s", flush=True)
    return {"events": total, "users": users, "runs_per_variant": repeats, "variants": rows}


PROFILED = frozenset(("analytics90", "locations", "upserts"))

SCENARIOS: dict[str, Callable[[Bench], Awaitable[dict[str, Any]]]] = {
    "analytics90": scenario_analytics90,
    "hotpath": scenario_hotpath,
    "upserts": scenario_upserts,
    "backlogged": scenario_backlogged,
    "locations": scenario_locations,
    "bursty": scenario_bursty,
    "backlog1m": scenario_backlog1m,
    "memory": scenario_memory,
    "scaling": scenario_scaling,
}


async def main_async(args: argparse.Namespace) -> int:
    names = args.scenario or list(SCENARIOS)
    out = results_dir(args.quick)
    failed: list[str] = []
    with broker() as bootstrap:
        bench = Bench(bootstrap, args.quick, args.repeats, args.profile, args.explicit_repeats)
        for name in names:
            print(f"== {name}", flush=True)
            load_start = loadavg()
            started = time.monotonic()
            try:
                result = await SCENARIOS[name](bench)
            except Exception as exc:  # noqa: BLE001 - report it, run the other scenarios
                print(f"   {name} FAILED: {exc!r}", flush=True)
                failed.append(name)
                continue
            doc = {
                "benchmark": f"e2e {name}",
                "quick": args.quick,
                "repeats": bench.repeats,
                "command": f".venv/bin/python bench/bench_e2e.py --scenario {name}"
                + (" --quick" if args.quick else "")
                + (f" --repeats {args.repeats}" if args.explicit_repeats else "")
                + (" --profile" if args.profile and name in PROFILED else ""),
                "machine": machine_facts(),
                "loadavg_start": load_start,
                "loadavg_end": loadavg(),
                "seconds": round(time.monotonic() - started, 1),
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **result,
            }
            write_result(out / f"e2e_{name}.json", doc)
            print(f"   wrote {out / f'e2e_{name}.json'} ({doc['seconds']}s)", flush=True)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--profile", action="store_true", help="add a cProfile run")
    args = parser.parse_args(argv)
    args.explicit_repeats = args.repeats is not None
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
