"""Kafka security settings pass through ``[kafka.librdkafka]`` to every Kafka client of the CLI:
``ghl-consumer run``, ``dlq`` and ``audit`` against a real broker whose only listener they are
given is SASL_SSL (SCRAM-SHA-512 or PLAIN over TLS with a private CA) or SSL with client
certificates (mutual TLS). A wrong password or an untrusted certificate stops ``run`` at once with
librdkafka's reason, never the password (issue 9).

On a managed cluster (issue 16) the PLAIN user has only the ACLs the README lists: with
``kafka.create_topics = false`` ``run`` delivers with exactly those; one missing, or a refused
CreateTopics, stops start-up with exit 2 and a message naming the topic and the ACL."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import orjson
import pytest

from consumer.sandbox.server import run_sandbox
from tests.integration.consumer_harness import (
    ProcessLog,
    committed_offsets,
    end_offsets,
    produce,
    run_command,
    start_consumer,
    stop_process,
)
from tests.integration.secure_kafka import PLAIN_PASSWORD, SecuredBroker
from tests.integration.secure_kafka import SASL_PASSWORD as PASSWORD
from tests.kafka_broker import create_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

WRONG_PASSWORD = "scram-Wrong/71zE"
LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-kafka-security-token"
USERS = 4


def write_config(path: Path, topic: str, group: str, librdkafka_table: str) -> Path:
    path.write_text(
        "[kafka]\n" f'topics = ["{topic}"]\n' f'group_id = "{group}"\n' + librdkafka_table
    )
    return path


def secured_env(bootstrap: str) -> dict[str, str]:
    """Only a secured listener's address: every Kafka connection of the command goes there."""
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "GHL_LOCATION_ID": LOCATION}


@pytest.mark.parametrize("listener", ["SASL_SSL", "mutual TLS"])
async def test_run_dlq_and_audit_work_over_a_secured_listener(
    secure_kafka: SecuredBroker, tmp_path: Path, listener: str
) -> None:
    kafka = secure_kafka
    topic = create_topic(kafka.bootstrap)
    group = f"secured-{uuid.uuid4().hex[:8]}"
    if listener == "SASL_SSL":
        secret_file = tmp_path / "kafka-password"
        secret_file.write_text(PASSWORD + "\n")
        table = kafka.librdkafka_table(f'{{ file = "{secret_file}" }}')
        env = secured_env(kafka.secure_bootstrap)
    else:
        table = kafka.mutual_tls_table()
        env = secured_env(kafka.tls_bootstrap)
    config = write_config(tmp_path / "config.toml", topic, group, table)
    events = [
        {"type": "identify", "userId": f"user-{i}", "traits": {"email": f"u{i}@example.com"}}
        for i in range(USERS)
    ]
    produce(kafka.bootstrap, topic, ((e["userId"].encode(), orjson.dumps(e)) for e in events))
    ends = end_offsets(kafka.bootstrap, topic, 1)

    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        consumer = await start_consumer(
            {**env, "GHL_ACCESS_TOKEN": TOKEN, "GHL_API_BASE_URL": sandbox.url},
            "--config",
            str(config),
        )
        log = ProcessLog(consumer)
        try:
            async with asyncio.timeout(60):
                while committed_offsets(kafka.bootstrap, group, topic, 1) != ends:
                    assert consumer.returncode is None, log.text()[-3000:]
                    await asyncio.sleep(0.3)
        except TimeoutError:
            raise AssertionError(f"not all committed in 60 s:\n{log.text()[-3000:]}") from None
        finally:
            await stop_process(consumer, signal.SIGTERM)
        assert await log.finished() == 0, log.text()[-3000:]
        assert sorted(c["email"] for c in sandbox.contacts(LOCATION)) == [
            f"u{i}@example.com" for i in range(USERS)
        ]

        # The operator commands read the same [kafka.librdkafka] settings.
        code, out, err = await run_command(env, "dlq", "list", "--json", "--config", str(config))
        assert code == 0, out + err
        code, out, err = await run_command(
            env, "audit", "--sandbox", sandbox.url, "--json", "--config", str(config)
        )
        assert code == 0, out + err
        report = orjson.loads(out)
        assert (report["ok"], report["delivered_events"]) == (True, USERS), report
    assert PASSWORD not in log.text() + out + err


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "SASL authentication error"),
        ("untrusted certificate", "certificate verify failed"),
        ("no client certificate", "alert bad certificate"),
    ],
)
async def test_a_refused_connection_stops_start_up_with_the_reason_but_no_password(
    secure_kafka: SecuredBroker, tmp_path: Path, case: str, expected: str
) -> None:
    kafka = secure_kafka
    bootstrap, password = kafka.secure_bootstrap, PASSWORD
    table = kafka.librdkafka_table('{ env = "KAFKA_SASL_PASSWORD" }')
    if case == "wrong password":
        password = WRONG_PASSWORD
    elif case == "untrusted certificate":  # the right password, but only the system's CAs
        table = "\n".join(line for line in table.splitlines() if "ssl.ca" not in line)
    else:  # the mutual-TLS listener without the client's certificate and key
        bootstrap = kafka.tls_bootstrap
        client_files = ('"ssl.certificate.location"', '"ssl.key.location"')
        lines = kafka.mutual_tls_table().splitlines()
        table = "\n".join(line for line in lines if not line.startswith(client_files))
    config = write_config(
        tmp_path / "config.toml", "never-consumed", f"refused-{uuid.uuid4().hex[:8]}", table
    )
    env = {**secured_env(bootstrap), "GHL_ACCESS_TOKEN": TOKEN, "KAFKA_SASL_PASSWORD": password}
    started = time.monotonic()
    code, out, err = await run_command(env, "run", "--config", str(config), seconds=30)
    elapsed = time.monotonic() - started
    assert code == 2, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert message.startswith("ghl-consumer: configuration error: kafka.librdkafka: "), message
    assert expected in message
    assert elapsed < 15  # at once, not after the 30 s request timeout
    assert "Traceback" not in err
    for secret in (PASSWORD, WRONG_PASSWORD, TOKEN):
        assert secret not in out + err


