"""Bad input through the real consumer: ``ghl-consumer run`` as a subprocess, a real broker, the
sandbox over HTTP. The corpus (tests/bad_input_corpus.py) interleaved with good events over three
partitions: each bad record is in the dead-letter topic with its reason, detail and true source
headers; good events reach the sandbox; the committed offsets reach the end offsets; the audit
accounts for everything. Then a few hundred near-1 MB records keep the consumer's peak RSS
under a stated bound."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import confluent_kafka
import orjson
import pytest
from confluent_kafka import KafkaError, Message, Producer

from tests.bad_input_corpus import CASES, FORGED, Case, Headers, good_event
from tests.harness.stream import UNLIMITED_ARGS, audit_clean
from tests.integration.consumer_harness import (
    ProcessLog,
    committed_offsets,
    end_offsets,
    read_all,
    start_consumer,
    start_sandbox,
    stop_process,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-bad-input-secret-token"
PARTITIONS = 3
MAX_MESSAGE = 3_000_000  # the topic takes records over max_event_bytes (1 MiB), to reject them
CONFIG = """
[engine]
coalesce_window_ms = 0
commit_interval_ms = 200

[delivery]
rate_burst = 1000000
rate_sustained = 1000000
rate_interval_seconds = 1
"""
RSS_BOUND_MB = 300
"""Peak RSS (VmHWM) the consumer must stay under while 240 records of about 1 MB each pass:
its baseline (about 100 MB) plus librdkafka's 2 MB prefetch and a few records being decoded,
with room to spare; a consumer that held every record would need over 340 MB."""

Produced = tuple[bytes | None, bytes | None, Headers]


def produce_with_headers(bootstrap: str, topic: str, records: Sequence[Produced]) -> list[Message]:
    """Produce ``records`` (key, value, headers) with a producer that allows records up to
    ``MAX_MESSAGE``; return each one's delivery report, in order. (``consumer_harness.produce``
    sends neither headers nor records over the client's 1 MB default.)"""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "message.max.bytes": MAX_MESSAGE + 100_000,
        }
    )
    landed: list[Message | None] = [None] * len(records)

    def remember(index: int) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, message: Message) -> None:
            assert err is None, err
            landed[index] = message

        return on_delivery

    for index, (key, value, headers) in enumerate(records):
        producer.produce(
            topic, key=key, value=value, headers=list(headers), on_delivery=remember(index)
        )
        producer.poll(0)
    assert producer.flush(120) == 0
    assert all(m is not None for m in landed)
    return [m for m in landed if m is not None]


async def sandbox_emails(url: str) -> set[str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/_sandbox/contacts", params={"locationId": LOCATION, "unmasked": "1"}
        ) as response,
    ):
        body = await response.json()
    return {c["email"] for c in body["contacts"] if "email" in c}


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of process ``pid`` (``VmHWM`` in /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


async def run_consumer_until_caught_up(
    bootstrap: str,
    topic: str,
    group: str,
    config: Path,
    sandbox_url: str,
    seconds: float,
    partitions: int = PARTITIONS,
) -> tuple[dict[str, str], float, str]:
    """Run ``ghl-consumer run`` until its group has committed ``topic``'s end offsets, then
    SIGTERM it. Returns (its environment, its peak RSS in MB, its log); asserts exit 0."""
    ends = end_offsets(bootstrap, topic, partitions)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "GHL_LOCATION_ID": LOCATION,
        "GHL_CONFIG": str(config),
    }
    process = await start_consumer(
        {**env, "GHL_ACCESS_TOKEN": TOKEN, "GHL_API_BASE_URL": sandbox_url}
    )
    log = ProcessLog(process)
    try:
        async with asyncio.timeout(seconds):
            while committed_offsets(bootstrap, group, topic, partitions) != ends:
                assert process.returncode is None, log.text()[-5000:]
                await asyncio.sleep(0.5)
        peak = vm_hwm_mb(process.pid)
    finally:
        await stop_process(process)
    assert await log.finished() == 0, log.text()[-5000:]
    return env, peak, log.text()


def interleaved() -> tuple[list[Produced], list[Case | None]]:
    """Each corpus case followed by a good identify; the case (None for a good event) of each
    record, in produce order."""
    records: list[Produced] = []
    cases: list[Case | None] = []
    for n, case in enumerate(CASES):
        records.append((case.record_key, case.value, case.headers))
        cases.append(case)
        key, value = good_event(n)
        records.append((key, value, ()))
        cases.append(None)
    return records, cases


