"""``ghl-consumer audit``: account for every event of the source topics. Each one must have
reached HighLevel (its contact there holds what the events say), the dead-letter topic, the
parking topic, or have been dropped for a reason; anything else is UNACCOUNTED.

Method
    1. Capture the end offsets of the source topics, then of the dead-letter and parking
       topics (an absent topic counts as empty), and read them all up to those ends.
    2. Index dead letters and parked records by their ``ghl.source.topic`` /
       ``ghl.source.partition`` / ``ghl.source.offset`` headers (and ``ghl.integration``).
    3. Run every source record, in offset order per partition (a user's records share a
       partition), through a fresh ``Mapper`` built from the configuration, as ``ghl-consumer
       map`` does. Per outcome: a drop counts by its reason; a reject, or an upsert whose record
       was dead-lettered or parked for that integration, counts there (a reject found in
       neither is unaccounted); the other upserts fold, in order, with
       ``ContactUpsert.merged_with`` into the expected contact per (integration, contact key).
    4. Read each configured location's contacts from the sandbox and find each expected
       contact by email, else phone. Every expected field must equal the contact's (email
       compared case-insensitively, phone in E.164, ``dnd`` equal, custom fields by id); the
       expected tags must all be on the contact. A missing contact or a differing field makes
       the contact key and all its folded events unaccounted.

Caveats (also in ``--help``)
    - HighLevel's own pitfalls show up as mismatches, and are reported as such: a field
      silently not applied because the email and the phone belong to two different contacts;
      in tag mode ``upsert``, tags of an earlier event replaced by a later upsert's tags.
    - Duplicates are found by ``messageId`` as the consumer finds them (the record timestamp
      stands in for the time); a duplicate is accounted as dropped ``duplicate``.
    - Run it once the consumer has caught up: contacts changed by events after the captured
      end offsets, or by people and workflows in HighLevel, differ from what is expected.
    - Contact keys that share an email or phone are one HighLevel contact: the expected state
      of each key is checked against it, and the older one may differ.
    - Records deleted by retention are not audited; the profile a later event relies on may
      then be incomplete (the audit's expected contact lacks those fields, which is lenient).
    - The HighLevel side is the sandbox only (``/_sandbox/contacts``).

Exit status: 0 when nothing is unaccounted, 1 otherwise, 2 when the audit cannot run
(configuration error, missing source topic, Kafka or sandbox unreachable).

The accounting (``SourceIndex``, ``ExpectedContacts``, ``compare``, ``contact_mismatches``)
is pure and unit-tested; reading Kafka and the sandbox happens in ``run_audit`` and ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

import aiohttp
import orjson

from consumer.commands.preamble import (
    Failure,
    add_config_argument,
    configure_logging,
    load,
    run_command,
)
from consumer.config import Settings
from consumer.core.deadletter import read_failure
from consumer.core.events import ContactUpsert, Drop, Record, Reject
from consumer.core.mapping import Mapper, build_mapper
from consumer.engine.parking import parked_sources
from consumer.errors import AuditError
from consumer.kafka.adapter import KafkaAdapterError, TopicReader

logger = logging.getLogger(__name__)

ContactKey = tuple[str, str]
"""(integration id, contact key): one expected HighLevel contact."""
Coordinates = tuple[str, int, int]
"""(topic, partition, offset) of a source record."""

MISSING: Final = "missing contact"
MISMATCH: Final = "field mismatch"
NOT_DEAD_LETTERED: Final = "rejected but not in the dead-letter or parking topic"


# -- pure --------------------------------------------------------------------------------------


class SourceIndex:
    """Which source records a topic of the consumer's (dead letters, parking) holds, by the
    ``ghl.source.*`` headers of dead letters or the ``ghl.park.source`` headers of parking
    records: coordinates -> integration ids named (None: the whole record).
    Records without those headers are counted in ``unmatched`` and otherwise ignored."""

    def __init__(self) -> None:
        self._entries: dict[Coordinates, set[str | None]] = {}
        self.records = 0
        self.unmatched = 0

    def add(self, records: Iterable[Record]) -> None:
        for record in records:
            self.records += 1
            failure = read_failure(record.headers)
            parked = parked_sources(record.headers)  # a parking record folds several sources
            if parked:
                for where in parked:
                    self._entries.setdefault(where, set()).add(failure.get("integration"))
                continue
            try:
                where = (
                    failure["source.topic"],
                    int(failure["source.partition"]),
                    int(failure["source.offset"]),
                )
            except (KeyError, ValueError):
                self.unmatched += 1
                continue
            self._entries.setdefault(where, set()).add(failure.get("integration"))

    def holds(self, where: Coordinates, integration_id: str | None) -> bool:
        """True when the record at ``where`` is here for ``integration_id`` (or as a whole;
        ``integration_id`` None: for any integration)."""
        named = self._entries.get(where)
        if named is None:
            return False
        return integration_id is None or None in named or integration_id in named


@dataclass(frozen=True, slots=True)
class Expected:
    """The contact HighLevel should hold: the fold of the delivered upserts for one key."""

    upsert: ContactUpsert
    events: int
    last: str  # "topic/partition/offset" of the newest event folded in


@dataclass(frozen=True, slots=True)
class Unaccounted:
    """Something the audit cannot account for. ``subject`` is ``integration/contact key`` for
    a contact, ``topic/partition/offset`` for a record; ``fields`` the differing field names
    (never their values)."""

    subject: str
    problem: str
    fields: tuple[str, ...] = ()
    events: int = 1

    def describe(self) -> str:
        fields = f": {', '.join(self.fields)}" if self.fields else ""
        return f"{self.subject}: {self.problem}{fields} ({self.events} event(s))"


@dataclass(frozen=True, slots=True)
class Ledger:
    """Where the source records went, before looking at HighLevel. Counts are per outcome
    (one per routed integration; a record-level drop or reject counts once)."""

    records: int
    identity_events: int  # records with at least one upsert outcome
    dead_lettered: int
    parked: int
    dropped: Mapping[str, int]
    contacts: Mapping[ContactKey, Expected]
    unaccounted: tuple[Unaccounted, ...]


class ExpectedContacts:
    """Folds source records into the contacts HighLevel should hold (method step 3). Feed
    records with ``add`` in offset order per partition, then read ``ledger()``. ``mapper`` must
    be fresh (its profiles and deduper are the audit's own); ``dead_letters`` and ``parked``
    must be complete before the first ``add``. Pure apart from the mapper's state."""

    def __init__(self, mapper: Mapper, *, dead_letters: SourceIndex, parked: SourceIndex) -> None:
        self._mapper = mapper
        self._dead_letters = dead_letters
        self._parked = parked
        self._records = 0
        self._identity_events = 0
        self._dead_lettered = 0
        self._parked_count = 0
        self._dropped: Counter[str] = Counter()
        self._folds: dict[ContactKey, Expected] = {}
        self._unaccounted: list[Unaccounted] = []

    def add(self, records: Iterable[Record]) -> None:
        for record in records:
            self._add(record)

    def _add(self, record: Record) -> None:
        self._records += 1
        where = (record.topic, record.partition, record.offset)
        label = f"{record.topic}/{record.partition}/{record.offset}"
        now = record.timestamp_ms / 1000 if record.timestamp_ms is not None else 0.0
        outcomes = self._mapper.map_record(
            value=record.value or b"", key=record.key, topic=record.topic, now=now, origin=where
        )
        if any(isinstance(o, ContactUpsert) for o in outcomes):
            self._identity_events += 1
        for outcome in outcomes:
            if isinstance(outcome, Drop):
                self._dropped[outcome.reason.value] += 1
            elif self._dead_letters.holds(where, outcome.integration_id):
                self._dead_lettered += 1
            elif self._parked.holds(where, outcome.integration_id):
                self._parked_count += 1
            elif isinstance(outcome, Reject):
                self._unaccounted.append(
                    Unaccounted(label, f"{NOT_DEAD_LETTERED} ({outcome.reason.value})")
                )
            else:
                self._fold(outcome, label)

    def _fold(self, upsert: ContactUpsert, where: str) -> None:
        key = (upsert.integration_id, upsert.contact_key)
        previous = self._folds.get(key)
        if previous is None:
            self._folds[key] = Expected(upsert, 1, where)
        else:
            merged = previous.upsert.merged_with(upsert)
            self._folds[key] = Expected(merged, previous.events + 1, where)

    def ledger(self) -> Ledger:
        return Ledger(
            records=self._records,
            identity_events=self._identity_events,
            dead_lettered=self._dead_lettered,
            parked=self._parked_count,
            dropped=dict(self._dropped),
            contacts=dict(self._folds),
            unaccounted=tuple(self._unaccounted),
        )


def contact_mismatches(upsert: ContactUpsert, contact: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the expected fields ``contact`` (as HighLevel renders it) does not hold:
    standard fields equal (email case-insensitively), every expected tag present, custom
    fields equal by id. Empty when it matches."""
    wrong = []
    for name, value in upsert.fields.items():
        actual = contact.get(name)
        if name == "email":
            same = isinstance(actual, str) and isinstance(value, str) and (
                actual.lower() == value.lower()
            )
        else:
            same = actual == value
        if not same:
            wrong.append(name)
    if upsert.tags and not set(upsert.tags) <= set(contact.get("tags") or ()):
        wrong.append("tags")
    if upsert.custom_fields:
        held = {
            item.get("id"): item.get("value")
            for item in contact.get("customFields") or ()
            if isinstance(item, dict)
        }
        for field_id, custom in upsert.custom_fields.items():
            want = list(custom) if isinstance(custom, tuple) else custom
            if field_id not in held or held[field_id] != want:
                wrong.append(f"customFields.{field_id}")
    return tuple(wrong)


@dataclass(frozen=True, slots=True)
class _Directory:
    """One location's contacts by lowercased email and by phone (first holder wins)."""

    by_email: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    by_phone: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, contacts: Iterable[Mapping[str, Any]]) -> _Directory:
        directory = cls()
        for contact in contacts:
            email, phone = contact.get("email"), contact.get("phone")
            if isinstance(email, str) and email:
                directory.by_email.setdefault(email.lower(), contact)
            if isinstance(phone, str) and phone:
                directory.by_phone.setdefault(phone, contact)
        return directory

    def find(self, upsert: ContactUpsert) -> Mapping[str, Any] | None:
        email, phone = upsert.fields.get("email"), upsert.fields.get("phone")
        found = self.by_email.get(email.lower()) if isinstance(email, str) else None
        if found is None and isinstance(phone, str):
            found = self.by_phone.get(phone)
        return found


@dataclass(frozen=True, slots=True)
class Comparison:
    """Expected contacts against HighLevel's (method step 4)."""

    matching: int  # contacts
    delivered_events: int  # events folded into matching contacts
    unaccounted: tuple[Unaccounted, ...]


def compare(
    expected: Mapping[ContactKey, Expected],
    contacts: Mapping[str, Sequence[Mapping[str, Any]]],
) -> Comparison:
    """Check every expected contact against ``contacts`` (location id -> the contacts as
    HighLevel renders them; a location absent from it has none). Contact keys sorted."""
    directories = {location: _Directory.of(found) for location, found in contacts.items()}
    empty = _Directory()
    matching = delivered = 0
    unaccounted = []
    for (integration_id, contact_key), want in sorted(expected.items()):
        subject = f"{integration_id}/{contact_key}"
        contact = directories.get(want.upsert.location_id, empty).find(want.upsert)
        if contact is None:
            unaccounted.append(Unaccounted(subject, MISSING, events=want.events))
            continue
        wrong = contact_mismatches(want.upsert, contact)
        if wrong:
            unaccounted.append(Unaccounted(subject, MISMATCH, wrong, events=want.events))
            continue
        matching += 1
        delivered += want.events
    return Comparison(matching, delivered, tuple(unaccounted))


@dataclass(frozen=True, slots=True)
class Report:
    """The audit's result: the ledger, the comparison, and what was read."""

    ledger: Ledger
    comparison: Comparison
    topics: Mapping[str, int]  # topic -> records read (sources, dead letters, parking)
    absent: tuple[str, ...]  # dead-letter / parking topics that do not exist

    @property
    def unaccounted(self) -> tuple[Unaccounted, ...]:
        return self.ledger.unaccounted + self.comparison.unaccounted

    def to_json(self) -> dict[str, object]:
        ledger, comparison = self.ledger, self.comparison
        return {
            "ok": not self.unaccounted,
            "records": ledger.records,
            "identity_events": ledger.identity_events,
            "contacts": {"expected": len(ledger.contacts), "matching": comparison.matching},
            "delivered_events": comparison.delivered_events,
            "dead_lettered": ledger.dead_lettered,
            "parked": ledger.parked,
            "dropped": dict(sorted(ledger.dropped.items())),
            "unaccounted": [
                {
                    "subject": u.subject,
                    "problem": u.problem,
                    "fields": list(u.fields),
                    "events": u.events,
                }
                for u in self.unaccounted
            ],
            "topics": dict(self.topics),
            "absent_topics": list(self.absent),
        }

    def render(self, out: TextIO) -> None:
        """The human-readable summary; names fields and contact keys, never field values."""
        ledger, comparison = self.ledger, self.comparison
        read = ", ".join(f"{topic} ({count})" for topic, count in self.topics.items())
        print(f"records read: {read}", file=out)
        for topic in self.absent:
            print(f"topic {topic} does not exist: treated as empty", file=out)
        dropped = ", ".join(f"{r} {n}" for r, n in sorted(ledger.dropped.items())) or "0"
        unaccounted_events = sum(u.events for u in self.unaccounted)
        rows = (
            ("source records", str(ledger.records)),
            ("identity events audited", str(ledger.identity_events)),
            ("contacts expected", str(len(ledger.contacts))),
            (
                "delivered and matching",
                f"{comparison.matching} contact(s), {comparison.delivered_events} event(s)",
            ),
            ("dead-lettered", str(ledger.dead_lettered)),
            ("parked", str(ledger.parked)),
            ("dropped", dropped),
            ("UNACCOUNTED", f"{len(self.unaccounted)} ({unaccounted_events} event(s))"),
        )
        for label, value in rows:
            print(f"{label:<24} {value}", file=out)
        for item in self.unaccounted:
            print(f"UNACCOUNTED {item.describe()}", file=out)


# -- I/O ---------------------------------------------------------------------------------------


async def read_sandbox_contacts(
    url: str, location_ids: Iterable[str], *, timeout_s: float = 30.0
) -> dict[str, list[dict[str, Any]]]:
    """Every contact of each location from the sandbox's ``GET /_sandbox/contacts``. Raises
    ``AuditError`` when it does not answer 200 with a contact list."""
    result: dict[str, list[dict[str, Any]]] = {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for location_id in dict.fromkeys(location_ids):
                async with session.get(
                    f"{url.rstrip('/')}/_sandbox/contacts", params={"locationId": location_id}
                ) as response:
                    if response.status != 200:
                        raise AuditError(
                            f"sandbox {url}: location {location_id}: HTTP {response.status}"
                        )
                    body = orjson.loads(await response.read())
                contacts = body.get("contacts") if isinstance(body, dict) else None
                if not isinstance(contacts, list):
                    raise AuditError(f"sandbox {url}: location {location_id}: no contact list")
                result[location_id] = contacts
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise AuditError(f"sandbox {url}: {exc or type(exc).__name__}") from exc
    return result


async def _read_all(reader: TopicReader, sink: SourceIndex | ExpectedContacts) -> int:
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
    dead_letter_topic: str,
    parking_topic: str,
    sandbox_url: str,
) -> Report:
    """The whole audit (method steps 1-4). Raises ``AuditError`` (also for a source topic that
    does not exist) and ``KafkaAdapterError``."""
    source, source_sizes = await _open(settings, topics)
    try:
        missing = [t for t in topics if t not in source_sizes]
        if missing:
            raise AuditError(f"source topic {missing[0]} does not exist")
        indexes: dict[str, SourceIndex] = {}
        sizes: dict[str, int] = dict(source_sizes)
        absent: list[str] = []
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
            build_mapper(settings),
            dead_letters=indexes[dead_letter_topic],
            parked=indexes[parking_topic],
        )
        await _read_all(source, expected)
    finally:
        await source.close()
    ledger = expected.ledger()
    contacts = await read_sandbox_contacts(
        sandbox_url, (i.location_id for i in settings.integrations)
    )
    return Report(ledger, compare(ledger.contacts, contacts), sizes, tuple(absent))


# -- command line ------------------------------------------------------------------------------

_HELP = """\
Account for every event of the source topics: each identity event must have reached HighLevel
(its contact holds what the events say), the dead-letter topic or the parking topic; other
events must be dropped for a reason (not_mapped, duplicate...). Replays the topics through the
mapping in offset order, folds the upserts per contact, and compares each expected contact with
the sandbox's, found by email, else phone. Prints a summary and every UNACCOUNTED contact key
(missing contact, or the names of the differing fields) or record.

Caveats: HighLevel's own pitfalls show up as field mismatches (a field silently not applied when
the email and the phone belong to two contacts; in tag mode upsert, earlier tags replaced by a
later upsert). Duplicates (same messageId) count as dropped "duplicate". Run it once the
consumer has caught up: later events, or edits made in HighLevel, show as mismatches.

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
                dead_letter_topic=args.dead_letter_topic or kafka.dead_letter_topic,
                parking_topic=args.parking_topic or kafka.parking_topic,
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

    return run_command(
        "ghl-consumer audit", audit, Failure((AuditError, KafkaAdapterError), "cannot audit", 2)
    )
