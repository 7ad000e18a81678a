"""The audit's accounting, pure: where the source records went (the dead-letter and parking
topics, drops, the folded contacts) and how the expected contacts compare with HighLevel's.
Steps 2 to 4 of the method in ``consumer.commands.audit``, which reads Kafka and the sandbox
and feeds them here.

``SourceIndex`` indexes a topic of the consumer's by source coordinates; ``ExpectedContacts``
folds source records, in offset order per partition, into a ``Ledger``; ``compare`` checks the
ledger's contacts against HighLevel's (``contact_mismatches`` per contact); ``Calls`` indexes
the delivery topic's records (``consumer.engine.deliveries``) by contact key, so that the
report names the HighLevel calls that carried a contact key's records; ``Report`` is the
result, as JSON or as the human summary. No I/O: HighLevel's contacts come in as mappings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TextIO, TypeVar

from consumer.commands.trace_journey import iso
from consumer.core.deadletter import original_topic, read_failure, replayed_from
from consumer.core.events import ContactUpsert, Drop, FieldValue, Reason, Record, Reject
from consumer.core.mapping import Mapper
from consumer.engine.deliveries import DeliveryRecord, contact_digest
from consumer.engine.parking import parked_sources
from consumer.highlevel.verdicts import custom_value_applied, tags_applied
from consumer.sandbox.settings import IDENTIFIERS

ContactKey = tuple[str, str]
"""(integration id, contact key): one expected HighLevel contact. For an integration whose
events choose their location (``location_path``, OAuth) the first part is ``integration
id/location id``: a contact key's contacts are grouped per location."""
_Key = TypeVar("_Key", str, ContactKey)
Coordinates = tuple[str, int, int]
"""(topic, partition, offset) of a source record."""

MISSING: Final = "missing contact"
MISMATCH: Final = "field mismatch"
NOT_DEAD_LETTERED: Final = "rejected but not in the dead-letter or parking topic"
CREATE_ONLY: Final = frozenset({"gender"})
"""Fields HighLevel applies only when an upsert creates the contact (docs/highlevel.md:
``gender`` is ignored on existing contacts)."""


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


