"""``trace``'s journey: from what it read to one entry per record (no Kafka here)."""

from __future__ import annotations

import orjson

from consumer.commands.trace_journey import Findings, is_committed, journey, remap, text_line
from consumer.config import load_settings
from consumer.core.deadletter import Failure, dead_letter
from consumer.core.events import Record
from consumer.core.mapping import build_mapper
from consumer.engine.deliveries import DeliveryRecord, contact_digest
from consumer.engine.offsets import OffsetMap
from consumer.engine.parking import HEADER_REASON, HEADER_SOURCE
from consumer.observe.recent_deliveries import Hider, mask_payload
from tests.harness.guide import GUIDE_IDENTIFY, GUIDE_LEAD, LOCATION

SETTINGS = load_settings(None, {"GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": "t"})
HIDE = Hider(b"k" * 16)


def _mask(payload: object) -> dict[str, object]:
    assert isinstance(payload, dict)
    return mask_payload(payload, HIDE)


def _record(offset: int, event: object, key: bytes = b"lead-987", ms: int = 0) -> Record:
    value = event if isinstance(event, bytes) else orjson.dumps(event)
    return Record("events", 2, offset, key, value, timestamp_ms=1_765_000_000_000 + ms)


def _call(sources: tuple[tuple[str, int, int], ...], **changes: object) -> DeliveryRecord:
    fields: dict[str, object] = {
        "time": 1_765_000_001.0,
        "integration": "default",
        "location": LOCATION,
        "endpoint": "upsert",
        "status": 200,
        "verdict": "delivered",
        "trace_id": "trace-1",
        "latency_ms": 12.0,
        "attempt": 1,
        "contact": contact_digest("lead-987"),
        "sources": sources,
        "contact_id": "c1",
    }
    fields.update(changes)
    return DeliveryRecord(**fields)  # type: ignore[arg-type]


def _journey(findings: Findings) -> list[dict[str, object]]:
    mapper = build_mapper(SETTINGS.targets(), SETTINGS.mapping.options())
    return journey(findings, remap(mapper, findings.records), _mask)


def test_a_coalesced_call_names_the_other_record_and_nothing_personal_shows() -> None:
    records = [_record(10, GUIDE_IDENTIFY), _record(11, GUIDE_LEAD, ms=5)]
    call = _call((("events", 2, 10), ("events", 2, 11)))
    first, second = _journey(
        Findings(records, committed={("events", 2): (12, None)}, deliveries=[call])
    )
    assert first["committed"] is True
    assert first["time"] == "2025-12-06T05:46:40.000Z"
    [step] = first["next"]  # type: ignore[misc]
    assert step["with"] == ["events/2/11"]
    assert (step["status"], step["contactId"], step["traceId"]) == (200, "c1", "trace-1")
    [decision] = second["mapping"]  # type: ignore[misc]
    assert decision["payload"]["email"] == "s***@example.com"
    assert decision["payload"]["firstName"].startswith("hidden:")
    line = text_line(second)
    assert line.startswith("2025-12-06T05:46:40.005Z events/2/11 | upsert[default] ")
    assert "| committed | upsert 200 delivered (traceId trace-1" in line
    assert line.endswith("with events/2/10")
    assert "sam@example.com" not in line
    assert "Rivera" not in line


def test_committed_reads_the_offset_map_above_the_commit_offset() -> None:
    record = _record(7, GUIDE_IDENTIFY)
    done_above = OffsetMap.from_offsets(5, [7]).encode()
    assert is_committed(record, {("events", 2): (5, done_above)}) is True
    assert is_committed(record, {("events", 2): (5, None)}) is False
    assert is_committed(record, {("events", 2): (8, None)}) is True
    assert is_committed(record, {}) is None


def test_a_reject_points_at_its_dead_letter() -> None:
    record = _record(3, b"{not json", key=b"lead-987")
    failure = Failure(reason="invalid_json", error="invalid JSON at byte 1")
    letter = dead_letter(record, failure, now=0.0)
    stored = Record("g.dead-letter", 0, 41, letter.key, letter.value, letter.headers)
    [entry] = _journey(Findings([record], committed={("events", 2): (4, None)},
                                dead_letters=[stored]))
    assert entry["mapping"][0]["action"] == "reject"  # type: ignore[index]
    assert entry["next"] == [
        {"outcome": "dead_lettered", "reason": "invalid_json",
         "error": "invalid JSON at byte 1", "at": "g.dead-letter/0/41"}
    ]


def test_parked_then_replayed_shows_the_replayed_call() -> None:
    record = _record(9, GUIDE_IDENTIFY)
    parked = Record(
        "g.parking", 1, 30, b"default/lead-987", b"{}",
        ((HEADER_REASON, b"unauthorized"), (HEADER_SOURCE, b"events/2/9")),
    )
    refused = _call((("events", 2, 9),), status=401, verdict="unauthorized", contact_id=None)
    replayed = _call((("g.parking", 1, 30),), attempt=1, time=1_765_000_100.0)
    [entry] = _journey(
        Findings([record], committed={("events", 2): (10, None)}, deliveries=[refused, replayed],
                 parked=[parked], parking_committed={1: 31})
    )
    steps = entry["next"]
    assert [(s["outcome"], s.get("verdict")) for s in steps] == [  # type: ignore[union-attr]
        ("call", "unauthorized"), ("parked", None), ("call", "delivered")
    ]
    assert steps[1] == {  # type: ignore[index]
        "outcome": "parked", "reason": "unauthorized", "at": "g.parking/1/30", "replayed": True
    }
    assert steps[2]["replayed"] is True  # type: ignore[index]


def test_done_without_a_delivery_record_is_said_and_undone_is_pending() -> None:
    records = [_record(1, GUIDE_IDENTIFY), _record(2, {**GUIDE_IDENTIFY, "messageId": "m2"})]
    done, undone = _journey(Findings(records, committed={("events", 2): (2, None)}))
    assert done["next"] == [{"outcome": "no_delivery_record"}]
    assert undone["next"] == [{"outcome": "pending"}]
    assert "no delivery record names its call" in text_line(done)


def test_the_text_report_ends_with_the_highlevel_contacts() -> None:
    import io

    from consumer.commands.trace import write

    out = io.StringIO()
    result = {
        "records": [],
        "highlevel": [
            {"integration": "default", "by": "email", "status": 200,
             "contact": {"email": "s***@example.com"}, "differs": ["firstName"]},
            {"integration": "legacy", "by": "phone", "status": 401, "error": "Invalid JWT"},
            {"integration": "other", "skipped": "OAuth integration"},
        ],
    }
    write(result, out, as_json=False)
    assert out.getvalue().splitlines() == [
        'HighLevel [default] by email: {"email":"s***@example.com"}; differs: firstName',
        "HighLevel [legacy]: 401 Invalid JWT",
        "HighLevel [other]: not looked up (OAuth integration)",
    ]
