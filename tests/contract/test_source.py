"""The source contract the engine relies on, checked on the in-memory source of the engine
unit tests and on ``KafkaSource`` with a real broker (``cluster`` is parametrised): whatever
the engine tests prove on the fake holds for Kafka only as far as these pass on both."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from consumer.engine.offsets import CommitPoint
from tests.contract.conftest import PARTITIONS, Cluster, Member

Members = Callable[..., Awaitable[Member]]


def values(partition: int, start: int, stop: int) -> list[bytes]:
    return [f"{partition}:{i}".encode() for i in range(start, stop)]


async def test_records_of_a_partition_arrive_in_offset_order(
    cluster: Cluster, members: Members
) -> None:
    for partition in range(PARTITIONS):
        await cluster.produce(partition, values(partition, 0, 30))
    member = await members()
    await member.poll_until(lambda: len(member.records) >= 30 * PARTITIONS)
    assert len(member.records) == 30 * PARTITIONS
    for partition in range(PARTITIONS):
        mine = [r for r in member.records if r.partition == partition]
        assert [r.offset for r in mine] == list(range(30))
        assert [r.value for r in mine] == values(partition, 0, 30)


async def test_a_partition_is_assigned_before_any_of_its_records_arrives(
    cluster: Cluster, members: Members
) -> None:
    for partition in range(PARTITIONS):
        await cluster.produce(partition, values(partition, 0, 5))
    member = await members()
    await member.poll_until(lambda: len(member.records) >= 5 * PARTITIONS)
    assigned: set[tuple[str, int]] = set()
    for what, tp in member.log:
        if what == "assigned":
            assigned.add(tp)
        else:
            assert what != "record" or tp in assigned, f"a record of {tp} before its assignment"
    assert assigned == {(cluster.topic, p) for p in range(PARTITIONS)}
    # A group without commits: consumption starts where the reset policy says.
    assert {(a.committed, a.metadata) for a in member.assigned.values()} == {(None, None)}


async def test_a_paused_partition_returns_nothing_until_resumed(
    cluster: Cluster, members: Members
) -> None:
    for partition in range(PARTITIONS):
        await cluster.produce(partition, values(partition, 0, 5))
    member = await members()
    await member.poll_until(lambda: len(member.records) >= 5 * PARTITIONS)
    paused = (cluster.topic, 0)
    await member.source.pause([paused])
    for partition in range(PARTITIONS):
        await cluster.produce(partition, values(partition, 5, 10))
    others = range(1, PARTITIONS)
    await member.poll_until(
        lambda: all(len(member.offsets(cluster.topic, p)) == 10 for p in others)
    )
    await member.poll_for(1.0)  # time enough for the paused partition's records to show
    assert member.offsets(*paused) == list(range(5))
    await member.source.resume([paused])
    await member.poll_until(lambda: len(member.offsets(*paused)) >= 10)
    assert member.offsets(*paused) == list(range(10))
    assert [r.value for r in member.records if r.partition == 0] == values(0, 0, 10)


async def test_a_partition_paused_as_it_is_assigned_returns_nothing_until_resumed(
    cluster: Cluster, members: Members
) -> None:
    # What the engine does while it restores a new partition's profiles in the background.
    for partition in range(PARTITIONS):
        await cluster.produce(partition, values(partition, 0, 5))
    member = await members(pause_on_assign={0})
    others = range(1, PARTITIONS)
    await member.poll_until(
        lambda: all(len(member.offsets(cluster.topic, p)) == 5 for p in others)
    )
    await member.poll_for(1.0)  # time enough for the paused partition's records to show
    assert member.offsets(cluster.topic, 0) == []
    await member.source.resume([(cluster.topic, 0)])
    await member.poll_until(lambda: len(member.offsets(cluster.topic, 0)) >= 5)
    assert member.offsets(cluster.topic, 0) == list(range(5))


async def test_a_new_member_starts_at_the_committed_offset_with_its_metadata(
    cluster: Cluster, members: Members
) -> None:
    await cluster.produce(0, values(0, 0, 10))
    first = await members()
    await first.poll_until(lambda: len(first.offsets(cluster.topic, 0)) >= 10)
    await first.source.commit([CommitPoint(cluster.topic, 0, 6, "done:8")])
    await first.source.close()
    second = await members()
    await second.poll_until(lambda: len(second.offsets(cluster.topic, 0)) >= 4)
    assignment = second.assigned[(cluster.topic, 0)]
    assert (assignment.committed, assignment.metadata) == (6, "done:8")
    assert second.offsets(cluster.topic, 0) == [6, 7, 8, 9]


async def test_close_revokes_every_owned_partition_and_commits_made_then_hold(
    cluster: Cluster, members: Members
) -> None:
    for partition in range(PARTITIONS):
        await cluster.produce(partition, values(partition, 0, 4))
    first = await members()
    await first.poll_until(lambda: len(first.records) >= 4 * PARTITIONS)
    first.on_revoke_commit = [CommitPoint(cluster.topic, p, 3, f"p{p}") for p in range(PARTITIONS)]
    await first.source.close()
    assert sorted(first.revoked) == [(cluster.topic, p) for p in range(PARTITIONS)]
    assert first.log[-PARTITIONS:] == [("revoked", tp) for tp in first.revoked]
    second = await members()
    await second.poll_until(lambda: len(second.records) >= PARTITIONS)
    assert {tp: (a.committed, a.metadata) for tp, a in second.assigned.items()} == {
        (cluster.topic, p): (3, f"p{p}") for p in range(PARTITIONS)
    }
    assert sorted((r.partition, r.offset) for r in second.records) == [
        (p, 3) for p in range(PARTITIONS)
    ]
