"""Composition root: builds the components from ``Settings``, owns their lifetimes, signals and
shutdown. ``ghl-consumer run`` is ``main``; the demo and the integration tests call
``run_consumer`` directly.

Shutdown order (SIGTERM / SIGINT, or ``stop`` set by a caller): the engine stops fetching,
drains in-flight work within ``drain_timeout_seconds``, commits, leaves the group; then the HTTP
client, the producer (flushing queued dead letters) and the rate limiter close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

from consumer.commands.credentials import (
    EngineCredentials,
    Installation,
    SettingsCredentials,
    open_installations,
)
from consumer.commands.preamble import (
    Failure,
    add_config_argument,
    add_log_level_argument,
    configure_logging,
    load,
    profile_cipher,
    run_command,
    stop_on_signals,
)
from consumer.commands.trace import partitions_of
from consumer.config import (
    PROFILES_CO_PARTITIONED,
    REPLAY_CO_PARTITIONED,
    STITCH_CO_PARTITIONED,
    KafkaSettings,
    Settings,
)
from consumer.core.mapping import build_mapper
from consumer.core.profiles import ChangelogProfileStore
from consumer.engine.engine import Engine, EngineOptions, Stitching
from consumer.engine.stats import EngineStats
from consumer.errors import KafkaAdapterError
from consumer.highlevel.client import HighLevelClient, Timeouts
from consumer.kafka.admin import CoPartition, TopicSpec, TopicUse, start_up
from consumer.kafka.clients import GroupProtocol
from consumer.kafka.parking import KafkaParkingLog
from consumer.kafka.partitioner import PARTITIONERS
from consumer.kafka.producer import KafkaProducer
from consumer.kafka.source import KafkaSource
from consumer.observe.metrics import Metrics
from consumer.observe.readiness import Observed
from consumer.observe.recent_deliveries import RecentDeliveries
from consumer.observe.web import WebServer, serve_debugger, serve_web
from consumer.ratelimit.budget import Budget
from consumer.ratelimit.limiter import LimiterBackend, LocalBackend, RateLimiter
from consumer.state.changelog import (
    ChangelogTopic,
    PartitionedProfileChangelog,
    ProfileChangelog,
)
from consumer.state.profile_state import PartitionedProfileStore

logger = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD: Final = 5_000
"""The garbage collector's youngest-generation threshold under ``ghl-consumer run`` (CPython's
default: 700). The engine holds its backlog (up to ``engine.max_buffered_records`` upserts, a
few tracked objects each) for seconds: at 700 most of it outlived two young collections and
reached the oldest generation, whose full collections walk the whole heap (2.3 s of the
consumer's 15 s of CPU over 40,000 upserts, ``bench_e2e.py --scenario upserts``'s workload;
0.6 s at 5,000). Only cyclic garbage waits for a collection; the rest is freed at once."""


def tune_gc() -> None:
    """Set the youngest generation's threshold to ``GC_YOUNG_THRESHOLD`` (the others kept)."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


class StoppedBeforeStart(Exception):
    """``stop`` was set while ``running_consumer`` waited for Kafka: nothing ran (exit 0)."""


@dataclass(frozen=True, slots=True)
class Components:
    """What ``run_consumer`` built, for callers that inspect a running consumer (tests, demo)."""

    engine: Engine
    source: KafkaSource
    producer: KafkaProducer
    client: HighLevelClient
    limiter: RateLimiter
    metrics: Metrics
    debugger: RecentDeliveries
    profiles: ChangelogProfileStore | PartitionedProfileStore
    web: WebServer  # /metrics, /healthz, /readyz
    debug_web: WebServer  # the Event Debugger (/debug)


def engine_options(settings: Settings) -> EngineOptions:
    """The engine's tuning from the ``[engine]`` and ``[delivery]`` sections."""
    engine, delivery = settings.engine, settings.delivery
    return EngineOptions(
        coalesce_window=engine.coalesce_window_ms / 1000,
        max_in_flight=engine.max_in_flight,
        max_buffered=engine.max_buffered,
        max_buffered_per_partition=engine.max_buffered_per_partition,
        max_buffered_bytes=engine.max_buffered_bytes,
        commit_interval=engine.commit_interval_ms / 1000,
        drain_timeout=engine.drain_timeout_seconds,
        progress_interval=engine.progress_interval_seconds,
        retry_base=delivery.retry_base_seconds,
        retry_max=delivery.retry_max_seconds,
        max_retry=delivery.max_retry_seconds,
        unauthorized_probe_interval=delivery.unauthorized_probe_seconds,
        revoke_wait=delivery.timeout_seconds + 1.0,  # an answer, or its timeout, arrives by then
    )


