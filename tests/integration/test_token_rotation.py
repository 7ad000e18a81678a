"""A rotated Private Integration token, given as ``{ file = ... }`` (a mounted Kubernetes
Secret), is picked up by a running consumer: nothing parks, every event is delivered, no
restart (issue 15, finding 7)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from consumer.sandbox.server import Sandbox, run_sandbox
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    start_consumer,
)

pytestmark = pytest.mark.integration

LOCATION = "loc-rotating"
TOKENS = ("pit-rotating-token-1", "pit-rotating-token-2", "pit-rotating-token-3")
CONFIG = """
[engine]
coalesce_window_ms = 0

[delivery]
unauthorized_probe_seconds = 60

[[integrations]]
id = "rotating"
location_id = "{location}"
access_token = {{ file = "{path}" }}
"""


def batch(name: str, count: int) -> list[tuple[bytes, bytes]]:
    records = []
    for user in range(count):
        key = f"{name}-{user}"
        traits = {"email": f"{key}@example.com"}
        event = {"type": "identify", "userId": key, "messageId": key, "traits": traits}
        records.append((key.encode(), orjson.dumps(event)))
    return records


async def delivered(sandbox: Sandbox, count: int) -> None:
    async with asyncio.timeout(30):
        while len(sandbox.contacts(LOCATION)) < count:
            await asyncio.sleep(0.1)


async def test_a_rotated_token_file_is_followed_and_nothing_parks(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic()
    group = f"rotation-{uuid.uuid4().hex[:8]}"
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS[0] + "\n")
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(location=LOCATION, path=token_file))

    async with run_sandbox(locations={LOCATION: TOKENS[0]}) as sandbox:
        process = await start_consumer(
            {
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "KAFKA_TOPICS": topic,
                "KAFKA_GROUP_ID": group,
                "GHL_API_BASE_URL": sandbox.url,
            },
            "--config",
            str(config),
        )
        try:
            produce(kafka_bootstrap, topic, batch("before", 5))
            await delivered(sandbox, 5)

            # A rotation with a grace period: the new token is granted and written (a new file
            # renamed over the old one, as the kubelet does); the old one is revoked after the
            # once-a-second check. No request is ever refused.
            sandbox.state.grant_token(LOCATION, TOKENS[1])
            fresh = tmp_path / "token.new"
            fresh.write_text(TOKENS[1] + "\n")
            os.replace(fresh, token_file)
            await asyncio.sleep(1.5)
            sandbox.state.revoke_token(TOKENS[0])
            produce(kafka_bootstrap, topic, batch("graced", 5))
            await delivered(sandbox, 10)
            assert sandbox.unauthorized == 0

            # The old token revoked at once, by a change the stat check cannot see (same size,
            # inode and mtime): the 401 makes the consumer read the file anew, and the upsert
            # is sent again with the new token instead of parking.
            stat = token_file.stat()
            sandbox.state.grant_token(LOCATION, TOKENS[2])
            with token_file.open("r+") as file:
                file.write(TOKENS[2] + "\n")
            os.utime(token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            sandbox.state.revoke_token(TOKENS[1])
            produce(kafka_bootstrap, topic, batch("revoked", 5))
            await delivered(sandbox, 15)
            assert sandbox.unauthorized >= 1

            ends = end_offsets(kafka_bootstrap, topic, 1)
            async with asyncio.timeout(30):
                while committed_offsets(kafka_bootstrap, group, topic, 1) != ends:
                    await asyncio.sleep(0.2)
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr_bytes = await process.communicate()
    stderr = stderr_bytes.decode()
    assert process.returncode == 0, stderr[-3000:]
    assert read_all(kafka_bootstrap, f"{group}.parking", expect=1, seconds=10) == []
    assert "parking its events" not in stderr
    assert stderr.count(f"a new token read from file {token_file}") == 2
    assert not any(token in stderr for token in TOKENS)