def managed_setup(
    kafka: SecuredBroker, tmp_path: Path, *, create_topics: bool
) -> tuple[str, str, Path, dict[str, str]]:
    """A source topic, a group, and a config for the PLAIN user (which has no ACL yet)."""
    topic = create_topic(kafka.bootstrap)
    group = f"managed-{uuid.uuid4().hex[:8]}"
    table = kafka.plain_table('{ env = "KAFKA_SASL_PASSWORD" }')
    config = tmp_path / "config.toml"
    config.write_text(
        "[kafka]\n"
        f'topics = ["{topic}"]\n'
        f'group_id = "{group}"\n'
        f"create_topics = {'true' if create_topics else 'false'}\n" + table
    )
    env = {
        **secured_env(kafka.secure_bootstrap),
        "GHL_ACCESS_TOKEN": TOKEN,
        "KAFKA_SASL_PASSWORD": PLAIN_PASSWORD,
    }
    return topic, group, config, env


def readme_acls(
    topic: str, group: str, *, state_dir: bool = False
) -> list[tuple[str, str, str]]:
    """The README's ACL list ("Kafka ACLs") for ``create_topics = false``; ``state_dir``: with
    partitioned profile state (the stitch topic and its group too)."""
    names = ("dead-letter", "parking", "profiles", "replay", "deliveries")
    dead_letter, parking, profiles, replay, deliveries = (f"{group}.{n}" for n in names)
    stitch = f"{group}.stitch"
    stitching = [("topic", stitch, "Read"), ("topic", stitch, "Write"), ("group", stitch, "Read")]
    return [
        ("topic", topic, "Read"),
        ("group", group, "Read"),
        ("topic", dead_letter, "Write"),
        ("topic", deliveries, "Write"),
        ("topic", replay, "Read"),
        ("group", replay, "Read"),  # the replay feed's group is named after its topic
        ("topic", parking, "Read"),
        ("topic", parking, "Write"),
        ("group", parking, "Read"),  # the parking feed's group is named after its topic
        ("topic", profiles, "Read"),
        ("topic", profiles, "Write"),
        *(stitching if state_dir else []),
    ]


def admin_creates_topics(kafka: SecuredBroker, group: str, *, state_dir: bool = False) -> None:
    names = ["dead-letter", "parking", "profiles", "replay", "deliveries"]
    if state_dir:
        names.append("stitch")
    kafka.create_topics(*(f"{group}.{name}" for name in names))


