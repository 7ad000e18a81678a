"""Fixtures shared by every test: the session's Kafka broker and fresh topics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.kafka_broker import create_topic, session_broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Kafka broker, started once per test session."""
    with session_broker() as bootstrap:
        yield bootstrap


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """Factory: ``new_topic(partitions=3)`` creates a fresh, uniquely named topic."""

    def make(partitions: int = 1, **config: str) -> str:
        return create_topic(kafka_bootstrap, partitions=partitions, **config)

    return make
