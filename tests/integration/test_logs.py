"""`ghl-consumer run`'s log as a container sees it: JSON lines, the fields of each line as keys,
librdkafka's lines as records, personal data masked (README, "Logs")."""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from collections.abc import Callable

import orjson
import pytest

from consumer.sandbox.server import run_sandbox
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    start_consumer,
)
from tests.kafka_broker import free_port

pytestmark = pytest.mark.integration

LOCATION, TOKEN = "loc-logs", "pit-LogsCanary/7e1f+3Qa="


def identify(user: int) -> bytes:
    return orjson.dumps(
        {
            "type": "identify",
            "userId": f"user-{user}",
            "traits": {"email": f"logs.user{user}@example.com", "phone": f"+1 415 555 {user:04d}"},
        }
    )


async def _run(kafka_bootstrap: str, topic: str, *args: str) -> tuple[int, str]:
    group = f"logs-{uuid.uuid4().hex[:8]}"
    ends = end_offsets(kafka_bootstrap, topic, 3)
    # A broker address nobody listens on, first: librdkafka logs its failed connections.
    dead = f"127.0.0.1:{free_port()}"
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        process = await start_consumer(
            {
                "KAFKA_BOOTSTRAP_SERVERS": f"{dead},{kafka_bootstrap}",
                "KAFKA_TOPICS": topic,
                "KAFKA_GROUP_ID": group,
                "GHL_LOCATION_ID": LOCATION,
                "GHL_ACCESS_TOKEN": TOKEN,
                "GHL_API_BASE_URL": sandbox.url,
            },
            *args,
        )
        try:
            async with asyncio.timeout(90):
                while committed_offsets(kafka_bootstrap, group, topic, 3) != ends:
                    assert process.returncode is None
                    await asyncio.sleep(0.5)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-3000:]
    return process.returncode, stderr.decode()


@pytest.fixture
def topic(kafka_bootstrap: str, new_topic: Callable[..., str]) -> str:
    name = new_topic(partitions=3)
    produce(kafka_bootstrap, name, [(f"user-{u}".encode(), identify(u)) for u in range(12)])
    return name


async def test_run_logs_json_lines_with_fields_and_librdkafka_records(
    kafka_bootstrap: str, topic: str
) -> None:
    _, log = await _run(kafka_bootstrap, topic, "--log-level", "DEBUG")
    lines = [orjson.loads(line) for line in log.splitlines()]  # stderr is no terminal: JSON
    keys = {"message", "level", "logger", "timestamp"}
    assert [line for line in lines if not keys <= line.keys()] == []
    assigned = [line for line in lines if line["message"] == "kafka partitions assigned"]
    assert assigned, log[-3000:]
    shown = {p for line in assigned for p in line["partitions"]}
    assert {f"{topic}[{p}]" for p in range(3)} <= shown  # and the parking topic's
    rdkafka = [
        line
        for line in lines
        if line["logger"] == "consumer.kafka.librdkafka" and "facility" in line
    ]
    assert rdkafka, "librdkafka's lines reach the pipeline"
    # librdkafka's name of the client: client.id#consumer-1, #producer-2, ...
    assert all(re.fullmatch(r"[\w.-]+#(consumer|producer)-\d+", line["client"]) for line in rdkafka)
    assert not any(line["message"].startswith("[thrd:") for line in rdkafka)
    assert any("broker" in line for line in rdkafka)
    assert TOKEN not in log
    assert "logs.user3@example.com" not in log
    assert "4155550003" not in log.replace(" ", "")


async def test_run_logs_console_lines_on_request(kafka_bootstrap: str, topic: str) -> None:
    _, log = await _run(kafka_bootstrap, topic, "--log-format", "console")
    assigned = [line for line in log.splitlines() if "kafka partitions assigned" in line]
    assert assigned, log[-3000:]
    assert f"'{topic}[0]'" in " ".join(assigned)
    assert not log.lstrip().startswith("{")
