"""Backpressure: which partitions of a feed to pause and which to resume, decided from counts.

The engine admits records faster than HighLevel takes them, so intake must stop before memory,
or a partition's commit metadata, runs out (``docs/architecture.md``, "Backpressure"):

- a partition pauses when its admitted-but-unfinished records reach
  ``max_buffered_per_partition``, or when its offset map nears the metadata budget
  (``over_budget``);
- every partition pauses when all buffered records reach ``max_buffered``, or their keys,
  values and headers reach ``max_buffered_bytes`` (a waiting record keeps its value for a dead
  letter or parking, so memory is bounded in bytes, not only in records);
- a paused partition resumes once every one of those measures is back at half its limit and its
  offset map may grow again (``may_resume``).

Pure: no I/O, no clock; the engine applies the ``Decision`` to its source after every poll.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

TopicPartition = tuple[str, int]


class PartitionLoad(Protocol):
    """What backpressure reads of one owned partition
    (``consumer.engine.offsets.PartitionOffsets`` provides it)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def incomplete(self) -> int:
        """Records admitted and not done yet."""
        ...

    def over_budget(self) -> bool:
        """True when the partition's offset map is near the metadata budget."""
        ...

    def may_resume(self) -> bool:
        """True when the offset map has room again."""
        ...


@dataclass(frozen=True, slots=True)
class Decision:
    """Partitions to pause (not paused now) and to resume (paused now), in the order given."""

    pause: tuple[TopicPartition, ...] = ()
    resume: tuple[TopicPartition, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Backpressure:
    """The limits of the module docstring; ``decide`` applies them."""

    max_buffered: int
    max_buffered_per_partition: int
    max_buffered_bytes: int

    def decide(
        self,
        partitions: Iterable[PartitionLoad],
        paused: Collection[TopicPartition],
        *,
        buffered: int,
        buffered_bytes: int,
    ) -> Decision:
        """What to change for the owned ``partitions`` of one feed, given those ``paused`` now
        and every feed's ``buffered`` records and ``buffered_bytes``. A partition is either
        paused or resumed, never both; one already in the wanted state is left out."""
        pause_all = buffered >= self.max_buffered or buffered_bytes >= self.max_buffered_bytes
        resume_ok = (
            buffered <= self.max_buffered // 2 and buffered_bytes <= self.max_buffered_bytes // 2
        )
        to_pause: list[TopicPartition] = []
        to_resume: list[TopicPartition] = []
        for partition in partitions:
            tp = (partition.topic, partition.partition)
            full = partition.incomplete >= self.max_buffered_per_partition
            if tp not in paused and (pause_all or full or partition.over_budget()):
                to_pause.append(tp)
            elif (
                tp in paused
                and resume_ok
                and partition.incomplete <= self.max_buffered_per_partition // 2
                and partition.may_resume()
            ):
                to_resume.append(tp)
        return Decision(tuple(to_pause), tuple(to_resume))
