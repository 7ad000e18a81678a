"""`make kafka-up` / `make kafka-down`: idempotent, reuses a running broker, fails loudly."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.kafka_broker import ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out


def _make(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_STATE_DIR": str(tmp_path / "kafka"),
    }


def test_up_up_down_down_is_idempotent_and_reuses_the_running_broker(tmp_path: Path) -> None:
    env = _env(tmp_path, free_port())
    try:
        first = _make("kafka-up", env)
        assert first.returncode == 0, first.stderr
        assert "ready on 127.0.0.1" in first.stderr
        log_line = next(line for line in first.stderr.splitlines() if "log:" in line)
        assert str(tmp_path / "kafka" / "broker.log") in log_line
        pid = (tmp_path / "kafka" / "broker.pid").read_text()

        second = _make("kafka-up", env)
        assert second.returncode == 0, second.stderr
        assert "reusing the broker" in second.stderr
        assert (tmp_path / "kafka" / "broker.pid").read_text() == pid
    finally:
        down = _make("kafka-down", env)
    assert down.returncode == 0, down.stderr
    assert "stopped the broker" in down.stderr
    again = _make("kafka-down", env)
    assert again.returncode == 0, again.stderr
    assert "no broker of ours" in again.stderr


def test_a_broker_that_cannot_start_prints_the_log_tail_and_exits_non_zero(
    tmp_path: Path,
) -> None:
    # Something that is not Kafka holds the port: the broker cannot bind it and dies.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        env = _env(tmp_path, squatter.getsockname()[1])
        result = _make("kafka-up", env)
    assert result.returncode != 0
    assert "last lines of" in result.stderr
    assert "Address already in use" in result.stderr or "BindException" in result.stderr
    assert not (tmp_path / "kafka" / "broker.pid").exists()
