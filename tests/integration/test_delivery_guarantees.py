"""Delivery under HighLevel's limits and faults, end to end (issue 6's "done when"): real
consumer processes, a real broker, the sandbox over HTTP, and a real Redis for the shared
limiter. The sandbox's rate window is HighLevel's shape scaled down in time (20 requests per
second instead of 100 per 10 s) so a backlog drains in seconds; the consumer is configured to
the same window."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from consumer.sandbox.custom_fields import FieldDefinition
from consumer.sandbox.server import Sandbox, run_sandbox
from consumer.sandbox.settings import DuplicateSettings, Faults, RateLimits
from tests.harness.stream import audit_clean
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    start_consumer,
)
from tests.integration.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-delivery-token"
WINDOW = RateLimits(burst=20, interval_ms=1000)
LIMITED = """
[engine]
coalesce_window_ms = 0

[delivery]
rate_burst = 20
rate_interval_seconds = 1
rate_sustained = 18
timeout_seconds = 1
retry_base_seconds = 0.05
retry_max_seconds = 0.5
"""


def identify(user: int, version: int) -> tuple[bytes, bytes]:
    event = {
        "type": "identify",
        "userId": f"user-{user}",
        "messageId": f"m-{user}-{version}",
        "traits": {"email": f"user{user}@example.com", "first_name": f"v{version:02d}"},
    }
    return f"user-{user}".encode(), orjson.dumps(event)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def _run_to_completion(
    sandbox: Sandbox,
    bootstrap: str,
    topic: str,
    partitions: int,
    config: Path,
    *,
    instances: int = 1,
    extra_env: dict[str, str] | None = None,
    seconds: float = 90,
) -> list[bytes]:
    """Run ``instances`` consumers of a new group until it committed the topic's end offsets,
    SIGTERM them (each must exit 0), then audit: nothing may be unaccounted. Returns each
    consumer's stderr."""
    group = f"delivery-{uuid.uuid4().hex[:8]}"
    ends = end_offsets(bootstrap, topic, partitions)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "GHL_LOCATION_ID": LOCATION,
        "GHL_ACCESS_TOKEN": TOKEN,
        "GHL_API_BASE_URL": sandbox.url,
        **(extra_env or {}),
    }
    processes = [await start_consumer(env, "--config", str(config)) for _ in range(instances)]
    try:
        async with asyncio.timeout(seconds):
            while committed_offsets(bootstrap, group, topic, partitions) != ends:
                await asyncio.sleep(0.3)
    finally:
        outputs = []
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            _, stderr = await process.communicate()
            outputs.append(stderr)
    for process, stderr in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()[-3000:]
    report = await audit_clean(env, sandbox.url)
    assert report["records"] == sum(ends.values())
    return outputs


def _final_names(sandbox: Sandbox) -> dict[str, str]:
    return {str(c["email"]): str(c["firstName"]) for c in sandbox.contacts(LOCATION)}


async def test_a_backlog_at_highlevels_limits_never_draws_a_429(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, [identify(user, 0) for user in range(60)])
    config = tmp_path / "config.toml"
    config.write_text(LIMITED)
    async with run_sandbox(locations={LOCATION: TOKEN}, limits=WINDOW) as sandbox:
        await _run_to_completion(sandbox, kafka_bootstrap, topic, 2, config)
        statuses = [r["status"] for r in sandbox.requests]
    assert len(_final_names(sandbox)) == 60
    assert 429 not in statuses
    assert statuses.count(200) + statuses.count(201) == 60


async def test_three_instances_sharing_redis_stay_inside_one_locations_budget(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, redis: RedisServer
) -> None:
    topic = new_topic(partitions=3)
    produce(kafka_bootstrap, topic, [identify(user, 0) for user in range(90)])
    config = tmp_path / "config.toml"
    config.write_text(LIMITED)
    async with run_sandbox(locations={LOCATION: TOKEN}, limits=WINDOW) as sandbox:
        await _run_to_completion(
            sandbox,
            kafka_bootstrap,
            topic,
            3,
            config,
            instances=3,
            extra_env={"REDIS_URL": redis.url},
        )
        statuses = [r["status"] for r in sandbox.requests]
    assert len(_final_names(sandbox)) == 90
    assert 429 not in statuses


