"""The Event Debugger's memory: the most recent deliveries per integration and the most recent
other outcomes of this member, masked.

Answers the operator's question "did this event reach HighLevel, with what payload, and what
did HighLevel answer, or why not?". The engine calls ``RecentDeliveries.record`` after every
HighLevel answer, and the ``OutcomeRecorder`` methods (``dropped``, ``rejected``,
``dead_lettered``, ``parked``, ``replayed``) for everything else; ``consumer.observe.web``
serves ``recent``, ``outcomes`` and ``search`` as JSON and streams new deliveries to the page.

Everything is kept raw and shown late: ``record`` runs once per HighLevel answer and
``dropped`` once per dropped record on the engine's hot path, so each only appends (the
request and its answer; the record, the reason, the time) to a bounded deque; masking, hiding,
decoding and formatting (``DeliveryEntry``, ``OutcomeEntry``) happen when the page asks, or at
once for a request while a subscriber (the live page) watches. Two rings of
``outcome_capacity`` each, so a flood of drops never evicts the rarer rejects, dead letters,
parked and replayed records: drops (``duplicate`` ones included), and the rest. A kept record
holds its key and value; a value over ``KEPT_VALUE_BYTES`` is not kept (its entry shows the
coordinates and the reason only), so the rings hold at most about
``2 * outcome_capacity * KEPT_VALUE_BYTES`` bytes of values.

Guarantees:

* Bounded: at most ``capacity`` entries per configured integration (oldest evicted first);
  recording for an integration that is not configured raises ValueError.
* Masked: an entry shown never holds an email or phone in clear. ``email`` / ``phone`` in the
  payload go through ``consumer.core.normalise.mask_email`` / ``mask_phone``; HighLevel's
  message and the error text have every email-like and phone-like substring masked the same
  way.
* Personal data hidden unless ``show_personal_data``: every other payload field except
  ``NEVER_PERSONAL`` (names, addresses, company, birth date, ...), every custom field's value
  (its id stays) and the contact key (a user id, anonymous id or email) become ``hidden:`` and
  8 hex digits of a hash keyed per instance (``Hider``): equal values show equal tags, so the
  operator can follow one person, but a value cannot be read back or confirmed by hashing a
  guess. With ``show_personal_data`` they are kept as sent (email and phone still masked).
* Tokens are never passed in: ``record`` takes no credentials.
* Searchable (``search``): by user key, userId, anonymousId or messageId, over what this member
  still holds; a hidden contact key is matched by hashing the query the same way.

Pure: the caller passes the wall-clock time; no I/O (the hash key is random unless given).
Subscribers are called synchronously from ``record`` (the web server's live feed uses them to
wake up). Not thread-safe: the engine and
the web server share one event loop.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from consumer.core.deadletter import Failure, original_topic
from consumer.core.decode import decode
from consumer.core.events import ContactUpsert, Event, Omitted, Record
from consumer.core.mapping import user_key_of
from consumer.core.normalise import mask_email, mask_phone, mask_text
from consumer.engine.parking import ParkReason, parked_sources
from consumer.highlevel.verdicts import Answer

MAX_EVENT_NAMES: Final = 10  # distinct event names kept per entry; ``event_count`` counts all
MAX_IDS: Final = 50  # messageIds and source records kept per delivery entry
KEPT_VALUE_BYTES: Final = 16_384  # a dropped or rejected record's value kept up to this size
OUTCOME_KINDS: Final = ("dropped", "duplicate", "rejected", "dead_lettered", "parked", "replayed")
# Upsert fields shown as sent whatever the setting: how the request was built, not who it is for.
NEVER_PERSONAL: Final = frozenset(("locationId", "tags", "source", "dnd", "dndSettings"))


@dataclass(frozen=True, slots=True, repr=False)
class Hider:
    """A personal value as ``hidden:`` + 8 hex digits of its BLAKE2b hash keyed with ``key``."""

    key: bytes

    def __call__(self, value: object) -> str:
        digest = hashlib.blake2b(str(value).encode(), key=self.key, digest_size=4)
        return f"hidden:{digest.hexdigest()}"


def mask_payload(payload: Mapping[str, object], hide: Hider | None = None) -> dict[str, object]:
    """A copy of an upsert payload fit to show: ``email`` and ``phone`` masked; with ``hide``,
    every other field but ``NEVER_PERSONAL`` hidden, and each custom field's value (its id
    kept). Without ``hide`` the other fields are kept as sent."""
    shown = dict(payload)
    email = shown.get("email")
    if isinstance(email, str):
        shown["email"] = mask_email(email)
    phone = shown.get("phone")
    if isinstance(phone, str):
        shown["phone"] = mask_phone(phone)
    if hide is None:
        return shown
    for name, value in shown.items():
        if name in NEVER_PERSONAL or name in ("email", "phone"):
            continue
        if name == "customFields" and isinstance(value, list):
            shown[name] = [_hide_custom(item, hide) for item in value]
        else:
            shown[name] = hide(value)
    return shown


def _hide_custom(item: object, hide: Hider) -> object:
    if not isinstance(item, dict):
        return hide(item)
    return {k: v if k in ("id", "key") else hide(v) for k, v in item.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryEntry:
    """One HighLevel request as the debugger shows it. ``outcome`` is the answer's verdict
    (``delivered``, ``rate_limited``, ``retry``, ``unauthorized``, ``rejected``); ``status``
    None means no HTTP answer (``error`` says why); ``at`` is wall-clock seconds."""

    seq: int
    at: float
    integration: str
    location_id: str
    endpoint: str
    events: tuple[str, ...]
    event_count: int
    contact_key: str
    payload: Mapping[str, object]
    outcome: str
    status: int | None
    message: str
    trace_id: str | None
    error: str | None
    latency_ms: float
    attempts: int
    # Fields of the events left out of the payload: (field, reason, path); never values.
    omitted: tuple[tuple[str, str, str], ...] = ()
    message_ids: tuple[str, ...] = ()  # the events' messageIds (masked text), at most MAX_IDS
    sources: tuple[str, ...] = ()  # the records folded in, "topic/partition/offset"

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (what the page and ``/debug/deliveries.json`` get)."""
        return {
            "seq": self.seq,
            "at": self.at,
            "integration": self.integration,
            "location_id": self.location_id,
            "endpoint": self.endpoint,
            "events": list(self.events),
            "event_count": self.event_count,
            "contact_key": self.contact_key,
            "payload": dict(self.payload),
            "outcome": self.outcome,
            "status": self.status,
            "message": self.message,
            "trace_id": self.trace_id,
            "error": self.error,
            "latency_ms": self.latency_ms,
            "attempts": self.attempts,
            "omitted": [{"field": f, "reason": r, "path": p} for f, r, p in self.omitted],
            "message_ids": list(self.message_ids),
            "sources": list(self.sources),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeEntry:
    """One record's outcome other than a HighLevel request, as the debugger shows it.

    ``kind`` is one of ``OUTCOME_KINDS``; ``at`` wall-clock seconds of the outcome,
    ``record_time`` the record's timestamp (seconds); ``reason`` the drop, reject, dead-letter
    or park reason; ``error`` the reject's explanation (names fields, omitted ones included,
    never values). ``contact_key`` is hidden or masked as a delivery's; ``events`` and
    ``message_ids`` are read from the record (empty when its value does not decode or was not
    kept). ``original_topic``: a ``dlq replay`` copy's source topic; ``sources``: the records a
    replayed parking record was folded from; ``status``/``message``/``trace_id``: HighLevel's
    answer, for a dead letter of a request it refused."""

    kind: str
    at: float
    topic: str
    partition: int
    offset: int
    record_time: float | None
    integration: str | None
    reason: str | None
    error: str | None
    contact_key: str | None
    events: tuple[str, ...]
    message_ids: tuple[str, ...]
    original_topic: str | None = None
    sources: tuple[str, ...] = ()
    status: int | None = None
    message: str | None = None
    trace_id: str | None = None

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (what the page and ``/debug/outcomes.json`` get)."""
        return {
            "kind": self.kind,
            "at": self.at,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "record_time": self.record_time,
            "integration": self.integration,
            "reason": self.reason,
            "error": self.error,
            "contact_key": self.contact_key,
            "events": list(self.events),
            "message_ids": list(self.message_ids),
            "original_topic": self.original_topic,
            "sources": list(self.sources),
            "status": self.status,
            "message": self.message,
            "trace_id": self.trace_id,
        }


class _RawDelivery(NamedTuple):
    """What a delivery ring keeps: ``record``'s arguments as given, and the entry's number."""

    seq: int
    at: float
    integration: str
    location_id: str
    endpoint: str
    events: Sequence[str]
    contact_key: str
    payload: Mapping[str, object]
    answer: Answer
    attempts: int
    omitted: Sequence[Omitted]
    message_ids: Sequence[str]
    sources: tuple[tuple[str, int, int], ...]  # (topic, partition, offset): never the records


# What the rings keep, raw: (kind, record, reason, integration, at, detail); detail is the
# reject's error, the dead letter's Failure, or the replayed parking record's upsert.
_Raw = tuple[str, Record, "str | None", "str | None", float, object]


@dataclass(frozen=True, slots=True)
class Search:
    """What ``RecentDeliveries.search`` found, newest first."""

    deliveries: list[DeliveryEntry]
    outcomes: list[OutcomeEntry]


Subscriber = Callable[[DeliveryEntry], None]


class RecentDeliveries:
    """Ring buffers of ``DeliveryEntry``, one per configured integration (see module doc)."""

    def __init__(
        self,
        *,
        integrations: Iterable[str],
        capacity: int = 200,
        outcome_capacity: int = 1000,
        show_personal_data: bool = False,
        hash_key: bytes | None = None,
    ) -> None:
        """``capacity``: deliveries kept per integration; ``outcome_capacity``: outcomes kept
        per ring (see the module doc); ``show_personal_data``: keep names, addresses, custom
        values and contact keys as sent; ``hash_key``: the hidden values' hash key (default:
        random per instance)."""
        if capacity < 1 or outcome_capacity < 1:
            raise ValueError("capacity and outcome_capacity must be >= 1")
        self._drops: deque[_Raw] = deque(maxlen=outcome_capacity)
        self._others: deque[_Raw] = deque(maxlen=outcome_capacity)
        self._buffers: dict[str, deque[_RawDelivery]] = {
            i: deque(maxlen=capacity) for i in integrations
        }
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._subscribers: list[Subscriber] = []
        self._hide = None if show_personal_data else Hider(hash_key or secrets.token_bytes(16))

    @property
    def show_personal_data(self) -> bool:
        return self._hide is None

    @property
    def integrations(self) -> list[str]:
        return list(self._buffers)

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest entry (0 before the first)."""
        return self._last_seq

    def record(
        self,
        *,
        integration: str,
        location_id: str,
        endpoint: str,
        events: Sequence[str],
        contact_key: str,
        payload: Mapping[str, object],
        answer: Answer,
        attempts: int,
        now: float,
        omitted: Sequence[Omitted] = (),
        message_ids: Sequence[str] = (),
        sources: Sequence[Record] = (),
    ) -> None:
        """Remember one HighLevel request and its answer (the engine's delivery path: an
        append; masking happens when an entry is shown, or now when a subscriber watches).
        ``events``: the names of the events folded into the request (``identify``, ``Lead
        Generated`` ...); ``attempts``: this request's attempt number (1 for the first);
        ``omitted``: fields of the events left out of the payload (names and reasons only);
        ``message_ids`` and ``sources``: the events' messageIds and records (the first
        ``MAX_IDS`` shown). ``payload`` and the sequences must not change afterwards. Raises
        ValueError for an integration that is not configured."""
        buffer = self._buffers.get(integration)
        if buffer is None:
            raise ValueError(f"not a configured integration: {integration!r}")
        seq = next(self._seq)
        raw = _RawDelivery(
            seq, now, integration, location_id, endpoint, events, contact_key, payload,
            answer, attempts, omitted, message_ids,
            # coordinates only: a kept record would hold its value (up to a megabyte) for as
            # long as the entry stays in the ring
            tuple((r.topic, r.partition, r.offset) for r in itertools.islice(sources, MAX_IDS)),
        )  # fmt: skip
        buffer.append(raw)
        self._last_seq = seq
        if self._subscribers:
            entry = self._delivery(raw)
            for subscriber in list(self._subscribers):
                subscriber(entry)

    def _delivery(self, raw: _RawDelivery) -> DeliveryEntry:
        """The shown (masked, hidden) entry of a kept request."""
        answer = raw.answer
        return DeliveryEntry(
            seq=raw.seq,
            at=raw.at,
            integration=raw.integration,
            location_id=raw.location_id,
            endpoint=raw.endpoint,
            events=tuple(itertools.islice(dict.fromkeys(raw.events), MAX_EVENT_NAMES)),
            event_count=len(raw.events),
            contact_key=self._show_key(raw.contact_key),
            payload=mask_payload(raw.payload, self._hide),
            outcome=str(answer.verdict),
            status=answer.status,
            message=mask_text(answer.message),
            trace_id=answer.trace_id,
            error=None if answer.error is None else mask_text(answer.error),
            latency_ms=round(answer.latency_s * 1000, 1),
            attempts=raw.attempts,
            omitted=tuple((o.field, o.reason.value, o.path) for o in raw.omitted),
            message_ids=tuple(mask_text(m) for m in itertools.islice(raw.message_ids, MAX_IDS)),
            sources=tuple(f"{topic}/{part}/{offset}" for topic, part, offset in raw.sources),
        )

    def recent(
        self,
        *,
        integration: str | None = None,
        outcome: str | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[DeliveryEntry]:
        """Entries newest first, optionally only one integration's, one outcome's, and those
        with ``seq > after``; at most ``limit``. An unknown integration gives an empty list."""
        if integration is None:
            buffers: Iterable[deque[_RawDelivery]] = self._buffers.values()
        else:
            buffers = [self._buffers.get(integration, deque())]
        kept = [
            raw
            for buffer in buffers
            for raw in buffer
            if raw.seq > after and (outcome is None or str(raw.answer.verdict) == outcome)
        ]
        kept.sort(key=lambda raw: raw.seq, reverse=True)
        return [self._delivery(raw) for raw in (kept if limit is None else kept[:limit])]

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with each new entry; returns the function that unsubscribes."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    # -- outcomes other than requests (the engine's OutcomeRecorder) ---------------------------

    def dropped(self, record: Record, reason: str, integration: str | None, now: float) -> None:
        """Keep a dropped record (the engine's hot path: a length check and an append)."""
        value = record.value  # a drop decoded, so its key is within max_field_chars
        if value is not None and len(value) > KEPT_VALUE_BYTES:
            record = _kept(record)
        self._drops.append(("dropped", record, reason, integration, now, None))

    def rejected(
        self, record: Record, reason: str, error: str, integration: str | None, now: float
    ) -> None:
        self._others.append(("rejected", _kept(record), reason, integration, now, error))

    def dead_lettered(self, record: Record, failure: Failure, now: float) -> None:
        raw = ("dead_lettered", _kept(record), failure.reason, failure.integration_id, now)
        self._others.append((*raw, failure))

    def parked(
        self, records: Sequence[Record], upsert: ContactUpsert, reason: ParkReason, now: float
    ) -> None:
        for record in records:
            self._others.append(
                ("parked", _kept(record), reason.value, upsert.integration_id, now, None)
            )

    def replayed(self, record: Record, upsert: ContactUpsert | None, now: float) -> None:
        integration = None if upsert is None else upsert.integration_id
        self._others.append(("replayed", _kept(record), None, integration, now, upsert))

    def outcomes(
        self, *, kind: str | None = None, integration: str | None = None, limit: int = 200
    ) -> list[OutcomeEntry]:
        """Outcomes newest first, optionally of one kind (``OUTCOME_KINDS``) or integration
        (record-level outcomes have none and match any); at most ``limit``. Decodes and masks
        each one it returns."""
        shown = []
        for raw in self._newest_first():
            entry = self._entry(raw)[0]
            if (kind is None or entry.kind == kind) and (
                integration is None or entry.integration in (None, integration)
            ):
                shown.append(entry)
                if len(shown) >= limit:
                    break
        return shown

    def search(self, query: str, *, limit: int = 200) -> Search:
        """The deliveries and outcomes this member still holds for ``query``: a user key (the
        record key), a userId, an anonymousId or a messageId, matched exactly. At most
        ``limit`` of each, newest first."""
        query = query.strip()
        shown_key = mask_text(query) if self._hide is None else self._hide(query)
        shown_id = mask_text(query)
        deliveries = [
            e
            for e in self.recent()
            if e.contact_key == shown_key or shown_id in e.message_ids
        ][:limit]
        outcomes = []
        for raw in self._newest_first():
            entry, identities = self._entry(raw)
            if query in identities:
                outcomes.append(entry)
                if len(outcomes) >= limit:
                    break
        return Search(deliveries=deliveries, outcomes=outcomes)

    def _newest_first(self) -> list[_Raw]:
        both = [*self._drops, *self._others]
        both.reverse()  # newest first within each ring, which the stable sort keeps for ties
        both.sort(key=lambda raw: raw[4], reverse=True)
        return both

    def _entry(self, raw: _Raw) -> tuple[OutcomeEntry, frozenset[str]]:
        """The shown entry of a kept outcome, and the raw identities it can be found by."""
        kind, record, reason, integration, at, detail = raw
        key: str | None = None
        events: tuple[str, ...] = ()
        message_ids: tuple[str, ...] = ()
        ids: set[str] = set()
        failure = detail if isinstance(detail, Failure) else None
        error = detail if isinstance(detail, str) else None if failure is None else failure.error
        if isinstance(detail, ContactUpsert):  # a parking record: its value is the upsert
            key, events, message_ids = detail.contact_key, detail.events, detail.message_ids
        elif record.value is not None and isinstance(event := decode(record.value), Event):
            key = user_key_of(record.key, event)
            label = event.event if event.type == "track" and event.event else event.type
            events = (label,)
            message_ids = () if event.message_id is None else (event.message_id,)
            ids.update(i for i in (event.user_id, event.anonymous_id) if i is not None)
        elif record.key:
            key = record.key.decode("utf-8", "backslashreplace")
        if key is not None:
            ids.add(key)
        ids.update(message_ids)
        if kind == "dropped" and reason == "duplicate":
            kind = "duplicate"
        entry = OutcomeEntry(
            kind=kind,
            at=at,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            record_time=None if record.timestamp_ms is None else record.timestamp_ms / 1000,
            integration=integration,
            reason=reason,
            error=None if error is None else mask_text(error),
            contact_key=None if key is None else self._show_key(key),
            events=tuple(mask_text(e) for e in events[:MAX_EVENT_NAMES]),
            message_ids=tuple(mask_text(m) for m in message_ids[:MAX_IDS]),
            original_topic=original_topic(record.headers) if record.headers else None,
            sources=tuple(f"{t}/{p}/{o}" for t, p, o in parked_sources(record.headers)),
            status=None if failure is None else failure.status,
            message=None if failure is None else mask_text(failure.message or ""),
            trace_id=None if failure is None else failure.trace_id,
        )
        return entry, frozenset(ids)

    def _show_key(self, key: str) -> str:
        return mask_text(key) if self._hide is None else self._hide(key)


def _kept(record: Record) -> Record:
    """``record`` without its value when that is over ``KEPT_VALUE_BYTES``, and without a key
    over it: what the outcome rings may hold."""
    value, key = record.value, record.key
    if (value is None or len(value) <= KEPT_VALUE_BYTES) and (
        key is None or len(key) <= KEPT_VALUE_BYTES
    ):
        return record
    return record._replace(
        value=value if value is None or len(value) <= KEPT_VALUE_BYTES else None,
        key=key if key is None or len(key) <= KEPT_VALUE_BYTES else None,
    )
