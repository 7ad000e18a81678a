"""Partitioned profile state (``[profiles] state_dir``; docs/architecture.md, "Profiles") with
real ``ghl-consumer run`` members, a real broker and the sandbox: each member holds only the
profiles of the partitions it owns; a cooperative rebalance restores only the partitions that
moved; a member given back partitions it held before reads only the changelog's tail; a member
killed with SIGKILL rebuilds its state; a "Lead Generated" is enriched by an identify consumed
by another member; a broker killed while a member restores loses nothing; start-up refuses a
changelog whose partition count differs."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import aiohttp
import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from consumer.core.profiles import Profile
from consumer.sandbox.server import run_sandbox
from tests.harness.guide import LOCATION
from tests.integration.consumer_harness import (
    ProcessLog,
    committed_offsets,
    end_offsets,
    metrics_url,
    produce,
    run_command,
    start_consumer,
    stop_process,
)
from tests.kafka_broker import LocalBroker, create_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "pit-partitioned-token"
PARTITIONS = 6


def identify(user: str) -> tuple[bytes, bytes]:
    event = {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}}
    return user.encode(), orjson.dumps(event)


def lead(user: str) -> tuple[bytes, bytes]:
    event = {"type": "track", "userId": user, "event": "Lead Generated"}
    return user.encode(), orjson.dumps(event)


def upserts(requests: Iterable[Mapping[str, object]]) -> int:
    return sum(r["path"] == "/contacts/upsert" and r["status"] in (200, 201) for r in requests)


async def until_committed(bootstrap: str, group: str, topic: str, seconds: float = 90) -> None:
    ends = end_offsets(bootstrap, topic, PARTITIONS)
    async with asyncio.timeout(seconds):
        while {
            p: o
            for p, o in committed_offsets(bootstrap, group, topic, PARTITIONS).items()
            if o >= 0
        } != {p: e for p, e in ends.items() if e}:
            await asyncio.sleep(0.3)


async def by_partition(
    http: aiohttp.ClientSession, member: ProcessLog, sample_name: str
) -> dict[int, float]:
    """One of ``member``'s per-partition series: changelog partition -> value."""
    async with http.get(f"{metrics_url(member)}/metrics") as response:
        text = await response.text()
    return {
        int(sample.labels["partition"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name
    }


async def held(http: aiohttp.ClientSession, member: ProcessLog) -> dict[int, float]:
    """``ghl_profile_state_profiles`` of ``member``: changelog partition -> profiles held."""
    return await by_partition(http, member, "ghl_profile_state_profiles")


async def until_held(
    http: aiohttp.ClientSession, member: ProcessLog, partitions: int
) -> dict[int, float]:
    async with asyncio.timeout(60):
        await member.wait_for("metrics on")
        while len(found := await held(http, member)) != partitions:
            await asyncio.sleep(0.3)
    return found


def restored_lines(member: ProcessLog, partition: int) -> list[str]:
    return [line for line in member.lines if f".profiles[{partition}]: offsets" in line]


async def test_members_hold_their_partitions_and_a_returning_partition_reads_only_its_tail(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=PARTITIONS)
    group = f"pstate-{uuid.uuid4().hex[:8]}"

    def env(name: str) -> dict[str, str]:
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'[profiles]\nstate_dir = "{tmp_path / name}"\n[mapping]\nerasure_check_seconds = 0.5\n'
        )
        return {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "GHL_LOCATION_ID": LOCATION,
            "GHL_ACCESS_TOKEN": TOKEN,
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "GHL_CONFIG": str(config),
        }

    users = [f"user-{n}" for n in range(60)]
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox, aiohttp.ClientSession() as http:
        base = {"GHL_API_BASE_URL": sandbox.url}
        produce(kafka_bootstrap, topic, [identify(u) for u in users])
        a = ProcessLog(await start_consumer({**env("a"), **base}))
        b: ProcessLog | None = None
        try:
            await until_committed(kafka_bootstrap, group, topic)
            alone = await until_held(http, a, PARTITIONS)
            assert sum(alone.values()) == len(users)

            # A second member: a cooperative rebalance moves some partitions to it.
            b = ProcessLog(await start_consumer({**env("b"), **base}))
            async with asyncio.timeout(60):
                await b.wait_for("events: profiles restored for")
            theirs = await held(http, a)
            mine = await held(http, b)
            assert set(mine).isdisjoint(theirs)
            assert set(mine) | set(theirs) == set(range(PARTITIONS))
            assert sum(mine.values()) + sum(theirs.values()) == len(users)
            for partition in theirs:  # kept by A: never restored again
                assert len(restored_lines(a, partition)) == 1, a.text()[-3000:]
            for partition in mine:  # moved to B: restored there, from the changelog's start
                [line] = restored_lines(b, partition)
                assert "rebuilt: no local state" in line

            # B writes profiles of new users in its partitions, then leaves: A takes its
            # partitions back and reads only what B wrote since A let them go.
            newcomers = [f"new-{n}" for n in range(30)]
            produce(kafka_bootstrap, topic, [identify(u) for u in newcomers])
            await until_committed(kafka_bootstrap, group, topic)
            assert await stop_process(b.process) == 0
            async with asyncio.timeout(60):
                await a.wait_for("events: profiles restored for", times=2)
            back = await held(http, a)
            assert sum(back.values()) == len(users) + len(newcomers)
            for partition in mine:
                _, again = restored_lines(a, partition)
                assert "(tail)" in again, again
                assert "offsets 0-" not in again  # from A's checkpoint, not the start

            # Identities written by B enrich a lead mapped by A (without the profile, a lead
            # carrying no identifier is dropped: no upsert).
            before = upserts(sandbox.requests)
            produce(kafka_bootstrap, topic, [lead(u) for u in newcomers[:3]])
            await until_committed(kafka_bootstrap, group, topic)
            assert upserts(sandbox.requests) == before + 3
            assert await stop_process(a.process) == 0
        finally:
            await stop_process(a.process, signal.SIGKILL)
            await a.finished()
            print(a.text()[-6000:])  # shown when the test fails
            if b is not None:
                await stop_process(b.process)
                await b.finished()
                print(b.text()[-6000:])
        contacts = {c["email"] for c in sandbox.contacts(LOCATION)}
        assert {f"{u}@example.com" for u in [*users, *newcomers]} == contacts
        profiles = len(users) + len(newcomers)

        # A restart with the state directory intact reads only the tail since the checkpoint
        # (at most the last erasure_check_seconds of writes); then SIGKILL leaves every file
        # open, and the next start rebuilds them all from the changelog.
        for signal_sent, read in ((signal.SIGKILL, "(tail)"), (signal.SIGTERM, "rebuilt")):
            again = ProcessLog(await start_consumer({**env("a"), **base}))
            try:
                async with asyncio.timeout(60):
                    await again.wait_for("events: profiles restored for")
                assert sum((await held(http, again)).values()) == profiles
                records = await by_partition(
                    http, again, "ghl_profile_restore_records_total"
                )
                for partition in range(PARTITIONS):
                    assert read in restored_lines(again, partition)[-1]
                if read == "(tail)":
                    assert sum(records.values()) < len(newcomers)
                else:
                    assert "not closed cleanly" in restored_lines(again, 0)[-1]
                    assert sum(records.values()) >= profiles  # the whole changelog
            finally:
                await stop_process(again.process, signal_sent)
                await again.finished()
                print(again.text()[-3000:])


async def test_start_up_refuses_a_changelog_with_another_partition_count(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=3)
    group = f"pstate-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    [future] = admin.create_topics([NewTopic(f"{group}.profiles", num_partitions=1)]).values()
    future.result(timeout=30)
    config = tmp_path / "consumer.toml"
    config.write_text(f'[profiles]\nstate_dir = "{tmp_path / "state"}"\n')
    code, _, err = await run_command(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "GHL_LOCATION_ID": LOCATION,
            "GHL_ACCESS_TOKEN": TOKEN,
            "GHL_CONFIG": str(config),
            "METRICS_PORT": "0",
        },
        "run",
        seconds=60,
    )
    assert code == 2, err
    assert f"topic {group}.profiles has 1 partition(s), topic {topic} has 3" in err
    assert "profiles.state_dir" in err