async def test_server_errors_and_hangs_delay_but_never_lose_or_reorder(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    produce(
        kafka_bootstrap,
        topic,
        [identify(user, version) for version in range(4) for user in range(25)],
    )
    config = tmp_path / "config.toml"
    config.write_text(LIMITED.replace("rate_burst = 20", "rate_burst = 1000").replace(
        "rate_sustained = 18", "rate_sustained = 1000"
    ))
    async with run_sandbox(
        locations={LOCATION: TOKEN},
        limits=RateLimits(enforced=False),
        faults=Faults(fail_rate=0.3, hang_rate=0.05, reset_rate=0.1),
        seed=7,
    ) as sandbox:
        await _run_to_completion(sandbox, kafka_bootstrap, topic, 2, config)
        requests = list(sandbox.requests)
    assert _final_names(sandbox) == {f"user{u}@example.com": "v03" for u in range(25)}
    statuses = [r["status"] for r in requests]
    assert any(s is not None and s >= 500 for s in statuses)  # faults really happened
    assert {"hang", "reset"} <= {r["fault"] for r in requests}
    # Per contact, what HighLevel applied never went backwards.
    applied: dict[str, list[str]] = {}
    for request in requests:
        if request["status"] in (200, 201):
            body = request["body"]
            applied.setdefault(body["email"], []).append(body["firstName"])
    for versions in applied.values():
        assert versions == sorted(versions), versions


async def test_tag_mode_add_keeps_the_tags_a_contact_already_has(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    lead = {
        "type": "track",
        "userId": "lead-987",
        "event": "Lead Generated",
        "context": {"traits": {"email": "sam@example.com"}},
    }
    produce(
        kafka_bootstrap,
        topic,
        [
            (b"lead-987", orjson.dumps({**lead, "properties": {"lead_tag": "webinar"}})),
            (b"lead-987", orjson.dumps({**lead, "properties": {"lead_tag": "pricing"}})),
        ],
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[[integrations]]
id = "default"
location_id = "{LOCATION}"
access_token = {{ env = "GHL_ACCESS_TOKEN" }}
tag_mode = "add"
"""
    )
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        # The contact exists in HighLevel with a tag of its own, set by someone else.
        sandbox.state.upsert(
            sandbox.state.locations[LOCATION],
            {"locationId": LOCATION, "email": "sam@example.com", "tags": ["vip"]},
            0.0,
        )
        await _run_to_completion(sandbox, kafka_bootstrap, topic, 1, config)
        paths = [r["path"] for r in sandbox.requests]
        upsert_bodies = [r["body"] for r in sandbox.requests if r["path"] == "/contacts/upsert"]
    [contact] = sandbox.contacts(LOCATION)
    assert sorted(contact["tags"]) == ["pricing", "vip", "webinar"]
    assert all("tags" not in body for body in upsert_bodies)
    assert any(path.endswith("/tags") for path in paths)


TWO_INTEGRATIONS_ONE_LOCATION = f"""
[engine]
coalesce_window_ms = 0
max_in_flight = 64

[delivery]
rate_burst = 1000
rate_sustained = 1000
rate_interval_seconds = 1

[[integrations]]
id = "default"
location_id = "{LOCATION}"
access_token = {{ env = "GHL_ACCESS_TOKEN" }}

[[integrations]]
id = "second"
location_id = "{LOCATION}"
access_token = {{ env = "GHL_ACCESS_TOKEN" }}
"""


async def test_keys_and_integrations_sharing_an_email_never_race_into_two_contacts(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    # The live API can create two contacts for one new email when two upserts for it are in
    # flight together; the sandbox's race mode does it every time (each upsert that finds no
    # contact waits 150 ms, then creates one without looking again). Per person, an anonymous
    # key and an identified key carry the same email, and two integrations of one location
    # both receive every event: four upserts for one new email, all ready at once.
    topic = new_topic(partitions=1)
    people = 15
    records = []
    for person in range(people):
        traits = {"email": f"person{person}@example.com", "first_name": "Pat"}
        for key, who in ((f"anon-{person}", "anonymousId"), (f"user-{person}", "userId")):
            event = {"type": "identify", who: key, "messageId": f"m-{key}", "traits": traits}
            records.append((key.encode(), orjson.dumps(event)))
    produce(kafka_bootstrap, topic, records)
    config = tmp_path / "config.toml"
    config.write_text(TWO_INTEGRATIONS_ONE_LOCATION)
    async with run_sandbox(
        locations={LOCATION: TOKEN},
        limits=RateLimits(enforced=False),
        duplicates=DuplicateSettings(race_window_ms=150),
    ) as sandbox:
        # GHL_CONFIG: the audit reads both integrations too
        await _run_to_completion(
            sandbox, kafka_bootstrap, topic, 1, config, extra_env={"GHL_CONFIG": str(config)}
        )
        upserts = [r for r in sandbox.requests if r["path"] == "/contacts/upsert"]
        contacts = sandbox.contacts(LOCATION)
    assert len(upserts) == 4 * people  # every event of both integrations was sent
    assert all(r["status"] in (200, 201) for r in upserts)
    emails = sorted(str(c["email"]) for c in contacts)
    assert emails == sorted(f"person{p}@example.com" for p in range(people)), (
        f"{len(contacts)} contacts for {people} emails: the upserts raced"
    )


async def test_a_permanent_dnd_is_kept_and_the_rest_of_the_update_applied(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    # Sam replied STOP: HighLevel made the SMS DND permanent. An event with marketing consent
    # (dnd: false) is refused whole by HighLevel; the consumer sends it again without dnd.
    topic = new_topic(partitions=1)
    event = {
        "type": "identify",
        "userId": "lead-987",
        "messageId": "m-dnd-1",
        "traits": {"email": "sam@example.com", "first_name": "Samantha"},
        "context": {"consent": {"canonical": {"marketing": True}}},
    }
    produce(kafka_bootstrap, topic, [(b"lead-987", orjson.dumps(event))])
    config = tmp_path / "config.toml"
    config.write_text(LIMITED)
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        sandbox.state.upsert(
            sandbox.state.locations[LOCATION],
            {"locationId": LOCATION, "email": "sam@example.com", "firstName": "Sam"},
            0.0,
        )
        async with aiohttp.ClientSession() as http, http.put(
            f"{sandbox.url}/_sandbox/dnd",
            json={
                "locationId": LOCATION,
                "email": "sam@example.com",
                "dndSettings": {"SMS": {"status": "permanent"}},
            },
        ) as response:
            assert response.status == 200, await response.text()
        [stderr] = await _run_to_completion(sandbox, kafka_bootstrap, topic, 1, config)
        upserts = [r for r in sandbox.requests if r["path"] == "/contacts/upsert"]
        [contact] = sandbox.contacts(LOCATION)
    assert [r["status"] for r in upserts] == [400, 200]
    assert upserts[0]["body"]["dnd"] is False
    assert "dnd" not in upserts[1]["body"]
    assert contact["firstName"] == "Samantha"  # the rest of the update was applied
    assert contact["dndSettings"]["SMS"]["status"] == "permanent"
    log = stderr.decode()
    assert "HighLevel keeps the permanent SMS DND of contact s***@example.com" in log
    assert "sam@example.com" not in log
    assert TOKEN not in log


async def test_tags_and_converted_custom_values_are_not_reported_as_ignored(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    # HighLevel stores tags lowercased and converts a custom value by its field's type: the
    # consumer sends tags as HighLevel keeps them, and a "12" stored as 12 is applied, not
    # "silently ignored" (issue 18).
    topic = new_topic(partitions=1)
    event = {
        "type": "track",
        "userId": "lead-987",
        "messageId": "m-tags-1",
        "event": "Lead Generated",
        "context": {"traits": {"email": "sam@example.com"}},
        "properties": {"lead_tag": " Webinar ", "score": "12"},
    }
    produce(kafka_bootstrap, topic, [(b"lead-987", orjson.dumps(event))])
    config = tmp_path / "config.toml"
    config.write_text(
        LIMITED
        + f"""
[[integrations]]
id = "default"
location_id = "{LOCATION}"
access_token = {{ env = "GHL_ACCESS_TOKEN" }}

[[integrations.fields.custom]]
id = "cfScore"
source = "properties.score"
"""
    )
    score = FieldDefinition(id="cfScore", data_type="NUMERICAL", field_key="contact.score")
    async with run_sandbox(locations={LOCATION: TOKEN}, custom_fields=[score]) as sandbox:
        [stderr] = await _run_to_completion(sandbox, kafka_bootstrap, topic, 1, config)
        [upsert] = [r for r in sandbox.requests if r["path"] == "/contacts/upsert"]
        [contact] = sandbox.contacts(LOCATION)
    assert upsert["body"]["tags"] == ["webinar"]
    assert upsert["body"]["customFields"] == [{"id": "cfScore", "field_value": "12"}]
    assert contact["tags"] == ["webinar"]
    assert contact["customFields"] == [{"id": "cfScore", "value": 12}]
    assert "did not apply" not in stderr.decode()
