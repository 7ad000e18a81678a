"""Frozen value types of the pure core: the Kafka ``Record``, the decoded ``Event``, and the
outcomes of mapping one record for one integration: ``ContactUpsert``, ``Drop`` or ``Reject``.

Who uses them: ``consumer.core.decode`` builds ``Event``; ``consumer.core.mapping`` builds outcomes;
the engine coalesces ``ContactUpsert`` values (``merged_with``) and sends ``payload()``; ``Reason``
values are the (bounded) label of drop/reject counters and the reason on dead-letter records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final, NamedTuple


class Reason(StrEnum):
    """Why a record was dropped or rejected. A closed set: it is a metric label."""

    # drops: valid input that is deliberately not sent
    NOT_ROUTED = "not_routed"  # no integration receives this topic / event
    NOT_MAPPED = "not_mapped"  # the event is not one the preset upserts on
    DUPLICATE = "duplicate"  # same messageId seen before (within the dedupe TTL and bound)
    # rejects: input that cannot be used as it is
    TOO_LARGE = "too_large"  # value over max_event_bytes, key or a field over max_field_chars
    EMPTY_VALUE = "empty_value"  # no value at all: a tombstone or a zero-length record
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_TYPE = "missing_type"
    UNKNOWN_TYPE = "unknown_type"
    WRONG_TYPE = "wrong_type"  # an envelope field (type, ids, containers) has the wrong type
    INVALID_EVENT = "invalid_event"  # structurally wrong, e.g. track without event name, no user
    NO_IDENTIFIER = "no_identifier"  # neither a usable email nor phone: HighLevel would answer 422
    # an OAuth integration's location path names no location, or one the app is not installed in
    UNKNOWN_LOCATION = "unknown_location"


class OmitReason(StrEnum):
    """Why one field of an otherwise usable event was left out of its upsert. A closed set: it
    is a metric label."""

    WRONG_TYPE = "wrong_type"  # e.g. ``firstName: true``, ``company: 12345``
    TOO_LONG = "too_long"  # a string over ``max_field_chars``
    INVALID = "invalid"  # the right type but not a usable value: email, phone, date, zone, ...
    NO_REGION = "no_region"  # a national-format phone and no country or default region to read it


class TagMode(StrEnum):
    """How tags reach HighLevel. ``upsert`` puts them in the upsert body, which REPLACES all of
    the contact's tags; ``add`` leaves them out of the body and the engine adds them with
    ``POST /contacts/{id}/tags`` after the upsert."""

    UPSERT = "upsert"
    ADD = "add"


class ConsentMode(StrEnum):
    """Which consent decisions reach HighLevel's ``dnd``. ``both``: granted -> ``dnd: false``,
    denied -> ``dnd: true``; ``deny_only``: never ``dnd: false``, so a website consent cannot
    clear a Do-Not-Disturb HighLevel recorded (e.g. from an SMS STOP)."""

    BOTH = "both"
    DENY_ONLY = "deny_only"


class PresetEvent(StrEnum):
    """Event names the Default preset upserts on (track names; identify counts as Identified).
    Configured aliases map other names onto these."""

    IDENTIFIED = "Identified"
    SIGNED_UP = "Signed Up"
    LEAD_GENERATED = "Lead Generated"


# HighLevel fields that describe the person (read from traits, remembered in profiles), in
# payload order.
IDENTITY_FIELDS: Final = (
    "email",
    "phone",
    "firstName",
    "lastName",
    "name",
    "companyName",
    "address1",
    "city",
    "state",
    "postalCode",
    "country",
    "website",
    "dateOfBirth",
    "timezone",
    "gender",
)
# Standard HighLevel upsert fields the mapping may set, in payload order. ``tags`` and
# ``customFields`` are carried separately; ``locationId`` comes from the integration.
FIELD_ORDER: Final = (*IDENTITY_FIELDS, "source")
STANDARD_FIELDS: Final = frozenset((*FIELD_ORDER, "dnd"))
# What an integration's field mappings may remove (``[integrations.fields] remove = [...]``).
REMOVABLE_FIELDS: Final = frozenset((*STANDARD_FIELDS, "tags"))

# What ``Omitted.field`` may name (a bounded metric label): the standard fields, ``tags``,
# ``customFields``, and ``traits`` for a ``context.traits`` that is not an object.
OMITTABLE_FIELDS: Final = frozenset((*REMOVABLE_FIELDS, "customFields", "traits"))

FieldValue = str | bool
CustomValue = str | int | float | tuple[str, ...]

# Shared read-only empty object for absent containers (traits, context, properties).
EMPTY_OBJECT: Final[Mapping[str, object]] = MappingProxyType({})


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Record(NamedTuple):
    """One Kafka record as the engine sees it (built by ``consumer.kafka.clients.to_record``;
    tests build them directly). ``headers`` keep the producer's order; ``timestamp_ms`` is the
    record timestamp.

    An immutable ``NamedTuple``, not a frozen dataclass like the other values: one is built
    per consumed record, and a frozen dataclass's ``__init__`` (a call of
    ``object.__setattr__`` per field) costs about three times a tuple's (``BENCHMARKS.md``,
    "Hot path").
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None

    @property
    def size(self) -> int:
        """Bytes this record holds: key, value and header values (what backpressure counts)."""
        size = len(self.key or b"") + len(self.value or b"")
        if self.headers:
            size += sum(len(name) + len(value) for name, value in self.headers)
        return size