class Calls:
    """The HighLevel calls the delivery topic names (method step 5), by (integration, contact
    digest): a delivery record keys its contact by ``contact_digest``, never the contact key
    itself. Records of another format version, or not delivery records at all, are counted in
    ``unreadable`` and otherwise ignored."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], list[DeliveryRecord]] = {}
        self.records = 0
        self.unreadable = 0

    def add(self, records: Iterable[Record]) -> None:
        for record in records:
            self.records += 1
            call = DeliveryRecord.decode(record.value)
            if call is None:
                self.unreadable += 1
                continue
            self._calls.setdefault((call.integration, call.contact), []).append(call)

    def of(self, key: ContactKey) -> list[DeliveryRecord]:
        """The calls for contact key ``key`` (integration id, contact key), oldest first."""
        found = self._calls.get((key[0], contact_digest(key[1])), [])
        return sorted(found, key=lambda call: call.time)


def call_json(call: DeliveryRecord) -> dict[str, object]:
    """What the report says of one HighLevel call (no personal data: the delivery record has
    none)."""
    return {
        "endpoint": call.endpoint,
        "status": call.status,
        "verdict": call.verdict,
        "traceId": call.trace_id,
        "time": iso(call.time * 1000),
        "contactId": call.contact_id,
        "sources": len(call.sources),
    }


def call_text(call: DeliveryRecord) -> str:
    """One line for one HighLevel call, as the report prints it under a contact key."""
    return (
        f"call {call.endpoint} {call.status} {call.verdict} at {iso(call.time * 1000)} "
        f"(traceId {call.trace_id}, contact {call.contact_id}, "
        f"{len(call.sources)} record(s))"
    )


@dataclass(frozen=True, slots=True)
class Write:
    """The upsert that last wrote a field: its record and the identifiers it sent (HighLevel
    applied it to the contact they matched then)."""

    where: Coordinates
    identifiers: frozenset[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Expected:
    """The contact HighLevel should hold for one contact key: the fold of its delivered upserts
    (``upsert``), and what ``compare`` needs to allow for other keys writing the same contact.

    ``written`` names, per field (``tags`` and ``customFields.<id>`` included), the upsert
    that last wrote it; ``created`` the create-only fields (``CREATE_ONLY``) of the key's first
    upsert and ``first`` that record; ``identifiers`` every (``email`` lowercased | ``phone``,
    value) its upserts sent; ``stitched_from`` the other contact keys whose profiles its
    records may have folded in, or emptied, in an order this audit cannot know (identity
    stitching across partitions), and ``stitched_values`` every value their profiles held,
    per field; ``sent`` every value its upserts sent, per standard field; ``parked`` the key's
    upserts whose records are in the parking topic (not folded in)."""

    upsert: ContactUpsert
    events: int
    last: str  # "topic/partition/offset" of the newest event folded in
    written: Mapping[str, Write] = field(default_factory=dict)
    created: Mapping[str, FieldValue] = field(default_factory=dict)
    first: Coordinates | None = None
    identifiers: frozenset[tuple[str, str]] = frozenset()
    stitched_from: frozenset[str] = frozenset()
    stitched_values: Mapping[str, frozenset[str]] = field(default_factory=dict)
    sent: Mapping[str, frozenset[FieldValue]] = field(default_factory=dict)
    parked: tuple[ContactUpsert, ...] = ()


@dataclass(frozen=True, slots=True)
class Unaccounted:
    """Something the audit cannot account for. ``subject`` is ``integration/contact key`` for
    a contact (``key`` then names it), ``topic/partition/offset`` for a record; ``fields`` the
    differing field names (never their values)."""

    subject: str
    problem: str
    fields: tuple[str, ...] = ()
    events: int = 1
    key: ContactKey | None = None

    def describe(self) -> str:
        fields = f": {', '.join(self.fields)}" if self.fields else ""
        return f"{self.subject}: {self.problem}{fields} ({self.events} event(s))"


@dataclass(frozen=True, slots=True)
class Ledger:
    """Where the source records went, before looking at HighLevel. Counts are per outcome
    (one per routed integration; a record-level drop or reject counts once).
    ``stitch_order``: ``no_identifier`` rejects in neither topic, accounted because their key
    folds in the profile of a key read from another partition, which the consumer may have
    read first (it then had an identifier and delivered the record)."""

    records: int  # source records
    replays: int  # copies read from the replay topic (``dlq replay``)
    identity_events: int  # records with at least one upsert outcome
    dead_lettered: int
    parked: int
    dropped: Mapping[str, int]
    contacts: Mapping[ContactKey, Expected]
    unaccounted: tuple[Unaccounted, ...]
    stitch_order: int = 0

    def locations(self) -> frozenset[str]:
        """The locations the expected contacts are in (an integration whose events choose
        their location adds every location its delivered events named)."""
        return frozenset(want.upsert.location_id for want in self.contacts.values())


class _Fold:
    """One contact key's delivered upserts so far (``ExpectedContacts``'s working state)."""

    __slots__ = ("created", "events", "first", "identifiers", "last", "sent", "upsert", "written")

    def __init__(self, upsert: ContactUpsert, where: Coordinates) -> None:
        self.upsert = upsert
        self.events = 0
        self.first = where
        self.last = where
        self.created = {n: v for n, v in upsert.fields.items() if n in CREATE_ONLY}
        self.written: dict[str, Write] = {}
        self.identifiers: set[tuple[str, str]] = set()
        self.sent: dict[str, set[FieldValue]] = {}

    def add(self, upsert: ContactUpsert, where: Coordinates) -> None:
        if self.events:
            self.upsert = self.upsert.merged_with(upsert)
        self.events += 1
        self.last = where
        write = Write(where, frozenset(_identifiers(upsert)))
        for name in _written_names(upsert):
            self.written[name] = write
        for name, value in upsert.fields.items():
            self.sent.setdefault(name, set()).add(value)
        self.identifiers.update(_identifiers(upsert))

    def expected(
        self,
        stitched_from: frozenset[str],
        stitched_values: Mapping[str, frozenset[str]],
        parked: Sequence[ContactUpsert],
    ) -> Expected:
        return Expected(
            self.upsert,
            self.events,
            "/".join(map(str, self.last)),
            written=dict(self.written),
            created=dict(self.created),
            first=self.first,
            identifiers=frozenset(self.identifiers),
            stitched_from=stitched_from,
            stitched_values=stitched_values,
            sent={name: frozenset(values) for name, values in self.sent.items()},
            parked=tuple(parked),
        )


def _written_names(upsert: ContactUpsert) -> Iterator[str]:
    """The names ``contact_mismatches`` compares that ``upsert`` writes."""
    yield from upsert.fields
    if upsert.tags:
        yield "tags"
    for field_id in upsert.custom_fields:
        yield f"customFields.{field_id}"


def _identifiers(upsert: ContactUpsert) -> Iterator[tuple[str, str]]:
    """(``email`` lowercased | ``phone``, value) of what ``upsert`` sends."""
    for kind in IDENTIFIERS:
        value = upsert.fields.get(kind)
        if isinstance(value, str) and value:
            yield kind, value.lower() if kind == "email" else value


class ExpectedContacts:
    """Folds source records into the contacts HighLevel should hold (method step 3). Feed
    records with ``add`` in offset order per partition, then the replay topic's copies with
    ``add_replays``, then read ``ledger()``. ``mapper`` must be fresh (its profiles and deduper
    are the audit's own); ``dead_letters`` and ``parked`` must be complete before the first
    ``add``; ``source_topics`` are the topics a replay copy may stand for (``kafka.topics``, as
    the consumer checks them); ``located_by_event`` the integrations whose events choose their
    location (``location_path``): their contacts are keyed per location (``ContactKey``).
    Pure apart from the mapper's state."""

    def __init__(
        self,
        mapper: Mapper,
        *,
        dead_letters: SourceIndex,
        parked: SourceIndex,
        source_topics: Collection[str] = (),
        located_by_event: Collection[str] = (),
    ) -> None:
        self._mapper = mapper
        self._located_by_event = frozenset(located_by_event)
        self._dead_letters = dead_letters
        self._parked = parked
        self._source_topics = frozenset(source_topics)
        self._records = 0
        self._replays = 0
        self._identity_events = 0
        self._dead_lettered = 0
        self._parked_count = 0
        self._dropped: Counter[str] = Counter()
        self._folds: dict[ContactKey, _Fold] = {}
        self._parked_upserts: dict[ContactKey, list[ContactUpsert]] = {}
        self._unaccounted: list[Unaccounted] = []
        # identity stitching: user key -> partitions its records are on; (user key, stitched
        # key, partition of the record that stitched it)
        self._partitions: dict[str, set[tuple[str, int]]] = {}
        self._stitches: set[tuple[str, str, tuple[str, int]]] = set()
        self._identified: set[str] = set()  # user keys whose profile held an email or phone
        # user key -> field -> every value its profile held
        self._profile_values: dict[str, dict[str, set[str]]] = {}
        # no_identifier rejects in neither topic whose key stitched another: (label, key)
        self._pending: list[tuple[str, str]] = []

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
        value = record.value or b""
        user_key, sources = self._mapper.identity_of(value=value, key=record.key)
        outcomes = self._mapper.map_record(
            value=value,
            key=record.key,
            topic=topic,
            now=now,
            origin=where,
            replay_of=replayed_from(record.headers),
        )
        if user_key:
            self._partitions.setdefault(user_key, set()).add(where[:2])
            profile = self._mapper.profile(user_key)
            if profile is not None:
                if not profile.fields.keys().isdisjoint(IDENTIFIERS):
                    self._identified.add(user_key)
                held = self._profile_values.setdefault(user_key, {})
                for name, held_value in profile.fields.items():
                    held.setdefault(name, set()).add(held_value)
            if outcomes not in _NOT_STITCHED:
                self._stitches.update((user_key, source, where[:2]) for source in sources)
        if any(isinstance(o, ContactUpsert) for o in outcomes):
            self._identity_events += 1
        for outcome in outcomes:
            if isinstance(outcome, Drop):
                self._dropped[outcome.reason.value] += 1
            elif self._dead_letters.holds(where, outcome.integration_id):
                self._dead_lettered += 1
            elif self._parked.holds(where, outcome.integration_id):
                self._parked_count += 1
                if isinstance(outcome, ContactUpsert):
                    self._parked_upserts.setdefault(self._key(outcome), []).append(outcome)
            elif isinstance(outcome, Reject):
                if outcome.reason is Reason.NO_IDENTIFIER and user_key:
                    self._pending.append((label, user_key))
                else:
                    self._unaccounted.append(
                        Unaccounted(label, f"{NOT_DEAD_LETTERED} ({outcome.reason.value})")
                    )
            else:
                self._fold(outcome, where)

    def _key(self, upsert: ContactUpsert) -> ContactKey:
        integration_id = upsert.integration_id
        if integration_id in self._located_by_event:
            integration_id = f"{integration_id}/{upsert.location_id}"
        return integration_id, upsert.contact_key

    def _fold(self, upsert: ContactUpsert, where: Coordinates) -> None:
        key = self._key(upsert)
        fold = self._folds.get(key)
        if fold is None:
            fold = self._folds[key] = _Fold(upsert, where)
        fold.add(upsert, where)

    def _order_dependent(self) -> dict[str, frozenset[str]]:
        """User key -> the other keys of its stitching component (keys joined by identity
        stitching, either way) when a stitch in it joins keys on different partitions: then
        what each member's profile held when its records were mapped depends on the order the
        consumer read the partitions in, which this audit cannot know."""
        components: _Clusters[str] = _Clusters()
        crossing: set[str] = set()
        for user_key, source, partition in self._stitches:
            components.join(user_key, source)
            if self._partitions.get(source, set()) - {partition}:
                crossing.add(user_key)
        members: dict[str, set[str]] = {}
        for user_key in {k for edge in self._stitches for k in edge[:2]}:
            members.setdefault(components.root(user_key), set()).add(user_key)
        dependent = {components.root(k) for k in crossing}
        return {
            user_key: frozenset(group - {user_key})
            for root, group in members.items()
            if root in dependent
            for user_key in group
        }

    def _held_by(self, user_keys: Iterable[str]) -> dict[str, frozenset[str]]:
        """Field -> every value the profiles of ``user_keys`` held."""
        held: dict[str, set[str]] = {}
        for user_key in user_keys:
            for name, values in self._profile_values.get(user_key, {}).items():
                held.setdefault(name, set()).update(values)
        return {name: frozenset(values) for name, values in held.items()}

    def ledger(self) -> Ledger:
        dependent = self._order_dependent()
        unaccounted = list(self._unaccounted)
        stitch_order = 0
        for label, user_key in self._pending:
            if (dependent.get(user_key, frozenset()) | {user_key}) & self._identified:
                stitch_order += 1
            else:
                problem = f"{NOT_DEAD_LETTERED} ({Reason.NO_IDENTIFIER.value})"
                unaccounted.append(Unaccounted(label, problem))
        return Ledger(
            records=self._records,
            replays=self._replays,
            identity_events=self._identity_events,
            dead_lettered=self._dead_lettered,
            parked=self._parked_count,
            dropped=dict(self._dropped),
            contacts={
                key: fold.expected(
                    dependent.get(key[1], frozenset()),
                    self._held_by(dependent.get(key[1], frozenset())),
                    self._parked_upserts.get(key, ()),
                )
                for key, fold in self._folds.items()
            },
            unaccounted=tuple(unaccounted),
            stitch_order=stitch_order,
        )


# Outcomes of records the mapper does not stitch for (it stops before): not routed, duplicate.
_NOT_STITCHED: Final = ([Drop(Reason.NOT_ROUTED)], [Drop(Reason.DUPLICATE)])


def contact_mismatches(upsert: ContactUpsert, contact: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the expected fields ``contact`` (as HighLevel renders it) does not hold:
    standard fields equal (email case-insensitively; ``dnd`` not compared while a channel of
    the contact's ``dndSettings`` is ``permanent``: HighLevel keeps that DND and the consumer
    then sends the update without ``dnd``), every expected tag present as HighLevel stores
    tags (``tags_applied``: trimmed, lowercased), custom fields equal by id after HighLevel's
    conversion by type (``custom_value_applied``). Empty when it matches."""
    return tuple(
        name for name in _written_names(upsert) if not _holds(name, upsert, contact)
    )


def _holds(name: str, upsert: ContactUpsert, contact: Mapping[str, Any]) -> bool:
    """Whether ``contact`` holds what ``upsert`` says for ``name`` (a ``_written_names``
    name), by the rules of ``contact_mismatches``."""
    if name == "tags":
        return tags_applied(list(upsert.tags), contact.get("tags"))
    if name.startswith("customFields."):
        field_id = name.removeprefix("customFields.")
        custom = upsert.custom_fields[field_id]
        held = {
            item.get("id"): item.get("value")
            for item in contact.get("customFields") or ()
            if isinstance(item, dict)
        }
        want = list(custom) if isinstance(custom, tuple) else custom
        return field_id in held and custom_value_applied(want, held[field_id])
    value, actual = upsert.fields[name], contact.get(name)
    if name == "email":
        if not (isinstance(actual, str) and isinstance(value, str)):
            return False
        return actual.lower() == value.lower()
    if name == "dnd" and _permanent_dnd(contact):
        return True
    return actual == value


def _permanent_dnd(contact: Mapping[str, Any]) -> bool:
    settings = contact.get("dndSettings")
    return isinstance(settings, Mapping) and any(
        isinstance(s, Mapping) and s.get("status") == "permanent" for s in settings.values()
    )


def _held(contact: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(``email`` lowercased | ``phone``, value) of what ``contact`` holds."""
    for kind in IDENTIFIERS:
        value = contact.get(kind)
        if isinstance(value, str) and value:
            yield kind, value.lower() if kind == "email" else value


@dataclass(frozen=True, slots=True)
class _Directory:
    """One location's contacts by identifier (``email`` lowercased, ``phone``; first holder
    wins, as HighLevel matches the oldest) and its duplicate setting's match ``priority``."""

    priority: tuple[str, ...] = IDENTIFIERS
    by: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, contacts: Iterable[Mapping[str, Any]], priority: tuple[str, ...]) -> _Directory:
        directory = cls(priority)
        for contact in contacts:
            for identifier in _held(contact):
                directory.by.setdefault(identifier, contact)
        return directory

    def find_all(self, identifiers: Sequence[tuple[str, str]]) -> list[Mapping[str, Any]]:
        """Every contact one of ``identifiers`` finds, the one ``find`` gives first."""
        found = {id(c): c for i in identifiers if (c := self.by.get(i)) is not None}
        first = self.find(identifiers)
        return [first, *(c for c in found.values() if c is not first)] if first else []

    def find(self, identifiers: Sequence[tuple[str, str]]) -> Mapping[str, Any] | None:
        """The contact ``identifiers`` (in order of preference) match: by the priority's first
        kind that finds one."""
        for kind in self.priority:
            for identifier in identifiers:
                if identifier[0] == kind and identifier in self.by:
                    return self.by[identifier]
        return None


class _Clusters(Generic[_Key]):
    """Union-find."""

    def __init__(self) -> None:
        self._parent: dict[_Key, _Key] = {}

    def root(self, key: _Key) -> _Key:
        parent = self._parent.setdefault(key, key)
        while parent != key:
            grand = self._parent[parent]
            self._parent[key] = grand
            key, parent = parent, grand
        return key

    def join(self, a: _Key, b: _Key) -> None:
        self._parent[self.root(a)] = self.root(b)


def _identity_clusters(
    expected: Mapping[ContactKey, Expected], priorities: Mapping[str, tuple[str, ...]]
) -> _Clusters[ContactKey]:
    """Keys joined when they send an identifier their location matches on: HighLevel holds
    one contact for them (or would, in some order of their upserts)."""
    clusters: _Clusters[ContactKey] = _Clusters()
    holder: dict[tuple[str, str, str], ContactKey] = {}
    for key, want in expected.items():
        clusters.root(key)
        location = want.upsert.location_id
        matched_on = priorities.get(location, IDENTIFIERS)
        for kind, value in sorted(want.identifiers):
            if kind in matched_on:
                clusters.join(key, holder.setdefault((location, kind, value), key))
    return clusters


@dataclass(frozen=True, slots=True)
class Comparison:
    """Expected contacts against HighLevel's (method step 4). ``contacts`` counts identity
    clusters (contact keys sharing an identifier their location matches on: one HighLevel
    contact), ``matching`` the clusters whose every key matched; ``allowed`` counts, per
    rule, the differences the matching rules or the read order explain (``compare``)."""

    matching: int  # contacts
    delivered_events: int  # events folded into matching contacts
    unaccounted: tuple[Unaccounted, ...]
    contacts: int = 0
    allowed: Mapping[str, int] = field(default_factory=dict)


ALLOWED_RULES: Final = (
    "other_writer",
    "identifier_on_another_contact",
    "earlier_identity",
    "create_only",
    "stitch_order",
    "parked",
)


def compare(
    expected: Mapping[ContactKey, Expected],
    contacts: Mapping[str, Sequence[Mapping[str, Any]]],
    priorities: Mapping[str, tuple[str, ...]] | None = None,
) -> Comparison:
    """Check every expected contact against ``contacts`` (location id -> the contacts as
    HighLevel renders them, each with its ``id``; a location absent from it has none).
    ``priorities``: location id -> the identifiers its duplicate setting matches on, in order
    (default: email, phone).

    Contact keys that send an identifier their location matches on form a cluster: HighLevel
    holds one contact for them (``Comparison.contacts`` counts clusters; ``matching`` those
    whose every key matched). A key may be at any contact its own identifiers find (the one
    its location's priority finds first is tried first), else at any its cluster's find
    (another key changed the contact's identifiers since); it matches when one of them holds
    what it says. The keys found at a contact are its *writers*. A field that differs from
    the key's own value is allowed (counted in ``Comparison.allowed``) when

    - ``other_writer``: the contact holds the value of the writer that wrote the field last
      on some partition (writers on different partitions may be applied in either order, on
      one partition the later write wins), or any value another key of the cluster, or a key
      stitched into a writer's from another partition, ever sent (it may have written the
      contact before its identifiers moved);
    - ``identifier_on_another_contact``: an email or phone another contact holds (HighLevel
      does not apply it; docs/highlevel.md, "Upsert contract");
    - ``earlier_identity``: the upsert that last wrote the field sent identifiers this
      contact does not hold, and the contact they match holds the value (the key's email
      changed since; unless the engine folded the two upserts into one, HighLevel applied
      the older one to another contact);
    - ``create_only``: a field HighLevel applies only when it creates the contact
      (``CREATE_ONLY``) holds what the first upsert of a writer on some partition carried;
    - ``stitch_order``: the contact lacks a value the key holds from the profile of a key
      stitched into its from another partition (``Expected.stitched_from``: the consumer
      may have read that key after this one's records), or holds a value such a profile of
      one of its writers held;
    - ``parked``: the contact holds what one of the key's parked upserts sent
      (``Expected.parked``): a parked record may have been delivered by a member that died
      before committing it (the member that read it again parked it), or from the parking
      topic since.

    Contact keys sorted."""
    priorities = priorities or {}
    directories = {
        location: _Directory.of(found, priorities.get(location, IDENTIFIERS))
        for location, found in contacts.items()
    }
    clusters = _identity_clusters(expected, priorities)
    members: dict[ContactKey, dict[ContactKey, Expected]] = {}
    for key, want in expected.items():
        members.setdefault(clusters.root(key), {})[key] = want
    # the contacts a key may be at: the one its own identifiers find, else those its
    # cluster's find (another key changed the contact's identifiers since)
    found: dict[ContactKey, list[Mapping[str, Any]]] = {}
    found_at: dict[tuple[str, object], dict[ContactKey, Expected]] = {}  # contact's writers
    for key, want in expected.items():
        location = want.upsert.location_id
        directory = directories.get(location, _Directory())
        own = directory.find_all([*_identifiers(want.upsert), *sorted(want.identifiers)])
        found[key] = own or directory.find_all(
            sorted({i for w in members[clusters.root(key)].values() for i in w.identifiers})
        )
        for contact in found[key]:
            found_at.setdefault((location, contact.get("id")), {})[key] = want
    allowed: Counter[str] = Counter({rule: 0 for rule in ALLOWED_RULES})
    failed: set[ContactKey] = set()
    delivered: Counter[ContactKey] = Counter()
    unaccounted = []
    for key, want in sorted(expected.items()):
        subject = f"{key[0]}/{key[1]}"
        root = clusters.root(key)
        if not found[key]:
            unaccounted.append(Unaccounted(subject, MISSING, events=want.events, key=key))
            failed.add(root)
            continue
        location = want.upsert.location_id
        best: tuple[list[str], Counter[str]] | None = None
        for contact in found[key]:
            writers = found_at[(location, contact.get("id"))]
            others = dict(members[root])
            for writer_key, writer in writers.items():
                others.update(_stitched(writer_key, writer, expected))
            context = _Context(
                contact,
                directories[location],
                list(writers.values()),
                [w for k, w in others.items() if k not in writers],
                list(_stitched(key, want, expected).values()),
            )
            checked = context.check(want)
            if best is None or len(checked[0]) < len(best[0]):
                best = checked
        assert best is not None
        wrong, rules = best
        allowed.update(rules)
        if wrong:
            unaccounted.append(
                Unaccounted(subject, MISMATCH, tuple(wrong), events=want.events, key=key)
            )
            failed.add(root)
            continue
        delivered[root] += want.events
    matching = [root for root in members if root not in failed]
    return Comparison(
        matching=len(matching),
        delivered_events=sum(delivered[root] for root in matching),
        unaccounted=tuple(unaccounted),
        contacts=len(members),
        allowed=dict(allowed),
    )


def _stitched(
    key: ContactKey, want: Expected, expected: Mapping[ContactKey, Expected]
) -> dict[ContactKey, Expected]:
    """The expected contacts of ``want.stitched_from`` (``key``'s integration and location)."""
    keys = [(key[0], k) for k in sorted(want.stitched_from)]
    return {k: expected[k] for k in keys if k in expected}


@dataclass(frozen=True, slots=True)
class _Context:
    """What ``compare`` allows a key's field to differ by: its contact, the location's
    directory, the contact's writers and the keys stitched into the key's."""

    contact: Mapping[str, Any]
    directory: _Directory
    writers: Sequence[Expected]
    # the cluster's other keys (they may have written it earlier) and the keys stitched into
    # a writer's across partitions (it may have sent their values)
    others: Sequence[Expected]
    stitched: Sequence[Expected]

    def check(self, want: Expected) -> tuple[list[str], Counter[str]]:
        """The fields of ``want`` the contact does not hold and no rule allows; how many
        differences each rule allowed."""
        wrong: list[str] = []
        rules: Counter[str] = Counter()
        for name in contact_mismatches(want.upsert, self.contact):
            rule = self.allows(name, want)
            if rule is None:
                wrong.append(name)
            else:
                rules[rule] += 1
        return wrong, rules

    def allows(self, name: str, want: Expected) -> str | None:
        """The rule of ``compare`` that allows the contact's ``name`` to differ from
        ``want``'s, or None."""
        contact = self.contact
        value = want.upsert.fields.get(name)
        if name in self.directory.priority and isinstance(value, str):
            holder = self.directory.by.get((name, value.lower() if name == "email" else value))
            if holder is not None and holder.get("id") != contact.get("id"):
                return "identifier_on_another_contact"
        write = want.written.get(name)
        if write is not None and write.identifiers.isdisjoint(_held(contact)):
            went_to = self.directory.find(sorted(write.identifiers))
            if went_to is not None and _holds(name, want.upsert, went_to):
                return "earlier_identity"
        if name in CREATE_ONLY:
            creators = [*_earliest_per_partition(self.writers), *self.others]
            if any(contact.get(name) == w.created.get(name) for w in creators):
                return "create_only"
        elif any(
            _holds(name, w.upsert, contact) for w in _last_writers(name, self.writers)
        ) or any(
            contact.get(name) in w.sent.get(name, ()) or _holds(name, w.upsert, contact)
            for w in self.others
            if name in w.written
        ):
            return "other_writer"
        if any(
            name in _written_names(parked) and _holds(name, parked, contact)
            for parked in want.parked
        ):
            return "parked"
        actual = contact.get(name)
        if value is not None and (
            (
                actual is None
                and (
                    value in want.stitched_values.get(name, ())
                    or any(w.upsert.fields.get(name) == value for w in self.stitched)
                )
            )
            or any(actual in w.stitched_values.get(name, ()) for w in self.writers)
        ):
            return "stitch_order"
        return None


def _last_writers(name: str, writers: Iterable[Expected]) -> list[Expected]:
    """Per partition, the writer that wrote ``name`` last."""
    last: dict[tuple[str, int], tuple[int, Expected]] = {}
    for want in writers:
        write = want.written.get(name)
        where = write.where if write is not None else None
        if where is not None and (where[:2] not in last or last[where[:2]][0] < where[2]):
            last[where[:2]] = (where[2], want)
    return [want for _, want in last.values()]


def _earliest_per_partition(writers: Iterable[Expected]) -> list[Expected]:
    """Per partition, the writer whose first upsert came first: one of them created the
    contact."""
    first: dict[tuple[str, int], tuple[int, Expected]] = {}
    for want in writers:
        where = want.first
        if where is not None and (where[:2] not in first or first[where[:2]][0] > where[2]):
            first[where[:2]] = (where[2], want)
    return [want for _, want in first.values()]


@dataclass(frozen=True, slots=True)
class Report:
    """The audit's result: the ledger, the comparison, what was read, and the HighLevel calls
    the delivery topic names (``calls`` None: that topic does not exist, as in deployments
    older than delivery records; the report then says "no delivery records" once)."""

    ledger: Ledger
    comparison: Comparison
    topics: Mapping[str, int]  # topic -> records read (sources, replays, dead letters, parking)
    absent: tuple[str, ...]  # replay / dead-letter / parking / delivery topics that do not exist
    calls: Calls | None = None

    def calls_of(self, key: ContactKey) -> list[dict[str, object]] | None:
        """The calls that carried ``key``'s records, as JSON; None without delivery records."""
        if self.calls is None:
            return None
        return [call_json(call) for call in self.calls.of(key)]

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
            "contacts": {"expected": comparison.contacts, "matching": comparison.matching},
            "contact_keys": len(ledger.contacts),
            "delivered_events": comparison.delivered_events,
            "dead_lettered": ledger.dead_lettered,
            "parked": ledger.parked,
            "dropped": dict(sorted(ledger.dropped.items())),
            "stitch_order_rejects": ledger.stitch_order,
            "allowed_differences": dict(comparison.allowed),
            "delivery_records": None if self.calls is None else self.calls.records,
            "unaccounted": [
                {
                    "subject": u.subject,
                    "problem": u.problem,
                    "fields": list(u.fields),
                    "events": u.events,
                    **({} if u.key is None else {"calls": self.calls_of(u.key)}),
                }
                for u in self.unaccounted
            ],
            "expected": [
                {
                    "subject": f"{key[0]}/{key[1]}",
                    "events": want.events,
                    "calls": self.calls_of(key),
                }
                for key, want in sorted(ledger.contacts.items())
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
        if self.calls is None:
            print("no delivery records: the HighLevel calls are not named", file=out)
        dropped = ", ".join(f"{r} {n}" for r, n in sorted(ledger.dropped.items())) or "0"
        unaccounted_events = sum(u.events for u in self.unaccounted)
        allowed = (
            ", ".join(f"{rule} {n}" for rule, n in comparison.allowed.items() if n) or "0"
        )
        rows = (
            ("source records", str(ledger.records)),
            ("replay copies", str(ledger.replays)),
            ("identity events audited", str(ledger.identity_events)),
            (
                "contacts expected",
                f"{comparison.contacts} ({len(ledger.contacts)} contact key(s))",
            ),
            (
                "delivered and matching",
                f"{comparison.matching} contact(s), {comparison.delivered_events} event(s)",
            ),
            ("dead-lettered", str(ledger.dead_lettered)),
            ("parked", str(ledger.parked)),
            ("dropped", dropped),
            ("stitch-order rejects", str(ledger.stitch_order)),
            ("delivery records", _delivery_records(self.calls)),
            ("allowed differences", allowed),
            ("UNACCOUNTED", f"{len(self.unaccounted)} ({unaccounted_events} event(s))"),
        )
        for label, value in rows:
            print(f"{label:<24} {value}", file=out)
        for item in self.unaccounted:
            print(f"UNACCOUNTED {item.describe()}", file=out)
            if item.key is None or self.calls is None:
                continue
            calls = self.calls.of(item.key)
            for call in calls:
                print(f"  {call_text(call)}", file=out)
            if not calls:
                print("  no delivery record", file=out)


def _delivery_records(calls: Calls | None) -> str:
    if calls is None:
        return "none (no delivery topic)"
    unreadable = f" ({calls.unreadable} unreadable)" if calls.unreadable else ""
    return f"{calls.records}{unreadable}"
