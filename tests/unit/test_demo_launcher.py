"""`ghl-consumer demo` without KAFKA_BOOTSTRAP_SERVERS starts the repository's broker launcher
(the one `make kafka-up` runs): its path must resolve from the command's module."""

from __future__ import annotations

import os

from consumer.commands.demo import LAUNCHER


def test_the_demo_finds_the_repositorys_kafka_launcher() -> None:
    assert LAUNCHER.is_file(), LAUNCHER
    assert os.access(LAUNCHER, os.X_OK)
    assert LAUNCHER.parent.parent.parent.joinpath("Makefile").is_file()