class Event(NamedTuple):
    """One decoded input event (Segment spec shape). Containers are the decoded JSON objects,
    empty when absent; ``raw`` is the whole decoded object (custom-field source paths and
    routing by field read it). Treat all of it as read-only.

    A ``NamedTuple`` for the reason ``Record`` is one (one per consumed record); its ``repr``
    leaves out ``raw``, as a dataclass field with ``repr=False`` would: it holds personal data.
    """

    type: str
    event: str | None  # track event name
    user_id: str | None
    anonymous_id: str | None
    message_id: str | None
    traits: Mapping[str, object]
    context: Mapping[str, object]
    properties: Mapping[str, object]
    timestamp: str | None  # ``timestamp``, else ``originalTimestamp``, as sent
    raw: Mapping[str, object]

    def __repr__(self) -> str:
        return (
            f"Event(type={self.type!r}, event={self.event!r}, user_id={self.user_id!r}, "
            f"anonymous_id={self.anonymous_id!r}, message_id={self.message_id!r}, "
            f"traits={self.traits!r}, context={self.context!r}, "
            f"properties={self.properties!r}, timestamp={self.timestamp!r})"
        )

    def lookup(self, path: tuple[str, ...]) -> object | None:
        """The value at a dotted path (already split) in ``raw``, or None when any step is
        missing or not an object."""
        node: object = self.raw
        for step in path:
            if not isinstance(node, dict):
                return None
            node = node.get(step)
        return node


@dataclass(frozen=True, slots=True)
class Omitted:
    """One field of the event left out of an upsert: ``field`` is the HighLevel field (one of
    ``OMITTABLE_FIELDS``), ``path`` where the unusable value was read (``context.traits.email``,
    a custom field's source path). Never holds the value itself (it may be personal data)."""

    field: str
    reason: OmitReason
    path: str


