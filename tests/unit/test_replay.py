"""`ghl-consumer dlq`: selection, header rewrite, commit points, summaries, and the replay loop
against fakes (the real broker is in tests/integration/test_dlq_replay.py)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pytest

from consumer.commands.dlq import replay
from consumer.commands.dlq_selection import (
    REPLAYED_FROM,
    CommitPoints,
    ReplayTarget,
    Selection,
    error_text,
    parse_time,
    render_groups,
    replay_headers,
    replay_target,
    summarise,
)
from consumer.core import deadletter
from consumer.core.deadletter import (
    ORIGINAL_TOPIC,
    Failure,
    dead_letter_headers,
    read_failure,
)
from consumer.core.events import Record
from consumer.engine.ports import Produced
from consumer.errors import ProduceFailedError

DLQ = "grp.dead-letter"
REPLAY = "grp.replay"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def original(
    offset: int,
    *,
    topic: str = "events",
    headers: tuple[tuple[str, bytes], ...] = (),
    partition: int = 0,
) -> Record:
    return Record(topic, partition, offset, b"user-1", b'{"type":"identify"}', headers)


def dead_letter(
    dlq_offset: int,
    *,
    source_offset: int = 7,
    reason: str = "rejected_by_highlevel",
    integration: str | None = "default",
    source_topic: str = "events",
    now: float = T0,
    original_headers: tuple[tuple[str, bytes], ...] = (("trace", b"abc"),),
    partition: int = 0,
    source_partition: int = 0,
) -> Record:
    source = original(
        source_offset, topic=source_topic, headers=original_headers, partition=source_partition
    )
    headers = dead_letter_headers(
        source,
        Failure(
            reason=reason,
            error="HighLevel answered 422",
            integration_id=integration,
            status=422,
            message="email must be an email",
        ),
        now=now,
    )
    return Record(DLQ, partition, dlq_offset, source.key, source.value, tuple(headers))


# -- selection -------------------------------------------------------------------------------


def test_empty_selection_takes_everything() -> None:
    assert Selection().selects(read_failure(dead_letter(0).headers))
    assert Selection().selects({})


@pytest.mark.parametrize(
    ("selection", "selected"),
    [
        (Selection(reasons=frozenset({"rejected_by_highlevel"})), True),
        (Selection(reasons=frozenset({"invalid_json", "rejected_by_highlevel"})), True),
        (Selection(reasons=frozenset({"invalid_json"})), False),
        (Selection(integration="default"), True),
        (Selection(integration="other"), False),
        (Selection(source_topic="events"), True),
        (Selection(source_topic="orders"), False),
        (Selection(since=datetime(2025, 3, 1, 12, 0, tzinfo=UTC)), True),
        (Selection(since=datetime(2025, 3, 1, 12, 0, 1, tzinfo=UTC)), False),
        (Selection(reasons=frozenset({"rejected_by_highlevel"}), integration="other"), False),
    ],
)
def test_selection_criteria_all_must_match(selection: Selection, selected: bool) -> None:
    assert selection.selects(read_failure(dead_letter(0).headers)) is selected


def test_record_level_dead_letter_has_no_integration_and_does_not_match_one() -> None:
    failure = read_failure(dead_letter(0, reason="invalid_json", integration=None).headers)
    assert not Selection(integration="default").selects(failure)
    assert Selection(reasons=frozenset({"invalid_json"})).selects(failure)


def test_since_needs_a_readable_failed_at() -> None:
    since = Selection(since=datetime(2020, 1, 1, tzinfo=UTC))
    assert not since.selects({"reason": "x"})
    assert not since.selects({"failed_at": "yesterday"})


def test_parse_time_reads_iso_with_z_and_treats_naive_as_utc() -> None:
    assert parse_time("2025-03-01T12:00:00Z") == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert parse_time("2025-03-01T12:00:00") == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert parse_time("2025-03-01T13:00:00+01:00") == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert parse_time("not a time") is None


# -- header rewrite ----------------------------------------------------------------------------


def test_replay_headers_keep_original_headers_drop_ghl_and_name_the_dead_letter() -> None:
    record = dead_letter(
        42, original_headers=(("trace", b"abc"), ("ghl.replayed_from", b"old/0/1"), ("z", b"1"))
    )
    headers = replay_headers(record, ReplayTarget("events", "events"))
    assert headers == [("trace", b"abc"), ("z", b"1"), (REPLAYED_FROM, f"{DLQ}/0/42".encode())]
    assert not [k for k, _ in headers if k.startswith("ghl.") and k != REPLAYED_FROM]
    # a copy written to the replay topic names the topic it stands for, last
    assert replay_headers(record, ReplayTarget(REPLAY, "events"))[3:] == [
        (ORIGINAL_TOPIC, b"events")
    ]


# -- replay target (issue 15, finding 4) -----------------------------------------------------


def target_of(failure: dict[str, str], **kwargs: object) -> ReplayTarget | str:
    options: dict[str, object] = {
        "to": None,
        "to_source": False,
        "configured_topics": frozenset({"events", "retry"}),
        "replay_topic": REPLAY,
    }
    options.update(kwargs)
    return replay_target(failure, **options)  # type: ignore[arg-type]


def test_a_replay_goes_to_the_replay_topic_unless_the_operator_says_to_source() -> None:
    failure = {"source.topic": "events"}
    assert target_of(failure) == ReplayTarget(REPLAY, "events")
    assert target_of(failure, to="retry") == ReplayTarget(REPLAY, "retry")
    assert target_of(failure, to_source=True) == ReplayTarget("events", "events")
    assert target_of(failure, to="retry", to_source=True) == ReplayTarget("retry", "retry")


def test_a_replay_target_must_be_a_configured_source_topic() -> None:
    refused = "topic 'payments' is not one this consumer reads (kafka.topics): refused"
    assert target_of({"source.topic": "payments"}) == refused
    assert target_of({"source.topic": "payments"}, to_source=True) == refused
    assert target_of({}) == "no ghl.source.topic header; give --to"
    # ghl.original_topic is followed only for dead letters of the replay topic
    assert target_of({"source.topic": "x", "original_topic": "events"}) == (
        "topic 'x' is not one this consumer reads (kafka.topics): refused"
    )


def test_a_replayed_copy_that_failed_again_replays_as_its_original_topic() -> None:
    """Its dead letter's source is the replay topic; ``ghl.original_topic`` (copied from the
    copy) says which source topic it stood for, still checked against the configuration."""
    again = {"source.topic": REPLAY, "original_topic": "retry"}
    assert target_of(again) == ReplayTarget(REPLAY, "retry")
    assert target_of(again, to_source=True) == ReplayTarget("retry", "retry")
    forged = {"source.topic": REPLAY, "original_topic": "payments"}
    assert target_of(forged) == (
        "topic 'payments' is not one this consumer reads (kafka.topics): refused"
    )
    assert target_of({"source.topic": REPLAY}) == "no ghl.source.topic header; give --to"


def test_a_dead_letter_of_a_replayed_copy_keeps_the_topic_it_stood_for() -> None:
    copy = Record(REPLAY, 0, 3, b"k", b"{}", ((ORIGINAL_TOPIC, b"retry"),))
    failure = read_failure(dead_letter_headers(copy, Failure(reason="x", error="y"), now=T0))
    assert (failure["source.topic"], failure["original_topic"]) == (REPLAY, "retry")
    assert target_of(failure) == ReplayTarget(REPLAY, "retry")


def test_co_partitioned_a_copy_goes_to_its_originals_partition() -> None:
    """Issue 19: with the replay topic co-partitioned with the source topic (6 partitions
    each), a copy goes to the partition of its original (``ghl.source.partition``); a copy
    that failed again was read from that same replay partition. Without the header: the
    producer's partitioner on the key. A partition the topic does not have is refused."""
    assert target_of({"source.topic": "events", "source.partition": "4"}, partitions=6) == (
        ReplayTarget(REPLAY, "events", 4)
    )
    assert target_of(
        {"source.topic": "events", "source.partition": "4"}, partitions=6, to_source=True
    ) == ReplayTarget("events", "events", 4)
    again = {"source.topic": REPLAY, "source.partition": "5", "original_topic": "events"}
    assert target_of(again, partitions=6) == ReplayTarget(REPLAY, "events", 5)
    assert target_of({"source.topic": "events"}, partitions=6) == ReplayTarget(REPLAY, "events")
    for bad in ("6", "-1", "x", "\u0663"):  # the last: an Arabic-Indic digit 3
        assert target_of({"source.topic": "events", "source.partition": bad}, partitions=6) == (
            f"ghl.source.partition {bad!r} is not a partition of events (0 to 5): refused"
        )
    # not co-partitioned: the partitioner decides, whatever the header says
    assert target_of({"source.topic": "events", "source.partition": "4"}) == (
        ReplayTarget(REPLAY, "events")
    )


