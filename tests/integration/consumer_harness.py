"""Helpers for tests that run the real consumer against a real broker and the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp
from confluent_kafka import (
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from consumer.kafka.clients import committed_offsets as kafka_committed
from consumer.sandbox.process import sandbox_command
from tests.kafka_broker import ROOT, die_with_parent


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


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets per partition (-1001 where none); waits out a group
    coordinator that is still loading (a fresh broker).

    Read with a (non-subscribing) consumer of the group, not AdminClient: librdkafka's
    ListConsumerGroupOffsets can crash the process when the group coordinator is still loading
    (confluentinc/librdkafka#5040), which is exactly when tests start polling."""
    committed = committed_records(bootstrap, group, topic, partitions)
    return {tp.partition: tp.offset for tp in committed}


def committed_records(
    bootstrap: str, group: str, topic: str, partitions: int
) -> list[TopicPartition]:
    """The group's commits of ``topic``'s first ``partitions`` partitions, offset and metadata,
    read as ``committed_offsets`` reads them."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        return kafka_committed(consumer, [(topic, p) for p in range(partitions)], timeout_s=30)
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


async def start_consumer(env: Mapping[str, str], *args: str) -> asyncio.subprocess.Process:
    """Start ``python -m consumer run`` with ``env`` added to this process's environment (and
    ``METRICS_PORT=0`` and ``DEBUG_PORT=0`` unless given, so several consumers can run side by
    side)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "run",
        *args,
        cwd=ROOT,
        env={**os.environ, "METRICS_PORT": "0", "DEBUG_PORT": "0", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )


def produce_rounds(
    bootstrap: str,
    topic: str,
    rounds: Sequence[Sequence[tuple[bytes | None, bytes | None]]],
    *,
    interval_s: float = 0.0,
) -> list[tuple[int, int]]:
    """Produce ``rounds`` one after another, each flushed, ``interval_s`` apart (a live stream
    rather than a backlog); return every record's (partition, offset), in produce order.
    Blocking: run it in a thread (``asyncio.to_thread``) while consumers run."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    positions: list[tuple[int, int] | None] = []

    def remember(index: int) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, message: Message) -> None:
            assert err is None, err
            positions[index] = (message.partition(), message.offset())

        return on_delivery

    for number, batch in enumerate(rounds):
        if number and interval_s:
            time.sleep(interval_s)
        for key, value in batch:
            positions.append(None)
            producer.produce(topic, key=key, value=value, on_delivery=remember(len(positions) - 1))
        assert producer.flush(60) == 0
    assert all(p is not None for p in positions)
    return [p for p in positions if p is not None]


class CommitSampler:
    """Reads a group's committed offsets every ``interval_s`` in a thread, with one client, for
    as long as the ``with`` block lasts. ``samples`` holds (``time.time()`` taken after the
    read returned, {partition: offset}); -1001 where the group has no commit. A read the
    group coordinator cannot answer yet is retried (for up to ``timeout_s``), not recorded;
    ``timeout_s`` also bounds each read."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topic: str,
        partitions: int,
        interval_s: float = 0.2,
        timeout_s: float = 10.0,
    ) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self._request = [(topic, p) for p in range(partitions)]
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-sampler", daemon=True)
        self.samples: list[tuple[float, dict[int, int]]] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval_s)

    def sample(self) -> None:
        """Read the commits once and record them (``kafka.clients.committed_offsets``)."""
        committed = kafka_committed(self._consumer, self._request, timeout_s=self._timeout_s)
        self.samples.append((time.time(), {tp.partition: tp.offset for tp in committed}))

    def latest(self) -> dict[int, int]:
        """The newest sample ({} before the first)."""
        return self.samples[-1][1] if self.samples else {}

    def __enter__(self) -> CommitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._consumer.close()


class ProcessLog:
    """Follows a child's stderr line by line (so its pipe never fills) for assertions on it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None, "start the process with stderr=PIPE"
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read(process.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def count(self, fragment: str) -> int:
        return sum(fragment in line for line in self.lines)

    async def wait_for(self, fragment: str, *, times: int = 1, poll_s: float = 0.05) -> None:
        """Return once ``fragment`` appeared in ``times`` lines (bound it with asyncio.timeout);
        AssertionError, with the log's tail, if the process exits first."""
        while self.count(fragment) < times:
            if self.process.returncode is not None:
                await self._reader
                if self.count(fragment) >= times:
                    return
                raise AssertionError(
                    f"process exited ({self.process.returncode}) before logging {fragment!r}:\n"
                    + "\n".join(self.lines[-40:])
                )
            await asyncio.sleep(poll_s)

    async def finished(self) -> int:
        """Wait for the process to exit and its stderr to be read; return the exit code."""
        code = await self.process.wait()
        await self._reader
        return code


async def stop_process(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` unless the process already exited; wait for it; return its exit code."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
    return await process.wait()


async def start_sandbox(
    locations: Mapping[str, str], *args: str, port: int = 0
) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``python -m consumer sandbox`` on ``port`` (0: a free one) with extra CLI ``args``;
    return the process and its base URL. Unlike ``consumer.sandbox.sandbox_process`` the caller
    owns its end (SIGKILL it to test a HighLevel outage; ``stop_process`` it after)."""
    process = await asyncio.create_subprocess_exec(
        *sandbox_command(locations, args, port=port),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    assert process.stdout is not None  # stdout=PIPE above
    async with asyncio.timeout(30):
        url = (await process.stdout.readline()).decode().strip()
    if not url.startswith("http"):
        await stop_process(process, signal.SIGKILL)
        raise AssertionError(f"sandbox did not start (exit code {process.returncode})")
    return process, url


async def run_command(
    env: Mapping[str, str], *args: str, seconds: float = 120
) -> tuple[int, str, str]:
    """Run ``python -m consumer ARGS`` to completion without blocking the loop (an in-process
    sandbox may serve on it), with ``env`` over this environment minus its GHL_* and KAFKA_*
    variables; return (exit code, stdout, stderr)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GHL_", "KAFKA_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        cwd=ROOT,
        env={**base, "DEBUG_PORT": "0", **env},  # DEBUG_PORT: side by side with a consumer
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(seconds):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def metrics_url(member: ProcessLog) -> str:
    """The base URL of a consumer's metrics server, from its start-up log line."""
    for line in member.lines:
        if found := re.search(r"metrics on (http://\S+)/metrics", line):
            return found.group(1)
    raise AssertionError(f"no metrics URL logged:\n{member.text()[-2000:]}")


async def readiness(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """``/readyz``'s status and JSON body at the metrics server ``url``."""
    async with http.get(f"{url}/readyz") as response:
        return response.status, await response.json()


async def liveness(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """``/healthz``'s status and JSON body at the metrics server ``url``."""
    async with http.get(f"{url}/healthz") as response:
        return response.status, await response.json()
