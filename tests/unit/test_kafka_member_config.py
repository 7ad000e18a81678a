"""``kafka.clients.member_config``: the librdkafka settings every consumer-group member gets."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.errors import ConfigError
from consumer.kafka.clients import FETCH_QUEUE_BACKOFF_MS, member_config

BASE: dict[str, Any] = {
    "bootstrap": "localhost:9092",
    "group_id": "g",
    "auto_offset_reset": "earliest",
    "group_protocol": "classic",
    "client_id": "c",
    "session_timeout_ms": None,
    "heartbeat_interval_ms": None,
    "max_poll_interval_ms": 300_000,
    "queued_max_messages_kbytes": 2_048,
    "fetch_max_bytes": 2 << 20,
    "max_partition_fetch_bytes": 1 << 20,
    "extra": None,
    "group_instance_id": "",
}


def config(**changes: Any) -> dict[str, Any]:
    return member_config(**{**BASE, **changes})


def test_a_full_prefetch_queue_postpones_the_next_fetch_briefly_not_for_a_second() -> None:
    """librdkafka's default (1000 ms) held a member near 43,000 events/s (issue 21)."""
    assert config()["fetch.queue.backoff.ms"] == FETCH_QUEUE_BACKOFF_MS == 20
    assert config()["queued.max.messages.kbytes"] == 2_048  # memory stays bounded as before


def test_the_pass_through_table_may_set_the_backoff_but_not_what_the_source_owns() -> None:
    assert config(extra={"fetch.queue.backoff.ms": 100})["fetch.queue.backoff.ms"] == 100
    with pytest.raises(ConfigError, match="set by the source itself"):
        config(extra={"enable.auto.commit": True})
