"""decode: every kind of bad input gets its own reason; any bytes give exactly one result."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.decode import Limits, decode
from consumer.core.events import Event, Reason, Reject

SMALL = Limits(max_event_bytes=200, max_field_chars=10)


@pytest.mark.parametrize(
    ("value", "reason", "error"),
    [
        (b"", Reason.EMPTY_VALUE, "empty value: a tombstone or zero-length record"),
        (b'{"type": "identify",', Reason.INVALID_JSON, None),
        (b'{"type": "identify", "userId": "\\ud800"}', Reason.INVALID_JSON, None),
        (
            b'{"type": "identify", "userId": "\xff"}',
            Reason.INVALID_UTF8,
            "invalid UTF-8 at byte 32",
        ),
        (b'"\xed\xa0\x80"', Reason.INVALID_UTF8, "invalid UTF-8 at byte 1"),
        (b"[1, 2]", Reason.NOT_AN_OBJECT, "expected a JSON object, got array"),
        (b"42", Reason.NOT_AN_OBJECT, "expected a JSON object, got number"),
        (b"null", Reason.NOT_AN_OBJECT, "expected a JSON object, got null"),
        (b"{}", Reason.MISSING_TYPE, "type: required"),
        (b'{"type": null}', Reason.MISSING_TYPE, "type: required"),
        (b'{"type": 7}', Reason.WRONG_TYPE, "type: expected a string, got number"),
        (b'{"type": "purchase"}', Reason.UNKNOWN_TYPE, None),
        (b'{"type": "track"}', Reason.INVALID_EVENT, "event: required for track events"),
        (
            b'{"type": "track", "event": ""}',
            Reason.INVALID_EVENT,
            "event: required for track events",
        ),
        (
            b'{"type": "track", "event": 5}',
            Reason.WRONG_TYPE,
            "event: expected a string, got number",
        ),
        (
            b'{"type": "identify", "traits": []}',
            Reason.WRONG_TYPE,
            "traits: expected an object, got array",
        ),
        (
            b'{"type": "identify", "context": "x"}',
            Reason.WRONG_TYPE,
            "context: expected an object, got string",
        ),
        (b'{"type": "track", "event": "E", "properties": 1}', Reason.WRONG_TYPE, None),
        (
            b'{"type": "identify", "userId": true}',
            Reason.WRONG_TYPE,
            "userId: expected a string, got boolean",
        ),
        (
            b'{"type": "identify", "messageId": {}}',
            Reason.WRONG_TYPE,
            "messageId: expected a string, got object",
        ),
        (
            b'{"type": "identify", "userId": "12345678901"}',
            Reason.TOO_LARGE,
            "userId: 11 characters, limit 10",
        ),
        (
            b'{"type": "track", "event": "12345678901"}',
            Reason.TOO_LARGE,
            "event: 11 characters, limit 10",
        ),
        (b" " * 201, Reason.TOO_LARGE, "record is 201 bytes, limit 200"),
    ],
)
def test_bad_input_reasons(value: bytes, reason: Reason, error: str | None) -> None:
    result = decode(value, SMALL)
    assert isinstance(result, Reject)
    assert result.reason is reason
    if error is not None:
        assert result.error == error


@pytest.mark.parametrize(("sent", "kind"), [("Identify", "identify"), ("TRACK", "track")])
def test_type_matches_ignoring_case(sent: str, kind: str) -> None:
    event = decode(orjson.dumps({"type": sent, "userId": "u1", "event": "Signed Up"}))
    assert isinstance(event, Event)
    assert event.type == kind
    assert event.event == ("Signed Up" if kind == "track" else None)


def test_unknown_type_names_the_known_ones() -> None:
    result = decode(b'{"type": "purchase"}')
    assert isinstance(result, Reject)
    assert result.error == (
        "type: unknown event type 'purchase', expected one of alias, group, identify, page, "
        "screen, track"
    )


def test_well_formed_event() -> None:
    raw = {
        "type": "track",
        "event": "Signed Up",
        "userId": 42,
        "anonymousId": "",
        "messageId": "m-1",
        "properties": {"method": "Google"},
        "context": {"traits": {"email": "a@example.com"}},
        "originalTimestamp": "2026-01-01T00:00:00Z",
    }
    event = decode(orjson.dumps(raw))
    assert isinstance(event, Event)
    assert (event.type, event.event, event.user_id, event.anonymous_id, event.message_id) == (
        "track",
        "Signed Up",
        "42",
        None,
        "m-1",
    )
    assert event.properties == {"method": "Google"}
    assert event.traits == {}
    assert event.timestamp == "2026-01-01T00:00:00Z"
    assert event.lookup(("context", "traits", "email")) == "a@example.com"
    assert event.lookup(("context", "traits", "email", "deeper")) is None
    assert event.lookup(("nothing",)) is None


def test_event_name_is_only_read_for_track() -> None:
    event = decode(b'{"type": "page", "event": 5, "timestamp": 1}')
    assert isinstance(event, Event)
    assert event.event is None
    assert event.timestamp is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_exactly_one_event_or_reject(value: bytes) -> None:
    assert isinstance(decode(value, SMALL), Event | Reject)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "event", "userId", "messageId", "traits", "context", "x"]),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
            max_leaves=6,
        ),
    )
)
def test_any_json_object_gives_exactly_one_event_or_reject(obj: dict[str, object]) -> None:
    assert isinstance(decode(orjson.dumps(obj), SMALL), Event | Reject)
