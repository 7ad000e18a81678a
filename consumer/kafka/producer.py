"""``KafkaProducer``: writes the consumer's own topics (dead letters, parking, the profile
changelog) and confirms each delivery.

Threads and the event loop
    Built on the plain ``confluent_kafka.Producer`` (thread-safe): ``send``/``produce`` only
    enqueue and run on the loop thread; a dedicated thread (``kafka-producer``) serves delivery
    reports and resolves the futures via ``call_soon_threadsafe``, and asks whether a broker is
    back after an outage. (``AIOProducer`` is not used: its batching mode rejects headers, which
    dead-letter records need.)

Errors
    ``ProduceFailedError``: raised by ``send`` (closed, or the record refused outright) or set on
    the delivery future (not delivered). ``ConfigError``/``KafkaAdapterError`` from the
    constructor for a setting librdkafka refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.engine.ports import Produced
from consumer.errors import ProduceFailedError
from consumer.kafka.clients import (
    PROBE_INTERVAL_S,
    PROBE_TIMEOUT_S,
    Setting,
    adapter_error,
    librdkafka_logger,
    new_client_error,
)

logger = logging.getLogger(__name__)


class KafkaProducer:
    """Idempotent producer for the consumer's own topics (dead letters, parking, profile
    changelog). Create it inside the running loop's thread; ``close`` flushes."""

    def __init__(
        self,
        *,
        bootstrap: str,
        client_id: str = "ghl-consumer",
        linger_ms: int = 5,
        delivery_timeout_ms: int = 120_000,
        extra: Mapping[str, Setting] | None = None,
    ) -> None:
        """``extra``: further librdkafka settings (security, compression, ...). Idempotence
        (and with it ``acks=all``) is always on. Raises ``KafkaAdapterError`` on a bad
        setting."""
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "linger.ms": linger_ms,
            "delivery.timeout.ms": delivery_timeout_ms,
            **(extra or {}),
            "enable.idempotence": True,
            "error_cb": self._on_error,
            "logger": librdkafka_logger,
        }
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise new_client_error(exc, "kafka producer") from exc
        self._closing = threading.Event()
        self._closed = False
        self._flush_timeout_s = 30.0
        # False after librdkafka reported all brokers down, until a metadata request is
        # answered (asked from the serving thread, once per PROBE_INTERVAL_S meanwhile).
        # Unlike a consumer's, this client keeps serving its callbacks during an outage.
        self.broker_reachable = True
        self._thread = threading.Thread(target=self._serve, name="kafka-producer", daemon=True)
        self._thread.start()

    async def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Produced:
        """Write one record; return where it landed once the broker has it (``send``, then
        await its future). Raises ``ProduceFailedError``."""
        return await (await self.send(topic, key=key, value=value, headers=headers))

    async def send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> asyncio.Future[Produced]:
        """Enqueue one record without waiting for the broker, to pipeline many: the returned
        future resolves to ``Produced`` once the broker has it, or fails with
        ``ProduceFailedError``. ``partition``: where to write it (None: the configured
        partitioner on ``key``). Waits (without blocking the loop) while librdkafka's local
        queue is full. Raises ``ProduceFailedError`` when closed or the record is refused
        outright (e.g. too large, or a partition the topic does not have)."""
        if self._closed or self._closing.is_set():
            raise ProduceFailedError("producer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Produced] = loop.create_future()
        on_delivery = _delivery_callback(loop, future)
        while True:
            try:
                # Enqueue only: librdkafka never blocks here, so the loop thread may call it.
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=list(headers),
                    on_delivery=on_delivery,
                    # -1: unassigned (librdkafka's RD_KAFKA_PARTITION_UA), the partitioner picks
                    partition=-1 if partition is None else partition,
                )
                return future
            except BufferError:
                await asyncio.sleep(0.05)  # queue full: the serving thread drains it
            except KafkaException as exc:
                raise ProduceFailedError(str(adapter_error(exc, "produce"))) from exc

    async def produce_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        partition: int | None = None,
    ) -> list[Exception | None]:
        """Write ``records`` ((key, value), no headers) and wait once for all of them: per
        record, in order, None when the broker has it, else a ``ProduceFailedError`` (refused
        outright, not delivered, or the producer closed). One future and one loop wake-up for
        the whole batch, however many records (see ``_Batch``). ``partition``: all of them to
        that partition (None: librdkafka's partitioner, by key)."""
        where = -1 if partition is None else partition  # librdkafka's "unassigned"
        results: list[Exception | None] = [None] * len(records)
        if not records:
            return results
        loop = asyncio.get_running_loop()
        batch = _Batch(loop, records, results)
        produce, on_delivery = self._producer.produce, batch.on_delivery
        closed = self._closed or self._closing.is_set()
        for index, (key, value) in enumerate(records):
            while not closed:
                try:
                    produce(topic, value=value, key=key, partition=where, on_delivery=on_delivery)
                    batch.sent += 1
                    break
                except BufferError:
                    await asyncio.sleep(0.05)  # queue full: the serving thread drains it
                    closed = self._closed or self._closing.is_set()
                except KafkaException as exc:
                    error = ProduceFailedError(str(adapter_error(exc, "produce")))
                    batch.refused(index, error)
                    break
            if closed:
                batch.refused(index, ProduceFailedError("producer is closed"))
        await batch.wait()
        return results

    async def close(self, timeout_s: float = 30.0) -> None:
        """Deliver what is queued (up to ``timeout_s``), fail the rest with
        ``ProduceFailedError``, stop the serving thread. Idempotent."""
        if self._closed:
            return
        self._flush_timeout_s = timeout_s
        self._closing.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._closed = True

    def _serve(self) -> None:
        # Runs on the producer's own thread: delivery reports resolve futures on the loop.
        probed = 0.0
        while not self._closing.is_set():
            self._producer.poll(0.1)
            if not self.broker_reachable and time.monotonic() - probed >= PROBE_INTERVAL_S:
                probed = time.monotonic()
                try:
                    self._producer.list_topics(timeout=PROBE_TIMEOUT_S)
                except KafkaException:
                    continue
                self.broker_reachable = True
                logger.info("kafka broker reachable again (producer)")
        remaining = self._producer.flush(self._flush_timeout_s)
        if remaining:
            logger.error("kafka producer: %d record(s) undelivered at close", remaining)
            self._producer.purge()
            self._producer.poll(0)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.broker_reachable = False
        librdkafka_logger.warning("kafka producer error: %s", err.str())


