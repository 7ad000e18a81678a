"""/readyz and /healthz of the real ``ghl-consumer run`` process against a real broker (issue 16):
a spare member holding no partition is ready (a rollout's surge pod must become Ready), a
member draining after SIGTERM is not ready ("shutting down") while staying alive, and a member
whose broker went away is not ready ("Kafka broker unreachable") and still alive."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from consumer.sandbox import Faults, run_sandbox
from tests.integration.consumer_harness import (
    ProcessLog,
    liveness,
    metrics_url,
    produce,
    readiness,
    start_consumer,
    stop_process,
)
from tests.kafka_broker import LocalBroker, create_topic

pytestmark = pytest.mark.integration

LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-probes-token"


def member_env(bootstrap: str, topic: str, group: str, sandbox: str) -> dict[str, str]:
    return {
        "GHL_LOCATION_ID": LOCATION,
        "GHL_ACCESS_TOKEN": TOKEN,
        "GHL_API_BASE_URL": sandbox,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
    }


async def until_ready(http: aiohttp.ClientSession, member: ProcessLog, seconds: float) -> str:
    """Wait for the member's metrics server, then for /readyz 200; return its URL."""
    async with asyncio.timeout(seconds):
        await member.wait_for("metrics on http://")
        url = metrics_url(member)
        while (await readiness(http, url))[0] != 200:
            assert member.process.returncode is None, member.text()[-3000:]
            await asyncio.sleep(0.2)
    return url


async def answered(probe: Awaitable[tuple[int, Any]], member: ProcessLog) -> tuple[int, Any]:
    """``probe``'s answer; when the member's server is gone, an AssertionError with its log."""
    try:
        return await probe
    except aiohttp.ClientConnectionError:
        await asyncio.sleep(1)  # let the log of an exiting member be read
        raise AssertionError(f"no answer:\n{member.text()[-4000:]}") from None


async def in_flight(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    return next(
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("ghl_requests_in_flight ")
    )


async def owned_partitions(http: aiohttp.ClientSession, url: str, topic: str) -> int:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(
        line.startswith("ghl_partition_incomplete{") and f'topic="{topic}"' in line
        for line in text.splitlines()
    )


async def test_a_spare_member_is_ready_and_a_draining_one_is_not(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=1)
    group = f"probes-{uuid.uuid4().hex[:8]}"
    # Each upsert takes 3 s: work is in flight when SIGTERM arrives, so the drain lasts.
    async with (
        run_sandbox(locations={LOCATION: TOKEN}, faults=Faults(latency_ms=3000)) as sandbox,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        env = member_env(kafka_bootstrap, topic, group, sandbox.url)
        members = [ProcessLog(await start_consumer(env)) for _ in range(2)]
        try:
            urls = [await until_ready(http, member, 60) for member in members]
            # One partition, two members: once it is assigned (a rebalance may still be under
            # way when both have joined), one of them holds nothing, and both are ready.
            async with asyncio.timeout(30):
                while sum(owned := [await owned_partitions(http, u, topic) for u in urls]) != 1:
                    await asyncio.sleep(0.2)
            for url in urls:
                assert await readiness(http, url) == (200, {"ready": True})
            for url in urls:
                assert await liveness(http, url) == (200, {"status": "ok"})

            owner = owned.index(1)
            event = {"type": "identify", "userId": "u-1", "traits": {"email": "p@example.com"}}
            produce(kafka_bootstrap, topic, [(b"u-1", orjson.dumps(event))])
            async with asyncio.timeout(30):  # SIGTERM while the upsert is in flight
                while await in_flight(http, urls[owner]) < 1:
                    await asyncio.sleep(0.05)
            members[owner].process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                while (answer := await readiness(http, urls[owner]))[0] != 503:
                    await asyncio.sleep(0.05)
            assert answer[1] == {"ready": False, "reasons": ["shutting down"]}
            assert (await liveness(http, urls[owner]))[0] == 200  # draining is not stuck
            async with asyncio.timeout(30):
                assert await members[owner].finished() == 0
            assert sandbox.contacts(LOCATION), "the in-flight upsert finished during the drain"
        finally:
            for member in members:
                await stop_process(member.process)


@pytest.mark.slow
async def test_a_member_whose_broker_is_gone_is_not_ready_but_alive() -> None:
    broker = LocalBroker()
    try:
        await asyncio.to_thread(broker.start)
        topic = create_topic(broker.bootstrap)
        async with (
            run_sandbox(locations={LOCATION: TOKEN}) as sandbox,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        ):
            env = member_env(broker.bootstrap, topic, f"gone-{uuid.uuid4().hex[:8]}", sandbox.url)
            member = ProcessLog(await start_consumer(env))
            try:
                url = await until_ready(http, member, 60)
                assert await owned_partitions(http, url, topic) == 1
                await asyncio.to_thread(broker.stop)
                async with asyncio.timeout(30):
                    while (answer := await answered(readiness(http, url), member))[0] != 503:
                        await asyncio.sleep(0.2)
                assert "Kafka broker unreachable" in answer[1]["reasons"], answer
                assert await liveness(http, url) == (200, {"status": "ok"})
                await asyncio.to_thread(broker.start)
                await until_ready(http, member, 60)
            finally:
                await stop_process(member.process)
    finally:
        await asyncio.to_thread(broker.close)
