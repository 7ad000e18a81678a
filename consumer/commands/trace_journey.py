"""The journey ``ghl-consumer trace`` prints: from what it read (``Findings``) to one entry per
source record, oldest first, and the one-line text of each. No I/O: ``consumer.commands.trace``
reads Kafka and HighLevel, this module decides what it means.

An entry (the ``--json`` object; the text line says the same)::

    {"topic", "partition", "offset", "time",         # ISO 8601, UTC, ms
     "mapping": [{"action": "upsert", "integration", "payload", "omitted"?, "addTags"?}
                 | {"action": "drop", "reason", "integration"?}
                 | {"action": "reject", "reason", "error", "integration"?}],
     "committed": true | false | null,               # null: the group has no commit there
     "next": [{"outcome": "call", "endpoint", "status", "verdict", "traceId", "attempt",
               "contactId", "latencyMs", "time", "with": ["topic/p/o", ...], "replayed"?}
              | {"outcome": "dead_lettered", "reason", "error", "at"}
              | {"outcome": "parked", "reason", "at", "replayed"}
              | {"outcome": "dropped"}
              | {"outcome": "no_delivery_record"}     # done, but no record names its call
              | {"outcome": "pending"}]}              # not done yet

The mapping is the Mapper's decision re-run on the person's records, in order, starting from an
empty profile store and deduper: profile fields merged from records outside the window read
are missing from the payload shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from consumer.core.deadletter import read_failure
from consumer.core.events import ContactUpsert, Drop, Outcome, Record
from consumer.core.mapping import Mapper
from consumer.core.normalise import mask_text
from consumer.engine.deliveries import DeliveryRecord
from consumer.engine.offsets import OffsetMap
from consumer.engine.parking import HEADER_REASON, HEADER_SOURCE

Where = tuple[str, int, int]  # topic, partition, offset
Masker = Callable[[Mapping[str, object]], dict[str, object]]


@dataclass(frozen=True, slots=True)
class Findings:
    """What ``trace`` read. ``committed``: the consumer group's (offset, metadata) per source
    partition read; ``parking_committed``: the parking group's offset per parking partition."""

    records: Sequence[Record]
    committed: Mapping[tuple[str, int], tuple[int, str | None]] = field(default_factory=dict)
    deliveries: Sequence[DeliveryRecord] = ()
    dead_letters: Sequence[Record] = ()
    parked: Sequence[Record] = ()
    parking_committed: Mapping[int, int] = field(default_factory=dict)


def where_text(where: Where) -> str:
    return f"{where[0]}/{where[1]}/{where[2]}"