# A tombstone (``ghl-consumer forget``) makes the compacted profile topic drop a person's
# profile only when the log cleaner runs: this bounds how long the cleaned-up values may still
# sit on the brokers' disks (the broker also rolls the active segment by then).
PROFILE_MAX_COMPACTION_LAG_MS = 86_400_000


def consumer_topics(kafka: KafkaSettings, *, stitching: bool = False) -> list[TopicSpec]:
    """The topics ``run`` creates when missing (existing ones are left as they are): the
    dead-letter, replay and parking topics hold raw events, so they expire
    (``dead_letter_retention_ms`` for the first two, ``parking_retention_ms``); the profile
    changelog is compacted, within ``PROFILE_MAX_COMPACTION_LAG_MS`` (with partitioned
    profile state it has the input topic's partition count: ``co_partitioned_topics``); the
    delivery topic (no personal data, several records per contact: not compactable)
    expires after ``delivery_retention_ms``. With ``stitching`` (partitioned profile state)
    the stitch topic too: it carries profiles (personal data, sealed when encryption is on)
    for seconds, but must outlive an outage of the group as the events asking for them do, so
    it expires after ``dead_letter_retention_ms`` as well."""
    dead_letter_retention = {"retention.ms": str(kafka.dead_letter_retention_ms)}
    stitch = [TopicSpec(kafka.stitch_topic, config=dead_letter_retention)] if stitching else []
    return [
        TopicSpec(kafka.dead_letter_topic, config=dead_letter_retention),
        TopicSpec(kafka.replay_topic, config=dead_letter_retention),
        TopicSpec(
            kafka.profile_topic,
            config={
                "cleanup.policy": "compact",
                "max.compaction.lag.ms": str(PROFILE_MAX_COMPACTION_LAG_MS),
            },
        ),
        TopicSpec(kafka.parking_topic, config={"retention.ms": str(kafka.parking_retention_ms)}),
        TopicSpec(
            kafka.delivery_topic, config={"retention.ms": str(kafka.delivery_retention_ms)}
        ),
        *stitch,
    ]


def co_partitioned_topics(settings: Settings) -> list[CoPartition]:
    """With partitioned profile state (``profiles.state_dir``, one input topic) the profile
    changelog, the replay topic and the stitch topic have the input topic's partition count:
    partition p of each holds what belongs with the events of partition p."""
    if not settings.partitioned_profiles:
        return []
    kafka = settings.kafka
    return [
        CoPartition(kafka.profile_topic, kafka.topics[0], PROFILES_CO_PARTITIONED),
        CoPartition(kafka.replay_topic, kafka.topics[0], REPLAY_CO_PARTITIONED),
        CoPartition(kafka.stitch_topic, kafka.topics[0], STITCH_CO_PARTITIONED),
    ]


def topic_uses(kafka: KafkaSettings, *, stitching: bool = False) -> list[TopicUse]:
    """What ``run`` does on each topic: the ACLs it needs (README "Kafka ACLs"), checked at
    start-up when ``kafka.create_topics`` is false. Parking and profiles are written and read
    back; dead letters and delivery records are only written; the replay topic is only read
    (``dlq replay`` writes it); with ``stitching`` (partitioned profile state) the stitch
    topic is written and read back."""
    stitch = [TopicUse(kafka.stitch_topic, ("Read", "Write"))] if stitching else []
    return [
        *(TopicUse(topic, ("Read",)) for topic in kafka.topics),
        TopicUse(kafka.dead_letter_topic, ("Write",)),
        TopicUse(kafka.replay_topic, ("Read",)),
        TopicUse(kafka.delivery_topic, ("Write",)),
        TopicUse(kafka.parking_topic, ("Read", "Write")),
        TopicUse(kafka.profile_topic, ("Read", "Write")),
        *stitch,
    ]


