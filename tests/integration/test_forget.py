"""Erasure (README, "Personal data"): ``ghl-consumer forget`` against a running consumer, a
real broker and the sandbox over TCP; and the retention the consumer gives the topics that hold
raw events."""

from __future__ import annotations

import asyncio
import io
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from consumer.commands.forget import delete_contacts
from consumer.commands.run import PROFILE_MAX_COMPACTION_LAG_MS, consumer_topics
from consumer.config import load_settings
from consumer.kafka.admin import ensure_topics
from consumer.kafka.partitioner import partition_for
from consumer.sandbox.oauth import OAuthSettings
from consumer.sandbox.server import run_sandbox
from tests.harness.guide import GUIDE_IDENTIFY, GUIDE_LEAD, LOCATION
from tests.harness.oauth import install, oauth_config, record_tokens
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    read_all,
    run_command,
    start_consumer,
)
from tests.integration.redis_server import RedisServer

pytestmark = [pytest.mark.integration]

TOKEN = "pit-forget-token"
FOURTEEN_DAYS_MS = str(14 * 86_400_000)


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    return {name: entry.value for name, entry in future.result(timeout=30).items()}


async def test_dead_letter_and_parking_topics_are_created_with_a_retention(
    kafka_bootstrap: str,
) -> None:
    group = f"retention-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        None,
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_GROUP_ID": group,
            "KAFKA_PARKING_RETENTION_MS": "7200000",
            "GHL_LOCATION_ID": LOCATION,
            "GHL_ACCESS_TOKEN": TOKEN,
        },
    )
    await ensure_topics(kafka_bootstrap, consumer_topics(settings.kafka))

    dead_letters = _topic_config(kafka_bootstrap, f"{group}.dead-letter")
    parking = _topic_config(kafka_bootstrap, f"{group}.parking")
    profiles = _topic_config(kafka_bootstrap, f"{group}.profiles")
    assert dead_letters["retention.ms"] == FOURTEEN_DAYS_MS
    assert parking["retention.ms"] == "7200000"
    assert profiles["cleanup.policy"] == "compact"
    assert profiles["max.compaction.lag.ms"] == str(PROFILE_MAX_COMPACTION_LAG_MS)


async def _until_committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> None:
    ends = {p: end for p, end in end_offsets(bootstrap, topic, partitions).items() if end}
    async with asyncio.timeout(60):
        while {
            p: offset
            for p, offset in committed_offsets(bootstrap, group, topic, partitions).items()
            if p in ends
        } != ends:
            await asyncio.sleep(0.3)


