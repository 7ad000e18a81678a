"""The README's first command: `ghl-consumer demo` runs the pipeline end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
