"""``ghl-consumer trace`` (README, "Tracing one person") against ``run``, a real broker and the
sandbox: the guide's flow plus a rejected, a dropped, a duplicate, a parked and a coalesced event
for several users, each one's journey checked line by line; and trace stays an outsider."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from consumer.core.normalise import mask_phone
from consumer.sandbox.server import run_sandbox
from tests.harness.guide import GUIDE_IDENTIFY, GUIDE_LEAD, GUIDE_UPSERT, LOCATION
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    run_command,
    start_consumer,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "pit-trace-token"
LEGACY_LOCATION = "legacyLocation0000001"
PARTITIONS = 4

CONFIG = f"""
[engine]
coalesce_window_ms = 1500
commit_interval_ms = 200

[delivery]
unauthorized_probe_seconds = 3600

[[integrations]]
id = "default"
location_id = "{LOCATION}"
access_token = {{ env = "GHL_ACCESS_TOKEN" }}

[[integrations]]
id = "legacy"
location_id = "{LEGACY_LOCATION}"
access_token = {{ env = "LEGACY_TOKEN" }}

[integrations.routing]
field = "context.app.name"
values = ["legacy"]
"""

SAM = {**GUIDE_IDENTIFY, "messageId": "m-sam-1"}
SAM_LEAD = {**GUIDE_LEAD, "messageId": "m-sam-2"}
DROPPED = {"type": "track", "userId": "drop-1", "event": "Page Viewed", "messageId": "m-drop"}
DUPLICATE = {
    "type": "identify",
    "userId": "dup-1",
    "messageId": "m-dup",
    "traits": {"email": "dup@example.com"},
}
PHONE_ONLY = {
    "type": "identify",
    "userId": "phone-1",
    "messageId": "m-phone",
    "traits": {"phone": "+14155550123", "firstName": "Pat"},
}
PARKED = {
    "type": "identify",
    "userId": "park-1",
    "messageId": "m-park",
    "traits": {"email": "park@example.com"},
    "context": {"app": {"name": "legacy"}},
}


def _members(bootstrap: str, group: str) -> list[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [future] = admin.describe_consumer_groups([group]).values()
    return sorted(m.member_id for m in future.result(timeout=30).members)


def _groups(bootstrap: str) -> set[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return {g.group_id for g in admin.list_consumer_groups().result(timeout=30).valid}


async def _trace(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    code, out, err = await run_command(env, "trace", "--json", *args)
    assert code == 0, err
    document = orjson.loads(out)
    records: list[dict[str, Any]] = document["records"]
    return records


def _where(topic: str, record: dict[str, Any]) -> str:
    return f"{topic}/{record['partition']}/{record['offset']}"


async def test_trace_gives_each_persons_journey_and_never_joins_the_group(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=PARTITIONS)
    group = f"trace-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "consumer.toml"
    config.write_text(CONFIG)
    # Produced by librdkafka's default partitioner (CRC-32 of the key): trace reads only the
    # partition it computes for each key (--partitioner crc32 below proves the two agree).
    produce(
        kafka_bootstrap,
        topic,
        [
            (b"lead-987", orjson.dumps(SAM)),
            (b"lead-987", orjson.dumps(SAM_LEAD)),
            (b"rej-1", b'{"type": "identify", "userId": '),
            (b"drop-1", orjson.dumps(DROPPED)),
            (b"dup-1", orjson.dumps(DUPLICATE)),
            (b"dup-1", orjson.dumps(DUPLICATE)),
            (b"park-1", orjson.dumps(PARKED)),
            (b"phone-1", orjson.dumps(PHONE_ONLY)),
        ],
    )
    async with run_sandbox(
        locations={LOCATION: TOKEN, LEGACY_LOCATION: "the-legacy-token"}
    ) as sandbox:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "GHL_ACCESS_TOKEN": TOKEN,
            "LEGACY_TOKEN": "a-revoked-token",  # 401: park-1's legacy upsert parks
            "GHL_API_BASE_URL": sandbox.url,
            "GHL_CONFIG": str(config),
        }
        consumer = await start_consumer(env)
        try:
            ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
            async with asyncio.timeout(60):
                while any(
                    committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)[p] < end
                    for p, end in ends.items()
                    if end
                ):
                    await asyncio.sleep(0.3)
            await asyncio.sleep(1.0)  # delivery records flush every 200 ms
            members = _members(kafka_bootstrap, group)
            groups = _groups(kafka_bootstrap)
            committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
            [contact] = [
                c for c in sandbox.contacts(LOCATION) if c.get("email") == "sam@example.com"
            ]

            # The guide's flow: two events coalesced into one call, the contact as sent.
            sam = await _trace(env, "--user-id", "lead-987", "--partitioner", "crc32")
            assert [r["mapping"][0]["action"] for r in sam] == ["upsert", "upsert"]
            assert all(r["committed"] is True for r in sam)
            [call] = sam[0]["next"]
            assert call["outcome"] == "call"
            assert (call["endpoint"], call["verdict"]) == ("upsert", "delivered")
            assert call["status"] in (200, 201)  # 201: HighLevel created the contact
            assert call["contactId"] == contact["id"]
            assert call["with"] == [_where(topic, sam[1])]
            assert sam[1]["next"][0]["with"] == [_where(topic, sam[0])]
            assert sam[1]["mapping"][0]["payload"]["email"] == "s***@example.com"
            assert sam[1]["mapping"][0]["payload"]["tags"] == GUIDE_UPSERT["tags"]

            # Rejected: the reason, and where its dead letter is.
            [rejected] = await _trace(env, "--user-id", "rej-1")
            [decision] = rejected["mapping"]
            assert (decision["action"], decision["reason"]) == ("reject", "invalid_json")
            [letter] = rejected["next"]
            assert (letter["outcome"], letter["reason"]) == ("dead_lettered", "invalid_json")
            assert letter["at"].startswith(f"{group}.dead-letter/")

            # Dropped: not mapped, done without a call.
            [dropped] = await _trace(env, "--user-id", "drop-1")
            assert dropped["mapping"] == [
                {"action": "drop", "reason": "not_mapped", "integration": "default"}
            ]
            assert dropped["next"] == [{"outcome": "dropped"}]
            assert dropped["committed"] is True

            # Duplicate: the second copy of a messageId is dropped.
            first, second = await _trace(env, "--user-id", "dup-1")
            assert first["next"][0]["verdict"] == "delivered"
            assert [m["reason"] for m in second["mapping"]] == ["duplicate"]
            assert second["next"] == [{"outcome": "dropped"}]

            # Parked: delivered to the default location, refused (401) and parked for legacy.
            [parked] = await _trace(env, "--user-id", "park-1")
            assert [m["integration"] for m in parked["mapping"]] == ["default", "legacy"]
            outcomes = sorted(
                (n["outcome"], n.get("verdict") or n.get("reason")) for n in parked["next"]
            )
            assert outcomes == [
                ("call", "delivered"), ("call", "unauthorized"), ("parked", "unauthorized")
            ]
            [park] = [n for n in parked["next"] if n["outcome"] == "parked"]
            assert park["replayed"] is False
            assert park["at"].startswith(f"{group}.parking/")

            # A window: from long ago, the same records (the broker's time index gives the
            # start offset); up to long ago, none.
            since = await _trace(env, "--user-id", "lead-987", "--since", "2000-01-01")
            assert [r["offset"] for r in since] == [r["offset"] for r in sam]
            code, out, err = await run_command(
                env, "trace", "--user-id", "lead-987", "--until", "2000-01-01T00:00Z"
            )
            assert (code, out) == (1, "")
            assert "no records found" in err

            # By email (the profile changelog) and by messageId: the same records.
            by_email = await _trace(env, "--email", "SAM@example.com")
            assert [r["offset"] for r in by_email] == [r["offset"] for r in sam]
            [by_message] = await _trace(env, "--message-id", "m-sam-2")
            assert by_message["offset"] == sam[1]["offset"]

            # --highlevel: the contact the sandbox holds, nothing differs from what was sent.
            code, out, err = await run_command(
                env, "trace", "--user-id", "lead-987", "--highlevel", "--json"
            )
            assert code == 0, err
            [found] = orjson.loads(out)["highlevel"]
            assert (found["integration"], found["by"]) == ("default", "email")
            assert found["differs"] == []
            assert found["contact"]["email"] == "s***@example.com"
            # No email sent: HighLevel is searched by phone (``number``).
            code, out, err = await run_command(
                env, "trace", "--user-id", "phone-1", "--highlevel", "--json"
            )
            assert code == 0, err
            [found] = orjson.loads(out)["highlevel"]
            assert (found["by"], found["status"], found["differs"]) == ("phone", 200, [])
            assert found["contact"]["firstName"] != "Pat"  # masked
            assert "+14155550123" not in out
            assert found["contact"]["phone"] == mask_phone("+14155550123")

            # Text, masked by default: one line per record, no email in clear anywhere.
            code, out, err = await run_command(env, "trace", "--email", "sam@example.com")
            assert code == 0, err
            assert len(out.splitlines()) == 2
            assert "sam@example.com" not in out + err
            assert "s***@example.com" in out
            assert "committed" in out
            assert "delivered" in out
            code, clear, _ = await run_command(
                env, "trace", "--user-id", "lead-987", "--show-personal-data"
            )
            assert code == 0
            assert "sam@example.com" in clear

            # Nothing about the group changed: same members, same commits, no new group.
            assert _members(kafka_bootstrap, group) == members
            assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == committed
            # (groups of earlier tests may expire meanwhile: only a new group would be trace's)
            assert _groups(kafka_bootstrap) <= groups
        finally:
            consumer.send_signal(signal.SIGTERM)
            _, stderr = await consumer.communicate()
        assert consumer.returncode == 0, stderr.decode()[-2000:]


async def test_trace_of_nobody_says_so(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"trace-{uuid.uuid4().hex[:8]}",
        "GHL_LOCATION_ID": LOCATION,
    }
    code, out, err = await run_command(env, "trace", "--user-id", "nobody")
    assert (code, out) == (1, "")
    assert "no records found" in err
    code, _, err = await run_command(env, "trace", "--email", "not-an-email")
    assert code == 2
    assert "--email" in err
