"""The replay topic co-partitioned with the source topic (issue 19, ``[profiles] state_dir``
over one source topic), against a real broker: start-up creates it with the source topic's
partition count and refuses one with another count; ``dlq replay`` writes each copy to its
original's partition; and with two members each replayed copy is read, delivered and committed
by the member owning its original partition (whose profiles it needs)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from consumer.core.deadletter import REJECTED_BY_HIGHLEVEL, Failure
from consumer.core.events import Record
from consumer.errors import ConfigError
from consumer.kafka.admin import CoPartition, TopicSpec, start_up
from consumer.sandbox import run_sandbox
from tests.integration.consumer_harness import (
    ProcessLog,
    committed_offsets,
    end_offsets,
    metrics_url,
    run_command,
    start_consumer,
    stop_process,
)
from tests.integration.test_dlq_replay import dlq, put_dead_letters

pytestmark = pytest.mark.integration

LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-co-partitioned-token"
PARTITIONS = 6


def partition_count(bootstrap: str, topic: str, seconds: float = 10.0) -> int | None:
    """The topic's partition count once the broker's metadata shows it (None: not within
    ``seconds``; a topic just created may take a moment to appear)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + seconds
    while True:
        found = admin.list_topics(timeout=30).topics.get(topic)
        if found is not None and found.error is None:
            return len(found.partitions)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


async def test_start_up_creates_the_replay_topic_with_the_source_count_and_refuses_another(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    source = new_topic(partitions=PARTITIONS)
    replays = f"replays-{uuid.uuid4().hex[:8]}"
    rule = CoPartition(replays, source, "why it is so")

    async def start(
        *, create_topics: bool = True, rules: tuple[CoPartition, ...] = (rule,)
    ) -> None:
        await start_up(
            kafka_bootstrap,
            create=[TopicSpec(replays)],
            uses=[],
            create_topics=create_topics,
            timeout_s=30,
            co_partitioned=rules,
        )

    await start()
    assert partition_count(kafka_bootstrap, replays) == PARTITIONS
    await start()  # existing, with the right count: accepted
    await start(create_topics=False)

    wrong = new_topic(partitions=2)
    refused = CoPartition(wrong, source, "why it is so")
    for create_topics in (True, False):
        with pytest.raises(ConfigError) as caught:
            await start(create_topics=create_topics, rules=(refused,))
        assert str(caught.value) == (
            f"topic {wrong} has 2 partition(s), topic {source} has 6: {wrong} must have 6 (why "
            "it is so); recreate it with 6 partitions once its records are handled (or, if it "
            "has fewer, add partitions)"
        )
    gone = f"gone-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError, match=f"topic {gone} does not exist: {replays} must have"):
        await start(rules=(CoPartition(replays, gone, "why"),))

    # `ghl-consumer run` itself: exit 2, one line naming both topics and the setting
    config = tmp_path / "config.toml"
    config.write_text(f'[profiles]\nstate_dir = "{tmp_path}"\n')
    code, _, err = await run_command(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": source,
            "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
            "KAFKA_REPLAY_TOPIC": wrong,
            "GHL_LOCATION_ID": LOCATION,
            "GHL_ACCESS_TOKEN": TOKEN,
        },
        "run",
        "--config",
        str(config),
        seconds=60,
    )
    assert code == 2, err
    assert f"topic {wrong} has 2 partition(s), topic {source} has 6: {wrong} must have 6" in err
    assert "profiles.state_dir is set" in err