async def test_the_corpus_through_the_running_consumer(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=PARTITIONS, **{"max.message.bytes": str(MAX_MESSAGE)})
    group = f"bad-input-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "consumer.toml"
    config.write_text(CONFIG)
    records, cases = interleaved()
    landed = produce_with_headers(kafka_bootstrap, topic, records)
    assert len({m.partition() for m in landed}) == PARTITIONS

    sandbox, url = await start_sandbox({LOCATION: TOKEN}, *UNLIMITED_ARGS)
    try:
        env, _, log = await run_consumer_until_caught_up(
            kafka_bootstrap, topic, group, config, url, seconds=120
        )
        emails = await sandbox_emails(url)
        report = await audit_clean(env, url)
    finally:
        await stop_process(sandbox)

    assert TOKEN not in log
    assert "Traceback" not in log
    # Good events, and the bad-looking records that are legitimate, reached HighLevel.
    wanted = {orjson.loads(good_event(n)[1])["traits"]["email"] for n in range(len(CASES))}
    wanted |= {c.email.lower() for c in CASES if c.outcome == "upsert" and c.email}
    assert wanted <= emails, sorted(wanted - emails)[:10]

    rejects = [(c, m) for c, m in zip(cases, landed, strict=True) if c and c.outcome == "reject"]
    letters = read_all(kafka_bootstrap, f"{group}.dead-letter", expect=len(rejects))
    by_source: dict[tuple[int, int], dict[str, bytes]] = {}
    for letter in letters:
        headers = letter.headers() or []
        own = [name for name, _ in headers if name.startswith("ghl.")]
        assert len(own) == len(set(own)), own  # no forged ghl.* header survives beside ours
        named = {name: value or b"" for name, value in headers}
        assert named["ghl.source.topic"] == topic.encode()
        where = (int(named["ghl.source.partition"]), int(named["ghl.source.offset"]))
        assert where not in by_source
        by_source[where] = named
    for case, message in rejects:
        named = by_source[(message.partition(), message.offset())]
        assert named["ghl.reason"].decode() == case.reason, case.name
        assert case.detail in named["ghl.error"].decode(), case.name
    forged = next(m for c, m in rejects if c.name == "headers-forged-on-poison")
    named = by_source[(forged.partition(), forged.offset())]
    assert named["GHL.reason"] == dict(FORGED)["GHL.reason"]
    assert "ghl.park.source" not in named
    assert "ghl.integration" not in named
    huge = next(m for c, m in rejects if c.name == "value-over-limit")
    assert by_source[(huge.partition(), huge.offset())]["ghl.omitted"] == b"value (1048577 bytes)"

    assert report["records"] == len(records)
    assert report["dead_lettered"] == len(rejects)  # nothing more: drops, upserts are not
    assert report["parked"] == 0


def near_megabyte(n: int) -> Produced:
    """The ``n``-th of the memory run's records, each about 1 MB: analytics page views
    (dropped), identifies of 20 contacts (delivered), and invalid JSON (dead-lettered without
    its value, over the dead-letter budget)."""
    size = 1_000_000
    key = f"big-{n % 20}".encode()
    if n % 3 == 0:
        head = orjson.dumps({"type": "page", "userId": key.decode(), "properties": {"pad": ""}})
        return key, head[:-3] + b"x" * (size - len(head)) + head[-3:], ()
    if n % 3 == 1:
        event = {
            "type": "identify",
            "userId": key.decode(),
            "traits": {"email": f"big{n % 20}@example.com"},
            "properties": {"pad": ""},
        }
        head = orjson.dumps(event)
        return key, head[:-3] + b"x" * (size - len(head)) + head[-3:], ()
    return key, b"{" + b"x" * (size - 1), ()


async def test_memory_stays_bounded_under_near_megabyte_records(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=PARTITIONS, **{"max.message.bytes": str(MAX_MESSAGE)})
    group = f"bad-input-rss-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "consumer.toml"
    config.write_text(CONFIG)
    records = [near_megabyte(n) for n in range(240)]
    produce_with_headers(kafka_bootstrap, topic, records)

    sandbox, url = await start_sandbox({LOCATION: TOKEN}, *UNLIMITED_ARGS)
    try:
        _, peak, _ = await run_consumer_until_caught_up(
            kafka_bootstrap, topic, group, config, url, seconds=180
        )
        emails = await sandbox_emails(url)
    finally:
        await stop_process(sandbox)
    print(f"consumer peak RSS (VmHWM) over 240 records of ~1 MB: {peak:.0f} MB")
    assert peak < RSS_BOUND_MB
    assert emails == {f"big{n}@example.com" for n in range(20)}
    letters = read_all(kafka_bootstrap, f"{group}.dead-letter", expect=80)
    assert len(letters) == 80
    assert all(m.value() is None for m in letters)
    omitted = {(m.headers() or [])[-1] for m in letters}
    assert omitted == {("ghl.omitted", b"value (1000000 bytes)")}


