"""Decode step: record value bytes -> ``Event``, or a ``Reject`` saying exactly what is wrong.

Pure and total: ``decode`` never raises for any input, so the engine can dead-letter a poison
record with the reject's reason and go on. It checks the envelope only (sizes, UTF-8, JSON,
object, ``type`` (matched ignoring case), the identifiers and the top-level containers);
``consumer.core.extract`` checks the fields it reads inside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import orjson

from consumer.core.events import EMPTY_OBJECT, Event, Reason, Reject, json_type

EVENT_TYPES: Final = frozenset(("identify", "track", "page", "screen", "group", "alias"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Size limits on input. Over either -> reject ``too_large``."""

    max_event_bytes: int = 1_048_576  # Kafka's default max message size
    # Any single string the mapping reads or stores; also the record key, in bytes (it is
    # stored as the contact key).
    max_field_chars: int = 1_024


def wrong_type(path: str, expected: str, value: object) -> Reject:
    """``wrong_type`` reject naming the field: ``traits.email: expected a string, got number``."""
    return Reject(Reason.WRONG_TYPE, f"{path}: expected {expected}, got {json_type(value)}")


def too_long(path: str, value: str, limits: Limits) -> Reject:
    """``too_large`` reject for a string over ``limits.max_field_chars``."""
    return Reject(
        Reason.TOO_LARGE, f"{path}: {len(value)} characters, limit {limits.max_field_chars}"
    )


def _identifier(value: object, name: str, limits: Limits) -> str | Reject | None:
    """An id field: string or integer (some SDKs send numeric user ids); empty -> None."""
    if isinstance(value, str):
        if len(value) > limits.max_field_chars:
            return too_long(name, value, limits)
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return wrong_type(name, "a string", value)


def decode(value: bytes, limits: Limits = Limits()) -> Event | Reject:
    """Decode one record value. Never raises; returns exactly one ``Event`` or ``Reject``."""
    if not value:
        # Not invalid JSON but no event at all; the engine passes a tombstone (None) as b"".
        return Reject(Reason.EMPTY_VALUE, "empty value: a tombstone or zero-length record")
    if len(value) > limits.max_event_bytes:
        return Reject(
            Reason.TOO_LARGE, f"record is {len(value)} bytes, limit {limits.max_event_bytes}"
        )
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as bad:
            return Reject(Reason.INVALID_UTF8, f"invalid UTF-8 at byte {bad.start}")
        return Reject(Reason.INVALID_JSON, f"invalid JSON at character {exc.pos}: {exc.msg}")
    if not isinstance(obj, dict):
        return Reject(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {json_type(obj)}")

    kind = obj.get("type")
    if kind is None:
        return Reject(Reason.MISSING_TYPE, "type: required")
    if not isinstance(kind, str):
        return wrong_type("type", "a string", kind)
    if kind not in EVENT_TYPES:
        # Some SDKs and webhook sources capitalise the type ("Identify", "Track").
        kind = kind.lower()
    if kind not in EVENT_TYPES:
        shown = kind if len(kind) <= 40 else kind[:40] + "..."
        return Reject(
            Reason.UNKNOWN_TYPE,
            f"type: unknown event type {shown!r}, expected one of {', '.join(sorted(EVENT_TYPES))}",
        )

    name: str | None = None
    if kind == "track":
        raw_name = obj.get("event")
        if raw_name is None or raw_name == "":
            return Reject(Reason.INVALID_EVENT, "event: required for track events")
        if not isinstance(raw_name, str):
            return wrong_type("event", "a string", raw_name)
        if len(raw_name) > limits.max_field_chars:
            return too_long("event", raw_name, limits)
        name = raw_name

    ids: list[str | None] = []
    for id_name in ("userId", "anonymousId", "messageId"):
        id_value = obj.get(id_name)
        # Short non-empty strings, the usual case, need no further look.
        if id_value is not None and (
            type(id_value) is not str or not id_value or len(id_value) > limits.max_field_chars
        ):
            id_value = _identifier(id_value, id_name, limits)
            if isinstance(id_value, Reject):
                return id_value
        ids.append(id_value)

    containers = []
    for container_name in ("traits", "context", "properties"):
        container = obj.get(container_name)
        if container is None:
            containers.append(EMPTY_OBJECT)
        elif type(container) is dict:
            containers.append(container)
        else:
            return wrong_type(container_name, "an object", container)

    timestamp = obj.get("timestamp")
    if not isinstance(timestamp, str):
        original = obj.get("originalTimestamp")
        timestamp = original if isinstance(original, str) else None

    # Positional (type, event, user_id, anonymous_id, message_id, traits, context, properties,
    # timestamp, raw): once per consumed record, and keywords cost a third more.
    user_id, anonymous_id, message_id = ids
    traits, context, properties = containers
    return Event(
        kind, name, user_id, anonymous_id, message_id, traits, context, properties, timestamp, obj
    )
