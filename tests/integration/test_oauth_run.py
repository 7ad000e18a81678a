"""``ghl-consumer run`` with OAuth (issue 17): a real broker, redis-server and the sandbox over
TCP. One integration reaches every discovered location of an installation, each event naming
its location; an unknown location is dead-lettered (``unknown_location``). The stored refresh
token invalidated behind the consumer's back is recovered by one automatic reconnect while the
events keep arriving. With the app uninstalled meanwhile the reconnect is refused: the
installation breaks, its events park in order; once the app is installed again
``ghl-consumer oauth reconnect`` recovers it and the parked events arrive in order. No token
value reaches the consumer's logs; ``ghl_oauth_reconnects_total`` counts both reconnects."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from consumer.sandbox import Sandbox, run_sandbox
from consumer.sandbox.oauth import OAuthSettings
from consumer.state.token_store import TokenStore
from tests.harness.oauth import install, oauth_config, record_tokens
from tests.integration.consumer_harness import (
    ProcessLog,
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    start_consumer,
    stop_process,
)
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

TTL = 6.0  # seconds: company and location tokens (refreshed 1.5 s before they expire)
APP = OAuthSettings(company_id="agency-1", client_secret="run-secret-value", access_ttl_s=TTL)
ROOT = Path(__file__).parents[2]
LOCATIONS = ("oauth-location-01", "oauth-location-02", "oauth-location-03")
CONFIG = oauth_config(APP)


def identify(location: str, user: int, version: int) -> tuple[bytes, bytes]:
    key = f"{location}-u{user}"
    event = {
        "type": "identify",
        "userId": key,
        "messageId": f"{key}-{version}",
        "traits": {"email": f"u{user}@example.com", "first_name": f"v{version:02d}"},
        "context": {"groupId": location},
    }
    return key.encode(), orjson.dumps(event)



async def broken(redis_url: str) -> str:
    store = TokenStore.from_url(redis_url)
    try:
        stored = await store.read(APP.company_id)
    finally:
        await store.aclose()
    assert stored is not None
    return stored.broken


async def reconnect(sandbox: Sandbox, redis_url: str, config: Path) -> str:
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GHL_API_BASE_URL": sandbox.url,
        "REDIS_URL": redis_url,
        "TEST_OAUTH_SECRET": APP.client_secret,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumer", "oauth", "--config", str(config), "reconnect",
        env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


def first_names(sandbox: Sandbox, location: str) -> list[str]:
    return sorted(str(c.get("firstName")) for c in sandbox.contacts(location))


async def start(
    kafka_bootstrap: str, topic: str, group: str, sandbox: Sandbox, redis_url: str, config: Path
) -> ProcessLog:
    process = await start_consumer(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "GHL_API_BASE_URL": sandbox.url,
            "REDIS_URL": redis_url,
            "TEST_OAUTH_SECRET": APP.client_secret,
        },
        "--config",
        str(config),
    )
    return ProcessLog(process)


async def reconnects(log: ProcessLog) -> dict[tuple[str, str], float]:
    """``ghl_oauth_reconnects_total`` of installation ``agency`` by (trigger, result), from
    the running consumer's /metrics."""
    async with asyncio.timeout(30):
        await log.wait_for("metrics on http")
    [line] = [line for line in log.lines if "metrics on http" in line][:1]
    url = re.findall(r"(http://\S+?/metrics)\b", line)[0]
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    found = re.findall(
        r'ghl_oauth_reconnects_total\{installation="agency",result="(\w+)",trigger="(\w+)"\} '
        r"(\S+)",
        text,
    )
    return {(trigger, result): float(count) for result, trigger, count in found}


def upserted_in_order(requests: list[dict[str, object]], last: str) -> None:
    """Per contact, the upserts reached HighLevel in event order, ending with ``last``."""
    versions: dict[tuple[str, str], list[str]] = {}
    for request in requests:
        body = request.get("body") or {}
        assert isinstance(body, dict)
        if request.get("status") in (200, 201) and request.get("path") == "/contacts/upsert":
            versions.setdefault((body["locationId"], body["email"]), []).append(body["firstName"])
    assert len(versions) == 6
    for sequence in versions.values():
        assert sequence == sorted(sequence), sequence
        assert sequence[-1] == last


