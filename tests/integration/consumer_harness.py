"""Helpers for tests that run the real consumer against a real broker and the sandbox."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from tests.kafka_broker import ROOT


def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> int:
    """Produce keyed records and wait for all of them; return how many."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    count = 0
    for key, value in records:
        producer.produce(topic, key=key, value=value)
        count += 1
        if count % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return count


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ghl-test-watermarks"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


_COORDINATOR_BUSY = frozenset(
    (
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    )
)


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets per partition (-1001 where none); waits out a group
    coordinator that is still loading (a fresh broker).

    Read with a (non-subscribing) consumer of the group, not AdminClient: librdkafka's
    ListConsumerGroupOffsets can crash the process when the group coordinator is still loading
    (confluentinc/librdkafka#5040), which is exactly when tests start polling."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                committed = consumer.committed(
                    [TopicPartition(topic, p) for p in range(partitions)], timeout=30
                )
                return {tp.partition: tp.offset for tp in committed}
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, *, expect: int, seconds: float = 30.0) -> list[Message]:
    """Read ``expect`` records from the start of ``topic`` (all partitions); return messages."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ghl-test-reader-{topic}-{os.getpid()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    try:
        deadline = time.monotonic() + seconds
        while len(messages) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                messages.append(msg)
    finally:
        consumer.close()
    return messages


_PR_SET_PDEATHSIG = 1
# Looked up here, in the parent: the child (forked from a process with librdkafka threads)
# must not dlopen or allocate before exec, only make this one system call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """In the child: receive SIGKILL when the test process dies, even by a crash, so no
    consumer outlives its test."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def start_consumer(env: Mapping[str, str], *args: str) -> asyncio.subprocess.Process:
    """Start ``python -m consumer run`` with ``env`` added to this process's environment (and
    ``METRICS_PORT=0`` unless given, so several consumers can run side by side)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "run",
        *args,
        cwd=ROOT,
        env={**os.environ, "METRICS_PORT": "0", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
