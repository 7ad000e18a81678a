"""``KafkaSource`` assigned by the application (``subscribe=False``, ``follow``) against a real
broker: the partitions named are fetched from the group's committed offsets, released ones
commit in ``on_revoked`` (or nothing, when lost), commits land in the group although no member
ever subscribed, and a second source of the same group continues where the first committed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from consumer.engine.offsets import CommitPoint, OffsetMap
from consumer.errors import ConfigError
from consumer.kafka.clients import GroupProtocol, Partition
from consumer.kafka.source import KafkaSource
from tests.integration.test_kafka_source import (
    Member,
    committed_offsets,
    group_name,
    poll_for,
    poll_until,
    produce,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def followers(kafka_bootstrap: str) -> AsyncIterator[Callable[..., Awaitable[Member]]]:
    """Factory ``await followers(topic, group, protocol)``: a started source that subscribes
    to nothing; all closed at the end."""
    started: list[Member] = []

    async def make(topic: str, group: str, protocol: GroupProtocol = "classic") -> Member:
        source = KafkaSource(
            bootstrap=kafka_bootstrap,
            group_id=group,
            topics=[topic],
            group_protocol=protocol,
            subscribe=False,
        )
        member = Member(source)
        await source.start(member)
        started.append(member)
        return member

    yield make
    for member in started:
        await member.source.close()


def partitions_of(calls: list[list[Any]]) -> list[list[int]]:
    return [sorted(p.partition for p in call) for call in calls]


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
async def test_follow_assigns_exactly_the_partitions_named_and_commits_in_the_group(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    followers: Callable[..., Awaitable[Member]],
    protocol: GroupProtocol,
) -> None:
    topic, group = new_topic(partitions=3), group_name()
    produce(kafka_bootstrap, topic, {0: 5, 1: 5, 2: 5})
    first = await followers(topic, group, protocol)
    assert first.source.joined  # nothing to join: ready at once
    await poll_for([first], 1.0)
    assert first.records == []
    assert first.assigned == []

    await first.source.follow({0, 1})
    await poll_until([first], lambda: len(first.records) == 10)
    assert partitions_of(first.assigned) == [[0, 1]]
    assert all(a.committed is None for a in first.assigned[0])
    assert (first.of(0), first.of(1), first.of(2)) == ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [])
    assert first.source.assignment == {Partition(topic, 0), Partition(topic, 1)}

    # Partition 0 leaves: its final point is committed inside on_revoked, then it is unassigned.
    metadata = OffsetMap.from_offsets(2, [4]).encode()
    first.final_points = lambda gone: [CommitPoint(p.topic, p.partition, 2, metadata) for p in gone]
    await first.source.follow({1, 2})
    assert partitions_of(first.revoked) == [[0]]
    assert partitions_of(first.assigned) == [[0, 1], [2]]
    await first.source.commit([CommitPoint(topic, 1, 5, "")])  # an owned one: accepted
    await first.source.commit([CommitPoint(topic, 0, 5, "")])  # no longer owned: refused
    assert first.source.commits_refused == 1
    produce(kafka_bootstrap, topic, {0: 2, 1: 1}, tag="new-")
    await poll_until([first], lambda: len(first.of(2)) == 5 and len(first.of(1)) == 6)
    assert first.of(0) == [0, 1, 2, 3, 4]  # partition 0's new records never come back here
    committed = committed_offsets(kafka_bootstrap, group, topic, 3)
    assert committed[0] == (2, metadata)
    assert committed[1] == (5, "")

    # Lost: released without a commit (another owner may already have committed).
    first.final_points = lambda gone: [CommitPoint(p.topic, p.partition, 6, "") for p in gone]
    await first.source.follow({2}, lost=True)
    assert partitions_of(first.lost) == [[1]]
    assert len(first.revoked) == 1
    assert committed_offsets(kafka_bootstrap, group, topic, 3)[1] == (5, "")

    # close() releases what is still owned through on_revoked, as leaving a group does.
    first.final_points = lambda gone: [CommitPoint(p.topic, p.partition, 4, "") for p in gone]
    await first.source.close()
    assert partitions_of(first.revoked) == [[0], [2]]
    assert committed_offsets(kafka_bootstrap, group, topic, 3)[2] == (4, "")

    # The next source of the group starts exactly at what was committed, map included.
    second = await followers(topic, group, protocol)
    await second.source.follow(range(3))
    await poll_until([second], lambda: len(second.records) == 5 + 1 + 1)
    restored = {a.partition: a for a in second.assigned[0]}
    assert (restored[0].committed, restored[0].metadata) == (2, metadata)
    assert (restored[1].committed, restored[2].committed) == (5, 4)
    assert (second.of(0), second.of(1), second.of(2)) == ([2, 3, 4, 5, 6], [5], [4])


async def test_follow_is_refused_on_a_subscribing_source_and_needs_one_topic(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    with pytest.raises(ConfigError, match="exactly one topic"):
        KafkaSource(bootstrap=kafka_bootstrap, group_id="g", topics=["a", "b"], subscribe=False)
    source = KafkaSource(bootstrap=kafka_bootstrap, group_id=group_name(), topics=[new_topic()])
    await source.start(Member(source))
    try:
        with pytest.raises(RuntimeError, match="subscribe=False"):
            await source.follow({0})
    finally:
        await source.close()
