"""The Event Debugger's memory: the most recent deliveries per integration, masked.

Answers the operator's question "did this event reach HighLevel, with what payload, and what
did HighLevel answer?". The engine calls ``RecentDeliveries.record`` after every HighLevel answer;
``consumer.observe.web`` serves ``recent`` as JSON and streams new entries to the page.

Guarantees:

* Bounded: at most ``capacity`` entries per configured integration (oldest evicted first);
  recording for an integration that is not configured raises ValueError.
* Masked: an entry never holds an email or phone in clear. ``email`` / ``phone`` in the payload
  go through ``consumer.core.normalise.mask_email`` / ``mask_phone``; HighLevel's message and
  the error text have every email-like and phone-like substring masked the same way.
* Personal data hidden unless ``show_personal_data``: every other payload field except
  ``NEVER_PERSONAL`` (names, addresses, company, birth date, ...), every custom field's value
  (its id stays) and the contact key (a user id, anonymous id or email) become ``hidden:`` and
  8 hex digits of a hash keyed per instance (``Hider``): equal values show equal tags, so the
  operator can follow one person, but a value cannot be read back or confirmed by hashing a
  guess. With ``show_personal_data`` they are kept as sent (email and phone still masked).
* Tokens are never passed in: ``record`` takes no credentials.

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
from typing import Final

from consumer.core.events import Omitted
from consumer.core.normalise import mask_email, mask_phone, mask_text
from consumer.highlevel.verdicts import Answer

MAX_EVENT_NAMES: Final = 10  # distinct event names kept per entry; ``event_count`` counts all
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
        }


Subscriber = Callable[[DeliveryEntry], None]


class RecentDeliveries:
    """Ring buffers of ``DeliveryEntry``, one per configured integration (see module doc)."""

    def __init__(
        self,
        *,
        integrations: Iterable[str],
        capacity: int = 200,
        show_personal_data: bool = False,
        hash_key: bytes | None = None,
    ) -> None:
        """``show_personal_data``: keep names, addresses, custom values and contact keys as
        sent; ``hash_key``: the hidden values' hash key (default: random per instance)."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._buffers: dict[str, deque[DeliveryEntry]] = {
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
    ) -> DeliveryEntry:
        """Remember one HighLevel request and its answer; masks before storing. ``events``: the
        names of the events folded into the request (``identify``, ``Lead Generated`` ...);
        ``attempts``: this request's attempt number (1 for the first); ``omitted``: fields of
        the events left out of the payload (names and reasons only). Raises ValueError for an
        integration that is not configured."""
        buffer = self._buffers.get(integration)
        if buffer is None:
            raise ValueError(f"not a configured integration: {integration!r}")
        entry = DeliveryEntry(
            seq=next(self._seq),
            at=now,
            integration=integration,
            location_id=location_id,
            endpoint=endpoint,
            events=tuple(itertools.islice(dict.fromkeys(events), MAX_EVENT_NAMES)),
            event_count=len(events),
            contact_key=mask_text(contact_key) if self._hide is None else self._hide(contact_key),
            payload=mask_payload(payload, self._hide),
            outcome=str(answer.verdict),
            status=answer.status,
            message=mask_text(answer.message),
            trace_id=answer.trace_id,
            error=None if answer.error is None else mask_text(answer.error),
            latency_ms=round(answer.latency_s * 1000, 1),
            attempts=attempts,
            omitted=tuple((o.field, o.reason.value, o.path) for o in omitted),
        )
        buffer.append(entry)
        self._last_seq = entry.seq
        for subscriber in list(self._subscribers):
            subscriber(entry)
        return entry

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
            buffers: Iterable[deque[DeliveryEntry]] = self._buffers.values()
        else:
            buffers = [self._buffers.get(integration, deque())]
        entries = [
            e
            for buffer in buffers
            for e in buffer
            if e.seq > after and (outcome is None or e.outcome == outcome)
        ]
        entries.sort(key=lambda e: e.seq, reverse=True)
        return entries if limit is None else entries[:limit]

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with each new entry; returns the function that unsubscribes."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe
