"""Parking on a real broker with the sandbox: one tenant's revoked token never stalls the
partitions it shares with a healthy tenant, and its events arrive, in per-contact order, once
the token works again (docs/architecture.md, "Parking")."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from consumer.sandbox.server import run_sandbox
from consumer.sandbox.settings import RateLimits
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    start_consumer,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

HEALTHY, BROKEN = ("loc-healthy", "token-healthy"), ("loc-broken", "token-broken")
CONFIG = """
[engine]
coalesce_window_ms = 0

[delivery]
unauthorized_probe_seconds = 1
rate_burst = 1000
rate_sustained = 1000
rate_interval_seconds = 1

[[integrations]]
id = "healthy"
location_id = "loc-healthy"
access_token = { env = "TOKEN_HEALTHY" }
[integrations.routing]
field = "context.app.name"
values = ["healthy"]

[[integrations]]
id = "broken"
location_id = "loc-broken"
access_token = { env = "TOKEN_BROKEN" }
[integrations.routing]
field = "context.app.name"
values = ["broken"]
"""


def identify(app: str, user: int, version: int) -> tuple[bytes, bytes]:
    key = f"{app}-{user}"
    event = {
        "type": "identify",
        "userId": key,
        "messageId": f"{key}-{version}",
        "traits": {"email": f"{key}@example.com", "first_name": f"v{version:02d}"},
        "context": {"app": {"name": app}},
    }
    return key.encode(), orjson.dumps(event)


async def test_a_revoked_token_parks_its_events_and_they_arrive_in_order_once_restored(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    group = f"parking-{uuid.uuid4().hex[:8]}"
    records = [
        identify(app, user, version)
        for version in range(5)
        for user in range(6)
        for app in ("healthy", "broken")
    ]
    produce(kafka_bootstrap, topic, records)
    ends = end_offsets(kafka_bootstrap, topic, 2)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)

    async with run_sandbox(locations=[HEALTHY, BROKEN]) as sandbox:
        sandbox.state.revoke_token(BROKEN[1])
        process = await start_consumer(
            {
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "KAFKA_TOPICS": topic,
                "KAFKA_GROUP_ID": group,
                "GHL_API_BASE_URL": sandbox.url,
                "TOKEN_HEALTHY": HEALTHY[1],
                "TOKEN_BROKEN": BROKEN[1],
            },
            "--config",
            str(config),
        )
        try:
            # The broken tenant does not hold the shared partitions back: everything is
            # committed (delivered or parked) while its token is still refused.
            async with asyncio.timeout(45):
                while committed_offsets(kafka_bootstrap, group, topic, 2) != ends:
                    assert process.returncode is None
                    await asyncio.sleep(0.3)
            healthy = sandbox.contacts(HEALTHY[0])
            assert len(healthy) == 6
            assert {c["firstName"] for c in healthy} == {"v04"}
            assert sandbox.contacts(BROKEN[0]) == []

            restored_at = time.monotonic()
            sandbox.state.grant_token(BROKEN[0], BROKEN[1])
            async with asyncio.timeout(45):
                while sorted(c["firstName"] for c in sandbox.contacts(BROKEN[0])) != ["v04"] * 6:
                    await asyncio.sleep(0.3)
            caught_up = time.monotonic() - restored_at
            requests = list(sandbox.requests)
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert caught_up < 30

    # Per contact, the broken tenant's upserts reached HighLevel in event order.
    versions: dict[str, list[str]] = {}
    for request in requests:
        body = request.get("body") or {}
        if request.get("status") in (200, 201) and body.get("locationId") == BROKEN[0]:
            versions.setdefault(body["email"], []).append(body["firstName"])
    assert len(versions) == 6
    for sequence in versions.values():
        assert sequence == sorted(sequence), sequence
        assert sequence[-1] == "v04"

    parked = read_all(kafka_bootstrap, f"{group}.parking", expect=1)
    assert parked
    assert all(dict(m.headers() or [])["ghl.integration"] == b"broken" for m in parked)
    assert BROKEN[1] not in stderr.decode()


DAILY_CONFIG = """
[engine]
coalesce_window_ms = 0

[delivery]
rate_daily_recheck_seconds = 1
"""


async def test_a_spent_daily_budget_parks_events_and_they_arrive_after_the_reset(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    group = f"daily-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, [identify("shop", user, 0) for user in range(10)])
    ends = end_offsets(kafka_bootstrap, topic, 1)
    config = tmp_path / "config.toml"
    config.write_text(DAILY_CONFIG)
    location, token = HEALTHY
    async with run_sandbox(
        locations={location: token}, limits=RateLimits(daily=4)
    ) as sandbox:
        process = await start_consumer(
            {
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "KAFKA_TOPICS": topic,
                "KAFKA_GROUP_ID": group,
                "GHL_API_BASE_URL": sandbox.url,
                "GHL_LOCATION_ID": location,
                "GHL_ACCESS_TOKEN": token,
            },
            "--config",
            str(config),
        )
        try:
            async with asyncio.timeout(45):  # 4 delivered, 6 parked: the partition is done
                while committed_offsets(kafka_bootstrap, group, topic, 1) != ends:
                    await asyncio.sleep(0.3)
            assert len(sandbox.contacts(location)) == 4
            # HighLevel's day turns (and this location's budget is larger today).
            sandbox.configure(location, limits=RateLimits(daily=1000))
            sandbox.state.locations[location].rate.reset_daily()
            turned = len(sandbox.requests)
            async with asyncio.timeout(30):
                while len(sandbox.contacts(location)) < 10:
                    await asyncio.sleep(0.3)
            after_reset = [r.get("status") for r in list(sandbox.requests)[turned:]]
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert "daily budget spent" in stderr.decode()
    assert 429 not in after_reset, after_reset
