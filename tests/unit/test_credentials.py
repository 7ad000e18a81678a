"""The engine's credentials from the settings (``SettingsCredentials``): a token given as
``{ file = ... }`` follows its file, so a rotated Private Integration token needs no restart
(issue 15, finding 7)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from consumer.commands.credentials import SettingsCredentials
from consumer.config import Settings, load_settings
from tests.harness.clock import ManualClock

CONFIG = """
[[integrations]]
id = "filed"
location_id = "L1"
access_token = {{ file = "{path}" }}

[[integrations]]
id = "env"
location_id = "L2"
access_token = {{ env = "TOKEN_ENV" }}
"""




def settings(tmp_path: Path, token_file: Path) -> Settings:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(path=token_file))
    return load_settings(str(config), {"TOKEN_ENV": "pit-env"})


def rotate(path: Path, token: str) -> None:
    """Replace the file as Kubernetes does: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(token + "\n")
    os.replace(fresh, path)


async def test_a_changed_token_file_is_read_at_most_once_per_interval(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("pit-old\n")
    clock = ManualClock(100.0)
    credentials = SettingsCredentials(settings(tmp_path, token_file).integrations, clock=clock)
    assert await credentials.token("filed", "L") == "pit-old"
    assert await credentials.token("env", "L") == "pit-env"
    rotate(token_file, "pit-new")
    clock.now += 0.5
    assert await credentials.token("filed", "L") == "pit-old"  # checked less than a second ago
    clock.now += 0.5
    assert await credentials.token("filed", "L") == "pit-new"
    assert await credentials.token("env", "L") == "pit-env"


async def test_reread_reads_the_file_at_once(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("pit-old")
    clock = ManualClock(100.0)
    credentials = SettingsCredentials(settings(tmp_path, token_file).integrations, clock=clock)
    assert await credentials.token("filed", "L") == "pit-old"
    rotate(token_file, "pit-new")
    assert await credentials.reread("filed", "L", "") == "pit-new"
    assert await credentials.token("filed", "L") == "pit-new"
    assert await credentials.reread("env", "L", "") == "pit-env"
    with pytest.raises(KeyError):
        await credentials.reread("unknown", "L", "")


async def test_an_emptied_or_missing_file_keeps_the_last_token_and_never_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("pit-old")
    credentials = SettingsCredentials(settings(tmp_path, token_file).integrations)
    caplog.set_level(logging.INFO)
    token_file.write_text("")
    assert await credentials.reread("filed", "L", "") == "pit-old"
    token_file.unlink()
    assert await credentials.reread("filed", "L", "") == "pit-old"
    rotate(token_file, "pit-new")
    assert await credentials.reread("filed", "L", "") == "pit-new"
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"file {token_file} is empty" in m for m in messages)
    assert any("No such file" in m for m in messages)
    assert any(f"a new token read from file {token_file}" in m for m in messages)
    assert not any("pit-" in m for m in messages)
