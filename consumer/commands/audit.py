"""``ghl-consumer audit``: account for every event of the source topics. Each one must have
reached HighLevel (its contact there holds what the events say), the dead-letter topic, the
parking topic, or have been dropped for a reason; anything else is UNACCOUNTED.

Method
    1. Capture the end offsets of the source topics, then of the replay topic (``dlq replay``'s
       copies), then of the dead-letter and parking topics (an absent topic counts as empty),
       and read them all up to those ends.
    2. Index dead letters and parked records by their ``ghl.source.topic`` /
       ``ghl.source.partition`` / ``ghl.source.offset`` headers (and ``ghl.integration``).
    3. Run every source record, in offset order per partition (a user's records share a
       partition), through a fresh ``Mapper`` built from the configuration, as ``ghl-consumer
       map`` does. Per outcome: a drop counts by its reason; a reject, or an upsert whose record
       was dead-lettered or parked for that integration, counts there (a reject found in
       neither is unaccounted, unless a profile stitched in from another partition explains
       it: ``stitch_order_rejects``); the other upserts fold, in order, with
       ``ContactUpsert.merged_with`` into the expected contact per (integration, contact key).
       Then the replay topic's copies, each as a record of the topic its
       ``ghl.original_topic`` names (one naming no topic of ``kafka.topics`` must be
       dead-lettered ``invalid_replay``, as the consumer does).
    4. Read each configured location's contacts and duplicate setting from the sandbox, and
       those of every location an integration's events chose (``location_path``, OAuth: its
       contact keys are grouped per location, ``integration/location/key``; a location the
       sandbox does not serve holds no contact, so what was expected there is missing). Keys
       that send an email or phone the setting matches on are one contact; a key's contact is
       one its identifiers (else its cluster's) find. Every expected field must equal the
       contact's (email compared case-insensitively, phone in E.164, ``dnd`` equal unless
       HighLevel keeps a permanent DND, custom fields by id after HighLevel's conversion by
       type), or differ as an order of the partitions or HighLevel's matching rules allow
       (``audit_ledger.compare``: another writer's value, an identifier held by another
       contact, fields sent before an email change, create-only ``gender``, a stitched
       profile read in the other order; each counted); the expected tags must all be on the
       contact, trimmed and lowercased as HighLevel stores them. A missing contact or another
       differing field makes the contact key and all its folded events unaccounted.
    5. Read the delivery topic (``kafka.delivery_topic``, end offsets captured after the
       others: a call's record is written after the call) with the same decoder ``trace``
       uses, and name, under every UNACCOUNTED contact key (and in ``--json`` for every
       expected contact), the HighLevel calls that carried its records (endpoint, status,
       verdict, traceId, time), matched by integration and contact digest; "no delivery
       record" when none does. A delivery topic that does not exist (deployments older than
       delivery records) is no error: the report says "no delivery records" once.

Caveats (also in ``--help``)
    - In tag mode ``upsert``, tags of an earlier event replaced by a later upsert's tags show
      up as a mismatch (HighLevel's pitfall, reported as such).
    - Duplicates are found by user key and ``messageId`` as the consumer finds them (the
      record timestamp stands in for the time); a duplicate is accounted as dropped
      ``duplicate``.
    - Run it once the consumer has caught up: contacts changed by events after the captured
      end offsets, or by people and workflows in HighLevel, differ from what is expected.
    - Where several keys write one contact, or a key's records depend on a profile stitched
      from another partition, a field may hold any value an order of the partitions allows:
      a lost update is then caught only when the contact holds a value no order gives.
    - Replay copies fold after every source record, as if delivered last: a source event
      delivered after a replay of the same contact may show as a mismatch.
    - Records deleted by retention are not audited; the profile a later event relies on may
      then be incomplete (the audit's expected contact lacks those fields, which is lenient).
    - The HighLevel side is the sandbox only (``/_sandbox/contacts``).

Exit status: 0 when nothing is unaccounted, 1 otherwise, 2 when the audit cannot run
(configuration error, missing source topic, Kafka or sandbox unreachable).

The accounting (steps 2-5: ``SourceIndex``, ``ExpectedContacts``, ``compare``, ``Calls``,
``Report``) is pure and unit-tested, in ``consumer.commands.audit_ledger``; this module reads
Kafka and the sandbox (``run_audit``) and is the command line (``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import orjson

from consumer.commands.audit_ledger import Calls, ExpectedContacts, Report, SourceIndex, compare
from consumer.commands.preamble import (
    Failure,
    add_config_argument,
    configure_logging,
    load,
    run_command,
)
from consumer.config import Settings
from consumer.core.mapping import build_mapper
from consumer.errors import AuditError, KafkaAdapterError, SandboxError
from consumer.kafka.reader import TopicReader
from consumer.sandbox.admin import read_contacts, read_locations, read_match_priorities


async def _read_all(
    reader: TopicReader, sink: SourceIndex | ExpectedContacts | Calls
) -> int:
    count = 0
    while batch := await reader.read():
        sink.add(batch)
        count += len(batch)
    return count


async def _open(
    settings: Settings, topics: Sequence[str]
) -> tuple[TopicReader, dict[str, int]]:
    """A reader opened on ``topics`` (end offsets captured now) and their sizes by topic; a
    topic that does not exist is absent from the sizes."""
    kafka = settings.kafka
    reader = TopicReader(bootstrap=kafka.bootstrap_servers, extra=kafka.extra_settings())
    try:
        ranges = await reader.open(topics)
    except BaseException:
        await reader.close()
        raise
    sizes: dict[str, int] = {}
    for r in ranges:
        sizes[r.topic] = sizes.get(r.topic, 0) + r.end - r.start
    return reader, sizes


async def run_audit(
    settings: Settings,
    *,
    topics: Sequence[str],
    replay_topic: str,
    dead_letter_topic: str,
    parking_topic: str,
    delivery_topic: str,
    sandbox_url: str,
) -> Report:
    """The whole audit (method steps 1-5). Raises ``AuditError`` for a source topic that does
    not exist, ``SandboxError`` and ``KafkaAdapterError``."""
    located_by_event = [
        i.id for i in settings.integrations if i.target.location_path is not None
    ]
    source, source_sizes = await _open(settings, topics)
    replays: TopicReader | None = None
    try:
        missing = [t for t in topics if t not in source_sizes]
        if missing:
            raise AuditError(f"source topic {missing[0]} does not exist")
        sizes: dict[str, int] = dict(source_sizes)
        absent: list[str] = []
        replays, found = await _open(settings, [replay_topic])
        if replay_topic in found:
            sizes[replay_topic] = found[replay_topic]
        else:
            absent.append(replay_topic)
        indexes: dict[str, SourceIndex] = {}
        for topic in (dead_letter_topic, parking_topic):
            reader, found = await _open(settings, [topic])
            try:
                index = indexes.setdefault(topic, SourceIndex())
                if topic in found:
                    await _read_all(reader, index)
                    sizes[topic] = found[topic]
                else:
                    absent.append(topic)
            finally:
                await reader.close()
        expected = ExpectedContacts(
            build_mapper(settings.targets(), settings.mapping.options()),
            dead_letters=indexes[dead_letter_topic],
            parked=indexes[parking_topic],
            source_topics=settings.kafka.topics,
            located_by_event=located_by_event,
        )
        await _read_all(source, expected)
        if replay_topic in sizes:
            while batch := await replays.read():
                expected.add_replays(batch)
    finally:
        await source.close()
        if replays is not None:
            await replays.close()
    calls: Calls | None = None
    reader, found = await _open(settings, [delivery_topic])
    try:
        if delivery_topic in found:
            calls = Calls()
            sizes[delivery_topic] = await _read_all(reader, calls)
        else:
            absent.append(delivery_topic)
    finally:
        await reader.close()
    ledger = expected.ledger()
    locations = {
        i.location_id for i in settings.integrations if i.id not in located_by_event
    }
    named = ledger.locations() - locations
    if named:  # by events: a location the sandbox does not serve holds no contact
        locations |= named & await read_locations(sandbox_url)
    contacts = await read_contacts(sandbox_url, sorted(locations))
    priorities = await read_match_priorities(sandbox_url, sorted(locations))
    comparison = compare(ledger.contacts, contacts, priorities)
    return Report(ledger, comparison, sizes, tuple(absent), calls)


# -- command line ------------------------------------------------------------------------------

_HELP = """\
Account for every event of the source topics: each identity event must have reached HighLevel
(its contact holds what the events say), the dead-letter topic or the parking topic; other
events must be dropped for a reason (not_mapped, duplicate...). Replays the topics through the
mapping in offset order, folds the upserts per contact key, and compares each with the
sandbox's contact, matched as the location's duplicate setting matches (keys sharing an email or
phone are one contact). Where the order the consumer read partitions in changes the result, any
final state that order allows is accepted and counted under "allowed differences". Prints a
summary and every UNACCOUNTED contact key (missing contact, or the names of the differing
fields; under it, the HighLevel calls the delivery topic names for it, or "no delivery
record") or record.

Caveats: in tag mode upsert, earlier tags replaced by a later upsert show as a mismatch.
Duplicates (same user and messageId) count as dropped "duplicate". Run it once the consumer has
caught up: later events, or edits made in HighLevel, show as mismatches. Copies in
the replay topic (dlq replay) count as records of the topic they stand for, after every source
record.

Exit status: 0 nothing unaccounted, 1 something unaccounted, 2 the audit could not run."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = _HELP
    add_config_argument(parser)
    parser.add_argument(
        "--sandbox",
        required=True,
        metavar="URL",
        help="the sandbox the consumer delivered to (its /_sandbox/contacts is read)",
    )
    parser.add_argument(
        "--topic",
        action="append",
        metavar="TOPIC",
        help="source topic (repeatable; default: the configured topics)",
    )
    parser.add_argument(
        "--dead-letter-topic", metavar="TOPIC", help="default: kafka.dead_letter_topic"
    )
    parser.add_argument(
        "--parking-topic",
        metavar="TOPIC",
        help="default: kafka.parking_topic; a topic that does not exist is empty",
    )
    parser.add_argument(
        "--replay-topic",
        metavar="TOPIC",
        help="default: kafka.replay_topic; a topic that does not exist is empty",
    )
    parser.add_argument(
        "--delivery-topic",
        metavar="TOPIC",
        help="default: kafka.delivery_topic; names the HighLevel calls of each contact key "
        "(a topic that does not exist: no delivery records)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace) -> int:
    """``ghl-consumer audit``: see the module docstring for the exit status."""
    configure_logging("WARNING")

    def audit() -> int:
        settings = load(args.config, read_secrets=False, kafka_secrets=True)
        kafka = settings.kafka
        report = asyncio.run(
            run_audit(
                settings,
                topics=args.topic or kafka.topics,
                replay_topic=args.replay_topic or kafka.replay_topic,
                dead_letter_topic=args.dead_letter_topic or kafka.dead_letter_topic,
                parking_topic=args.parking_topic or kafka.parking_topic,
                delivery_topic=args.delivery_topic or kafka.delivery_topic,
                sandbox_url=args.sandbox,
            )
        )
        if args.json:
            sys.stdout.write(
                orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n"
            )
        else:
            report.render(sys.stdout)
        return 1 if report.unaccounted else 0

    cannot = Failure((AuditError, SandboxError, KafkaAdapterError), "cannot audit", 2)
    return run_command("ghl-consumer audit", audit, cannot)
