"""The audit's accounting, pure: where the source records went (the dead-letter and parking
topics, drops, the folded contacts) and how the expected contacts compare with HighLevel's.
Steps 2 to 4 of the method in ``consumer.commands.audit``, which reads Kafka and the sandbox
and feeds them here.

``SourceIndex`` indexes a topic of the consumer's by source coordinates; ``ExpectedContacts``
folds source records, in offset order per partition, into a ``Ledger``; ``compare`` checks the
ledger's contacts against HighLevel's (``contact_mismatches`` per contact); ``Report`` is the
result, as JSON or as the human summary. No I/O: HighLevel's contacts come in as mappings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from consumer.core.deadletter import original_topic, read_failure, replayed_from
from consumer.core.events import ContactUpsert, Drop, Record, Reject
from consumer.core.mapping import Mapper
from consumer.engine.parking import parked_sources
from consumer.highlevel.verdicts import custom_value_applied, tags_applied

ContactKey = tuple[str, str]
"""(integration id, contact key): one expected HighLevel contact."""
Coordinates = tuple[str, int, int]
"""(topic, partition, offset) of a source record."""

MISSING: Final = "missing contact"
MISMATCH: Final = "field mismatch"
NOT_DEAD_LETTERED: Final = "rejected but not in the dead-letter or parking topic"


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

    records: int  # source records
    replays: int  # copies read from the replay topic (``dlq replay``)
    identity_events: int  # records with at least one upsert outcome
    dead_lettered: int
    parked: int
    dropped: Mapping[str, int]
    contacts: Mapping[ContactKey, Expected]
    unaccounted: tuple[Unaccounted, ...]


class ExpectedContacts:
    """Folds source records into the contacts HighLevel should hold (method step 3). Feed
    records with ``add`` in offset order per partition, then the replay topic's copies with
    ``add_replays``, then read ``ledger()``. ``mapper`` must be fresh (its profiles and deduper
    are the audit's own); ``dead_letters`` and ``parked`` must be complete before the first
    ``add``; ``source_topics`` are the topics a replay copy may stand for (``kafka.topics``, as
    the consumer checks them). Pure apart from the mapper's state."""

    def __init__(
        self,
        mapper: Mapper,
        *,
        dead_letters: SourceIndex,
        parked: SourceIndex,
        source_topics: Collection[str] = (),
    ) -> None:
        self._mapper = mapper
        self._dead_letters = dead_letters
        self._parked = parked
        self._source_topics = frozenset(source_topics)
        self._records = 0
        self._replays = 0
        self._identity_events = 0
        self._dead_lettered = 0
        self._parked_count = 0
        self._dropped: Counter[str] = Counter()
        self._folds: dict[ContactKey, Expected] = {}
        self._unaccounted: list[Unaccounted] = []

    def add(self, records: Iterable[Record]) -> None:
        for record in records:
            self._records += 1
            self._add(record, record.topic)

    def add_replays(self, records: Iterable[Record]) -> None:
        """Copies ``dlq replay`` wrote to the replay topic, in offset order, after every source
        record (the consumer reads a copy after its original): each is accounted for as a
        record of the topic its ``ghl.original_topic`` names. A copy naming no topic of
        ``source_topics`` must be dead-lettered (``invalid_replay``), as the consumer does."""
        for record in records:
            self._replays += 1
            topic = original_topic(record.headers)
            if topic is not None and topic in self._source_topics:
                self._add(record, topic)
                continue
            if self._dead_letters.holds((record.topic, record.partition, record.offset), None):
                self._dead_lettered += 1
            else:
                label = f"{record.topic}/{record.partition}/{record.offset}"
                self._unaccounted.append(
                    Unaccounted(label, f"{NOT_DEAD_LETTERED} (invalid_replay)")
                )

    def _add(self, record: Record, topic: str) -> None:
        """Account for ``record`` routed as a record of ``topic``."""
        where = (record.topic, record.partition, record.offset)
        label = f"{record.topic}/{record.partition}/{record.offset}"
        now = record.timestamp_ms / 1000 if record.timestamp_ms is not None else 0.0
        outcomes = self._mapper.map_record(
            value=record.value or b"",
            key=record.key,
            topic=topic,
            now=now,
            origin=where,
            replay_of=replayed_from(record.headers),
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
            replays=self._replays,
            identity_events=self._identity_events,
            dead_lettered=self._dead_lettered,
            parked=self._parked_count,
            dropped=dict(self._dropped),
            contacts=dict(self._folds),
            unaccounted=tuple(self._unaccounted),
        )


def contact_mismatches(upsert: ContactUpsert, contact: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the expected fields ``contact`` (as HighLevel renders it) does not hold:
    standard fields equal (email case-insensitively; ``dnd`` not compared while a channel of
    the contact's ``dndSettings`` is ``permanent``: HighLevel keeps that DND and the consumer
    then sends the update without ``dnd``), every expected tag present as HighLevel stores
    tags (``tags_applied``: trimmed, lowercased), custom fields equal by id after HighLevel's
    conversion by type (``custom_value_applied``). Empty when it matches."""
    wrong = []
    for name, value in upsert.fields.items():
        actual = contact.get(name)
        if name == "email":
            same = (
                isinstance(actual, str)
                and isinstance(value, str)
                and (actual.lower() == value.lower())
            )
        elif name == "dnd" and _permanent_dnd(contact):
            same = True
        else:
            same = actual == value
        if not same:
            wrong.append(name)
    if upsert.tags and not tags_applied(list(upsert.tags), contact.get("tags")):
        wrong.append("tags")
    if upsert.custom_fields:
        held = {
            item.get("id"): item.get("value")
            for item in contact.get("customFields") or ()
            if isinstance(item, dict)
        }
        for field_id, custom in upsert.custom_fields.items():
            want = list(custom) if isinstance(custom, tuple) else custom
            if field_id not in held or not custom_value_applied(want, held[field_id]):
                wrong.append(f"customFields.{field_id}")
    return tuple(wrong)


def _permanent_dnd(contact: Mapping[str, Any]) -> bool:
    settings = contact.get("dndSettings")
    return isinstance(settings, Mapping) and any(
        isinstance(s, Mapping) and s.get("status") == "permanent" for s in settings.values()
    )


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
    topics: Mapping[str, int]  # topic -> records read (sources, replays, dead letters, parking)
    absent: tuple[str, ...]  # replay / dead-letter / parking topics that do not exist

    @property
    def unaccounted(self) -> tuple[Unaccounted, ...]:
        return self.ledger.unaccounted + self.comparison.unaccounted

    def to_json(self) -> dict[str, object]:
        ledger, comparison = self.ledger, self.comparison
        return {
            "ok": not self.unaccounted,
            "records": ledger.records,
            "replays": ledger.replays,
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
            ("replay copies", str(ledger.replays)),
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