def source_partitions_of(key: str, *, topic: str, partitions: int) -> frozenset[int]:
    """Every partition of the input ``topic`` (``partitions`` of them) a record keyed ``key``
    may be in: its producers' partitioner is not configured, so both defaults are candidates
    (librdkafka's CRC-32 and the Java client's murmur2, as ``ghl-consumer trace`` assumes by
    default); a stitch request to a partition not holding the profile is answered with
    nothing."""
    return frozenset(p for _, p in partitions_of((key,), {topic: partitions}, PARTITIONERS))


def budget(settings: Settings) -> Budget:
    """One location's rate budget from the ``[delivery]`` section (validated when loaded)."""
    d = settings.delivery
    return Budget(
        burst_max=d.rate_burst,
        interval_s=d.rate_interval_seconds,
        sustained_per_interval=d.rate_sustained,
        daily=d.rate_daily,
        daily_recheck_s=d.rate_daily_recheck_seconds,
    )


async def _limiter_backend(settings: Settings) -> LimiterBackend:
    if not settings.redis.url:
        return LocalBackend(budget(settings))
    from consumer.ratelimit.redis_backend import RedisBackend  # only with REDIS_URL

    return RedisBackend.from_url(
        settings.redis.url,
        budget(settings),
        expected_instances=settings.delivery.redis_expected_instances,
    )


def _profiles(
    settings: Settings, metrics: Metrics
) -> tuple[
    ChangelogProfileStore | PartitionedProfileStore,
    ProfileChangelog | PartitionedProfileChangelog,
]:
    """The profile store and its changelog: every profile in memory, or with ``[profiles]
    state_dir`` only the owned partitions', on disk (``docs/architecture.md``, "Profiles")."""
    kafka = settings.kafka
    changelog = ChangelogTopic(
        topic=kafka.profile_topic,
        bootstrap=kafka.bootstrap_servers,
        extra=kafka.extra_settings(),
        cipher=profile_cipher(settings),
        erasure_check_seconds=settings.mapping.erasure_check_seconds,
    )
    if not settings.profiles.state_dir:
        store = ChangelogProfileStore(settings.mapping.profile_max_entries)
        return store, ProfileChangelog(store=store, changelog=changelog, metrics=metrics)
    partitioned = PartitionedProfileStore(
        Path(settings.profiles.state_dir),
        kafka.profile_topic,
        cache_entries=settings.profiles.cache_entries,
    )
    log = PartitionedProfileChangelog(store=partitioned, changelog=changelog, metrics=metrics)
    return partitioned, log


