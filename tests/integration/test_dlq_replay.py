"""`ghl-consumer dlq replay` and `dlq list` as operators run them: real subprocesses against a
real broker. Dead letters are built exactly as the engine builds them (dead_letter_headers)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Message

from consumer.core.deadletter import REJECTED_BY_HIGHLEVEL, Failure, dead_letter_headers
from consumer.core.events import Record
from consumer.kafka.producer import KafkaProducer
from consumer.sandbox.custom_fields import FieldDefinition
from consumer.sandbox.server import run_sandbox
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    run_command,
    start_consumer,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

ORIGINAL_HEADERS = (("traceparent", b"00-abc-def-01"), ("source", b"web"))


async def dlq(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """``python -m consumer dlq ARGS``: (exit code, stdout, stderr)."""
    return await run_command(env, "dlq", *args, seconds=90)


def event(n: int) -> bytes:
    return orjson.dumps({"type": "identify", "userId": f"user-{n}", "traits": {"n": n}})


async def put_dead_letters(
    bootstrap: str, dead_letter_topic: str, letters: list[tuple[Record, Failure]]
) -> None:
    producer = KafkaProducer(bootstrap=bootstrap)
    try:
        for offset, (record, failure) in enumerate(letters):
            headers = dead_letter_headers(record, failure, now=1_740_000_000.0 + offset)
            await producer.produce(
                dead_letter_topic, key=record.key, value=record.value, headers=headers
            )
    finally:
        await producer.close()


def total(bootstrap: str, topic: str, partitions: int = 1) -> int:
    return sum(end_offsets(bootstrap, topic, partitions).values())


def headers_of(message: Message) -> list[tuple[str, bytes]]:
    return list(message.headers() or [])


async def test_replay_resends_selected_originals_once_and_dry_run_sends_nothing(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    source, other_source, dead = new_topic(), new_topic(), new_topic(partitions=2)
    replays = new_topic()  # as `ghl-consumer run` creates it
    group = f"replay-{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": f"{source},{other_source}",
        "KAFKA_GROUP_ID": group,
        "KAFKA_DEAD_LETTER_TOPIC": dead,
        "KAFKA_REPLAY_TOPIC": replays,
    }
    rejected = Failure(
        reason=REJECTED_BY_HIGHLEVEL,
        error="HighLevel answered 422",
        integration_id="default",
        status=422,
        message="email must be an email",
    )
    poison = Failure(reason="invalid_json", error="not JSON: unexpected end of data")
    letters = [
        (Record(source, 0, n, f"user-{n}".encode(), event(n), ORIGINAL_HEADERS), rejected)
        for n in range(4)
    ]
    letters.append((Record(source, 0, 10, b"user-10", b"{broken", ORIGINAL_HEADERS), poison))
    letters.append((Record(other_source, 0, 3, b"user-20", event(20), ()), rejected))
    await put_dead_letters(kafka_bootstrap, dead, letters)
    selection = ("--reason", REJECTED_BY_HIGHLEVEL, "--source-topic", source)

    # Dry run: prints what would be replayed, produces and commits nothing.
    code, out, err = await dlq(env, "replay", *selection, "--dry-run")
    assert code == 0, err
    assert out.count("would replay") == 5  # 4 lines + the summary
    assert "would replay 4 (" in out
    assert f"-> {replays} (as {source})" in out
    assert "skipped by filter 2, failed 0" in out
    assert total(kafka_bootstrap, replays) == 0

    # The replay: exactly the four selected originals reach the replay topic (issue 15,
    # finding 4), each naming its source topic; the source topics receive nothing.
    code, out, err = await dlq(env, "replay", *selection)
    assert code == 0, err
    assert f"replayed 4 ({replays}: 4), skipped by filter 2, failed 0" in out
    assert total(kafka_bootstrap, replays) == 4
    assert total(kafka_bootstrap, source) == total(kafka_bootstrap, other_source) == 0
    messages = read_all(kafka_bootstrap, replays, expect=4)
    assert sorted((m.key(), m.value()) for m in messages) == sorted(
        (record.key, record.value) for record, _ in letters[:4]
    )
    for message in messages:
        headers = headers_of(message)
        assert headers[:2] == list(ORIGINAL_HEADERS)
        [(name, value), original_topic] = headers[2:]
        assert name == "ghl.replayed_from"
        assert value.decode().startswith(f"{dead}/")
        assert original_topic == ("ghl.original_topic", source.encode())
        assert "ghl.reason" not in dict(headers)

    # A second replay re-sends nothing: the replay group remembers.
    code, out, err = await dlq(env, "replay", *selection)
    assert code == 0, err
    assert "replayed 0, skipped by filter 0, failed 0" in out
    assert total(kafka_bootstrap, replays) == 4

    # The group moved past the records the filter skipped: reaching them takes
    # --from-beginning, and then only the new selection is sent.
    code, out, err = await dlq(env, "replay", "--reason", "invalid_json")
    assert (code, "replayed 0" in out) == (0, True), err
    code, out, err = await dlq(env, "replay", "--reason", "invalid_json", "--from-beginning")
    assert code == 0, err
    assert "replayed 1" in out
    assert total(kafka_bootstrap, replays) == 5
    [*_, poisoned] = sorted(read_all(kafka_bootstrap, replays, expect=5), key=lambda m: m.offset())
    assert poisoned.value() == b"{broken"


async def test_replay_to_a_missing_topic_fails_with_exit_1_and_commits_nothing(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    dead = new_topic()
    gone = f"never-created-{uuid.uuid4().hex[:8]}"
    group = f"replay-{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": gone,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DEAD_LETTER_TOPIC": dead,
    }
    letter = (
        Record(gone, 0, 0, b"user-1", event(1)),
        Failure(reason=REJECTED_BY_HIGHLEVEL, error="422", integration_id="default"),
    )
    await put_dead_letters(kafka_bootstrap, dead, [letter])
    code, out, err = await dlq(env, "replay")  # no consumer ever ran: no replay topic
    assert code == 1
    assert "replayed 0, skipped by filter 0, failed 1" in out
    assert f"topic {group}.replay does not exist (ghl-consumer run creates it" in err
    code, out, err = await dlq(env, "replay", "--to-source")
    assert code == 1
    assert "replayed 0, skipped by filter 0, failed 1" in out
    assert f"topic {gone} does not exist" in err
    code, out, _ = await dlq(env, "replay", "--dry-run")
    assert "failed 1" in out  # still pending: nothing was committed past it


async def test_list_summarises_by_reason_without_keys_or_values(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    source, dead = new_topic(), new_topic()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_DEAD_LETTER_TOPIC": dead,
    }
    secret_value = orjson.dumps({"type": "identify", "traits": {"email": "sam@example.com"}})
    rejected = Failure(
        reason=REJECTED_BY_HIGHLEVEL,
        error="HighLevel answered 422",
        integration_id="default",
        status=422,
        message="email must be an email",
    )
    await put_dead_letters(
        kafka_bootstrap,
        dead,
        [
            (Record(source, 0, 0, b"lead-987", secret_value), rejected),
            (Record(source, 0, 1, b"lead-988", secret_value), rejected),
            (Record(source, 0, 2, b"lead-989", b"{x"), Failure(reason="invalid_json", error="bad")),
        ],
    )
    code, out, err = await dlq(env, "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"dead-letter topic {dead}"
    assert lines[1].split() == [
        "REASON", "INTEGRATION", "SOURCE", "TOPIC", "COUNT", "FIRST", "FAILED", "LAST", "FAILED"
    ]
    assert lines[2].split()[:4] == [REJECTED_BY_HIGHLEVEL, "default", source, "2"]
    assert lines[3].split()[:4] == ["invalid_json", "-", source, "1"]
    assert "3 dead letter(s) in 2 group(s)" in out
    assert "2 x HighLevel answered 422; status 422; email must be an email" in out
    assert "sam@example.com" not in out
    assert "lead-98" not in out

    code, out, err = await dlq(env, "list", "--json", "--reason", "invalid_json")
    assert code == 0, err
    data = orjson.loads(out)
    assert data["total"] == 1
    assert [g["reason"] for g in data["groups"]] == ["invalid_json"]


async def test_replay_stops_at_the_end_captured_at_start_even_into_its_own_topic(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    dead = new_topic()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": dead,  # --to must name a topic the configuration reads
        "KAFKA_GROUP_ID": f"replay-{uuid.uuid4().hex[:8]}",
        "KAFKA_DEAD_LETTER_TOPIC": dead,
    }
    failure = Failure(reason=REJECTED_BY_HIGHLEVEL, error="422", integration_id="default")
    await put_dead_letters(
        kafka_bootstrap, dead, [(Record("events", 0, n, None, event(n)), failure) for n in range(3)]
    )
    code, out, err = await dlq(env, "replay", "--to", dead, "--to-source")
    assert code == 0, err
    assert f"replayed 3 ({dead}: 3), skipped by filter 0, failed 0" in out
    assert total(kafka_bootstrap, dead) == 6
    # The copies carry no ghl.reason, so a replay of everything now reads them as unselectable
    # by reason, and still ends.
    code, out, err = await dlq(
        env, "replay", "--to", dead, "--to-source", "--reason", REJECTED_BY_HIGHLEVEL
    )
    assert code == 0, err
    assert "replayed 0, skipped by filter 3, failed 0" in out


async def test_replay_sends_only_to_topics_the_configuration_reads(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """Issue 15, finding 4: a dead letter whose ghl.source.topic names an existing topic the
    consumer does not read (a forged header) is refused and reported, never sent; ``--to``
    outside kafka.topics is a configuration error."""
    source, elsewhere, dead = new_topic(), new_topic(), new_topic()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": source,
        "KAFKA_GROUP_ID": f"replay-{uuid.uuid4().hex[:8]}",
        "KAFKA_DEAD_LETTER_TOPIC": dead,
    }
    failure = Failure(reason=REJECTED_BY_HIGHLEVEL, error="422", integration_id="default")
    await put_dead_letters(
        kafka_bootstrap,
        dead,
        [(Record(elsewhere, 0, 0, b"user-1", event(1)), failure)],
    )
    code, out, err = await dlq(env, "replay", "--to", elsewhere)
    assert code == 2
    assert f"--to: topic '{elsewhere}' is not one this consumer reads (kafka.topics)" in err
    code, out, err = await dlq(env, "replay")
    assert code == 1
    assert "replayed 0, skipped by filter 0, failed 1" in out
    assert f"topic '{elsewhere}' is not one this consumer reads (kafka.topics): refused" in err
    assert total(kafka_bootstrap, elsewhere) == 0
    code, out, err = await dlq(env, "replay", "--to-source")  # still refused
    assert (code, f"topic '{elsewhere}' is not one" in err) == (1, True), out
    # the operator's explicit choice, into the source topic itself
    code, out, err = await dlq(env, "replay", "--to", source, "--to-source")
    assert code == 0, err
    assert f"replayed 1 ({source}: 1)" in out
    assert total(kafka_bootstrap, source) == 1


async def test_a_replay_read_by_the_running_consumer_is_delivered_not_dropped_as_duplicate(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """Issue 15, findings 3 and 4. The consumer read an identify (its messageId now in its
    24-hour de-duplication window); the upsert is dead-lettered (here: the dead letter is
    written as the engine writes it, and the contact removed from HighLevel). ``dlq replay``
    sends the copy to the replay topic while the same consumer runs: it must reach HighLevel,
    and another consumer group of the source topic sees nothing new. ``--to-source`` sends a
    copy into the source topic itself, which the consumer delivers too."""
    location, token = "ve9EPM428h8vShlRW1KT", "pit-replay-secret-token"
    source, dead = new_topic(), new_topic()
    group = f"replay-run-{uuid.uuid4().hex[:8]}"
    replays = f"{group}.replay"  # the default, created by the consumer at start-up
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": source,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DEAD_LETTER_TOPIC": dead,
        "GHL_LOCATION_ID": location,
    }
    value = orjson.dumps(
        {
            "type": "identify",
            "messageId": "m-replayed-once",
            "userId": "user-7",
            "traits": {"email": "user7@example.com", "first_name": "Seven"},
        }
    )
    produce(kafka_bootstrap, source, [(b"user-7", value)])

    async def settled(offset: int, topic: str = source) -> None:
        # the replay topic is read by a group of its own, named after it
        reader = replays if topic == replays else group
        async with asyncio.timeout(60):
            while committed_offsets(kafka_bootstrap, reader, topic, 1) != {0: offset}:
                assert consumer.returncode is None, await consumer.stderr.read()  # type: ignore[union-attr]
                await asyncio.sleep(0.3)

    async with run_sandbox(locations={location: token}) as sandbox:
        contacts = sandbox.state.locations[location].contacts
        consumer = await start_consumer(
            {**env, "GHL_ACCESS_TOKEN": token, "GHL_API_BASE_URL": sandbox.url}
        )
        try:
            await settled(1)
            assert len(contacts) == 1
            sandbox.state.clear()  # as if the upsert had never reached HighLevel
            rejected = Failure(
                reason=REJECTED_BY_HIGHLEVEL, error="HighLevel answered 422", status=422
            )
            original = Record(source, 0, 0, b"user-7", value)
            await put_dead_letters(kafka_bootstrap, dead, [(original, rejected)])
            code, out, err = await dlq(env, "replay")
            assert code == 0, out + err
            assert f"replayed 1 ({replays}: 1)" in out
            await settled(1, replays)
            assert [c.fields["email"] for c in contacts.values()] == ["user7@example.com"]
            # another consumer group of the shared source topic: nothing new to read
            assert total(kafka_bootstrap, source) == 1
            assert len(read_all(kafka_bootstrap, source, expect=2, seconds=3)) == 1
            # the main group never held the replay partition
            assert committed_offsets(kafka_bootstrap, group, replays, 1) == {0: -1001}

            sandbox.state.clear()
            await put_dead_letters(kafka_bootstrap, dead, [(original, rejected)])
            code, out, err = await dlq(env, "replay", "--to-source")
            assert code == 0, out + err
            assert f"replayed 1 ({source}: 1)" in out
            await settled(2)
            assert [c.fields["email"] for c in contacts.values()] == ["user7@example.com"]
        finally:
            if consumer.returncode is None:
                consumer.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, consumer_log = await consumer.communicate()
    assert consumer.returncode == 0, consumer_log.decode()


PLAN_FIELDS = [
    FieldDefinition("cfPlan", "SINGLE_OPTIONS", picklist_options=("gold", "silver")),
    FieldDefinition("cfPlanName", "TEXT"),
]


def plan_config(path: Path, location: str, field: str) -> Path:
    """A consumer configuration sending ``traits.plan`` to custom field ``field``."""
    path.write_text(
        f"""
