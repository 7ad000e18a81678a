"""Bad input through the engine (in-memory fakes): the corpus of tests/bad_input_corpus.py, and
hypothesis fuzzing of values, keys and headers mixed with good events on the same partitions.

Every record ends in exactly one outcome; every reject reaches the dead-letter sink with its
specific reason, a detail and its true source coordinates; the commit point reaches the end;
good events after bad ones are delivered; the engine neither raises nor logs an error.

Fuzz size: ``GHL_FUZZ_EXAMPLES`` (default 25, for CI). A long run:
``GHL_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/unit/test_bad_input.py -k fuzz -q``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.config import load_settings
from consumer.core.deadletter import DEAD_LETTER_MAX_BYTES, Failure, dead_letter
from consumer.core.dedupe import MessageDeduper
from consumer.core.events import ContactUpsert, Drop, Reason, Record, Reject
from consumer.core.mapping import Mapper
from consumer.core.profiles import InMemoryProfileStore
from tests import virtual_time
from tests.bad_input_corpus import CASES, FORGED, MAX_KEY, Case, good_event
from tests.harness.engine import TOKEN, build, committed, run_until
from tests.harness.guide import LOCATION
from tests.unit.engine_fakes import FakeHighLevel, Landed, MemorySink, MemorySource

pytestmark = pytest.mark.virtual_time

FUZZ_EXAMPLES = int(os.environ.get("GHL_FUZZ_EXAMPLES", "25"))
PRODUCER_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes
TOPIC = "events"


class LimitedSink(MemorySink):
    """A sink that refuses records over librdkafka's default ``message.max.bytes``, as the
    real producer does (outright, every time)."""

    async def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> Landed:
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > PRODUCER_MAX_BYTES:
            raise RuntimeError(f"Broker: Message size too large ({size} bytes)")
        return await super().produce(topic, key=key, value=value, headers=headers)


def kafka_headers(headers: Sequence[tuple[str, bytes | None]]) -> tuple[tuple[str, bytes], ...]:
    """Headers as ``consumer.kafka.clients.to_record`` hands them to the engine: a None value
    becomes b""."""
    return tuple((name, value or b"") for name, value in headers)


@dataclass
class Run:
    """What one engine run over ``source`` left behind."""

    source: MemorySource
    sink: LimitedSink
    highlevel: FakeHighLevel
    errors: list[logging.LogRecord]

    def dead_letters(self) -> dict[tuple[int, int], list[dict[str, bytes]]]:
        """(partition, offset) -> the dead letters naming that source record, headers as dicts
        (each ghl.* name appears once: asserted here)."""
        found: dict[tuple[int, int], list[dict[str, bytes]]] = {}
        for topic, _, _, headers in self.sink.produced:
            assert topic == "events.dlq"
            own = [name for name, _ in headers if name.startswith("ghl.")]
            assert len(own) == len(set(own)), own
            named = dict(headers)
            assert named["ghl.source.topic"] == TOPIC.encode()
            where = (int(named["ghl.source.partition"]), int(named["ghl.source.offset"]))
            found.setdefault(where, []).append(named)
        return found

    def emails(self) -> Counter[object]:
        return Counter(upsert.get("email") for upsert in self.highlevel.upserts)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def logged_errors() -> Iterator[list[logging.LogRecord]]:
    """Collect ERROR records of the consumer's loggers (a retried produce, a failed task)."""
    handler = _Errors()
    logger = logging.getLogger("consumer")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


async def run_engine(partitions: dict[int, list[Record]], limit: float = 30.0) -> Run:
    source = MemorySource({(TOPIC, p): records for p, records in partitions.items()})
    sink, highlevel = LimitedSink(), FakeHighLevel()
    engine = build(source, highlevel, sink=sink, commit_interval=0.005, poll_timeout=0.005)
    ends = {p: len(records) for p, records in partitions.items()}
    with logged_errors() as errors:
        # The commit point reaching the end of every partition is the proof that each record
        # ended in an outcome (delivered, dropped, or confirmed on the dead-letter topic).
        await run_until(
            engine, lambda: all(committed(source, TOPIC, p) == n for p, n in ends.items()), limit
        )
    return Run(source, sink, highlevel, list(errors))


