"""What the ``dlq`` commands decide, pure: which dead letters a selection takes
(``Selection``), where a copy goes (``replay_target``), the headers of a replayed copy
(``replay_headers``), how far the replay group
may commit (``CommitPoints``), and the ``dlq list`` summary (``summarise``, ``render_groups``).
The commands and the replay loop that read and write Kafka are ``consumer.commands.dlq``.

A dead letter's failure is its ``ghl.*`` headers with the prefix removed
(``consumer.core.deadletter.read_failure``); nothing here reads a key or a value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TextIO

from consumer.core.deadletter import HEADER_PREFIX, ORIGINAL_TOPIC, REPLAYED_FROM
from consumer.core.events import Record

_MAX_ERRORS_SHOWN: Final = 3
_MAX_TEXT: Final = 160


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command works on; an empty selection takes every record. All
    given criteria must match. ``since``: ``ghl.failed_at`` at or after it (a record without
    a readable ``failed_at`` does not match)."""

    reasons: frozenset[str] = frozenset()
    integration: str | None = None
    source_topic: str | None = None
    since: datetime | None = None

    def selects(self, failure: Mapping[str, str]) -> bool:
        """``failure``: the record's ``ghl.*`` headers, prefix removed (``read_failure``)."""
        if self.reasons and failure.get("reason") not in self.reasons:
            return False
        if self.integration is not None and failure.get("integration") != self.integration:
            return False
        if self.source_topic is not None and failure.get("source.topic") != self.source_topic:
            return False
        if self.since is not None:
            failed_at = parse_time(failure.get("failed_at", ""))
            if failed_at is None or failed_at < self.since:
                return False
        return True


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time as an aware datetime (no zone = UTC), or None when unreadable."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    """Where a dead letter's copy is written (``topic``) and the source topic it stands for
    (``original``, routed as such by ``ghl-consumer run``); equal with ``--to-source``.
    ``partition``: the partition it is written to, or None for the producer's partitioner on
    its key."""

    topic: str
    original: str
    partition: int | None = None


def not_read(topic: str) -> str:
    """Why a topic is refused as a replay's source topic. The name is printed with repr: a
    forged header may hold any characters."""
    return f"topic {topic!r} is not one this consumer reads (kafka.topics)"


def replay_target(
    failure: Mapping[str, str],
    *,
    to: str | None,
    to_source: bool,
    configured_topics: frozenset[str],
    replay_topic: str,
    partitions: int | None = None,
) -> ReplayTarget | str:
    """Where the copy of the dead letter with ``failure`` (its ``read_failure`` headers) goes,
    or why it cannot be replayed (text). Its source topic is ``to``, else its
    ``ghl.source.topic``, else, for a copy read from ``replay_topic`` that failed again, the
    ``ghl.original_topic`` it was routed as; it must be one of ``configured_topics``. The copy
    is written to ``replay_topic``, which only this consumer group reads, or into the source
    topic itself with ``to_source`` (every consumer group of that topic then reads it).

    ``partitions``, given when the replay topic is co-partitioned with the source topic (that
    many partitions each): the copy goes to the partition its original was read from,
    ``ghl.source.partition`` (for a copy that failed again, the replay partition it was read
    from: the same number); without that header, to the producer's partitioner on its key.
    A partition that is not a number below ``partitions`` is refused."""
    source = failure.get("source.topic")
    if source == replay_topic:
        source = failure.get("original_topic")
    original = to or source
    if original is None:
        return "no ghl.source.topic header; give --to"
    if original not in configured_topics:
        return f"{not_read(original)}: refused"
    topic = original if to_source else replay_topic
    raw = failure.get("source.partition")
    if partitions is None or raw is None:
        return ReplayTarget(topic, original)
    if not (raw.isascii() and raw.isdigit() and int(raw) < partitions):
        return (
            f"ghl.source.partition {raw[:16]!r} is not a partition of {original} "
            f"(0 to {partitions - 1}): refused"
        )
    return ReplayTarget(topic, original, int(raw))


def replay_headers(record: Record, target: ReplayTarget) -> list[tuple[str, bytes]]:
    """The headers of a dead letter's replayed copy: the original record's own headers in
    their order (every ``ghl.*`` header removed), then ``ghl.replayed_from``, then, for a copy
    written to the replay topic, ``ghl.original_topic``."""
    headers = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
    headers.append((REPLAYED_FROM, f"{record.topic}/{record.partition}/{record.offset}".encode()))
    if target.topic != target.original:
        headers.append((ORIGINAL_TOPIC, target.original.encode()))
    return headers


def where(record: Record) -> str:
    """``topic/partition/offset``: how reports name a record."""
    return f"{record.topic}/{record.partition}/{record.offset}"


@dataclass(slots=True)
class CommitPoints:
    """Per partition, the next offset the replay group may commit: past every record that is
    finished (re-sent and confirmed, or skipped), never past a failed one."""

    _next: dict[tuple[str, int], int] = field(default_factory=dict)
    _blocked: set[tuple[str, int]] = field(default_factory=set)

    def done(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        if tp not in self._blocked:
            self._next[tp] = record.offset + 1

    def failed(self, record: Record) -> None:
        self._blocked.add((record.topic, record.partition))

    def take(self) -> dict[tuple[str, int], int]:
        """The points gathered since the last ``take``."""
        points, self._next = self._next, {}
        return points


@dataclass(frozen=True, slots=True)
class Group:
    """Dead letters sharing a reason, integration and source topic (``dlq list``)."""

    reason: str
    integration: str
    source_topic: str
    count: int
    first_failed_at: str
    last_failed_at: str
    errors: tuple[tuple[str, int], ...]  # (error text, count), most frequent first


def error_text(failure: Mapping[str, str]) -> str:
    """One line describing why: the error, HighLevel's status and message when present. These
    headers name fields, never their values (``consumer.core.deadletter``)."""
    parts = [failure.get("error", "")]
    if "status" in failure:
        parts.append(f"status {failure['status']}")
    if "message" in failure:
        parts.append(failure["message"])
    text = "; ".join(p for p in parts if p)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def summarise(failures: Iterable[Mapping[str, str]]) -> list[Group]:
    """Group dead letters (their ``read_failure`` headers) by (reason, integration, source
    topic), largest group first."""
    counts: Counter[tuple[str, str, str]] = Counter()
    errors: dict[tuple[str, str, str], Counter[str]] = {}
    times: dict[tuple[str, str, str], list[str]] = {}
    for failure in failures:
        key = (
            failure.get("reason", "-"),
            failure.get("integration", "-"),
            failure.get("source.topic", "-"),
        )
        counts[key] += 1
        errors.setdefault(key, Counter())[error_text(failure)] += 1
        failed_at = failure.get("failed_at")
        if failed_at:
            span = times.setdefault(key, [failed_at, failed_at])
            span[0], span[1] = min(span[0], failed_at), max(span[1], failed_at)
    return [
        Group(
            reason=key[0],
            integration=key[1],
            source_topic=key[2],
            count=count,
            first_failed_at=times.get(key, ["-", "-"])[0],
            last_failed_at=times.get(key, ["-", "-"])[1],
            errors=tuple(errors[key].most_common(_MAX_ERRORS_SHOWN)),
        )
        for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def render_groups(groups: Sequence[Group], total: int, out: TextIO) -> None:
    """The ``dlq list`` table."""
    header = ("REASON", "INTEGRATION", "SOURCE TOPIC", "COUNT", "FIRST FAILED", "LAST FAILED")
    rows = [
        (g.reason, g.integration, g.source_topic, str(g.count), g.first_failed_at, g.last_failed_at)
        for g in groups
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)
    print(f"{total} dead letter(s) in {len(groups)} group(s)", file=out)
    for g in groups:
        for text, count in g.errors:
            print(f"  {g.reason} / {g.integration} / {g.source_topic}: {count} x {text}", file=out)


@dataclass(slots=True)
class ReplaySummary:
    """Counts of one replay (``failed`` records stop their partition's commit point;
    ``unreplayable`` ones, incomplete copies, do not)."""

    replayed: int = 0
    skipped: int = 0
    failed: int = 0
    unreplayable: int = 0
    by_target: Counter[str] = field(default_factory=Counter)