def _delivery_callback(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Produced]
) -> Callable[[KafkaError | None, Message], None]:
    def settle(err: KafkaError | None, where: Produced | None) -> None:
        if future.done():  # the caller gave up waiting
            return
        if err is not None or where is None:
            why = err.str() if err is not None else "no delivery report"
            retriable = err is not None and err.retriable()
            future.set_exception(ProduceFailedError(f"not delivered: {why}", retriable=retriable))
        else:
            future.set_result(where)

    def on_delivery(err: KafkaError | None, message: Message) -> None:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        where = (
            Produced(topic, partition, offset)
            if err is None and topic is not None and partition is not None and offset is not None
            else None
        )
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody waits
            loop.call_soon_threadsafe(settle, err, where)

    return on_delivery


class _Batch:
    """The delivery reports of one ``produce_many``. librdkafka's serving thread counts each
    report; the one that makes them all in wakes the loop once. One callback for every record:
    a closure per record cost about 2 us per record, most of it in garbage collection of the
    closures waiting for their reports. A report does not name its record's index, so a failed
    one is kept as its (key, value) and given, once all are in, to the first record sent with
    that content and not yet failed (records of equal content are interchangeable to a caller
    that produces the failed ones again).

    The loop thread counts the records enqueued (``sent``) and says when it is done enqueuing
    (``wait``), so a report that arrives while later records are still being enqueued cannot
    end the batch early. No lock: each thread's steps are single operations under the GIL (a
    list append, a read), and whichever thread sees the last report counted also sees the
    expected count, or the other one does (both may: waking twice is harmless)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        records: Sequence[tuple[bytes | None, bytes | None]],
        results: list[Exception | None],
    ) -> None:
        self._loop = loop
        self._records = records
        self._results = results
        self.sent = 0  # enqueued (the loop thread's count)
        self._reported: list[None] = []  # one entry per report (the serving thread's)
        self._failures: list[tuple[bytes | None, bytes | None, ProduceFailedError]] = []
        self._expected = -1  # ``sent`` once enqueuing is over; -1 before
        self._done = loop.create_future()

    def on_delivery(self, err: KafkaError | None, message: Message) -> None:
        if err is not None:
            failure = ProduceFailedError(f"not delivered: {err.str()}", retriable=err.retriable())
            self._failures.append((message.key(), message.value(), failure))
        reported = self._reported
        reported.append(None)
        if len(reported) == self._expected:
            self._wake()

    def refused(self, index: int, error: Exception) -> None:
        """The record at ``index`` was not enqueued (it gets no report)."""
        self._results[index] = error

    async def wait(self) -> None:
        """Until every enqueued record is reported; then each failure is in ``results``."""
        self._expected = self.sent
        if len(self._reported) < self.sent:
            await self._done
        if self._failures:
            self._place_failures()

    def _place_failures(self) -> None:
        sent: dict[tuple[bytes | None, bytes | None], deque[int]] = {}
        for index, (key, value) in enumerate(self._records):
            if self._results[index] is None:  # refused records have their error already
                sent.setdefault((key, value), deque()).append(index)
        for key, value, failure in self._failures:
            self._results[sent[(key, value)].popleft()] = failure

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody waits
            self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