async def test_sasl_plain_with_only_the_documented_acls_delivers(
    secure_kafka: SecuredBroker, tmp_path: Path
) -> None:
    kafka = secure_kafka
    topic, group, config, env = managed_setup(kafka, tmp_path, create_topics=False)
    admin_creates_topics(kafka, group)
    kafka.grant(*readme_acls(topic, group))
    events = [
        {"type": "identify", "userId": f"user-{i}", "traits": {"email": f"p{i}@example.com"}}
        for i in range(USERS)
    ]
    produce(kafka.bootstrap, topic, ((e["userId"].encode(), orjson.dumps(e)) for e in events))
    ends = end_offsets(kafka.bootstrap, topic, 1)
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        consumer = await start_consumer(
            {**env, "GHL_API_BASE_URL": sandbox.url}, "--config", str(config)
        )
        log = ProcessLog(consumer)
        try:
            async with asyncio.timeout(60):
                while committed_offsets(kafka.bootstrap, group, topic, 1) != ends:
                    assert consumer.returncode is None, log.text()[-3000:]
                    await asyncio.sleep(0.3)
        except TimeoutError:
            raise AssertionError(f"not all committed in 60 s:\n{log.text()[-3000:]}") from None
        finally:
            await stop_process(consumer, signal.SIGTERM)
        assert await log.finished() == 0, log.text()[-3000:]
        assert sorted(c["email"] for c in sandbox.contacts(LOCATION)) == [
            f"p{i}@example.com" for i in range(USERS)
        ]
    assert "AUTHORIZATION" not in log.text().upper(), log.text()[-3000:]
    assert PLAIN_PASSWORD not in log.text()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no Write on the dead-letter topic", "needs Write on topic {group}.dead-letter"),
        ("no Read on the source topic", "needs Read on topic {topic}"),
        ("a topic missing", "topic {group}.profiles does not exist"),
        ("no Write on the stitch topic (state_dir)", "needs Write on topic {group}.stitch"),
    ],
)
async def test_create_topics_false_names_the_missing_topic_or_acl(
    secure_kafka: SecuredBroker, tmp_path: Path, case: str, expected: str
) -> None:
    kafka = secure_kafka
    topic, group, config, env = managed_setup(kafka, tmp_path, create_topics=False)
    state_dir = case.endswith("(state_dir)")  # partitioned profile state: the stitch topic too
    if state_dir:
        with config.open("a") as file:
            file.write(f'[profiles]\nstate_dir = "{tmp_path / "state"}"\n')
    grants = readme_acls(topic, group, state_dir=state_dir)
    if case == "a topic missing":
        kafka.create_topics(f"{group}.dead-letter", f"{group}.parking")
    else:
        admin_creates_topics(kafka, group, state_dir=state_dir)
        left_out = {
            "no Write on the dead-letter topic": ("topic", f"{group}.dead-letter", "Write"),
            "no Read on the source topic": ("topic", topic, "Read"),
        }.get(case, ("topic", f"{group}.stitch", "Write"))
        grants.remove(left_out)
    kafka.grant(*grants)
    code, out, err = await run_command(env, "run", "--config", str(config), seconds=30)
    assert code == 2, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert message.startswith("ghl-consumer: configuration error: kafka.create_topics = false: ")
    assert expected.format(group=group, topic=topic) in message, message
    assert "Traceback" not in err
    assert PLAIN_PASSWORD not in out + err


async def test_a_refused_create_topics_says_authorisation_and_names_the_acl(
    secure_kafka: SecuredBroker, tmp_path: Path
) -> None:
    """The topics exist, the ACLs for using them are granted, but not Create: CreateTopics is
    refused (the broker checks Create before existence), and the message says so."""
    kafka = secure_kafka
    topic, group, config, env = managed_setup(kafka, tmp_path, create_topics=True)
    admin_creates_topics(kafka, group)
    kafka.grant(*readme_acls(topic, group))
    code, _, err = await run_command(env, "run", "--config", str(config), seconds=30)
    assert code == 2, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert "configuration error: kafka: not authorised to create topic" in message, message
    assert "Create on cluster" in message
    assert "kafka.create_topics = false" in message