def layout(cases: Sequence[Case], partitions: int) -> dict[int, list[tuple[Case | None, Record]]]:
    """Bad records spread over ``partitions``, each followed by a good identify on its
    partition; entries are (case or None for a good event, record)."""
    placed: dict[int, list[tuple[Case | None, Record]]] = {p: [] for p in range(partitions)}
    for n, case in enumerate(cases):
        log = placed[n % partitions]
        headers = kafka_headers(case.headers)
        log.append(
            (case, Record(TOPIC, n % partitions, len(log), case.record_key, case.value, headers))
        )
        key, value = good_event(n)
        log.append((None, Record(TOPIC, n % partitions, len(log), key, value)))
    return placed


# -- the corpus -----------------------------------------------------------------------------


async def test_the_corpus_through_the_engine_every_record_gets_its_outcome() -> None:
    placed = layout(CASES, partitions=3)
    run = await run_engine({p: [r for _, r in entries] for p, entries in placed.items()})

    assert run.errors == []
    letters = run.dead_letters()
    emails = run.emails()
    for p, entries in placed.items():
        for case, record in entries:
            found = letters.pop((p, record.offset), [])
            if case is None:  # the good event after each bad one
                assert found == []
                assert emails[orjson.loads(record.value or b"")["traits"]["email"]] == 1
                continue
            if case.outcome == "reject":
                [letter] = found
                assert letter["ghl.reason"].decode() == case.reason, case.name
                assert case.detail in letter["ghl.error"].decode(), case.name
                assert "ghl.integration" in letter or case.reason != "no_identifier"
            else:
                assert found == [], case.name
            if case.outcome == "upsert":
                assert emails[case.email] == 1, case.name
    assert letters == {}  # no dead letter for anything else
    assert len(run.highlevel.upserts) == sum(emails.values())
    assert TOKEN not in repr(run.sink.produced)


def _letter_of(run: Run, name: str) -> tuple[bytes | None, bytes | None, dict[str, bytes]]:
    [case] = [c for c in CASES if c.name == name]
    for _, key, value, headers in run.sink.produced:
        if key == case.record_key:
            return key, value, dict(headers)
    raise AssertionError(f"no dead letter for {name}")


async def test_dead_letters_keep_the_original_but_never_its_forged_ghl_headers() -> None:
    names = ("headers-forged-on-poison", "headers-none-values", "headers-garbage", "tombstone")
    cases = [c for c in CASES if c.name in names]
    placed = layout(cases, partitions=1)
    run = await run_engine({0: [r for _, r in placed[0]]})

    key, value, headers = _letter_of(run, "headers-forged-on-poison")
    assert (key, value) == (b"bad-headers-forged-on-poison", b"{forged")
    [(_, record)] = [(c, r) for c, r in placed[0] if c is not None and c.name == names[0]]
    assert headers["ghl.reason"] == b"invalid_json"
    assert headers["ghl.source.partition"] == b"0"
    assert headers["ghl.source.offset"] == str(record.offset).encode()
    assert "ghl.integration" not in headers
    assert "ghl.park.source" not in headers
    assert "ghl.omitted" not in headers
    assert headers["GHL.reason"] == dict(FORGED)["GHL.reason"]  # not ours: kept, never read

    _, _, headers = _letter_of(run, "headers-none-values")
    assert (headers["x-none"], headers["x-none-2"]) == (b"", b"")
    _, _, headers = _letter_of(run, "headers-garbage")
    assert headers["x-trace"] == b"\xff\x00\xfe"
    key, value, headers = _letter_of(run, "tombstone")
    assert (key, value, headers["ghl.reason"]) == (b"bad-tombstone", None, b"empty_value")