@dataclass(frozen=True, slots=True)
class ContactUpsert:
    """One contact upsert for one integration.

    ``fields`` holds standard HighLevel fields (names in ``STANDARD_FIELDS``) that have a value;
    anything else raises ValueError at construction, so a payload can never carry a property
    HighLevel's schema does not have. ``custom_fields`` maps a HighLevel custom field id to its
    value. ``contact_key`` is the user key (record key, else userId, else anonymousId): the
    engine orders and coalesces by (integration_id, contact_key).
    """

    integration_id: str
    location_id: str
    contact_key: str
    fields: Mapping[str, FieldValue]
    tags: tuple[str, ...] = ()
    custom_fields: Mapping[str, CustomValue] = field(default_factory=lambda: MappingProxyType({}))
    tag_mode: TagMode = TagMode.UPSERT
    # Names of the events folded into this upsert ("identify", "Lead Generated"), oldest first:
    # for the debugger and logs, never sent, not part of equality.
    events: tuple[str, ...] = field(default=(), compare=False)
    # Fields the events carried but that were left out (wrong type, too long, invalid), in the
    # order found: reported (map output, metrics, debugger), never sent, not part of equality.
    omitted: tuple[Omitted, ...] = field(default=(), compare=False)
    # The messageIds of the events folded into this upsert, oldest first: for the debugger's
    # search, never sent, not part of equality.
    message_ids: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.fields) - STANDARD_FIELDS
        if unknown:
            raise ValueError(f"not HighLevel upsert fields: {sorted(unknown)}")
        # Copy into read-only views: the value must not change under the engine's feet.
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))
        object.__setattr__(self, "custom_fields", MappingProxyType(dict(self.custom_fields)))

    def payload(self) -> dict[str, object]:
        """The exact JSON body of ``POST /contacts/upsert``: ``locationId``, the fields that have
        a value in ``FIELD_ORDER``, ``tags`` (tag mode ``upsert`` and non-empty only), ``dnd``,
        then ``customFields`` as ``[{"id": ..., "field_value": ...}]`` when any."""
        body: dict[str, object] = {"locationId": self.location_id}
        fields = self.fields
        for name in FIELD_ORDER:
            value = fields.get(name)
            if value is not None:
                body[name] = value
        if self.tags and self.tag_mode is TagMode.UPSERT:
            body["tags"] = list(self.tags)
        if "dnd" in fields:
            body["dnd"] = fields["dnd"]
        if self.custom_fields:
            body["customFields"] = [
                {"id": field_id, "field_value": list(v) if isinstance(v, tuple) else v}
                for field_id, v in self.custom_fields.items()
            ]
        return body

    def tags_to_add(self) -> tuple[str, ...]:
        """Tags the engine must add with ``POST /contacts/{id}/tags`` after the upsert (tag mode
        ``add``); empty in tag mode ``upsert``, where they travel in ``payload()``."""
        return self.tags if self.tag_mode is TagMode.ADD else ()

    def merged_with(self, newer: ContactUpsert) -> ContactUpsert:
        """Fold a newer upsert for the same contact into this one: per field the newer value
        wins, tags are the union (this one's first, in order), custom fields merge by id with
        the newer value winning. Raises ValueError when ``newer`` is for another integration,
        location, contact or tag mode (the caller's bug)."""
        if (self.integration_id, self.location_id, self.contact_key, self.tag_mode) != (
            newer.integration_id,
            newer.location_id,
            newer.contact_key,
            newer.tag_mode,
        ):
            raise ValueError("merged_with: upserts for different integrations or contacts")
        tags = self.tags + tuple(t for t in dict.fromkeys(newer.tags) if t not in self.tags)
        return ContactUpsert(
            integration_id=self.integration_id,
            location_id=self.location_id,
            contact_key=self.contact_key,
            fields={**self.fields, **newer.fields},
            tags=tags,
            custom_fields={**self.custom_fields, **newer.custom_fields},
            tag_mode=self.tag_mode,
            events=self.events + newer.events,
            omitted=self.omitted + tuple(o for o in newer.omitted if o not in self.omitted),
            message_ids=self.message_ids + newer.message_ids,
        )


@dataclass(frozen=True, slots=True)
class Drop:
    """A valid record deliberately not sent. ``integration_id`` is None when the drop concerns
    the record as a whole (duplicate, not routed)."""

    reason: Reason
    integration_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that cannot be used. ``error`` is a readable explanation naming the field, e.g.
    ``traits.email: expected a string, got number``; it never quotes identity values (emails,
    phones, names), so it is safe to log and dead-letter. ``integration_id`` is None for
    record-level rejects."""

    reason: Reason
    error: str
    integration_id: str | None = None


Outcome = ContactUpsert | Drop | Reject