[engine]
coalesce_window_ms = 0

[[integrations]]
id = "default"
location_id = "{location}"
access_token = {{ env = "GHL_ACCESS_TOKEN" }}

[[integrations.fields.custom]]
id = "{field}"
source = "traits.plan"
"""
    )
    return path


async def test_a_dead_letter_fixed_by_configuration_is_delivered_through_the_replay_topic(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Issue 15, finding 4, end to end. HighLevel refuses an event under the first
    configuration (its plan is not one of the picklist field's options): the consumer
    dead-letters it. With the configuration fixed (the plan goes to a text field) and the
    consumer restarted, ``dlq replay`` writes the copy to the replay topic, which the consumer
    reads in a group of its own and delivers; the source topic receives nothing (a second
    consumer group of it reads only the original), the main group never holds the replay
    partition. ``--to-source`` puts a copy into the source topic itself. A record written to
    the replay topic that names a topic the consumer does not read (a tampered
    ``ghl.original_topic``) is dead-lettered ``invalid_replay``, never delivered."""
    location, token = "ve9EPM428h8vShlRW1KT", "pit-replay-fixed-token"
    source, dead, elsewhere = new_topic(), new_topic(), new_topic()
    group = f"replay-fix-{uuid.uuid4().hex[:8]}"
    replays = f"{group}.replay"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": source,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DEAD_LETTER_TOPIC": dead,
        "GHL_ACCESS_TOKEN": token,
    }
    wrong = plan_config(tmp_path / "wrong.toml", location, "cfPlan")
    fixed = plan_config(tmp_path / "fixed.toml", location, "cfPlanName")
    value = orjson.dumps(
        {
            "type": "identify",
            "messageId": "m-platinum",
            "userId": "user-9",
            "traits": {"email": "user9@example.com", "plan": "platinum"},
        }
    )
    produce(kafka_bootstrap, source, [(b"user-9", value)])

    async def committed(reader: str, topic: str, offset: int) -> None:
        async with asyncio.timeout(60):
            while committed_offsets(kafka_bootstrap, reader, topic, 1) != {0: offset}:
                assert consumer.returncode is None, await consumer.stderr.read()  # type: ignore[union-attr]
                await asyncio.sleep(0.3)

    async def stop() -> str:
        if consumer.returncode is None:
            consumer.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, log = await consumer.communicate()
        assert consumer.returncode == 0, log.decode()
        return log.decode()

    async with run_sandbox(locations={location: token}, custom_fields=PLAN_FIELDS) as sandbox:
        contacts = sandbox.state.locations[location].contacts
        run_env = {**env, "GHL_API_BASE_URL": sandbox.url}
        consumer = await start_consumer(run_env, "--config", str(wrong))
        try:
            await committed(group, source, 1)
            assert contacts == {}
            assert total(kafka_bootstrap, dead) == 1  # rejected_by_highlevel (422)
        finally:
            await stop()
        consumer = await start_consumer(run_env, "--config", str(fixed))
        try:
            code, out, err = await dlq(
                env, "replay", "--config", str(fixed), "--reason", REJECTED_BY_HIGHLEVEL
            )
            assert code == 0, out + err
            assert f"replayed 1 ({replays}: 1)" in out
            await committed(replays, replays, 1)  # the replay group, named after its topic
            [contact] = contacts.values()
            assert contact.custom_fields == {"cfPlanName": "platinum"}
            assert total(kafka_bootstrap, source) == 1
            assert len(read_all(kafka_bootstrap, source, expect=2, seconds=3)) == 1
            assert committed_offsets(kafka_bootstrap, group, replays, 1) == {0: -1001}
            # the audit reads the replay topic: the copy is expected in HighLevel, and is there
            code, out, err = await run_command(
                env, "audit", "--config", str(fixed), "--sandbox", sandbox.url, "--json"
            )
            report = orjson.loads(out)
            assert code == 0, out + err
            assert (report["records"], report["replays"], report["dead_lettered"]) == (1, 1, 1)
            assert report["contacts"] == {"expected": 1, "matching": 1}

            # the operator's explicit choice: into the source topic, which every group reads
            # (another dead letter of the event: a copy of the same one again is a duplicate)
            sandbox.state.clear()
            original = Record(source, 0, 0, b"user-9", value)
            rejected = Failure(reason=REJECTED_BY_HIGHLEVEL, error="422", status=422)
            await put_dead_letters(kafka_bootstrap, dead, [(original, rejected)])
            code, out, err = await dlq(env, "replay", "--config", str(fixed), "--to-source")
            assert code == 0, out + err
            assert f"replayed 1 ({source}: 1)" in out
            await committed(group, source, 2)
            assert [c.custom_fields for c in contacts.values()] == [{"cfPlanName": "platinum"}]
            assert len(read_all(kafka_bootstrap, source, expect=3, seconds=3)) == 2

            # a tampered copy in the replay topic: dead-lettered, never routed as that topic
            sandbox.state.clear()
            forged = Record(
                replays, 0, 0, b"user-9", value, (("ghl.original_topic", elsewhere.encode()),)
            )
            writer = KafkaProducer(bootstrap=kafka_bootstrap)
            try:
                await writer.produce(
                    replays, key=forged.key, value=forged.value, headers=list(forged.headers)
                )
            finally:
                await writer.close()
            await committed(replays, replays, 2)
            assert contacts == {}
            assert total(kafka_bootstrap, elsewhere) == 0
        finally:
            log = await stop()
    assert token not in log
    letters = read_all(kafka_bootstrap, dead, expect=3, seconds=10)
    assert len(letters) == 3
    failure = dict(headers_of(letters[2]))
    assert failure["ghl.reason"] == b"invalid_replay"
    assert failure["ghl.source.topic"] == replays.encode()
    assert failure["ghl.original_topic"] == elsewhere.encode()