async def test_records_too_large_to_dead_letter_whole_lose_their_largest_part_not_the_partition(
) -> None:
    """A record the producer would refuse (librdkafka checks its size before sending) must not
    be retried for ever: its dead letter leaves out the largest part and says so."""
    names = ("value-over-limit", "headers-huge", "key-huge")
    cases = [c for c in CASES if c.name in names]
    run = await run_engine({0: [r for _, r in layout(cases, partitions=1)[0]]})

    key, value, headers = _letter_of(run, "value-over-limit")
    assert (key, value) == (b"bad-value-over-limit", None)
    assert headers["ghl.omitted"] == b"value (1048577 bytes)"
    assert headers["ghl.reason"] == b"too_large"
    key, value, headers = _letter_of(run, "headers-huge")
    assert (key, value) == (b"bad-headers-huge", b"{huge-header")
    assert "x-huge" not in headers
    assert headers["ghl.omitted"] == b"headers (1 headers, 950016 bytes)"
    assert run.errors == []
    assert len(run.sink.produced) == 3


def test_dead_letter_size_budget() -> None:
    record = Record("events", 1, 7, b"k" * 10, b"v" * 100, (("h", b"x" * 50),))
    failure = Failure(reason="invalid_json", error="invalid JSON at character 0")
    whole = dead_letter(record, failure, now=0.0)
    assert (whole.key, whole.value) == (record.key, record.value)
    assert whole.headers[0] == ("h", b"x" * 50)
    assert not any(name == "ghl.omitted" for name, _ in whole.headers)

    own = sum(len(k) + len(v) + 10 for k, v in whole.headers if k.startswith("ghl."))
    # Room for the key (10 bytes) and the header (61 framed) but not the value (100).
    cut = dead_letter(record, failure, now=0.0, max_bytes=own + 100 + 71 + 50)
    assert (cut.key, cut.value, cut.headers[0]) == (record.key, None, ("h", b"x" * 50))
    assert dict(cut.headers)["ghl.omitted"] == b"value (100 bytes)"

    tiny = dead_letter(record, failure, now=0.0, max_bytes=0)
    assert (tiny.key, tiny.value) == (None, None)
    assert [name for name, _ in tiny.headers if not name.startswith("ghl.")] == []
    assert dict(tiny.headers)["ghl.omitted"] == (
        b"value (100 bytes); headers (1 headers, 61 bytes); key (10 bytes)"
    )
    assert dict(tiny.headers)["ghl.source.offset"] == b"7"
    assert DEAD_LETTER_MAX_BYTES < PRODUCER_MAX_BYTES


# -- fuzzing --------------------------------------------------------------------------------