# -- commit points -------------------------------------------------------------------------------


def test_commit_points_never_pass_a_failed_record_of_the_partition() -> None:
    points = CommitPoints()
    points.done(Record(DLQ, 0, 3, None, None))
    points.done(Record(DLQ, 1, 8, None, None))
    points.failed(Record(DLQ, 0, 4, None, None))
    points.done(Record(DLQ, 0, 5, None, None))
    points.done(Record(DLQ, 1, 9, None, None))
    assert points.take() == {(DLQ, 0): 4, (DLQ, 1): 10}
    points.done(Record(DLQ, 0, 6, None, None))
    assert points.take() == {}


# -- dlq list ------------------------------------------------------------------------------------


def test_summarise_groups_by_reason_integration_and_source_topic() -> None:
    failures = [
        read_failure(dead_letter(0, now=T0 + 60).headers),
        read_failure(dead_letter(1, now=T0).headers),
        read_failure(dead_letter(2, reason="invalid_json", integration=None).headers),
        read_failure(dead_letter(3, source_topic="orders", now=T0 + 120).headers),
    ]
    groups = summarise(failures)
    assert [(g.reason, g.integration, g.source_topic, g.count) for g in groups] == [
        ("rejected_by_highlevel", "default", "events", 2),
        ("invalid_json", "-", "events", 1),
        ("rejected_by_highlevel", "default", "orders", 1),
    ]
    first = groups[0]
    assert first.first_failed_at.startswith("2025-03-01T12:00:00")
    assert first.last_failed_at.startswith("2025-03-01T12:01:00")
    assert first.errors == (("HighLevel answered 422; status 422; email must be an email", 2),)