@contextlib.asynccontextmanager
async def running_consumer(
    settings: Settings, stop: asyncio.Event | None = None
) -> AsyncIterator[Components]:
    """Build every component, yield them, close them all on exit (the engine must have
    returned by then). ``stop``: the event that starts the shutdown; once set, ``/readyz``
    says "shutting down", and set while waiting for Kafka at start-up it raises
    ``StoppedBeforeStart``. Raises ConfigError for settings the components refuse or a missing
    topic or ACL, KafkaAdapterError when Kafka does not answer in time."""
    kafka = settings.kafka
    extra = kafka.extra_settings()
    metrics = Metrics(
        integrations={i.id: i.location_id for i in settings.integrations},
        # the stitch feed's records and partitions are labelled with its topic like the others
        topics=(
            *kafka.topics,
            kafka.replay_topic,
            *((kafka.stitch_topic,) if settings.partitioned_profiles else ()),
        ),
        installations=[app.id for app in settings.oauth],
    )
    debugger = RecentDeliveries(
        integrations=[i.id for i in settings.integrations],
        capacity=settings.metrics.debugger_capacity,
        show_personal_data=settings.debug.show_personal_data,
    )
    # First, before any client that would log every failed connection attempt: one line when
    # the bootstrap servers do not answer, and the topics created or checked.
    partitioned = settings.partitioned_profiles
    started = await start_up(
        kafka.bootstrap_servers,
        create=consumer_topics(kafka, stitching=partitioned),
        uses=topic_uses(kafka, stitching=partitioned),
        create_topics=kafka.create_topics,
        timeout_s=kafka.startup_timeout_seconds,
        extra=extra,
        stop=stop,
        co_partitioned=co_partitioned_topics(settings),
    )
    if started is None:
        raise StoppedBeforeStart("a signal arrived while waiting for the Kafka bootstrap servers")
    producer = KafkaProducer(bootstrap=kafka.bootstrap_servers, extra=extra)
    client: HighLevelClient | None = None
    limiter: RateLimiter | None = None
    parking: KafkaParkingLog | None = None
    heartbeat: asyncio.Task[None] | None = None
    upkeep: asyncio.Task[None] | None = None
    profiles: ChangelogProfileStore | PartitionedProfileStore | None = None
    installations: dict[str, Installation] = {}
    closers: list[Callable[[], Awaitable[None]]] = []  # the OAuth clients and token store
    try:
        protocol: GroupProtocol = "consumer" if kafka.group_protocol == "consumer" else "classic"
        source = KafkaSource(
            bootstrap=kafka.bootstrap_servers,
            group_id=kafka.group_id,
            topics=kafka.topics,
            auto_offset_reset="latest" if kafka.auto_offset_reset == "latest" else "earliest",
            group_protocol=protocol,
            session_timeout_ms=kafka.session_timeout_ms,
            extra=extra,
            # static membership for warm restarts of the event feed only: the other groups'
            # members hold no local state, and a static member that stops is replaced only
            # after the session timeout (the followers join no group at all)
            group_instance_id=kafka.group_instance_id or None,
        )
        # dlq replay's copies: a group of its own, named after its topic (as parking's), so
        # the main group's members share the source partitions alone. From the earliest
        # offset: copies written before the group first joined are read. Co-partitioned, the
        # engine assigns the replay partitions of the source partitions this member owns (the
        # offsets are committed in that group all the same, which then has no members).
        def side_feed(topic: str, client_id: str, *, subscribe: bool) -> KafkaSource:
            """A feed of one of the consumer's own topics, in a group named after it."""
            return KafkaSource(
                bootstrap=kafka.bootstrap_servers,
                group_id=topic,
                topics=[topic],
                group_protocol=protocol,
                session_timeout_ms=kafka.session_timeout_ms,
                client_id=client_id,
                extra=extra,
                subscribe=subscribe,
            )

        replays = side_feed(kafka.replay_topic, "ghl-consumer-replay", subscribe=not partitioned)
        stitching = None
        if partitioned:
            stitching = Stitching(
                topic=kafka.stitch_topic,
                # like the co-partitioned replay feed: assigned by the engine, committing in a
                # group named after the topic
                source=side_feed(kafka.stitch_topic, "ghl-consumer-stitch", subscribe=False),
                partitions_of=partial(
                    source_partitions_of,
                    topic=kafka.topics[0],
                    partitions=started[kafka.topics[0]],
                ),
            )
        parking = KafkaParkingLog(
            topic=kafka.parking_topic,
            bootstrap=kafka.bootstrap_servers,
            extra=extra,
            group_protocol=protocol,
            session_timeout_ms=kafka.session_timeout_ms,
        )
        client = HighLevelClient(
            base_url=settings.highlevel.api_base_url,
            timeouts=Timeouts(total=settings.delivery.timeout_seconds),
            max_connections=settings.engine.max_in_flight,
        )
        limiter = RateLimiter(await _limiter_backend(settings))
        if settings.oauth:
            installations = open_installations(settings, closers)
        credentials = EngineCredentials(
            settings.integrations,
            SettingsCredentials(settings.integrations),
            installations,
            metrics,
        )
        await credentials.check()  # the installations' locations, before any event is routed
        upkeep = asyncio.create_task(credentials.maintain(), name="oauth-upkeep")
        profiles, profile_log = _profiles(settings, metrics)
        mapper = build_mapper(
            settings.targets(),
            settings.mapping.options(),
            profiles,
            stitch_across=stitching is not None,
        )
        engine = Engine(
            source=source,
            sink=producer,
            mapper=mapper,
            limiter=limiter,
            sender=client,
            credentials=credentials,
            locations={i.id: i.location_id for i in settings.integrations},
            dead_letter_topic=kafka.dead_letter_topic,
            replay_source=None if partitioned else replays,
            replay_follower=replays if partitioned else None,
            stitching=stitching,
            source_topics=kafka.topics,
            delivery_topic=kafka.delivery_topic,
            parking_log=parking,
            metrics=metrics,
            recorder=debugger,
            profile_log=profile_log,
            options=engine_options(settings),
        )
        state = Observed(
            engine=engine,
            source=source,
            producer=producer,
            limiter=limiter,
            profiles=profiles,
            stall_seconds=settings.metrics.stall_seconds,
            stopping=(lambda: False) if stop is None else stop.is_set,
        )
        heartbeat = asyncio.create_task(state.heartbeat(), name="liveness-heartbeat")
        debug = settings.debug
        async with (
            serve_web(
                host=settings.metrics.host,
                port=settings.metrics.port,
                metrics=metrics,
                readiness=state.readiness,
                liveness=state.liveness,
                state=state.snapshot,
            ) as web,
            serve_debugger(
                host=debug.host,
                port=debug.port,
                debugger=debugger,
                access_token=None if debug.access_token is None else debug.access_token.reveal(),
                allowed_hosts=debug.allowed_hosts,
                max_streams=debug.max_streams,
                session_seconds=debug.session_seconds,
            ) as debug_web,
        ):
            logger.info(
                "metrics on %s/metrics, event debugger on %s/debug", web.url, debug_web.url
            )
            yield Components(
                engine,
                source,
                producer,
                client,
                limiter,
                metrics,
                debugger,
                profiles,
                web,
                debug_web,
            )
    finally:
        if isinstance(profiles, PartitionedProfileStore):  # files left open after a failure
            profiles.close_all()
        if heartbeat is not None:
            heartbeat.cancel()
        if upkeep is not None:
            upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)
        for close in closers:
            await close()
        if parking is not None:
            await parking.close()
        if client is not None:
            await client.close()
        if limiter is not None:
            await limiter.aclose()
        await producer.close()