# -- header names that are not UTF-8 -------------------------------------------------------------
# confluent-kafka's producer only takes header names as str (sent as UTF-8), but other clients
# (Go, C, kcat) send any bytes. To write such a record, librdkafka's rd_kafka_produceva is called
# directly through ctypes, on the library the confluent-kafka wheel bundles.


class _Header(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _Mem(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Value(ctypes.Union):
    _fields_ = [
        ("cstr", ctypes.c_char_p),
        ("i32", ctypes.c_int32),
        ("mem", _Mem),
        ("header", _Header),
        ("pad", ctypes.c_char * 64),  # rd_kafka_vu_t's union is padded to 64 bytes
    ]


class _VU(ctypes.Structure):
    _fields_ = [("vtype", ctypes.c_int), ("u", _Value)]


_VTYPE_TOPIC, _VTYPE_PARTITION, _VTYPE_VALUE, _VTYPE_KEY, _VTYPE_HEADER = 1, 3, 4, 5, 9


def _librdkafka() -> ctypes.CDLL:
    bundled = sorted((Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob(
        "librdkafka*.so*"
    ))
    path = str(bundled[0]) if bundled else ctypes.util.find_library("rdkafka")
    assert path, "librdkafka not found"
    lib = ctypes.CDLL(path)
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, *[ctypes.c_char_p] * 3, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.POINTER(_VU), ctypes.c_size_t]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


RawRecord = tuple[bytes, bytes, Sequence[tuple[bytes, bytes]]]


def produce_raw_header_names(bootstrap: str, topic: str, records: Sequence[RawRecord]) -> None:
    """Produce (key, value, headers) to partition 0 of ``topic``, header names as raw bytes."""
    lib = _librdkafka()
    conf = lib.rd_kafka_conf_new()
    error = ctypes.create_string_buffer(512)
    assert lib.rd_kafka_conf_set(conf, b"bootstrap.servers", bootstrap.encode(), error, 512) == 0
    producer = lib.rd_kafka_new(0, conf, error, 512)  # 0: RD_KAFKA_PRODUCER
    assert producer, error.value
    try:
        for key, value, headers in records:
            buffers = [ctypes.create_string_buffer(b, len(b)) for b in (key, value)]
            fields = (_VU * (4 + len(headers)))()
            fields[0].vtype, fields[0].u.cstr = _VTYPE_TOPIC, topic.encode()
            fields[1].vtype, fields[1].u.i32 = _VTYPE_PARTITION, 0
            kinds = (_VTYPE_KEY, _VTYPE_VALUE)
            for field, vtype, buffer in zip(fields[2:4], kinds, buffers, strict=True):
                field.vtype = vtype
                field.u.mem = _Mem(ctypes.cast(buffer, ctypes.c_void_p), len(buffer.raw))
            for field, (name, header_value) in zip(fields[4:], headers, strict=True):
                buffers.append(ctypes.create_string_buffer(header_value, len(header_value)))
                field.vtype = _VTYPE_HEADER
                field.u.header = _Header(
                    name, ctypes.cast(buffers[-1], ctypes.c_void_p), len(header_value)
                )
            assert not lib.rd_kafka_produceva(producer, fields, len(fields))
        assert lib.rd_kafka_flush(producer, 30_000) == 0
    finally:
        lib.rd_kafka_destroy(producer)


async def test_header_names_that_are_not_utf8_neither_stop_the_consumer_nor_the_audit(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """confluent-kafka cannot decode such a name (``Message.headers()`` raises SystemError):
    the record is processed without its headers instead of stopping the partition."""
    topic = new_topic(partitions=1)
    group = f"bad-header-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "consumer.toml"
    config.write_text(CONFIG)
    bad_headers = [(b"x-\xff\xfe", b"v"), (b"trace", b"t")]
    produce_raw_header_names(
        kafka_bootstrap,
        topic,
        [
            (*good_event(0), bad_headers),
            (b"bad-header-poison", b"{not json", bad_headers),
            (*good_event(1), ()),
        ],
    )

    sandbox, url = await start_sandbox({LOCATION: TOKEN}, *UNLIMITED_ARGS)
    try:
        env, _, _ = await run_consumer_until_caught_up(
            kafka_bootstrap, topic, group, config, url, seconds=60, partitions=1
        )
        emails = await sandbox_emails(url)
        report = await audit_clean(env, url)
    finally:
        await stop_process(sandbox)
    assert emails == {"good0@example.com", "good1@example.com"}
    [letter] = read_all(kafka_bootstrap, f"{group}.dead-letter", expect=1)
    assert (letter.key(), letter.value()) == (b"bad-header-poison", b"{not json")
    assert dict(letter.headers() or [])["ghl.reason"] == b"invalid_json"
    assert report["dead_lettered"] == 1