async def test_a_static_member_restarted_within_the_session_timeout_keeps_its_partitions(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """``kafka.group_instance_id`` (KIP-345): a member that stops (SIGTERM) and comes back
    with the same id within the session timeout gets the same partitions back without a
    rebalance, so it restores only the changelog's tail; the other member is never revoked
    anything. One that stays away is replaced once the session timeout has passed."""
    topic = new_topic(partitions=PARTITIONS)
    group = f"pstatic-{uuid.uuid4().hex[:8]}"
    session_ms = 12_000

    def env(name: str) -> dict[str, str]:
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'[profiles]\nstate_dir = "{tmp_path / name}"\n[mapping]\nerasure_check_seconds = 0.5\n'
        )
        return {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "KAFKA_GROUP_INSTANCE_ID": f"{group}-{name}",
            "GHL_LOCATION_ID": LOCATION,
            "GHL_ACCESS_TOKEN": TOKEN,
            "KAFKA_SESSION_TIMEOUT_MS": str(session_ms),
            "GHL_CONFIG": str(config),
        }

    users = [f"user-{n}" for n in range(60)]
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox, aiohttp.ClientSession() as http:
        base = {"GHL_API_BASE_URL": sandbox.url}
        a = ProcessLog(await start_consumer({**env("a"), **base}))
        b = ProcessLog(await start_consumer({**env("b"), **base}))
        members = [a, b]
        try:
            async with asyncio.timeout(90):  # both joined, each holding some partitions
                while not (await held(http, a) if a.count("metrics on") else {}) or not (
                    await held(http, b) if b.count("metrics on") else {}
                ):
                    await asyncio.sleep(0.3)
            produce(kafka_bootstrap, topic, [identify(u) for u in users])
            await until_committed(kafka_bootstrap, group, topic)
            mine = await held(http, a)
            theirs = await held(http, b)
            assert set(mine) | set(theirs) == set(range(PARTITIONS))
            assert sum(mine.values()) + sum(theirs.values()) == len(users)
            revoked_in_b = b.count("kafka partitions revoked")

            # A stops and comes back with its id well within the session timeout: the same
            # partitions, read from its checkpoints (the tail only), none moved to B.
            assert await stop_process(a.process) == 0
            await a.finished()
            a = ProcessLog(await start_consumer({**env("a"), **base}))
            members.append(a)
            async with asyncio.timeout(60):
                await a.wait_for("events: profiles restored for")
            assert await held(http, a) == mine
            for partition in mine:
                [line] = restored_lines(a, partition)
                assert "(tail)" in line, line
            records = await by_partition(http, a, "ghl_profile_restore_records_total")
            assert set(records) == set(mine)
            assert sum(records.values()) < sum(mine.values())  # never the whole changelog
            assert b.count("kafka partitions revoked") == revoked_in_b
            assert await held(http, b) == theirs

            # A stops for good: its partitions wait for the session timeout, then go to B.
            stopped = asyncio.get_running_loop().time()
            assert await stop_process(a.process) == 0
            async with asyncio.timeout(session_ms / 1000 + 30):
                while len(await held(http, b)) != PARTITIONS:
                    await asyncio.sleep(0.3)
            waited = asyncio.get_running_loop().time() - stopped
            assert waited >= session_ms / 1000 - 2, waited
        finally:
            for member in members:
                await stop_process(member.process, signal.SIGKILL)
                await member.finished()
                print(member.text()[-4000:])  # shown when the test fails