def freeze_start_up_objects() -> None:
    """Collect, then move every object alive now (modules, classes, the phone metadata, the
    configuration, the clients) out of the garbage collector's reach (``gc.freeze``): each
    full collection traversed them all, about 70,000 objects, and the stream triggers one
    every few seconds (its profile writes and waiting records outlive young collections).
    With 2 events per user those collections took 6-8% of the consumer's CPU, about 1% after
    (``BENCHMARKS.md``, "Hot path"). Objects still die by reference counting; only cycles
    among them would stay, and start-up makes none that outlive it."""
    gc.collect()
    gc.freeze()


async def run_consumer(settings: Settings, stop: asyncio.Event) -> EngineStats:
    """Run until ``stop`` is set, then shut down in order; return the engine's counters."""
    async with running_consumer(settings, stop) as components:
        freeze_start_up_objects()
        await components.engine.run(stop)
        return components.engine.stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    add_log_level_argument(parser, default="INFO")


def main(args: argparse.Namespace) -> int:
    """``ghl-consumer run``: 0 after a clean shutdown, 1 when Kafka fails at start-up (one line,
    no traceback: e.g. unreachable for ``kafka.startup_timeout_seconds``), 2 for a
    configuration error (a refused credential, a missing topic or ACL too); 0 also when SIGTERM
    arrives while it waits for Kafka."""
    configure_logging(args.log_level, log_format=args.log_format, timestamps=True)
    tune_gc()

    def serve() -> int:
        asyncio.run(_serve(load(args.config)))
        return 0

    # Kafka unreachable at start-up: one line, not a traceback.
    return run_command(
        "ghl-consumer",
        serve,
        Failure((KafkaAdapterError,), "kafka", 1),
        Failure((StoppedBeforeStart,), "stopped", 0),
    )


async def _serve(settings: Settings) -> None:
    stop = stop_on_signals()
    logger.info(
        "starting: topics=%s group=%s integrations=%s api=%s",
        ",".join(settings.kafka.topics),
        settings.kafka.group_id,
        ",".join(i.id for i in settings.integrations),
        settings.highlevel.api_base_url,
    )
    await run_consumer(settings, stop)
