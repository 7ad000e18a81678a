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
==========================  ===========================================================

Secrets never reach these records: the engine passes no token here, and HighLevel's answers
do not echo the Authorization header. Pure: the caller supplies the time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from consumer.events import Record

REJECTED_BY_HIGHLEVEL: Final = "rejected_by_highlevel"
"""Reason for a delivery HighLevel answered with 400 / 422 (or another non-retryable 4xx)."""

HEADER_PREFIX: Final = "ghl."


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """Why a record is dead-lettered."""

    reason: str
    error: str
    integration_id: str | None = None
    status: int | None = None
    message: str | None = None
    trace_id: str | None = None


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
    ]
    headers.extend(
        (HEADER_PREFIX + name, str(value).encode()) for name, value in fields if value is not None
    )
    return headers


def read_failure(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """The ``ghl.*`` headers of a dead-letter record as text, prefix removed (for replay and
    inspection tools)."""
    return {
        k.removeprefix(HEADER_PREFIX): v.decode("utf-8", "replace")
        for k, v in headers
        if k.startswith(HEADER_PREFIX)
    }