def test_error_text_is_bounded() -> None:
    text = error_text({"error": "x" * 500})
    assert len(text) == 160
    assert text.endswith("...")


def test_list_output_never_shows_keys_or_values() -> None:
    record = dead_letter(0)
    out = io.StringIO()
    groups = summarise([read_failure(record.headers)])
    render_groups(groups, 1, out)
    text = out.getvalue()
    assert "rejected_by_highlevel" in text
    assert "1 dead letter(s) in 1 group(s)" in text
    assert "user-1" not in text
    assert "identify" not in text


# -- the replay loop, against fakes ----------------------------------------------------------------


class FakeReader:
    def __init__(self, batches: list[list[Record]]) -> None:
        self.batches = list(batches)
        self.commits: list[dict[tuple[str, int], int]] = []

    async def read(self) -> list[Record]:
        return self.batches.pop(0) if self.batches else []

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.commits.append(dict(offsets))


class FakeReplayWriter:
    """Confirms every record, except those whose key is in ``refuse``; ``partitions`` notes
    the partition each was sent to (None: the partitioner's choice)."""

    def __init__(self, refuse: frozenset[int] = frozenset()) -> None:
        self.sent: list[tuple[str, bytes | None, list[tuple[str, bytes]]]] = []
        self.partitions: list[int | None] = []
        self.refuse = refuse

    async def send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> asyncio.Future[Produced]:
        future: asyncio.Future[Produced] = asyncio.get_running_loop().create_future()
        offset = len(self.sent)
        self.sent.append((topic, value, list(headers)))
        self.partitions.append(partition)
        source_offset = int(dict(headers)[REPLAYED_FROM].decode().rsplit("/", 1)[1])
        if source_offset in self.refuse:
            future.set_exception(ProduceFailedError("not delivered: broker says no"))
        else:
            future.set_result(Produced(topic, 0, offset))
        return future


async def test_replay_sends_selected_originals_and_commits_past_skipped_ones() -> None:
    batch = [
        dead_letter(0),
        dead_letter(1, reason="invalid_json", integration=None),
        dead_letter(2),
    ]
    reader, sender = FakeReader([batch]), FakeReplayWriter()
    summary = await replay(
        reader,
        sender,
        selection=Selection(reasons=frozenset({"rejected_by_highlevel"})),
        to=None,
        to_source=True,
        configured_topics=frozenset({"events"}),
        replay_topic=REPLAY,
        existing_topics=frozenset({"events"}),
        out=io.StringIO(),
    )
    assert (summary.replayed, summary.skipped, summary.failed) == (2, 1, 0)
    assert [topic for topic, _, _ in sender.sent] == ["events", "events"]
    assert sender.sent[0][2] == [("trace", b"abc"), (REPLAYED_FROM, f"{DLQ}/0/0".encode())]
    assert reader.commits == [{(DLQ, 0): 3}]


