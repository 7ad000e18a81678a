"""Identity stitching across partitions (issue 19, ``[profiles] state_dir``), against a real
broker, the sandbox over HTTP and two ``ghl-consumer run`` members, each with its own state
directory: an anonymous id's phone, remembered in the partition of its events on one member,
reaches the upsert of the user who logged in with it, whose events are in a partition of the
other member, through the stitch topic."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from itertools import count
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.kafka.partitioner import partition_for
from consumer.sandbox import run_sandbox
from consumer.sandbox.server import Sandbox
from consumer.sandbox.state import Contact
from tests.integration.consumer_harness import (
    ProcessLog,
    committed_offsets,
    end_offsets,
    metrics_url,
    produce,
    start_consumer,
    stop_process,
)
from tests.integration.test_replay_co_partitioned import (
    consumed,
    group_members,
    owned,
    partition_count,
    scrape,
)

pytestmark = pytest.mark.integration

LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-stitch-token"
PARTITIONS = 6
PHONE = "+447700900123"


def key_in(partitions: frozenset[int], prefix: str) -> str:
    """A key the test producer (librdkafka's default partitioner: CRC-32) puts in one of
    ``partitions``."""
    for n in count():
        key = f"{prefix}-{n}"
        if partition_for(key.encode(), PARTITIONS, "crc32") in partitions:
            return key
    raise AssertionError("unreachable")


@pytest.mark.slow
async def test_an_anonymous_phone_on_one_member_reaches_the_users_upsert_on_the_other(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    source = new_topic(partitions=PARTITIONS)
    group = f"st-{uuid.uuid4().hex[:8]}"
    stitches = f"{group}.stitch"  # created by the members at start-up, co-partitioned
    configs = []
    for n in range(2):
        config = tmp_path / f"config-{n}.toml"
        config.write_text(f'[profiles]\nstate_dir = "{tmp_path / f"state-{n}"}"\n')
        configs.append(config)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": source,
        "KAFKA_GROUP_ID": group,
        "GHL_LOCATION_ID": LOCATION,
        "GHL_ACCESS_TOKEN": TOKEN,
    }
    async with (
        run_sandbox(locations={LOCATION: TOKEN}) as sandbox,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        run_env = {**env, "GHL_API_BASE_URL": sandbox.url}
        members = [
            ProcessLog(await start_consumer(run_env, "--config", str(config)))
            for config in configs
        ]
        try:
            async with asyncio.timeout(60):
                for member in members:
                    await member.wait_for("metrics on http://")
            urls = [metrics_url(member) for member in members]
            async with asyncio.timeout(90):  # both joined, the partitions shared between them
                while True:
                    owners = [owned(await scrape(http, url), source) for url in urls]
                    if all(owners) and sorted(owners[0] | owners[1]) == list(range(6)):
                        break
                    for member in members:
                        assert member.process.returncode is None, member.text()[-3000:]
                    await asyncio.sleep(0.5)
            assert partition_count(kafka_bootstrap, stitches) == PARTITIONS

            anonymous = key_in(owners[0], "anon")  # partition A, on the first member
            user = key_in(owners[1], "user")  # partition B, on the second
            a = partition_for(anonymous.encode(), PARTITIONS, "crc32")
            b = partition_for(user.encode(), PARTITIONS, "crc32")
            page = {  # not mapped: only remembered in A's profiles
                "type": "page",
                "anonymousId": anonymous,
                "messageId": "m-page",
                "context": {"traits": {"phone": PHONE}},
            }
            produce(kafka_bootstrap, source, [(anonymous.encode(), orjson.dumps(page))])
            async with asyncio.timeout(60):
                while committed_offsets(kafka_bootstrap, group, source, 6).get(a) != 1:
                    await asyncio.sleep(0.3)
            login = {
                "type": "identify",
                "userId": user,
                "anonymousId": anonymous,
                "messageId": "m-login",
                "traits": {"email": f"{user}@example.com"},
            }
            produce(kafka_bootstrap, source, [(user.encode(), orjson.dumps(login))])
            # the request (to A, and to murmur2's partition if another) and then the merge
            # (to B) are read and committed in the stitch group
            async with asyncio.timeout(60):
                while True:
                    ends = end_offsets(kafka_bootstrap, stitches, PARTITIONS)
                    done = committed_offsets(kafka_bootstrap, stitches, stitches, PARTITIONS)
                    if ends[a] >= 1 and ends[b] >= 1 and all(
                        done.get(p, 0) == end for p, end in ends.items() if end
                    ):
                        break
                    for member in members:
                        assert member.process.returncode is None, member.text()[-3000:]
                    await asyncio.sleep(0.3)
            contact = _contact(sandbox, f"{user}@example.com")
            assert contact is not None
            assert "phone" not in contact.fields  # the login was mapped before the merge

            lead = {"type": "track", "event": "Lead Generated", "userId": user, "messageId": "m3"}
            produce(kafka_bootstrap, source, [(user.encode(), orjson.dumps(lead))])
            async with asyncio.timeout(60):
                while (found := _contact(sandbox, f"{user}@example.com")) is None or (
                    "phone" not in found.fields
                ):
                    await asyncio.sleep(0.3)
            assert found.fields["phone"] == PHONE
            first, second = [await scrape(http, url) for url in urls]
            # each step counted by the member that took it: asked by the user's partition's
            # owner, answered by the anonymous id's, folded back by the user's
            assert counted(second, "ghl_stitch_requests_total", direction="sent") >= 1
            assert counted(first, "ghl_stitch_requests_total", direction="handled") >= 1
            assert counted(first, "ghl_stitch_merges_total", result="sent") == 1
            assert counted(second, "ghl_stitch_merges_total", result="folded") == 1
            # the stitch feed's records under their own topic label, as the replay feed's
            assert consumed(first, stitches) >= 1
            assert consumed(second, stitches) >= 1
            assert len(sandbox.state.locations[LOCATION].contacts) == 1  # none for the page
            assert group_members(kafka_bootstrap, stitches) == 0  # assigned, never subscribed
        finally:
            codes = [await stop_process(member.process) for member in members]
            logs = [await asyncio.wait_for(member.finished(), 30) for member in members]
    assert codes == [0, 0], [member.text()[-3000:] for member in members]
    assert logs == [0, 0]
    for member in members:
        assert TOKEN not in member.text()
        assert PHONE not in member.text()


def counted(metrics: str, name: str, **labels: str) -> float:
    """The sample ``name`` with ``labels`` in a scrape (0 when absent)."""
    wanted = {name: labels}
    return next(
        (
            sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if {sample.name: sample.labels} == wanted
        ),
        0.0,
    )


def _contact(sandbox: Sandbox, email: str) -> Contact | None:
    contacts = sandbox.state.locations[LOCATION].contacts.values()
    return next((c for c in contacts if c.fields.get("email") == email), None)