def _produce_to(bootstrap: str, topic: str, partition: int, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


@pytest.mark.slow
@pytest.mark.parametrize("partitioned", [False, True], ids=["whole", "partitioned"])
async def test_forget_by_email_erases_the_profile_the_contact_and_records_it(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, partitioned: bool
) -> None:
    topic = new_topic(partitions=2)
    # Partitioned profile state keeps a profile in the changelog partition of its event's
    # partition: put the event where the key's hash would not, so only a tombstone written
    # to that partition (not the partitioner's) erases it.
    partition = 1 - partition_for(b"lead-987", 2, "crc32")
    group = f"forget-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "consumer.toml"
    state = f'[profiles]\nstate_dir = "{tmp_path / "state"}"\n' if partitioned else ""
    config.write_text(f"[mapping]\nerasure_check_seconds = 0.5\n{state}")
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "GHL_LOCATION_ID": LOCATION,
            "GHL_ACCESS_TOKEN": TOKEN,
            "GHL_API_BASE_URL": sandbox.url,
            "GHL_CONFIG": str(config),
        }
        _produce_to(kafka_bootstrap, topic, partition, b"lead-987", orjson.dumps(GUIDE_IDENTIFY))
        consumer = await start_consumer(env)
        try:
            await _until_committed(kafka_bootstrap, group, topic, 2)
            [contact] = sandbox.contacts(LOCATION)
            assert contact["email"] == "sam@example.com"

            code, out, err = await run_command(
                env, "forget", "--email", " Sam@Example.com ", "--delete-contact"
            )
            assert code == 0, err
            assert "s***@example.com" in out
            assert "sam@example.com" not in out + err
            assert "1 profile(s) found, 1 key(s) tombstoned" in out
            assert f"contact {contact['id']} deleted" in out
            assert sandbox.contacts(LOCATION) == []
            forgotten_at = len(sandbox.requests)

            await asyncio.sleep(2)  # > erasure_check_seconds: the running member has read it
            _produce_to(kafka_bootstrap, topic, partition, b"lead-987", orjson.dumps(GUIDE_LEAD))
            await _until_committed(kafka_bootstrap, group, topic, 2)
        finally:
            consumer.send_signal(signal.SIGTERM)
            _, stderr = await consumer.communicate()
        assert consumer.returncode == 0, stderr.decode()[-2000:]
        after = list(sandbox.requests)[forgotten_at:]
        contacts = sandbox.contacts(LOCATION)

    # The member running all along forgot the profile: the lead is no longer enriched.
    assert "profiles erased" in stderr.decode()
    assert all(c.get("email") != "sam@example.com" for c in contacts)
    assert b"sam@example.com" not in orjson.dumps(after)

    messages = read_all(kafka_bootstrap, f"{group}.profiles", expect=10, seconds=5)
    if partitioned:  # the profile and its tombstone: in the event's partition, not the key's
        assert {m.partition() for m in messages} == {partition}
    changelog = [(m.key(), m.value()) for m in messages]
    tombstone = changelog.index((b"lead-987", None))
    assert b"sam@example.com" in (changelog[0][1] or b"")
    assert all(b"sam@example.com" not in (v or b"") for _, v in changelog[tombstone:])

    [erasure] = read_all(kafka_bootstrap, f"{group}.erasures", expect=1)
    value = erasure.value()
    assert value is not None
    record = orjson.loads(value)
    assert record["subject"]["kind"] == "email"
    assert record["subject"]["hash"].startswith("sha256:")
    assert record["profilesTombstoned"] == 1
    assert record["contacts"] == {"default": "deleted"}
    assert b"sam" not in value.lower()
    assert b"example.com" not in value


async def test_delete_contact_reaches_every_location_of_an_oauth_integration(
    tmp_path: Path,
) -> None:
    """``forget --delete-contact`` with an OAuth integration (its locations discovered): the
    person's contact is found and deleted in each location, with location tokens from the
    shared token store; no token in what it prints."""
    app = OAuthSettings(company_id="agency-forget", client_secret="forget-secret-value")
    config = tmp_path / "config.toml"
    config.write_text(oauth_config(app))
    email = "sam@example.com"
    with RedisServer() as redis:
        async with run_sandbox(locations={}, oauth=app, oauth_locations=2) as sandbox:
            issued = record_tokens(sandbox)
            await install(sandbox, redis.url, app)
            locations = ["oauth-location-01", "oauth-location-02"]
            for location in locations:  # the person's contact in both, another in the first
                for who in (email, "other@example.com")[: 2 if location == locations[0] else 1]:
                    body = {"locationId": location, "email": who}
                    sandbox.state.upsert(sandbox.state.locations[location], body, time.time())
            settings = load_settings(
                str(config),
                {
                    "GHL_API_BASE_URL": sandbox.url,
                    "REDIS_URL": redis.url,
                    "TEST_OAUTH_SECRET": app.client_secret,
                },
            )
            out = io.StringIO()
            results = await delete_contacts(settings, [email], out)
            left = {loc: [c.get("email") for c in sandbox.contacts(loc)] for loc in locations}
            again = await delete_contacts(settings, [email], io.StringIO())
            minted = sandbox.oauth.counters.get("locationTokens")
    assert results == {"agency-events": "deleted"}
    assert left == {locations[0]: ["other@example.com"], locations[1]: []}
    assert again == {"agency-events": "none"}
    assert minted == 2  # one per location, shared through the store
    printed = out.getvalue()
    assert printed.count(" deleted") == 2, printed
    assert not [value for value in [*issued, app.client_secret] if value in printed]