async def test_replay_commit_stops_at_the_first_failure_of_a_partition() -> None:
    batch = [
        dead_letter(0),
        dead_letter(1),  # refused by the broker
        dead_letter(2, reason="invalid_json"),  # skipped after the failure: not committed past
        dead_letter(5, partition=1),
    ]
    reader, sender = FakeReader([batch]), FakeReplayWriter(refuse=frozenset({1}))
    summary = await replay(
        reader,
        sender,
        selection=Selection(reasons=frozenset({"rejected_by_highlevel"})),
        to=None,
        to_source=True,
        configured_topics=frozenset({"events"}),
        replay_topic=REPLAY,
        existing_topics=frozenset({"events"}),
        out=io.StringIO(),
    )
    assert (summary.replayed, summary.skipped, summary.failed) == (2, 1, 1)
    assert reader.commits == [{(DLQ, 0): 1, (DLQ, 1): 6}]


async def test_replay_fails_records_without_an_existing_target_and_honours_to() -> None:
    batch = [dead_letter(0, source_topic="gone"), dead_letter(1)]
    reader, sender = FakeReader([batch]), FakeReplayWriter()
    summary = await replay(
        reader,
        sender,
        selection=Selection(),
        to=None,
        to_source=True,
        configured_topics=frozenset({"events", "retry", "gone"}),
        replay_topic=REPLAY,
        existing_topics=frozenset({"events", "retry"}),
        out=io.StringIO(),
    )
    assert (summary.replayed, summary.failed) == (1, 1)
    assert reader.commits == [{}]  # partition 0 is blocked at its first record

    reader, sender = FakeReader([batch]), FakeReplayWriter()
    summary = await replay(
        reader,
        sender,
        selection=Selection(),
        to="retry",
        to_source=True,
        configured_topics=frozenset({"events", "retry", "gone"}),
        replay_topic=REPLAY,
        existing_topics=frozenset({"events", "retry"}),
        out=io.StringIO(),
    )
    assert (summary.replayed, summary.failed) == (2, 0)
    assert [topic for topic, _, _ in sender.sent] == ["retry", "retry"]
    assert dict(summary.by_target) == {"retry": 2}


