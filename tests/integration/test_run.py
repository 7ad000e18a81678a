"""`ghl-consumer run` end to end: a real broker, the sandbox over HTTP, the real process."""

from __future__ import annotations

import asyncio
import signal
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from consumer.sandbox.server import run_sandbox
from tests.integration.consumer_harness import (
    ProcessLog,
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    run_command,
    start_consumer,
)
from tests.kafka_broker import free_port

pytestmark = pytest.mark.integration

LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-e2e-secret-token"


def identify(user: int, version: int) -> bytes:
    return orjson.dumps(
        {
            "type": "identify",
            "userId": f"user-{user}",
            "messageId": f"m-{user}-{version}",
            "traits": {
                "email": f"user{user}@example.com",
                "first_name": f"v{version}",
                "phone": f"+1 415 555 {user:04d}",
            },
            "context": {"consent": {"marketing": "granted"}},
        }
    )


async def test_run_delivers_commits_dead_letters_and_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=3)
    group = f"e2e-{uuid.uuid4().hex[:8]}"
    dead_letters = f"{group}.dead-letter"
    records: list[tuple[bytes | None, bytes | None]] = []
    for version in range(3):
        for user in range(20):
            records.append((f"user-{user}".encode(), identify(user, version)))
            records.append(
                (
                    f"user-{user}".encode(),
                    orjson.dumps({"type": "page", "userId": f"user-{user}", "name": "Home"}),
                )
            )
    records.append((b"user-0", b"{broken json"))
    total = produce(kafka_bootstrap, topic, records)
    ends = end_offsets(kafka_bootstrap, topic, 3)
    assert sum(ends.values()) == total

    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        process = await start_consumer(
            {
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "KAFKA_TOPICS": topic,
                "KAFKA_GROUP_ID": group,
                "GHL_LOCATION_ID": LOCATION,
                "GHL_ACCESS_TOKEN": TOKEN,
                "GHL_API_BASE_URL": sandbox.url,
            }
        )
        try:
            async with asyncio.timeout(90):
                while committed_offsets(kafka_bootstrap, group, topic, 3) != ends:
                    assert process.returncode is None, await process.stderr.read()  # type: ignore[union-attr]
                    await asyncio.sleep(0.5)
            contacts = sandbox.contacts(LOCATION)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    log = stderr.decode()
    assert TOKEN not in log
    assert "user0@example.com" not in log  # personal data never logged in clear

    # Every contact ends in its newest state, with consent mapped to dnd.
    assert len(contacts) == 20
    assert {c["firstName"] for c in contacts} == {"v2"}
    assert all(c["dnd"] is False for c in contacts)
    # The poison record is in the dead-letter topic with its reason.
    [dead] = read_all(kafka_bootstrap, dead_letters, expect=1)
    headers = dict(dead.headers() or [])
    assert dead.value() == b"{broken json"
    assert headers["ghl.reason"] == b"invalid_json"
    assert headers["ghl.source.topic"] == topic.encode()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GHL_LOCATION_ID": LOCATION}, "GHL_ACCESS_TOKEN: required when GHL_LOCATION_ID is set"),
        (
            {"GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": TOKEN, "REDIS_URL": "localhost"},
            "REDIS_URL: expected a redis://, rediss://, unix:// URL, or empty",
        ),
        (  # the bearer token would travel in clear (issue 15)
            {
                "GHL_LOCATION_ID": LOCATION,
                "GHL_ACCESS_TOKEN": TOKEN,
                "GHL_API_BASE_URL": "http://gw.example:8080",
            },
            "GHL_API_BASE_URL: http:// only for a loopback host (127.0.0.1, ::1, localhost); "
            "use https://, or set highlevel.allow_insecure_http = true",
        ),
        (
            # The metrics port may face the cluster; the debugger only with a token.
            {"GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": TOKEN,
             "METRICS_HOST": "0.0.0.0", "DEBUG_HOST": "0.0.0.0"},
            "DEBUG_HOST: 0.0.0.0 is not a loopback address and the Event Debugger shows contact "
            "data: set DEBUG_ACCESS_TOKEN, or bind 127.0.0.1 and use kubectl port-forward",
        ),
    ],
)
async def test_run_refuses_bad_settings_before_consuming_anything(
    kafka_bootstrap: str, new_topic: Callable[..., str], env: dict[str, str], message: str
) -> None:
    """A waiting backlog, and a configuration error: the process exits 2 with one line naming
    the field (never the token), and the group never consumed or committed a record."""
    topic = new_topic(partitions=2)
    group = f"refused-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, [(b"user-1", identify(1, 0)), (b"user-2", identify(2, 0))])
    code, stdout, stderr = await run_command(
        {
            **env,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "METRICS_PORT": "0",
        },
        "run",
        seconds=30,
    )
    assert (code, stdout) == (2, "")
    assert stderr == f"ghl-consumer: configuration error: {message}\n"
    assert committed_offsets(kafka_bootstrap, group, topic, 2) == {0: -1001, 1: -1001}


