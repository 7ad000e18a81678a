"""What a dead-letter record carries: the original key and value, unchanged, and headers saying
where it came from and why it could not be delivered.

Headers (all UTF-8 text), after the original record's own headers:

==========================  ===========================================================
``ghl.reason``              the closed reason (``invalid_json``, ``rejected_by_highlevel``...)
``ghl.error``               readable detail naming the field (never an identity value)
``ghl.integration``         integration id (absent for record-level rejects)
``ghl.status``              HighLevel's HTTP status (delivery rejects only)
``ghl.message``             HighLevel's error message (delivery rejects only)
``ghl.trace_id``            HighLevel's traceId (delivery rejects only)
``ghl.source.topic``        where the record was read
``ghl.source.partition``
``ghl.source.offset``
``ghl.failed_at``           ISO 8601 UTC time of the decision
``ghl.omitted``             what was left out to fit the size budget (see below), if any
``ghl.original_topic``      a copy read from the replay topic: the topic it was routed as
==========================  ===========================================================

Only the dead letter's own ``ghl.*`` headers are written: any ``ghl.*`` header on the original
record is dropped, so input can never spoof the reason or the source coordinates that
``ghl-consumer audit`` and ``dlq replay`` read. (``ghl.original_topic`` is the one taken from
the record: ``dlq replay`` follows it only for dead letters of the replay topic, and only to a
topic of ``kafka.topics``.)

Size: a dead letter must fit one produce request (librdkafka refuses a record over its
``message.max.bytes``, 1,000,000 by default, outright, and retrying it would stall the
partition for ever). Over ``DEAD_LETTER_MAX_BYTES`` the largest of value, original headers and
key are left out, largest first, until it fits; ``ghl.omitted`` names them with their sizes.
The original stays readable at its source coordinates until retention removes it.

Secrets never reach these records: the engine passes no token here, and HighLevel's answers
do not echo the Authorization header. Pure: the caller supplies the time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from consumer.core.events import Record

REJECTED_BY_HIGHLEVEL: Final = "rejected_by_highlevel"
"""Reason for a delivery HighLevel answered with 400 / 422 (or another non-retryable 4xx)."""

HEADER_PREFIX: Final = "ghl."

REPLAYED_FROM: Final = HEADER_PREFIX + "replayed_from"
"""Header naming the dead letter a replayed record was copied from: ``<topic>/<p>/<offset>``
(written by ``ghl-consumer dlq replay``)."""

ORIGINAL_TOPIC: Final = HEADER_PREFIX + "original_topic"
"""Header of a copy ``dlq replay`` wrote to the replay topic (``kafka.replay_topic``): the
source topic the copy stands for. ``ghl-consumer run`` routes the copy as a record of that topic
(``routing.topics``), and refuses it unless it is one of ``kafka.topics``."""

DEAD_LETTER_MAX_BYTES: Final = 900_000
"""Budget of one dead letter's key + value + headers: under librdkafka's default
``message.max.bytes`` (1,000,000), with room for the record's framing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """Why a record is dead-lettered."""

    reason: str
    error: str
    integration_id: str | None = None
    status: int | None = None
    message: str | None = None
    trace_id: str | None = None


_MAX_REPLAYED_FROM_BYTES: Final = 300
"""``<topic>/<partition>/<offset>``: a Kafka topic name has at most 249 characters."""


def replayed_from(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The ``ghl.replayed_from`` header of a record (the dead letter it is a replay of, as
    text), or None when it is not a replay. Used to tell a replay from a duplicate
    (``consumer.core.dedupe``), which remembers it for the TTL: a value longer than any
    ``dlq replay`` writes (``_MAX_REPLAYED_FROM_BYTES``) is not a replay's, so None."""
    for name, value in headers:
        if name == REPLAYED_FROM:
            if len(value) > _MAX_REPLAYED_FROM_BYTES:
                return None
            return value.decode("utf-8", "backslashreplace")
    return None


def original_topic(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The ``ghl.original_topic`` header of a record as text, or None when absent."""
    for name, value in headers:
        if name == ORIGINAL_TOPIC:
            return value.decode("utf-8", "backslashreplace")
    return None


def dead_letter_headers(
    record: Record, failure: Failure, *, now: float
) -> list[tuple[str, bytes]]:
    """The headers of ``record``'s dead-letter copy (see the module docstring). Headers of the
    original that use the ``ghl.`` prefix are dropped, so a replayed-then-failed record does
    not carry two reasons."""
    headers = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
    fields: list[tuple[str, str | int | None]] = [
        ("reason", failure.reason),
        ("error", failure.error),
        ("integration", failure.integration_id),
        ("status", failure.status),
        ("message", failure.message),
        ("trace_id", failure.trace_id),
        ("source.topic", record.topic),
        ("source.partition", record.partition),
        ("source.offset", record.offset),
        ("failed_at", datetime.fromtimestamp(now, UTC).isoformat()),
        # a replayed copy that failed again: so that replaying it again routes it the same way
        ("original_topic", original_topic(record.headers)),
    ]
    headers.extend(
        (HEADER_PREFIX + name, str(value).encode()) for name, value in fields if value is not None
    )
    return headers


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The record to produce to the dead-letter topic."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def _headers_size(headers: Sequence[tuple[str, bytes]]) -> int:
    # Name + value + their length varints (at most 5 bytes each) per header, as Kafka frames them.
    return sum(
        len(name.encode("utf-8", "surrogatepass")) + len(value) + 10
        for name, value in headers
    )


def dead_letter(
    record: Record, failure: Failure, *, now: float, max_bytes: int = DEAD_LETTER_MAX_BYTES
) -> DeadLetter:
    """``record``'s dead-letter copy: its key, value and non-``ghl.`` headers, then the
    ``ghl.*`` headers of ``dead_letter_headers``; over ``max_bytes`` the largest parts are
    left out until it fits (see the module docstring). Never raises."""
    headers = dead_letter_headers(record, failure, now=now)
    original = [h for h in headers if not h[0].startswith(HEADER_PREFIX)]
    own = headers[len(original) :]
    sizes = {
        "value": len(record.value or b""),
        "headers": _headers_size(original),
        "key": len(record.key or b""),
    }
    budget = max_bytes - _headers_size(own) - 100  # 100: the ghl.omitted header itself
    total = sum(sizes.values())
    left_out: list[str] = []
    for name, size in sorted(sizes.items(), key=lambda part: -part[1]):
        if total <= budget or size == 0:
            break
        total -= size
        left_out.append(name)
    if not left_out:
        return DeadLetter(record.key, record.value, tuple(headers))
    omitted = "; ".join(
        f"{name} ({f'{len(original)} headers, ' if name == 'headers' else ''}{sizes[name]} bytes)"
        for name in left_out
    )
    return DeadLetter(
        key=None if "key" in left_out else record.key,
        value=None if "value" in left_out else record.value,
        headers=(
            *(() if "headers" in left_out else original),
            *own,
            (HEADER_PREFIX + "omitted", omitted.encode()),
        ),
    )


def read_failure(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """The ``ghl.*`` headers of a dead-letter record as text, prefix removed (for replay and
    inspection tools)."""
    return {
        k.removeprefix(HEADER_PREFIX): v.decode("utf-8", "replace")
        for k, v in headers
        if k.startswith(HEADER_PREFIX)
    }
