"""Profiles survive a crash: an identify consumed by one process enriches a "Lead Generated"
consumed by another process of the same group afterwards (docs/architecture.md, "Profiles")."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable

import orjson
import pytest

from consumer.sandbox.server import run_sandbox
from tests.harness.guide import GUIDE_IDENTIFY, GUIDE_LEAD, LOCATION
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    start_consumer,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

TOKEN = "pit-profiles-token"


async def _until_committed(bootstrap: str, group: str, topic: str) -> None:
    ends = end_offsets(bootstrap, topic, 1)
    async with asyncio.timeout(60):
        while committed_offsets(bootstrap, group, topic, 1) != ends:
            await asyncio.sleep(0.3)


async def test_an_identify_before_a_crash_enriches_a_lead_after_it(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=1)
    group = f"profiles-{uuid.uuid4().hex[:8]}"
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "GHL_LOCATION_ID": LOCATION,
            "GHL_ACCESS_TOKEN": TOKEN,
            "GHL_API_BASE_URL": sandbox.url,
            "KAFKA_SESSION_TIMEOUT_MS": "6000",  # the killed member's partitions move sooner
        }
        produce(kafka_bootstrap, topic, [(b"lead-987", orjson.dumps(GUIDE_IDENTIFY))])
        first = await start_consumer(env)
        try:
            await _until_committed(kafka_bootstrap, group, topic)
        finally:
            first.send_signal(signal.SIGKILL)  # a crash: no drain, no goodbye
            await first.communicate()

        produce(kafka_bootstrap, topic, [(b"lead-987", orjson.dumps(GUIDE_LEAD))])
        second = await start_consumer(env)
        try:
            await _until_committed(kafka_bootstrap, group, topic)
        finally:
            second.send_signal(signal.SIGTERM)
            _, stderr = await second.communicate()
        assert second.returncode == 0, stderr.decode()[-2000:]
        [contact] = sandbox.contacts(LOCATION)
    assert contact["email"] == "sam@example.com"
    assert (contact["firstName"], contact["lastName"]) == ("Sam", "Rivera")
    assert contact["source"] == "Pricing Page Form"
    assert contact["tags"] == ["website-lead"]
    assert "profiles restored" in stderr.decode()
