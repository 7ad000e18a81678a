"""The README's first command: `ghl-consumer demo` runs the pipeline end to end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import orjson
import pytest

from tests.integration.consumer_harness import end_offsets, read_all
from tests.kafka_broker import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out


def test_demo_delivers_the_sample_stream_and_says_what_arrived(kafka_bootstrap: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "demo", "--events", "400", "--users", "40"],
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "produced      402 records" in out
    assert "consumed      402" in out
    assert "dead-lettered 2 (invalid_json 1, no_identifier 1)" in out
    contacts_line = next(line for line in out.splitlines() if line.startswith("sandbox"))
    assert int(contacts_line.split()[1]) > 0
    assert "demo-private-integration-token" not in out + result.stderr


def _load_command(topic: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "consumer", "demo", "--load", "--topic", topic, *args]


def _summary(out: str) -> tuple[int, float]:
    """(records, seconds) of the load generator's last line."""
    match = re.search(r"^load: produced (\d+) records in ([\d.]+)s .*; stopped$", out, re.M)
    assert match, out
    return int(match[1]), float(match[2])


def test_load_mode_produces_at_the_rate_until_sigterm(kafka_bootstrap: str) -> None:
    topic = f"load-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(
        _load_command(topic, "--rate", "40", "--poison-every", "25"),
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # printed once the topic exists
    assert first.startswith(f"load: producing 40 records/s to {topic}"), first
    time.sleep(4.0)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    produced, seconds = _summary(out)
    assert 3.5 <= seconds <= 6.0, seconds
    assert abs(produced / seconds - 40) <= 6, (produced, seconds)
    records = read_all(kafka_bootstrap, topic, expect=produced)
    assert len(records) == produced  # every record acknowledged before the exit
    assert sum(end_offsets(kafka_bootstrap, topic, 3).values()) == produced
    values = [record.value() or b"" for record in records]
    poison = [value for value in values if not value.startswith(b'{"userId"')]
    assert len(poison) == produced // 25  # one in 25: the dead letters of the dashboard
    kinds = {orjson.loads(value)["type"] for value in values if value not in poison}
    assert kinds == {"identify", "track"}


def test_load_mode_stops_after_events(kafka_bootstrap: str) -> None:
    topic = f"load-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        _load_command(topic, "--rate", "200", "--events", "100"),
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    produced, seconds = _summary(result.stdout)
    assert produced == 100
    assert 0.4 <= seconds <= 5.0
    assert sum(end_offsets(kafka_bootstrap, topic, 3).values()) == 100