def iso(ms: float | None) -> str | None:
    """``ms`` since the epoch as ISO 8601 UTC, to the millisecond."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def oldest_first(records: Iterable[Record]) -> list[Record]:
    """By record time, then topic, partition, offset (a partition's order is kept)."""
    return sorted(
        records, key=lambda r: (r.timestamp_ms or 0, r.topic, r.partition, r.offset)
    )


def remap(mapper: Mapper, records: Sequence[Record]) -> list[list[Outcome]]:
    """The mapper's outcomes for each of ``records`` (in this order), as ``run`` decides them."""
    return [
        mapper.map_record(
            value=record.value or b"",
            key=record.key,
            topic=record.topic,
            now=(record.timestamp_ms or 0) / 1000,
            origin=(record.topic, record.partition, record.offset),
        )
        for record in records
    ]


def is_committed(
    record: Record, committed: Mapping[tuple[str, int], tuple[int, str | None]]
) -> bool | None:
    """Whether the group's commit covers ``record``: below the committed offset, or in the
    offset map above it. None when the group has no commit for its partition."""
    point = committed.get((record.topic, record.partition))
    if point is None:
        return None
    offset, metadata = point
    return record.offset < offset or record.offset in OffsetMap.decode(
        metadata, commit_offset=offset
    )


def journey(
    findings: Findings, outcomes: Sequence[Sequence[Outcome]], mask: Masker
) -> list[dict[str, object]]:
    """One entry per record of ``findings.records`` (``outcomes`` in the same order); payloads
    and errors shown through ``mask`` / ``mask_text`` (see the module docstring)."""
    calls: dict[Where, list[DeliveryRecord]] = {}
    for call in sorted(findings.deliveries, key=lambda c: c.time):
        for source in call.sources:
            calls.setdefault(source, []).append(call)
    letters: dict[Where, Record] = {}
    for letter in findings.dead_letters:
        failure = read_failure(letter.headers)
        try:
            source = (
                failure["source.topic"],
                int(failure["source.partition"]),
                int(failure["source.offset"]),
            )
        except (KeyError, ValueError):
            continue
        letters[source] = letter
    parkings: dict[Where, list[Record]] = {}
    for parked in findings.parked:
        for name, value in parked.headers:
            if name == HEADER_SOURCE:
                topic, _, rest = value.decode("utf-8", "replace").rpartition("/")
                topic, _, partition = topic.rpartition("/")
                if partition.isdigit() and rest.isdigit():
                    parkings.setdefault((topic, int(partition), int(rest)), []).append(parked)
    entries = []
    for record, outs in zip(findings.records, outcomes, strict=True):
        where = (record.topic, record.partition, record.offset)
        committed = is_committed(record, findings.committed)
        entries.append(
            {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "time": iso(record.timestamp_ms),
                "mapping": [_decision(outcome, mask) for outcome in outs],
                "committed": committed,
                "next": _next(
                    where, outs, committed, calls, letters, parkings, findings.parking_committed
                ),
            }
        )
    return entries


def _decision(outcome: Outcome, mask: Masker) -> dict[str, object]:
    if isinstance(outcome, ContactUpsert):
        decision: dict[str, object] = {
            "action": "upsert",
            "integration": outcome.integration_id,
            "payload": mask(outcome.payload()),
        }
        if outcome.omitted:
            decision["omitted"] = [
                {"field": o.field, "reason": o.reason.value, "path": o.path}
                for o in outcome.omitted
            ]
        if outcome.tags_to_add():
            decision["addTags"] = list(outcome.tags_to_add())
        return decision
    if isinstance(outcome, Drop):
        decision = {"action": "drop", "reason": outcome.reason.value}
    else:
        decision = {
            "action": "reject",
            "reason": outcome.reason.value,
            "error": mask_text(outcome.error),
        }
    if outcome.integration_id is not None:
        decision["integration"] = outcome.integration_id
    return decision


def _call(call: DeliveryRecord, where: Where, *, replayed: bool) -> dict[str, object]:
    shown: dict[str, object] = {
        "outcome": "call",
        "endpoint": call.endpoint,
        "status": call.status,
        "verdict": call.verdict,
        "traceId": call.trace_id,
        "attempt": call.attempt,
        "contactId": call.contact_id,
        "latencyMs": call.latency_ms,
        "time": iso(call.time * 1000),
        "with": [where_text(s) for s in call.sources if s != where],
    }
    if replayed:
        shown["replayed"] = True
    return shown


def _next(
    where: Where,
    outcomes: Sequence[Outcome],
    committed: bool | None,
    calls: Mapping[Where, list[DeliveryRecord]],
    letters: Mapping[Where, Record],
    parkings: Mapping[Where, list[Record]],
    parking_committed: Mapping[int, int],
) -> list[dict[str, object]]:
    steps: list[dict[str, object]] = [
        _call(call, where, replayed=False) for call in calls.get(where, ())
    ]
    for parked in parkings.get(where, ()):
        reason = dict(parked.headers).get(HEADER_REASON, b"").decode("utf-8", "replace")
        at = (parked.topic, parked.partition, parked.offset)
        replayed = parking_committed.get(parked.partition, 0) > parked.offset
        steps.append(
            {"outcome": "parked", "reason": reason, "at": where_text(at), "replayed": replayed}
        )
        steps.extend(_call(call, at, replayed=True) for call in calls.get(at, ()))
    letter = letters.get(where)
    if letter is not None:
        failure = read_failure(letter.headers)
        steps.append(
            {
                "outcome": "dead_lettered",
                "reason": failure.get("reason"),
                "error": mask_text(failure.get("error", "")),
                "at": where_text((letter.topic, letter.partition, letter.offset)),
            }
        )
    if steps:
        return steps
    if all(isinstance(outcome, Drop) for outcome in outcomes):
        return [{"outcome": "dropped"}]
    if committed:
        return [{"outcome": "no_delivery_record"}]
    return [{"outcome": "pending"}]


def text_line(entry: Mapping[str, object]) -> str:
    """The one-line form of a ``journey`` entry."""
    where = f"{entry['topic']}/{entry['partition']}/{entry['offset']}"
    state = entry["committed"]
    committed = "no commit" if state is None else "committed" if state else "not committed"
    mapping = "; ".join(_decision_text(d) for d in _dicts(entry["mapping"]))
    going = "; ".join(_next_text(n) for n in _dicts(entry["next"]))
    return f"{entry['time']} {where} | {mapping} | {committed} | {going}"


def _dicts(value: object) -> list[Mapping[str, object]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _decision_text(decision: Mapping[str, object]) -> str:
    integration = f"[{decision['integration']}]" if "integration" in decision else ""
    action = f"{decision['action']}{integration}"
    if decision["action"] == "upsert":
        payload = decision["payload"]
        fields = (
            " ".join(f"{k}={_short(v)}" for k, v in payload.items() if k != "locationId")
            if isinstance(payload, Mapping)
            else ""
        )
        omitted = _dicts(decision.get("omitted"))
        left_out = (
            " omitted " + ",".join(f"{o['field']}({o['reason']})" for o in omitted)
            if omitted
            else ""
        )
        return f"{action} {fields}{left_out}"
    if decision["action"] == "drop":
        return f"{action} {decision['reason']}"
    return f"{action} {decision['reason']}: {decision['error']}"


def _short(value: object) -> str:
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def _next_text(step: Mapping[str, object]) -> str:
    outcome = step["outcome"]
    if outcome == "call":
        others = step["with"]
        coalesced = f" with {','.join(others)}" if isinstance(others, list) and others else ""
        replay = "replayed " if step.get("replayed") else ""
        return (
            f"{replay}{step['endpoint']} {step['status']} {step['verdict']} "
            f"(traceId {step['traceId']}, attempt {step['attempt']}, "
            f"contact {step['contactId']}, {step['time']}){coalesced}"
        )
    if outcome == "parked":
        state = "replayed" if step["replayed"] else "not replayed yet"
        return f"parked ({step['reason']}) at {step['at']}, {state}"
    if outcome == "dead_lettered":
        return f"dead-lettered ({step['reason']}: {step['error']}) at {step['at']}"
    if outcome == "no_delivery_record":
        return "done, but no delivery record names its call (lost in a crash, or expired)"
    return str(outcome)