async def test_a_lost_refresh_token_is_recovered_automatically_while_events_flow(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    group = f"oauth-auto-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    with RedisServer() as redis:
        async with run_sandbox(locations={}, oauth=APP, oauth_locations=3) as sandbox:
            issued = record_tokens(sandbox)
            await install(sandbox, redis.url, APP)
            first = [identify(loc, user, 0) for loc in LOCATIONS for user in (0, 1)]
            produce(kafka_bootstrap, topic, first)
            log = await start(kafka_bootstrap, topic, group, sandbox, redis.url, config)
            try:
                async with asyncio.timeout(60):
                    while any(first_names(sandbox, loc) != ["v00"] * 2 for loc in LOCATIONS):
                        await asyncio.sleep(0.3)
                # Behind the consumer's back: its next refresh is refused and nothing newer is
                # stored. One event a second per contact keeps flowing meanwhile.
                assert sandbox.oauth.invalidate(None)
                invalidated_at = time.monotonic()
                for version in range(1, 3 * int(TTL) + 1):
                    produce(
                        kafka_bootstrap,
                        topic,
                        [identify(loc, u, version) for loc in LOCATIONS for u in (0, 1)],
                    )
                    await asyncio.sleep(1)
                last = f"v{3 * int(TTL):02d}"
                async with asyncio.timeout(30):
                    while any(first_names(sandbox, loc) != [last] * 2 for loc in LOCATIONS):
                        assert log.process.returncode is None
                        await asyncio.sleep(0.2)
                caught_up = time.monotonic() - invalidated_at
                assert sandbox.oauth.counters.get("reconnects") == 1
                counted = await reconnects(log)
                stored_broken = await broken(redis.url)
                requests = list(sandbox.requests)
            finally:
                await stop_process(log.process)
                await log.finished()
            counters = dict(sandbox.oauth.counters)
    assert log.process.returncode == 0, log.text()[-3000:]
    assert stored_broken == ""
    assert counters["invalidGrants"] == 1
    assert counters.get("refreshReuses", 0) == 0
    assert counted[("auto", "ok")] == 1
    assert sum(counted.values()) == 1
    assert caught_up < 3 * TTL + 10  # the events never waited for a person
    upserted_in_order(requests, last)
    logs = log.text()
    assert "recovered by an automatic reconnect" in logs
    assert "is broken" not in logs
    assert not [value for value in [*issued, APP.client_secret] if value in logs]


async def test_a_refused_reconnect_parks_in_order_until_oauth_reconnect(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    group = f"oauth-run-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    with RedisServer() as redis:
        async with run_sandbox(locations={}, oauth=APP, oauth_locations=3) as sandbox:
            issued = record_tokens(sandbox)
            await install(sandbox, redis.url, APP)
            first = [identify(loc, user, 0) for loc in LOCATIONS for user in range(2)]
            unknown = identify("loc-not-installed", 9, 0)
            produce(kafka_bootstrap, topic, [*first, unknown])
            log = await start(kafka_bootstrap, topic, group, sandbox, redis.url, config)
            process = log.process
            try:
                async with asyncio.timeout(60):
                    while any(first_names(sandbox, loc) != ["v00"] * 2 for loc in LOCATIONS):
                        assert process.returncode is None
                        await asyncio.sleep(0.3)
                [letter] = read_all(kafka_bootstrap, f"{group}.dead-letter", expect=1)
                assert dict(letter.headers() or [])["ghl.reason"] == b"unknown_location"

                # The app is uninstalled: the refresh token stops working and the automatic
                # reconnect is refused, the installation is marked broken. Once its location
                # tokens have expired too, nothing can be sent: new events park.
                sandbox.oauth.uninstall()
                async with asyncio.timeout(3 * TTL):
                    while not await broken(redis.url):
                        await asyncio.sleep(0.2)
                await asyncio.sleep(TTL)
                later = [
                    identify(loc, user, version)
                    for version in (1, 2, 3)
                    for user in range(2)
                    for loc in LOCATIONS
                ]
                produce(kafka_bootstrap, topic, later)
                ends = end_offsets(kafka_bootstrap, topic, 2)
                async with asyncio.timeout(60):
                    while committed_offsets(kafka_bootstrap, group, topic, 2) != ends:
                        assert process.returncode is None
                        await asyncio.sleep(0.3)
                assert all(first_names(sandbox, loc) == ["v00"] * 2 for loc in LOCATIONS)
                parked = read_all(kafka_bootstrap, f"{group}.parking", expect=1)
                reasons = {dict(m.headers() or [])["ghl.park.reason"] for m in parked}
                assert b"installation_broken" in reasons
                assert reasons <= {b"installation_broken", b"contact_parked"}

                sandbox.oauth.issue_code(None, time.time())  # the agency installs it again
                recovered_at = time.monotonic()
                shown = await reconnect(sandbox, redis.url, config)
                assert "installed" in shown
                async with asyncio.timeout(60):
                    while any(first_names(sandbox, loc) != ["v03"] * 2 for loc in LOCATIONS):
                        assert process.returncode is None
                        await asyncio.sleep(0.3)
                caught_up = time.monotonic() - recovered_at
                async with asyncio.timeout(30):  # the next check counts the command's result
                    while not (counted := await reconnects(log)).get(("command", "ok")):
                        await asyncio.sleep(0.5)
                requests = list(sandbox.requests)
                store = TokenStore.from_url(redis.url)
                try:
                    stored = await store.read(APP.company_id)
                    shared = await store.location_tokens(APP.company_id)
                finally:
                    await store.aclose()
            finally:
                await stop_process(process)
                await log.finished()
            counters = dict(sandbox.oauth.counters)
    logs = log.text()
    assert process.returncode == 0, logs[-3000:]
    assert caught_up < 30
    assert counters.get("refreshReuses", 0) == 0
    assert counters["refusedReconnects"] == 1  # the automatic one, made once
    assert {key: n for key, n in counted.items() if n} == {
        ("auto", "refused"): 1,
        ("command", "ok"): 1,
    }
    upserted_in_order(requests, "v03")

    assert stored is not None
    secrets = [stored.access_token, stored.refresh_token, APP.client_secret, *issued]
    secrets += [token.access_token for token in shared.values()]
    assert not [secret for secret in secrets if secret in logs]
    assert "is broken" in logs
    assert "automatic reconnect refused" in logs
