"""consumer.engine.backpressure: which partitions pause and resume, from plain counts."""

from __future__ import annotations

from dataclasses import dataclass

from consumer.engine.backpressure import Backpressure, Decision

LIMITS = Backpressure(max_buffered=100, max_buffered_per_partition=10, max_buffered_bytes=1_000)


@dataclass(frozen=True)
class Load:
    partition: int
    incomplete: int = 0
    over: bool = False
    resumable: bool = True
    topic: str = "events"

    def over_budget(self) -> bool:
        return self.over

    def may_resume(self) -> bool:
        return self.resumable


def tp(partition: int) -> tuple[str, int]:
    return ("events", partition)


def test_nothing_changes_below_every_limit() -> None:
    loads = [Load(0, incomplete=9), Load(1)]
    assert LIMITS.decide(loads, set(), buffered=99, buffered_bytes=999) == Decision()


def test_a_full_partition_pauses_alone() -> None:
    loads = [Load(0, incomplete=10), Load(1, incomplete=3)]
    decision = LIMITS.decide(loads, set(), buffered=13, buffered_bytes=100)
    assert decision == Decision(pause=(tp(0),))


def test_a_partition_near_its_metadata_budget_pauses() -> None:
    loads = [Load(0, over=True), Load(1)]
    assert LIMITS.decide(loads, set(), buffered=0, buffered_bytes=0).pause == (tp(0),)


def test_every_partition_pauses_at_the_record_or_byte_limit() -> None:
    loads = [Load(0), Load(1), Load(2)]
    by_records = LIMITS.decide(loads, {tp(1)}, buffered=100, buffered_bytes=0)
    assert by_records == Decision(pause=(tp(0), tp(2)))  # one already paused is left out
    by_bytes = LIMITS.decide(loads, set(), buffered=0, buffered_bytes=1_000)
    assert by_bytes.pause == (tp(0), tp(1), tp(2))


def test_a_paused_partition_resumes_only_when_everything_is_back_at_half() -> None:
    paused = {tp(0)}
    assert LIMITS.decide([Load(0, incomplete=5)], paused, buffered=50, buffered_bytes=500) == (
        Decision(resume=(tp(0),))
    )
    for buffered, held, incomplete in ((51, 0, 0), (0, 501, 0), (0, 0, 6)):
        load = Load(0, incomplete=incomplete)
        assert LIMITS.decide([load], paused, buffered=buffered, buffered_bytes=held) == Decision()


def test_a_paused_partition_waits_for_room_in_its_offset_map() -> None:
    loads = [Load(0, resumable=False)]
    assert LIMITS.decide(loads, {tp(0)}, buffered=0, buffered_bytes=0) == Decision()


def test_between_the_marks_a_paused_partition_stays_paused() -> None:
    # Hysteresis: 7 of 10 neither pauses an unpaused partition nor resumes a paused one.
    loads = [Load(0, incomplete=7), Load(1, incomplete=7)]
    assert LIMITS.decide(loads, {tp(0)}, buffered=14, buffered_bytes=0) == Decision()