async def test_a_source_topic_the_consumer_does_not_read_is_refused_not_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 15, finding 4: anyone able to write to the dead-letter topic could name any topic
    in ``ghl.source.topic``; replay sends only to the topics the configuration names."""
    batch = [dead_letter(0, source_topic="payments"), dead_letter(1)]
    sender = FakeReplayWriter()
    for producer in (sender, None):  # the dry run refuses it too
        reader = FakeReader([batch])
        summary = await replay(
            reader,
            producer,
            selection=Selection(),
            to=None,
            to_source=True,
            configured_topics=frozenset({"events"}),
            replay_topic=REPLAY,
            existing_topics=frozenset({"events", "payments"}),
            out=io.StringIO(),
        )
        assert (summary.replayed, summary.failed) == (1, 1)
        assert dict(summary.by_target) == {"events": 1}
    assert [topic for topic, _, _ in sender.sent] == ["events"]
    assert reader.commits == []  # the dry run; the real one committed nothing past offset 0
    assert "topic 'payments' is not one this consumer reads (kafka.topics): refused" in (
        caplog.text
    )


async def test_dry_run_prints_sends_and_commits_nothing() -> None:
    reader = FakeReader([[dead_letter(0), dead_letter(1, reason="invalid_json")]])
    out = io.StringIO()
    summary = await replay(
        reader,
        None,
        selection=Selection(reasons=frozenset({"rejected_by_highlevel"})),
        to=None,
        to_source=True,
        configured_topics=frozenset({"events"}),
        replay_topic=REPLAY,
        existing_topics=frozenset({"events"}),
        out=out,
    )
    assert (summary.replayed, summary.skipped) == (1, 1)
    assert reader.commits == []
    assert out.getvalue().splitlines() == [
        f"would replay {DLQ}/0/0 -> events (reason rejected_by_highlevel, integration default, "
        "19 bytes)"
    ]


async def test_a_dead_letter_that_left_its_value_out_is_reported_not_replayed() -> None:
    """An oversize record's dead letter carries no value (``ghl.omitted``): replaying it would
    send a tombstone. It is counted as not replayable, named with the original's coordinates,
    and the group moves past it; the complete dead letters around it replay."""
    big = original(9, topic="events")
    big = Record(big.topic, big.partition, big.offset, big.key, b"x" * 5_000, big.headers)
    failure = Failure(reason="too_large", error="record is 5000 bytes, limit 4000")
    cut = deadletter.dead_letter(big, failure, now=T0, max_bytes=2_000)
    assert cut.value is None
    incomplete = Record(DLQ, 0, 1, cut.key, cut.value, cut.headers)
    reader, sender = FakeReader([[dead_letter(0), incomplete, dead_letter(2)]]), FakeReplayWriter()
    summary = await replay(
        reader,
        sender,
        selection=Selection(),
        to=None,
        to_source=True,
        configured_topics=frozenset({"events"}),
        replay_topic=REPLAY,
        existing_topics=frozenset({"events"}),
        out=io.StringIO(),
    )
    assert (summary.replayed, summary.failed, summary.unreplayable) == (2, 0, 1)
    assert all(value is not None for _, value, _ in sender.sent)
    assert reader.commits == [{(DLQ, 0): 3}]


async def test_replay_writes_to_the_replay_topic_by_default() -> None:
    """Issue 15, finding 4: the copies go to the replay topic, which only this consumer group
    reads, each naming its source topic; the source topic itself receives nothing."""
    reader, sender = FakeReader([[dead_letter(0), dead_letter(1, source_topic="retry")]]), (
        FakeReplayWriter()
    )
    out = io.StringIO()
    summary = await replay(
        reader,
        sender,
        selection=Selection(),
        to=None,
        to_source=False,
        configured_topics=frozenset({"events", "retry"}),
        replay_topic=REPLAY,
        existing_topics=frozenset({"events", "retry", REPLAY}),
        out=out,
    )
    assert (summary.replayed, summary.failed) == (2, 0)
    assert dict(summary.by_target) == {REPLAY: 2}
    assert [(topic, headers[-1]) for topic, _, headers in sender.sent] == [
        (REPLAY, (ORIGINAL_TOPIC, b"events")),
        (REPLAY, (ORIGINAL_TOPIC, b"retry")),
    ]
    assert reader.commits == [{(DLQ, 0): 2}]

    reader = FakeReader([[dead_letter(0)]])  # the replay topic is created by `run`
    summary = await replay(
        reader,
        None,
        selection=Selection(),
        to=None,
        to_source=False,
        configured_topics=frozenset({"events"}),
        replay_topic=REPLAY,
        existing_topics=frozenset({"events"}),
        out=out,
    )
    assert summary.failed == 1


async def test_co_partitioned_replay_writes_each_copy_to_its_originals_partition() -> None:
    """Issue 19: the copies land in the replay partition of their original's partition, so the
    member owning that source partition (and its profiles) reads them; a dead letter naming a
    partition the topic does not have is failed, not sent, and blocks its commit point."""
    letters = [
        dead_letter(0, source_partition=3),
        dead_letter(1, source_partition=0),
        dead_letter(0, source_partition=9, partition=1),
    ]
    reader, sender = FakeReader([letters]), FakeReplayWriter()
    summary = await replay(
        reader,
        sender,
        selection=Selection(),
        to=None,
        to_source=False,
        configured_topics=frozenset({"events"}),
        replay_topic=REPLAY,
        existing_topics=frozenset({"events", REPLAY}),
        out=io.StringIO(),
        partitions=6,
    )
    assert (summary.replayed, summary.failed) == (2, 1)
    assert sender.partitions == [3, 0]
    assert reader.commits == [{(DLQ, 0): 2}]
    out = io.StringIO()
    await replay(
        FakeReader([letters[:1]]),
        None,
        selection=Selection(),
        to=None,
        to_source=False,
        configured_topics=frozenset({"events"}),
        replay_topic=REPLAY,
        existing_topics=frozenset({"events", REPLAY}),
        out=out,
        partitions=6,
    )
    assert f"-> {REPLAY}[3] (as events) " in out.getvalue()