@pytest.mark.slow
async def test_run_start_up_failures_are_one_line_naming_the_cause(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """What an operator meets first, each as one line and no traceback: a librdkafka setting
    librdkafka does not know (exit 2, naming the table), the metrics port already taken
    (exit 2, naming the address). No broker answering: the next test."""
    topic = new_topic()
    base = {
        "GHL_LOCATION_ID": LOCATION,
        "GHL_ACCESS_TOKEN": TOKEN,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"startup-{uuid.uuid4().hex[:8]}",
        "METRICS_PORT": "0",
    }
    config = tmp_path / "config.toml"
    config.write_text('[kafka.librdkafka]\n"sasl.passwd" = "hunter2"\n')
    code, _, stderr = await run_command(base, "run", "--config", str(config), seconds=60)
    assert code == 2
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        "ghl-consumer: configuration error: kafka.librdkafka: No such configuration property: "
        '"sasl.passwd"'
    )

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, stderr = await run_command({**base, "METRICS_PORT": str(port)}, "run", seconds=60)
    last = stderr.splitlines()[-1]
    assert code == 2
    assert "Traceback" not in stderr
    assert last.startswith(
        "ghl-consumer: configuration error: metrics.host/port (METRICS_HOST/METRICS_PORT): "
        f"cannot listen on 127.0.0.1:{port}: "
    )



async def unreachable_run(env: dict[str, str]) -> ProcessLog:
    """``run`` against a closed port: nothing listens there, every connection is refused."""
    port = free_port()
    consumer = await start_consumer(
        {
            **env,
            "GHL_LOCATION_ID": LOCATION,
            "GHL_ACCESS_TOKEN": TOKEN,
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        }
    )
    return ProcessLog(consumer)


async def test_kafka_unreachable_at_start_up_is_one_line_then_exit_after_the_timeout() -> None:
    started = asyncio.get_running_loop().time()
    log = await unreachable_run({"KAFKA_STARTUP_TIMEOUT_SECONDS": "7"})
    async with asyncio.timeout(10):
        await log.wait_for("kafka bootstrap servers 127.0.0.1:")
    said = asyncio.get_running_loop().time() - started
    async with asyncio.timeout(30):
        assert await log.finished() == 1
    took = asyncio.get_running_loop().time() - started
    lines = log.lines
    assert said < 10, log.text()
    assert 7 <= took < 20, (took, log.text())
    # "starting", the one warning, and the exit line: no wall of librdkafka lines
    assert len(lines) <= 3, log.text()
    assert "unreachable" in lines[-2]
    assert "retrying for up to 7 s" in lines[-2]
    assert "Connection refused" in lines[-2]
    assert lines[-1].startswith("ghl-consumer: kafka: bootstrap servers 127.0.0.1:")
    assert "unreachable for 7 s" in lines[-1]
    assert "Traceback" not in log.text()


async def test_with_no_start_up_timeout_run_waits_for_kafka_and_sigterm_ends_it() -> None:
    log = await unreachable_run({"KAFKA_STARTUP_TIMEOUT_SECONDS": "0"})
    async with asyncio.timeout(10):
        await log.wait_for("retrying until they answer")
    await asyncio.sleep(3)
    assert log.process.returncode is None  # still waiting
    log.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        assert await log.finished() == 0
    assert len(log.lines) <= 3, log.text()
    assert log.lines[-1] == (
        "ghl-consumer: stopped: a signal arrived while waiting for the Kafka bootstrap servers"
    )
