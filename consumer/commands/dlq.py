"""``ghl-consumer dlq``: inspect dead letters (``dlq list``) and re-send them after a fix
(``dlq replay``).

Replay reads the dead-letter topic (``kafka.dead_letter_topic``) with its own consumer group
(``<group_id>.dlq-replay``), from that group's committed offsets (``--from-beginning``: from the
start) up to the end offsets captured when it starts, so it never reads what it writes. Each
selected dead letter is re-produced with its ORIGINAL key, value and headers (the ``ghl.*``
headers removed, ``ghl.replayed_from: <dlq topic>/<partition>/<offset>`` added) to the replay
topic (``kafka.replay_topic``) with ``ghl.original_topic: <source topic>``: ``ghl-consumer run``
reads that topic in a consumer group of its own (named after the topic) and routes the copy as a
record of its source topic, so no other consumer group of the (shared) source topic re-reads it.
``--to-source`` writes into the source topic itself instead, the operator's explicit choice:
every consumer group of that topic then reads the copy. The source topic is ``ghl.source.topic``
(for a replayed copy that failed again: ``ghl.original_topic``) or ``--to``, and must be a topic
this consumer reads (``kafka.topics``): a ``--to`` outside them is a configuration error (exit
2), and a dead letter whose header names another topic (written by anyone able to write to the
dead-letter topic) is refused and reported as failed, never sent
(``dlq_selection.replay_target``). The consumer then reads the copy as a new origin, never a
duplicate of the original (``consumer.core.dedupe``). The group's offset moves past a record
only once the broker confirmed its copy (or the filter skipped it), so a second replay re-sends
nothing the first already re-sent; per partition it stops moving at the first failure, so a
rerun retries from there (re-sending the later records of that partition that did go through:
the consumer's upsert absorbs such repeats).

Records are replayed as they were: a value the consumer rejects (``invalid_json``...) is
dead-lettered again. Select by ``--reason`` (e.g. ``rejected_by_highlevel`` after fixing a
mapping or a HighLevel setting). A dead letter that left parts out to fit the size budget
(``ghl.omitted``) is not replayable: it is reported as such, with the coordinates of the
original, and the group moves past it (a rerun would not make it whole).

``dlq list`` reads the whole dead-letter topic and prints counts by reason, integration and
source topic, with the errors; never keys or values (they hold personal data).

Exit status: 0 done, 1 some records failed or were not replayable (or Kafka failed), 2
configuration error.
The selection logic (``Selection``, ``replay_headers``, ``CommitPoints``, ``summarise``) is pure,
in ``consumer.commands.dlq_selection``; the replay loop (``replay``, against the
``DeadLetterReader`` and ``ReplayWriter`` seams), the listing and ``main`` are here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final, Protocol, TextIO

import orjson

from consumer.commands.dlq_selection import (
    CommitPoints,
    Group,
    ReplaySummary,
    ReplayTarget,
    Selection,
    not_read,
    parse_time,
    render_groups,
    replay_headers,
    replay_target,
    summarise,
    where,
)
from consumer.commands.preamble import (
    Failure,
    add_config_argument,
    configure_logging,
    load,
    run_command,
)
from consumer.config import REPLAY_CO_PARTITIONED, Settings
from consumer.core.deadletter import read_failure
from consumer.core.events import Record
from consumer.engine.ports import Produced
from consumer.errors import ConfigError, KafkaAdapterError, ProduceFailedError
from consumer.kafka.admin import CoPartition
from consumer.kafka.producer import KafkaProducer
from consumer.kafka.reader import TopicReader

logger = logging.getLogger(__name__)

REPLAY_GROUP_SUFFIX: Final = ".dlq-replay"
# dlq commands use only the [kafka] settings: integrations need not be configured for them.
_PLACEHOLDER_LOCATION: Final = "DLQ_TOOL_LOCATION_ID"


# -- I/O ---------------------------------------------------------------------------------------


class DeadLetterReader(Protocol):
    """The reading side of a replay (``consumer.kafka.reader.TopicReader``; tests use a fake)."""

    async def read(self) -> list[Record]: ...

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None: ...


class ReplayWriter(Protocol):
    """The writing side of a replay (``consumer.kafka.producer.KafkaProducer``; tests use a
    fake)."""

    async def send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> asyncio.Future[Produced]: ...


async def replay(
    reader: DeadLetterReader,
    producer: ReplayWriter | None,
    *,
    selection: Selection,
    to: str | None,
    to_source: bool,
    configured_topics: frozenset[str],
    replay_topic: str,
    existing_topics: frozenset[str],
    out: TextIO,
    partitions: int | None = None,
) -> ReplaySummary:
    """Re-send the selected records ``reader`` yields (opened on the dead-letter topic, from
    the replay group's offsets) to ``replay_topic``, or with ``to_source`` into their source
    topic (``to`` or their ``ghl.source.topic``), only when that source topic is one of
    ``configured_topics`` (the topics the consumer reads): ``replay_target``; any other is a
    failure, not sent. ``partitions``: the replay topic is co-partitioned with the source
    topic, that many partitions each; each copy goes to its original's partition
    (``replay_target``). ``producer`` None is the dry run: print what would be sent,
    send and commit nothing. Commits the group's offsets after each batch, once the broker has
    confirmed every copy in it. Raises ``KafkaAdapterError`` when reading or committing fails."""
    summary = ReplaySummary()
    points = CommitPoints()
    while batch := await reader.read():
        # Per record, in batch order: None = skipped, text = failed, else the copy's delivery.
        steps: list[tuple[Record, str | None, str | asyncio.Future[Produced] | None]] = []
        for record in batch:
            failure = read_failure(record.headers)
            if not selection.selects(failure):
                summary.skipped += 1
                steps.append((record, None, None))
                continue
            if "omitted" in failure:
                summary.unreplayable += 1
                logger.error(
                    "dead letter %s not replayable: it left out %s; the original is at %s/%s/%s",
                    where(record),
                    failure["omitted"],
                    failure.get("source.topic", "?"),
                    failure.get("source.partition", "?"),
                    failure.get("source.offset", "?"),
                )
                steps.append((record, None, None))
                continue
            target = replay_target(
                failure,
                to=to,
                to_source=to_source,
                configured_topics=configured_topics,
                replay_topic=replay_topic,
                partitions=partitions,
            )
            if isinstance(target, str):
                steps.append((record, None, target))
                continue
            if target.topic not in existing_topics:
                steps.append((record, target.topic, _missing(target.topic, replay_topic)))
                continue
            if producer is None:
                print(
                    f"would replay {where(record)} -> {_shown(target)} "
                    f"(reason {failure.get('reason', '-')}, "
                    f"integration {failure.get('integration', '-')}, "
                    f"{len(record.value or b'')} bytes)",
                    file=out,
                )
                summary.replayed += 1
                summary.by_target[target.topic] += 1
                continue
            try:
                future = await producer.send(
                    target.topic,
                    key=record.key,
                    value=record.value,
                    headers=replay_headers(record, target),
                    partition=target.partition,
                )
            except ProduceFailedError as exc:
                steps.append((record, target.topic, str(exc)))
                continue
            steps.append((record, target.topic, future))
        # In order, so a partition's commit point never passes a record that failed before it.
        for record, written, step in steps:
            if isinstance(step, str):
                _failed(summary, points, record, step)
                continue
            if step is not None:
                try:
                    await step
                except ProduceFailedError as exc:
                    _failed(summary, points, record, str(exc))
                    continue
                summary.replayed += 1
                summary.by_target[str(written)] += 1
            points.done(record)
        if producer is not None:
            await reader.commit(points.take())
    return summary


def _shown(target: ReplayTarget) -> str:
    where = target.topic if target.partition is None else f"{target.topic}[{target.partition}]"
    if target.topic == target.original:
        return where
    return f"{where} (as {target.original})"


def _missing(topic: str, replay_topic: str) -> str:
    if topic == replay_topic:
        return f"topic {topic} does not exist (ghl-consumer run creates it at start-up)"
    return f"topic {topic} does not exist"


def _failed(summary: ReplaySummary, points: CommitPoints, record: Record, why: str) -> None:
    summary.failed += 1
    points.failed(record)
    logger.error("dead letter %s not replayed: %s", where(record), why)


async def _replay_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    kafka = settings.kafka
    configured = frozenset(kafka.topics)
    if args.to is not None and args.to not in configured:
        raise ConfigError(f"--to: {not_read(args.to)}: {', '.join(kafka.topics)}")
    topic = args.topic or kafka.dead_letter_topic
    group = args.group or kafka.group_id + REPLAY_GROUP_SUFFIX
    extra = kafka.extra_settings()
    reader = TopicReader(bootstrap=kafka.bootstrap_servers, group_id=group, extra=extra)
    producer = (
        None
        if args.dry_run
        else KafkaProducer(
            bootstrap=kafka.bootstrap_servers,
            client_id="ghl-consumer-dlq-replay",
            delivery_timeout_ms=30_000,
            extra=extra,
        )
    )
    try:
        existing = await reader.existing_topics()
        if topic not in existing:
            print(f"dead-letter topic {topic} does not exist: nothing to replay", file=out)
            return 0
        partitions = None
        if settings.partitioned_profiles:
            partitions = await _co_partitions(reader, settings)
        ranges = await reader.open([topic], from_committed=not args.from_beginning)
        pending = sum(r.end - r.start for r in ranges)
        print(
            f"{'dry run: ' if args.dry_run else ''}reading {pending} dead letter(s) of {topic} "
            f"({'from the beginning' if args.from_beginning else f'after group {group}'})",
            file=out,
        )
        summary = await replay(
            reader,
            producer,
            selection=args.selection,
            to=args.to,
            to_source=args.to_source,
            configured_topics=configured,
            replay_topic=kafka.replay_topic,
            existing_topics=existing,
            out=out,
            partitions=partitions,
        )
    finally:
        if producer is not None:
            await producer.close()
        await reader.close()
    targets = ", ".join(f"{t}: {n}" for t, n in sorted(summary.by_target.items()) if n)
    print(
        f"{'would replay' if args.dry_run else 'replayed'} {summary.replayed}"
        f"{f' ({targets})' if targets else ''}, skipped by filter {summary.skipped}, "
        f"failed {summary.failed}, not replayable {summary.unreplayable}",
        file=out,
    )
    return 1 if summary.failed or summary.unreplayable else 0


async def _co_partitions(reader: TopicReader, settings: Settings) -> int:
    """The source topic's partition count, which the replay topic has too when co-partitioned
    (``Settings.partitioned_profiles``). Raises ``ConfigError`` when the source topic does
    not exist or the replay topic has another count (``ghl-consumer run`` refuses to start
    then too); a replay topic not created yet fails each copy instead."""
    kafka = settings.kafka
    rule = CoPartition(kafka.replay_topic, kafka.topics[0], REPLAY_CO_PARTITIONED)
    counts = await reader.partition_counts([rule.source, rule.topic])
    if rule.source not in counts:
        raise ConfigError(f"kafka.topics: topic {rule.source} does not exist")
    wanted = counts[rule.source]
    if counts.get(rule.topic, wanted) != wanted:
        raise ConfigError(rule.mismatch(counts[rule.topic], wanted))
    return wanted


async def list_dead_letters(reader: TopicReader, selection: Selection) -> tuple[list[Group], int]:
    """Read every record ``reader`` yields; group the selected ones. Returns (groups, total)."""
    selected: list[dict[str, str]] = []
    while batch := await reader.read():
        for record in batch:
            failure = read_failure(record.headers)
            if selection.selects(failure):
                selected.append(failure)
    return summarise(selected), len(selected)


async def _list_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    kafka = settings.kafka
    topic = args.topic or kafka.dead_letter_topic
    reader = TopicReader(bootstrap=kafka.bootstrap_servers, extra=kafka.extra_settings())
    try:
        ranges = await reader.open([topic])
        if not ranges:
            print(f"dead-letter topic {topic} does not exist", file=out)
            return 0
        groups, total = await list_dead_letters(reader, args.selection)
    finally:
        await reader.close()
    if args.json:
        out.write(
            orjson.dumps(
                {
                    "topic": topic,
                    "total": total,
                    "groups": [
                        {
                            "reason": g.reason,
                            "integration": g.integration,
                            "source_topic": g.source_topic,
                            "count": g.count,
                            "first_failed_at": g.first_failed_at,
                            "last_failed_at": g.last_failed_at,
                            "errors": [{"error": t, "count": n} for t, n in g.errors],
                        }
                        for g in groups
                    ],
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
            + "\n"
        )
    else:
        print(f"dead-letter topic {topic}", file=out)
        render_groups(groups, total, out)
    return 0


# -- command line ------------------------------------------------------------------------------

_REPLAY_HELP = """\
Re-send dead letters to the replay topic (kafka.replay_topic), which ghl-consumer run reads
in a consumer group of its own, routing each copy as a record of the topic it came from
(ghl.source.topic, or --to): other consumer groups of the source topics see nothing.
--to-source writes into the source topic itself instead: EVERY consumer group of that topic
(other services too) then reads the copies again.
Copies keep the original key, value and headers (ghl.* removed, ghl.replayed_from and
ghl.original_topic added). Only for a source topic of kafka.topics: a dead letter naming
another is refused (counted as failed).
Reads from the replay group's committed offsets up to the end captured at start; commits only
after the broker confirmed each copy, so running it again re-sends nothing already re-sent.
Records are replayed AS THEY ARE: a value the consumer rejects (invalid_json, no_identifier...)
will be dead-lettered again. Filter by --reason (e.g. rejected_by_highlevel after fixing the
cause). The group's offset also moves past records the filter skips: to reach those later, add
--from-beginning.
Exit status: 0 done, 1 some records failed, 2 configuration error."""

_LIST_HELP = """\
Summarise the dead-letter topic: counts by reason, integration and source topic, first and
last failure times and the most frequent errors. Never prints keys or values."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    replay_parser = sub.add_parser(
        "replay", help="re-send dead letters after a fix", description=_REPLAY_HELP
    )
    list_parser = sub.add_parser("list", help="summarise dead letters", description=_LIST_HELP)
    for sub_parser in (replay_parser, list_parser):
        add_config_argument(sub_parser)
        sub_parser.add_argument(
            "--topic", help="dead-letter topic (default: kafka.dead_letter_topic)"
        )
        sub_parser.add_argument(
            "--reason",
            action="append",
            default=[],
            metavar="REASON",
            help="only this ghl.reason (repeatable), e.g. rejected_by_highlevel",
        )
        sub_parser.add_argument("--integration", metavar="ID", help="only this integration")
        sub_parser.add_argument(
            "--source-topic", metavar="TOPIC", help="only dead letters read from this topic"
        )
        sub_parser.add_argument(
            "--since",
            metavar="ISO",
            type=_since,
            help="only dead letters that failed at or after this time (ISO 8601; no zone = UTC)",
        )
    replay_parser.add_argument(
        "--to",
        metavar="TOPIC",
        help="replay every copy as a record of this topic instead of its ghl.source.topic "
        "(one of kafka.topics)",
    )
    replay_parser.add_argument(
        "--to-source",
        action="store_true",
        help="write the copies into their source topic itself instead of kafka.replay_topic: "
        "EVERY consumer group of that topic reads them again",
    )
    replay_parser.add_argument(
        "--group",
        help="consumer group remembering what was replayed (default: <group_id>.dlq-replay)",
    )
    replay_parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="ignore the replay group's offsets: consider every dead letter in the topic",
    )
    replay_parser.add_argument(
        "--dry-run", action="store_true", help="print what would be replayed; send nothing"
    )
    list_parser.add_argument("--json", action="store_true", help="machine-readable output")


def _since(text: str) -> datetime:
    moment = parse_time(text)
    if moment is None:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}")
    return moment


def main(args: argparse.Namespace) -> int:
    """``ghl-consumer dlq replay|list``: see the module docstring for the exit status."""
    configure_logging("WARNING")
    args.selection = Selection(
        reasons=frozenset(args.reason),
        integration=args.integration,
        source_topic=args.source_topic,
        since=args.since,
    )
    command = _replay_command if args.dlq_command == "replay" else _list_command

    def dlq() -> int:
        # Only the [kafka] settings are used here; integrations need not be configured.
        settings = load(
            args.config,
            placeholder_location=_PLACEHOLDER_LOCATION,
            read_secrets=False,
            kafka_secrets=True,
        )
        return asyncio.run(command(args, settings, sys.stdout))

    return run_command("ghl-consumer dlq", dlq, Failure((KafkaAdapterError,), "kafka", 1))
