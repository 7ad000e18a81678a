"""Profiles survive a crash: an identify consumed by one process enriches a "Lead Generated"
consumed by another process of the same group afterwards (docs/architecture.md, "Profiles")."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from consumer.sandbox.server import run_sandbox
from tests.harness.guide import GUIDE_IDENTIFY, GUIDE_LEAD, LOCATION
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    run_command,
    start_consumer,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

TOKEN = "pit-profiles-token"


async def _until_committed(bootstrap: str, group: str, topic: str) -> None:
    ends = end_offsets(bootstrap, topic, 1)
    async with asyncio.timeout(60):
        while committed_offsets(bootstrap, group, topic, 1) != ends:
            await asyncio.sleep(0.3)


@pytest.mark.parametrize("partitioned", [False, True], ids=["whole", "partitioned"])
async def test_an_identify_before_a_crash_enriches_a_lead_after_it(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, partitioned: bool
) -> None:
    topic = new_topic(partitions=1)
    group = f"profiles-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "consumer.toml"  # partitioned: the killed member's file is rebuilt
    config.write_text(f'[profiles]\nstate_dir = "{tmp_path / "state"}"\n' if partitioned else "")
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        env = {
            "GHL_CONFIG": str(config),
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


async def test_encrypted_profiles_hold_no_email_at_rest_and_still_restore_and_forget(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    group = f"profiles-enc-{uuid.uuid4().hex[:8]}"
    key = base64.b64encode(os.urandom(32)).decode()
    config = tmp_path / "consumer.toml"
    config.write_text(
        '[profiles]\nencryption_key_id = "k1"\n'
        'encryption_keys = [{ id = "k1", key = { env = "PROFILE_KEY_K1" } }]\n'
    )
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "GHL_LOCATION_ID": LOCATION,
            "GHL_ACCESS_TOKEN": TOKEN,
            "GHL_API_BASE_URL": sandbox.url,
            "GHL_CONFIG": str(config),
            "PROFILE_KEY_K1": key,
        }
        produce(kafka_bootstrap, topic, [(b"lead-987", orjson.dumps(GUIDE_IDENTIFY))])
        first = await start_consumer(env)
        try:
            await _until_committed(kafka_bootstrap, group, topic)
        finally:
            first.send_signal(signal.SIGTERM)
            _, stderr = await first.communicate()
        assert first.returncode == 0, stderr.decode()[-2000:]

        [record] = read_all(kafka_bootstrap, f"{group}.profiles", expect=1)
        assert record.key() == b"lead-987"
        value = record.value()
        assert value is not None
        assert value.startswith(b"\x01\x02k1")
        for clear in (b"sam@example.com", b"Sam", b"Rivera", b"email"):
            assert clear not in value

        produce(kafka_bootstrap, topic, [(b"lead-987", orjson.dumps(GUIDE_LEAD))])
        second = await start_consumer(env)
        try:
            await _until_committed(kafka_bootstrap, group, topic)
        finally:
            second.send_signal(signal.SIGTERM)
            _, stderr = await second.communicate()
        assert second.returncode == 0, stderr.decode()[-2000:]
        log = stderr.decode()
        assert "1 applied, 0 newer here, 0 unreadable" in log
        assert key not in log
        [contact] = sandbox.contacts(LOCATION)
        assert contact["email"] == "sam@example.com"
        assert contact["source"] == "Pricing Page Form"

        code, out, err = await run_command(env, "forget", "--email", "sam@example.com")
    assert code == 0, err
    assert "1 profile(s) found, 1 key(s) tombstoned" in out
    assert key not in out + err