def group_members(bootstrap: str, group: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [future] = admin.describe_consumer_groups([group], request_timeout=30).values()
    return len(future.result().members)


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as response:
        return await response.text()


def owned(metrics: str, topic: str) -> frozenset[int]:
    """The event partitions a member owns, from its per-partition gauges."""
    return frozenset(
        int(found.group(1))
        for line in metrics.splitlines()
        if line.startswith("ghl_partition_incomplete{")
        and f'topic="{topic}"' in line
        and (found := re.search(r'partition="(\d+)"', line))
    )


def consumed(metrics: str, topic: str) -> int:
    prefix = f'ghl_events_consumed_total{{topic="{topic}"}} '
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return int(float(lines[0][len(prefix) :])) if lines else 0


@pytest.mark.slow
async def test_two_members_each_read_the_copies_of_the_partitions_they_own(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Two members over 6 source partitions. ``dlq replay`` puts 2**p copies in replay
    partition p (each dead letter's original was in source partition p), so the number of
    replay records a member consumed tells exactly which replay partitions it read: it must be
    the sum over the source partitions it owns. Every copy is delivered, and committed in the
    replay group, which no member ever joined (the main group never holds a replay partition)."""
    source, dead = new_topic(partitions=PARTITIONS), new_topic()
    group = f"co-{uuid.uuid4().hex[:8]}"
    replays = f"{group}.replay"  # created by the members at start-up, co-partitioned
    config = tmp_path / "config.toml"
    config.write_text(f'[profiles]\nstate_dir = "{tmp_path / "state"}"\n')
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": source,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DEAD_LETTER_TOPIC": dead,
        "GHL_LOCATION_ID": LOCATION,
        "GHL_ACCESS_TOKEN": TOKEN,
    }
    rejected = Failure(reason=REJECTED_BY_HIGHLEVEL, error="HighLevel answered 422", status=422)
    letters = []
    for partition in range(PARTITIONS):
        for n in range(2**partition):
            user = f"user-{partition}-{n}"
            value = orjson.dumps(
                {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}}
            )
            letters.append((Record(source, partition, n, user.encode(), value), rejected))
    total = len(letters)  # 63

    async with (
        run_sandbox(locations={LOCATION: TOKEN}) as sandbox,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        run_env = {**env, "GHL_API_BASE_URL": sandbox.url}
        members = [
            ProcessLog(await start_consumer(run_env, "--config", str(config))) for _ in range(2)
        ]
        try:
            async with asyncio.timeout(60):
                for member in members:
                    await member.wait_for("metrics on http://")
            urls = [metrics_url(member) for member in members]
            async with asyncio.timeout(90):  # both joined, the partitions shared between them
                while True:
                    owners = [owned(await scrape(http, url), source) for url in urls]
                    if all(owners) and sorted(owners[0] | owners[1]) == list(range(6)):
                        break
                    for member in members:
                        assert member.process.returncode is None, member.text()[-3000:]
                    await asyncio.sleep(0.5)
            assert not owners[0] & owners[1]
            assert partition_count(kafka_bootstrap, replays) == PARTITIONS

            await put_dead_letters(kafka_bootstrap, dead, letters)
            code, out, err = await dlq(env, "replay", "--config", str(config))
            assert code == 0, out + err
            assert f"replayed {total} ({replays}: {total})" in out
            expected = {p: 2**p for p in range(PARTITIONS)}
            assert end_offsets(kafka_bootstrap, replays, PARTITIONS) == expected

            async with asyncio.timeout(90):
                while committed_offsets(kafka_bootstrap, replays, replays, 6) != expected:
                    for member in members:
                        assert member.process.returncode is None, member.text()[-3000:]
                    await asyncio.sleep(0.3)
            contacts = sandbox.state.locations[LOCATION].contacts.values()
            emails = {contact.fields["email"] for contact in contacts}
            assert emails == {f"user-{p}-{n}@example.com" for p in range(6) for n in range(2**p)}
            for url, mine in zip(urls, owners, strict=True):
                metrics = await scrape(http, url)
                assert owned(metrics, source) == mine  # no rebalance meanwhile
                assert consumed(metrics, replays) == sum(2**p for p in mine)
            assert committed_offsets(kafka_bootstrap, group, replays, 6) == {
                p: -1001 for p in range(6)
            }
            assert group_members(kafka_bootstrap, replays) == 0  # assigned, never subscribed
            assert group_members(kafka_bootstrap, group) == 2
        finally:
            codes = [await stop_process(member.process) for member in members]
            logs = [await asyncio.wait_for(member.finished(), 30) for member in members]
    assert codes == [0, 0], [member.text()[-3000:] for member in members]
    assert logs == [0, 0]
    for member in members:
        assert TOKEN not in member.text()
