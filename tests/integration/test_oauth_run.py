"""``ghl-consumer run`` with OAuth (issue 17): a real broker, redis-server and the sandbox over
TCP. One integration reaches every discovered location of an installation, each event naming
its location; an unknown location is dead-lettered (``unknown_location``); the stored refresh
token invalidated behind the consumer's back breaks the installation, whose events then park in
order; ``ghl-consumer oauth reconnect`` recovers it and the parked events arrive in order. No
token value reaches the consumer's logs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from consumer.sandbox import Sandbox, run_sandbox
from consumer.sandbox.oauth import OAuthSettings
from consumer.state.token_store import TokenStore
from tests.harness.oauth import install, oauth_config
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    start_consumer,
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


async def test_a_broken_installation_parks_in_order_and_reconnect_recovers_it(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    group = f"oauth-run-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    with RedisServer() as redis:
        async with run_sandbox(locations={}, oauth=APP, oauth_locations=3) as sandbox:
            await install(sandbox, redis.url, APP)
            first = [identify(loc, user, 0) for loc in LOCATIONS for user in range(2)]
            unknown = identify("loc-not-installed", 9, 0)
            produce(kafka_bootstrap, topic, [*first, unknown])
            process = await start_consumer(
                {
                    "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                    "KAFKA_TOPICS": topic,
                    "KAFKA_GROUP_ID": group,
                    "GHL_API_BASE_URL": sandbox.url,
                    "REDIS_URL": redis.url,
                    "TEST_OAUTH_SECRET": APP.client_secret,
                },
                "--config",
                str(config),
            )
            try:
                async with asyncio.timeout(60):
                    while any(first_names(sandbox, loc) != ["v00"] * 2 for loc in LOCATIONS):
                        assert process.returncode is None
                        await asyncio.sleep(0.3)
                [letter] = read_all(kafka_bootstrap, f"{group}.dead-letter", expect=1)
                assert dict(letter.headers() or [])["ghl.reason"] == b"unknown_location"

                # The refresh token is spent behind the consumer's back: its next refresh is
                # refused, the installation is marked broken. Once its location tokens have
                # expired too, nothing can be sent: new events park.
                assert sandbox.oauth.invalidate(None)
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

                recovered_at = time.monotonic()
                shown = await reconnect(sandbox, redis.url, config)
                assert "installed" in shown
                async with asyncio.timeout(60):
                    while any(first_names(sandbox, loc) != ["v03"] * 2 for loc in LOCATIONS):
                        assert process.returncode is None
                        await asyncio.sleep(0.3)
                caught_up = time.monotonic() - recovered_at
                requests = list(sandbox.requests)
                store = TokenStore.from_url(redis.url)
                try:
                    stored = await store.read(APP.company_id)
                    shared = await store.location_tokens(APP.company_id)
                finally:
                    await store.aclose()
            finally:
                process.send_signal(signal.SIGTERM)
                _, stderr = await process.communicate()
            counters = dict(sandbox.oauth.counters)
    logs = stderr.decode()
    assert process.returncode == 0, logs[-3000:]
    assert caught_up < 30
    assert counters.get("refreshReuses", 0) == 0

    # Per contact, the upserts reached HighLevel in event order.
    versions: dict[tuple[str, str], list[str]] = {}
    for request in requests:
        body = request.get("body") or {}
        if request.get("status") in (200, 201) and request.get("path") == "/contacts/upsert":
            versions.setdefault((body["locationId"], body["email"]), []).append(body["firstName"])
    assert len(versions) == 6
    for sequence in versions.values():
        assert sequence == sorted(sequence), sequence
        assert sequence[-1] == "v03"

    assert stored is not None
    secrets = [stored.access_token, stored.refresh_token, APP.client_secret]
    secrets += [token.access_token for token in shared.values()]
    assert not [secret for secret in secrets if secret in logs]
    assert "is broken" in logs