_FIELDS = ["type", "event", "userId", "anonymousId", "messageId", "traits", "context"]
_FIELDS += ["properties", "timestamp", "originalTimestamp"]
_TRAITS = ["email", "phone", "first_name", "firstName", "last_name", "lastName", "name"]
_TRAITS += ["website", "city", "state", "postal_code", "postalCode", "country", "company"]
_TRAITS += ["address"]
_CONSENT = ["canonical", "categories", "marketing", "categoryPreferences"]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson reads as integers
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(
        ["identify", "track", "page", "Signed Up", "Lead Generated", "granted", "marketing"]
    )
    | st.sampled_from(["a@example.com", " B@Example.COM ", "+1 415 555 0142", "GB"])
    | st.integers(1020, 1030).map(lambda n: "x" * n)  # around max_field_chars
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from([*_TRAITS, *_CONSENT, "name", "x"]), inner, max_size=4),
    max_leaves=8,
)
_objects = st.dictionaries(st.sampled_from([*_TRAITS, *_CONSENT, "traits", "x"]), _json_values)
_events = st.dictionaries(
    st.sampled_from(_FIELDS),
    _json_values | _objects | st.fixed_dictionaries({}, optional={
        "traits": _objects, "consent": _objects, "consentManagement": _objects
    }),
    max_size=6,
)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A good event with a few bytes replaced, removed or inserted."""
    value = bytearray(good_event(draw(st.integers(0, 9)))[1])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(value)))
        edit = draw(st.sampled_from(["replace", "delete", "insert"]))
        byte = draw(st.integers(0, 255))
        if edit == "insert":
            value.insert(at, byte)
        elif at < len(value):
            if edit == "replace":
                value[at] = byte
            else:
                del value[at]
    return bytes(value)


_small_values = [c.value for c in CASES if len(c.value or b"") < 20_000]
_values = st.one_of(
    st.none(),
    st.binary(max_size=80),
    _events.map(orjson.dumps),
    _mutated(),
    # By index: a strategy's repr holds its values, and some are long.
    st.integers(0, len(_small_values) - 1).map(_small_values.__getitem__),
)
_keys = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=24),
    st.text(max_size=12).map(str.encode),
    st.integers(MAX_KEY - 1, MAX_KEY + 1).map(lambda n: b"\xff" * n),
)
_header_names = st.sampled_from([name for name, _ in FORGED]) | st.text(max_size=10)
_headers = st.lists(st.tuples(_header_names, st.none() | st.binary(max_size=16)), max_size=4)
_bad_records = st.lists(st.tuples(_keys, _values, _headers), min_size=1, max_size=10)


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _predict(
    partitions: dict[int, list[Record]],
) -> dict[tuple[int, int], list[Reject | Drop | ContactUpsert]]:
    """Outcomes of every record from a fresh mapper, in the engine's order (a MemorySource
    batch holds partition 0's records, then partition 1's)."""
    settings_ = load_settings(None, {"GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": TOKEN})
    mapper = Mapper(
        settings_.targets(),
        profiles=InMemoryProfileStore(),
        deduper=MessageDeduper(max_entries=10_000, ttl_seconds=3600),
    )
    return {
        (p, r.offset): mapper.map_record(value=r.value or b"", key=r.key, topic=TOPIC, now=0.0)
        for p, records in sorted(partitions.items())
        for r in records
    }


@pytest.mark.timeout(60 + FUZZ_EXAMPLES)  # about 30 ms an example; room for a loaded machine
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(bad=_bad_records, spread=st.lists(st.integers(0, 1), min_size=10, max_size=10))
def test_fuzz_values_keys_and_headers_through_the_engine(
    bad: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    spread: list[int],
) -> None:
    partitions: dict[int, list[Record]] = {0: [], 1: []}
    goods: list[str] = []
    for n, (key, value, headers) in enumerate(bad):
        log = partitions[spread[n]]
        log.append(Record(TOPIC, spread[n], len(log), key, value, kafka_headers(headers)))
        good_key, good_value = good_event(1000 + n)
        log.append(Record(TOPIC, spread[n], len(log), good_key, good_value))
        goods.append(f"good{1000 + n}@example.com")
    partitions = {p: records for p, records in partitions.items() if records}
    predicted = _predict(partitions)

    run = virtual_time.run(lambda: run_engine(partitions, limit=20.0))

    assert run.errors == [], [r.getMessage() for r in run.errors]
    letters = run.dead_letters()
    known = {r.value for r in Reason}
    for where, outcomes in predicted.items():
        expected = sorted(o.reason.value for o in outcomes if isinstance(o, Reject))
        found = letters.pop(where, [])
        assert sorted(h["ghl.reason"].decode() for h in found) == expected, where
        for headers in found:
            assert headers["ghl.reason"].decode() in known
            assert headers["ghl.error"]  # a detail naming the field or the position
    assert letters == {}
    # Independent of the mapper's own answer: what the input alone decides.
    for p, records in partitions.items():
        for record in records:
            reasons = [o.reason for o in predicted[(p, record.offset)] if isinstance(o, Reject)]
            if record.key is not None and len(record.key) > MAX_KEY:
                assert reasons == [Reason.TOO_LARGE]
            elif not record.value:
                assert reasons == [Reason.EMPTY_VALUE]
            elif not _utf8(record.value):
                assert reasons == [Reason.INVALID_UTF8]
    emails = run.emails()
    assert all(emails[email] >= 1 for email in goods)  # good events after bad ones arrive