async def test_a_broker_killed_while_a_member_restores_loses_nothing(tmp_path: Path) -> None:
    """The broker SIGKILLed while a member rebuilds its partitions from a changelog of 200,000
    profiles, started again 5 s later: the member keeps running, the restore completes, every
    "Lead Generated" (which needs its user's restored profile) reaches HighLevel, and the
    member, stopped cleanly, restarts from its checkpoints (the tail only)."""
    profiles, leads = 200_000, 300
    broker = LocalBroker()
    await asyncio.to_thread(broker.start)
    try:
        bootstrap = broker.bootstrap
        topic = create_topic(bootstrap, partitions=PARTITIONS)
        group = f"pstate-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        changelog = NewTopic(f"{group}.profiles", num_partitions=PARTITIONS,
                             config={"cleanup.policy": "compact"})
        [future] = admin.create_topics([changelog]).values()
        future.result(timeout=30)
        # keyed by user like the events: each profile in its user's events' partition (in
        # chunks: the harness's producer queue holds 100,000 records)
        for chunk in range(0, profiles, 50_000):
            produce(bootstrap, f"{group}.profiles", (
                (f"user-{n}".encode(),
                 Profile(fields={"email": f"user-{n}@example.com"}).to_bytes())
                for n in range(chunk, chunk + 50_000)
            ))
        produce(bootstrap, topic, [lead(f"user-{n * 601}") for n in range(leads)])
        config = tmp_path / "consumer.toml"
        config.write_text(f'[profiles]\nstate_dir = "{tmp_path / "state"}"\n')
        async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "KAFKA_TOPICS": topic,
                "KAFKA_GROUP_ID": group,
                "GHL_LOCATION_ID": LOCATION,
                "GHL_ACCESS_TOKEN": TOKEN,
                "GHL_API_BASE_URL": sandbox.url,
                "KAFKA_SESSION_TIMEOUT_MS": "6000",
                "GHL_CONFIG": str(config),
            }
            member = ProcessLog(await start_consumer(env))
            try:
                async with asyncio.timeout(120):
                    await member.wait_for("rebuilt from the changelog (no local state)")
                await asyncio.sleep(0.5)
                # the premise: the restore is still under way when the broker goes
                assert member.count("profiles restored for") == 0, member.text()[-3000:]
                await asyncio.to_thread(broker.kill)
                await asyncio.sleep(5)
                await asyncio.to_thread(broker.start)
                await until_committed(bootstrap, group, topic, seconds=240)
                assert upserts(sandbox.requests) == leads
                assert member.process.returncode is None
                assert await stop_process(member.process) == 0
            finally:
                await stop_process(member.process, signal.SIGKILL)
                await member.finished()
                print(member.text()[-6000:])  # shown when the test fails

            again = ProcessLog(await start_consumer(env))
            try:
                async with asyncio.timeout(120):
                    await again.wait_for("events: profiles restored for")
                for partition in range(PARTITIONS):
                    assert "(tail)" in restored_lines(again, partition)[-1]
                assert await stop_process(again.process) == 0
            finally:
                await stop_process(again.process, signal.SIGKILL)
                await again.finished()
                print(again.text()[-3000:])
    finally:
        await asyncio.to_thread(broker.close)
