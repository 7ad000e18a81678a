"""The bad-input corpus: records a producer can write that the consumer must survive, each with
the outcome it must get. Used by tests/unit/test_bad_input.py (through the engine, with fakes)
and tests/integration/test_bad_input.py (through ``ghl-consumer run`` and a real broker).

Outcomes, per case:

- ``reject``: dead-lettered with ``reason`` and a ``ghl.error`` containing ``detail``;
- ``drop``: completed without a call or a dead letter (``reason`` says why);
- ``upsert``: a contact with ``email`` reaches HighLevel (a binary key is still a key).

Choices the corpus pins down (README: "Bad input"):

- Duplicate object keys: the last one wins, as in orjson and the SDKs' own ``JSON.parse``;
  the consumer and ``ghl-consumer audit`` decode alike, so they never disagree.
- A leading UTF-8 byte order mark is refused (``invalid_json``, detail names the BOM).
- ``null`` where an object belongs (traits, context, properties) counts as absent.
- Keys: any bytes; not UTF-8 -> backslash escapes; empty -> the event's userId; over
  ``max_field_chars`` (1,024) bytes -> ``too_large``, so a key cannot grow memory unbounded.
- A field of the wrong type, too long or invalid is left out (the contact still upserts);
  only the envelope and "no usable email or phone" reject.
- Header values are never read; ``ghl.*`` headers on input are dropped from dead letters, so
  they cannot spoof the reason or the source coordinates the audit and replay read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import orjson

from consumer.core.decode import Limits

LIMITS: Final = Limits()
MAX_KEY: Final = LIMITS.max_field_chars

Outcome = Literal["reject", "drop", "upsert"]
Headers = tuple[tuple[str, bytes | None], ...]

FORGED: Final[Headers] = (
    ("ghl.reason", b"rejected_by_highlevel"),
    ("ghl.error", b"forged"),
    ("ghl.integration", b"other-integration"),
    ("ghl.source.topic", b"forged-topic"),
    ("ghl.source.partition", b"99"),
    ("ghl.source.offset", b"12345"),
    ("ghl.park.source", b"forged-topic/99/12345"),
    ("ghl.omitted", b"value (1 bytes)"),
    ("GHL.reason", b"case-variant: not a ghl. header, kept as is"),
)


@dataclass(frozen=True, slots=True)
class Case:
    """One bad record and the outcome it must get."""

    name: str
    value: bytes | None
    outcome: Outcome
    reason: str | None = None  # reject/drop reason
    detail: str = ""  # must appear in the dead letter's ghl.error
    key: bytes | None = None  # default: ``b"bad-<name>"``
    headers: Headers = ()
    email: str | None = None  # upsert: the contact that must reach HighLevel

    @property
    def record_key(self) -> bytes | None:
        return self.key if self.key is not None else f"bad-{self.name}".encode()


def _json(**fields: object) -> bytes:
    return orjson.dumps(fields)


def _identify(name: str, traits: dict[str, object] | None = None, **extra: object) -> bytes:
    """A valid identify whose email is ``<name>@bad.example.com``, with ``traits`` added and
    ``extra`` top-level fields."""
    all_traits = {"email": f"{name}@bad.example.com", **(traits or {})}
    return _json(**{"type": "identify", "userId": f"user-{name}", "traits": all_traits, **extra})


def _wrong(name: str, path: str, got: str, value: bytes, expected: str = "a string") -> Case:
    return Case(name, value, "reject", "wrong_type", f"{path}: expected {expected}, got {got}")


def _omitted(name: str, traits: dict[str, object] | None = None, **extra: object) -> Case:
    """An identify (or ``extra["type"]``) with a valid email and one unusable field: the field
    is left out, the contact still reaches HighLevel."""
    email = f"{name}@bad.example.com".lower()  # emails are lowercased
    return Case(name, _identify(name, traits, **extra), "upsert", email=email)


def _nested(depth: int) -> bytes:
    """An identify with a ``traits.deep`` chain making the document ``depth`` objects deep
    (orjson accepts 1,024)."""
    chain = depth - 2  # below the top object and traits
    return (
        b'{"type":"identify","userId":"deep","traits":{"email":"deep@bad.example.com","deep":'
        + b'{"a":' * chain
        + b"1"
        + b"}" * chain
        + b"}}"
    )


def _padded(name: str, total: int) -> bytes:
    """A valid identify of exactly ``total`` bytes (a long unread ``properties.pad``)."""
    head = _identify(name, properties={"pad": ""})
    pad = "x" * (total - len(head))
    value = _identify(name, properties={"pad": pad})
    assert len(value) == total
    return value


def _wide(keys: int) -> bytes:
    """A page view whose ``context`` has ``keys`` members (a wide object)."""
    return _json(type="page", userId="wide", context={f"k{i:06d}": i for i in range(keys)})


def _cases() -> list[Case]:
    over = LIMITS.max_event_bytes + 1
    cases = [
        # -- not UTF-8 / not JSON ----------------------------------------------------------
        Case(
            "utf8-invalid-byte",
            b'{"type":"identify","userId":"\xff"}',
            "reject",
            "invalid_utf8",
            "invalid UTF-8 at byte 29",
        ),
        Case(
            "utf8-overlong",
            b'{"type":"identify","traits":{"email":"\xc0\xafx@bad.example.com"}}',
            "reject",
            "invalid_utf8",
            "invalid UTF-8 at byte 38",
        ),
        Case("utf8-encoded-surrogate", b'"\xed\xa0\x80"', "reject", "invalid_utf8", "at byte 1"),
        Case(
            "latin1",
            '{"type":"identify","userId":"José"}'.encode("latin-1"),
            "reject",
            "invalid_utf8",
            "at byte 32",
        ),
        Case(
            "lone-surrogate-escape",
            b'{"type":"identify","userId":"\\ud800"}',
            "reject",
            "invalid_json",
            "no low surrogate",
        ),
        Case(
            "bom", b'\xef\xbb\xbf{"type":"identify"}', "reject", "invalid_json", "byte order mark"
        ),
        Case(
            "trailing-garbage",
            _identify("trailing") + b" x",
            "reject",
            "invalid_json",
            "unexpected content after document",
        ),
        Case(
            "two-documents",
            _identify("two") + _identify("two"),
            "reject",
            "invalid_json",
            "unexpected content after document",
        ),
        Case("truncated", _identify("truncated")[:-3], "reject", "invalid_json", "invalid JSON"),
        Case("raw-nul", b'{"type":"identify"\x00}', "reject", "invalid_json", "invalid JSON"),
        Case(
            "raw-control-char-in-string",
            b'{"type":"identify","userId":"a\x01b"}',
            "reject",
            "invalid_json",
            "invalid JSON",
        ),
        Case(
            "nan",
            b'{"type":"page","properties":{"x":NaN}}',
            "reject",
            "invalid_json",
            "unexpected character",
        ),
        Case(
            "infinity",
            b'{"type":"page","properties":{"x":Infinity}}',
            "reject",
            "invalid_json",
            "at character 33: unexpected character",
        ),
        Case(
            "minus-infinity",
            b'{"type":"page","properties":{"x":-Infinity}}',
            "reject",
            "invalid_json",
            "at character 34: no digit after sign",
        ),
        Case(
            "number-overflow",
            b'{"type":"page","properties":{"x":1e400}}',
            "reject",
            "invalid_json",
            "number is infinity",
        ),
        Case(
            "deep-over-limit",
            _nested(1025),
            "reject",
            "invalid_json",
            "depth limit exceeded",
        ),
        Case("deep-under-limit", _nested(1024), "upsert", email="deep@bad.example.com"),
        Case("deep-array", b"[" * 1025 + b"]" * 1025, "reject", "invalid_json", "depth limit"),
        # -- empty, wrong shape ------------------------------------------------------------
        Case("tombstone", None, "reject", "empty_value", "tombstone"),
        Case("zero-length", b"", "reject", "empty_value", "zero-length"),
        Case("whitespace-only", b" \n", "reject", "invalid_json", "invalid JSON"),
        Case("json-null", b"null", "reject", "not_an_object", "got null"),
        Case("json-array", b'[{"type":"identify"}]', "reject", "not_an_object", "got array"),
        Case("json-string", b'"identify"', "reject", "not_an_object", "got string"),
        Case("json-number", b"1e308", "reject", "not_an_object", "got number"),
        # -- type, ids -----------------------------------------------------------------------
        Case("no-type", _json(userId="u", traits={}), "reject", "missing_type", "type: required"),
        Case("null-type", _json(type=None), "reject", "missing_type", "type: required"),
        _wrong("type-number", "type", "number", _json(type=7)),
        _wrong("type-object", "type", "object", _json(type={"identify": True})),
        Case("unknown-type", _json(type="purchase"), "reject", "unknown_type", "'purchase'"),
        Case(  # the type matches ignoring case ("Identify" is common in the wild)
            "type-other-case",
            _json(type="IDENTIFY", userId="u-case", traits={"email": "case@bad.example.com"}),
            "upsert",
            email="case@bad.example.com",
        ),
        Case("type-empty", _json(type=""), "reject", "unknown_type", "unknown event type ''"),
        Case(
            "type-huge",
            _json(type="x" * 100_000),
            "reject",
            "unknown_type",
            "'" + "x" * 40 + "...'",
        ),
        Case(
            "track-no-event",
            _json(type="track", userId="u"),
            "reject",
            "invalid_event",
            "event: required",
        ),
        _wrong("track-event-array", "event", "array", _json(type="track", event=[])),
        _wrong("userId-bool", "userId", "boolean", _json(type="identify", userId=True)),
        _wrong("anonymousId-object", "anonymousId", "object", _json(type="page", anonymousId={})),
        _wrong("messageId-float", "messageId", "number", _json(type="page", messageId=1.5)),
        _wrong(
            "userId-beyond-int64",
            "userId",
            "number",
            b'{"type":"identify","userId":-9223372036854775809}',
        ),
        Case(
            "userId-uint64-max",
            b'{"type":"identify","userId":18446744073709551615,'
            b'"traits":{"email":"u64@bad.example.com"}}',
            "upsert",
            key=b"",
            email="u64@bad.example.com",
        ),
        Case(
            "userId-too-long",
            _json(type="identify", userId="u" * (MAX_KEY + 1)),
            "reject",
            "too_large",
            f"userId: {MAX_KEY + 1} characters, limit {MAX_KEY}",
        ),
        Case(
            "no-user-at-all",
            _json(type="identify", traits={"email": "nobody@bad.example.com"}),
            "reject",
            "invalid_event",
            "no user",
            key=b"",
        ),
        Case(
            "no-identifier",
            _json(type="identify", userId="u", traits={"first_name": "Only"}),
            "reject",
            "no_identifier",
            "neither a usable email nor phone",
        ),
        Case(
            "invalid-email-only",
            _json(type="identify", userId="u", traits={"email": "not an email"}),
            "reject",
            "no_identifier",
            "traits.email is not a valid email address",
        ),
        # -- containers ----------------------------------------------------------------------
        _wrong(
            "traits-string", "traits", "string", _json(type="identify", traits="x"), "an object"
        ),
        _wrong("context-array", "context", "array", _json(type="page", context=[]), "an object"),
        _wrong(
            "properties-number",
            "properties",
            "number",
            _json(type="track", event="Signed Up", properties=3),
            "an object",
        ),
        Case(  # on a page view: nothing to map, whatever context.traits holds
            "context-traits-string",
            _json(type="page", userId="u", context={"traits": "x"}),
            "drop",
            "not_mapped",
        ),
        Case(
            "null-containers",
            _json(
                type="identify",
                userId="nulls",
                traits=None,
                properties=None,
                context={"traits": {"email": "nulls@bad.example.com"}},
            ),
            "upsert",
            email="nulls@bad.example.com",
        ),
        # -- every identity field the mapping reads, wrong type: omitted, the event upserts --
        *(
            _omitted(f"t-{trait}-{got}", traits={trait: bad})
            for trait, got, bad in (
                ("phone", "boolean", True),
                ("phone", "array", ["+14155550142"]),
                ("first_name", "object", {}),
                ("firstName", "number", 1.5),
                ("last_name", "array", []),
                ("lastName", "boolean", False),
                ("name", "number", 0),
                ("website", "object", {"url": "x"}),
                ("city", "number", 1),
                ("state", "array", ["CA"]),
                ("postal_code", "boolean", True),
                ("postalCode", "object", {}),
                ("postalCode", "float", 94103.5),
                ("country", "number", 1),
                ("birthday", "number", 19900925),
                ("timezone", "array", []),
                ("company", "number", 5),
                ("address", "array", []),
            )
        ),
        _omitted("company-name", traits={"company": {"name": []}}),
        *(
            _omitted(f"address-{part}", traits={"address": {part: True}})
            for part in ("street", "line1", "city", "state", "postal_code", "postalCode", "country")
        ),
        _omitted("trait-too-long", traits={"first_name": "n" * 2_000}),
        Case(  # the only identifier unusable: no_identifier, naming why
            "trait-email-number",
            _json(type="identify", userId="u", traits={"email": 5}),
            "reject",
            "no_identifier",
            "traits.email has the wrong type",
        ),
        Case(
            "context-trait-email-array",
            _json(type="identify", userId="u", context={"traits": {"email": []}}),
            "reject",
            "no_identifier",
            "context.traits.email has the wrong type",
        ),
        Case(
            "trait-on-page-view",
            _json(type="page", userId="u", traits={"email": 5}),
            "drop",
            "not_mapped",
        ),
        Case(
            "phone-as-number",
            _identify("phone-number", traits={"phone": 14155550142}),
            "upsert",
            email="phone-number@bad.example.com",
        ),
        Case(
            "phone-beyond-int64",
            b'{"type":"identify","userId":"u","traits":{"phone":123456789012345678901234567890}}',
            "reject",
            "no_identifier",
            "traits.phone is not a possible phone number",
        ),
        # -- consent: a malformed source is omitted (no dnd from it) --------------------------
        _omitted("consent", context={"consent": "yes"}),
        _omitted("canonical", context={"consent": {"canonical": []}}),
        _omitted("canonical-value", context={"consent": {"canonical": {"marketing": "yes"}}}),
        _omitted("categories", context={"consent": {"categories": {"marketing": 1}}}),
        _omitted("direct", context={"consent": {"marketing": "maybe"}}),
        _omitted("preferences", context={"consent": {"categoryPreferences": 1}}),
        _omitted("management", context={"consentManagement": []}),
        _omitted("ids", context={"consentManagement": {"allowedConsentIds": "marketing"}}),
        # -- track properties ----------------------------------------------------------------
        *(
            _omitted(name, type="track", event=event, properties=properties)
            for name, event, properties in (
                ("signup-method-number", "Signed Up", {"method": 5}),
                ("lead-source-object", "Lead Generated", {"source": {}}),
                ("lead-tag-array", "Lead Generated", {"lead_tag": ["a", "b"]}),
                ("lead-email-number", "Lead Generated", {"email": 5}),
            )
        ),
        Case(
            "timestamp-number",
            _identify("timestamp", timestamp=5, originalTimestamp=[]),
            "upsert",
            email="timestamp@bad.example.com",
        ),
        # -- duplicate keys: the last one wins ---------------------------------------------
        Case(
            "duplicate-type",
            b'{"type":"identify","type":"page","userId":"dup",'
            b'"traits":{"email":"dup@bad.example.com"}}',
            "drop",
            "not_mapped",
        ),
        Case(
            "duplicate-email",
            b'{"type":"identify","userId":"dup2",'
            b'"traits":{"email":5,"email":"dup2@bad.example.com"}}',
            "upsert",
            email="dup2@bad.example.com",
        ),
        # -- sizes ---------------------------------------------------------------------------
        Case(
            "value-over-limit",
            b" " * over,
            "reject",
            "too_large",
            f"record is {over} bytes, limit {LIMITS.max_event_bytes}",
        ),
        Case(
            "value-at-limit",
            _padded("at-limit", LIMITS.max_event_bytes),
            "upsert",
            email="at-limit@bad.example.com",
        ),
        Case("wide-object", _wide(60_000), "drop", "not_mapped"),
        # -- keys ----------------------------------------------------------------------------
        Case(
            "key-invalid-utf8",
            _identify("key-utf8"),
            "upsert",
            key=b"\xff\xfeuser",
            email="key-utf8@bad.example.com",
        ),
        Case(
            "key-binary",
            _identify("key-binary"),
            "upsert",
            key=bytes(range(256)),
            email="key-binary@bad.example.com",
        ),
        Case(
            "key-empty",
            _identify("key-empty"),
            "upsert",
            key=b"",
            email="key-empty@bad.example.com",
        ),
        Case(
            "key-at-limit",
            _identify("key-at-limit"),
            "upsert",
            key=b"k" * MAX_KEY,
            email="key-at-limit@bad.example.com",
        ),
        Case(
            "key-over-limit",
            _identify("key-over"),
            "reject",
            "too_large",
            f"key: {MAX_KEY + 1} bytes, limit {MAX_KEY}",
            key=b"k" * (MAX_KEY + 1),
        ),
        Case(
            "key-huge",
            _json(type="page", userId="huge-key"),
            "reject",
            "too_large",
            f"key: 500000 bytes, limit {MAX_KEY}",
            key=b"\x00" * 500_000,
        ),
        # -- headers -------------------------------------------------------------------------
        Case(
            "headers-garbage",
            b"{garbage",
            "reject",
            "invalid_json",
            headers=(("x-trace", b"\xff\x00\xfe"), ("", b"empty name"), ("x-\u00e9", b"\x80")),
        ),
        Case(
            "headers-none-values",
            b"{none",
            "reject",
            "invalid_json",
            headers=(("x-none", None), ("x-none-2", None)),
        ),
        Case(
            "headers-many",
            b"{many",
            "reject",
            "invalid_json",
            headers=tuple((f"x-{i}", str(i).encode()) for i in range(2_000)),
        ),
        Case(
            "headers-huge",
            b"{huge-header",
            "reject",
            "invalid_json",
            headers=(("x-huge", b"h" * 950_000),),
        ),
        Case("headers-forged-on-poison", b"{forged", "reject", "invalid_json", headers=FORGED),
        Case(
            "headers-forged-on-good-event",
            _identify("forged-good"),
            "upsert",
            headers=FORGED,
            email="forged-good@bad.example.com",
        ),
    ]
    assert all(c.email is not None for c in cases if c.outcome == "upsert")
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names are unique"
    return cases


CASES: Final = tuple(_cases())


def good_event(n: int) -> tuple[bytes, bytes]:
    """(key, value) of the ``n``-th good identify, interleaved with the bad records."""
    return (
        f"good-{n}".encode(),
        _json(
            type="identify",
            userId=f"good-{n}",
            messageId=f"good-{n}",
            traits={"email": f"good{n}@example.com", "first_name": "Good"},
        ),
    )
