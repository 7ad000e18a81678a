"""`ghl-consumer audit` end to end: a stream goes through the real consumer process into the
sandbox; the audit (a real subprocess) accounts for every event, then names the contact keys
whose HighLevel contact went missing or changed."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from consumer.sandbox.server import run_sandbox
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    run_command,
    start_consumer,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-audit-secret-token"
USERS = 12


def identify(user: int, version: int) -> bytes:
    return orjson.dumps(
        {
            "type": "identify",
            "userId": f"user-{user}",
            "messageId": f"m-{user}-{version}",
            "traits": {
                "email": f"User{user}@Example.com",
                "first_name": f"v{version}",
                "phone": f"+1 415 555 {user:04d}",
            },
            "context": {"consent": {"marketing": "granted" if user % 2 else "denied"}},
        }
    )


def stream() -> list[tuple[bytes | None, bytes | None]]:
    records: list[tuple[bytes | None, bytes | None]] = []
    for version in range(3):
        for user in range(USERS):
            key = f"user-{user}".encode()
            records.append((key, identify(user, version)))
            records.append((key, orjson.dumps({"type": "page", "userId": f"user-{user}"})))
    for user in range(0, USERS, 3):
        lead = {
            "type": "track",
            "event": "Lead Generated",
            "userId": f"user-{user}",
            "messageId": f"lead-{user}",
            "properties": {"source": "Pricing Page Form", "lead_tag": "website-lead"},
        }
        records.append((f"user-{user}".encode(), orjson.dumps(lead)))
    records.append((b"user-1", identify(1, 2)))  # an SDK retry: same messageId
    records.append((b"user-0", b"{broken json"))  # dead-lettered
    records.append(  # no email or phone anywhere: dead-lettered as no_identifier
        (b"anon-1", orjson.dumps({"type": "identify", "userId": "anon-1", "traits": {}}))
    )
    return records


async def audit(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """``python -m consumer audit ARGS``: (exit code, stdout, stderr)."""
    return await run_command(env, "audit", *args)


def contact_of(sandbox: Any, user: int) -> Any:
    location = sandbox.state.locations[LOCATION]
    return next(
        c for c in location.contacts.values() if c.fields["email"] == f"user{user}@example.com"
    )


async def test_audit_accounts_for_everything_then_names_missing_and_changed_contacts(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=3)
    group = f"audit-{uuid.uuid4().hex[:8]}"
    total = produce(kafka_bootstrap, topic, stream())
    ends = end_offsets(kafka_bootstrap, topic, 3)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "GHL_LOCATION_ID": LOCATION,
    }

    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        consumer = await start_consumer(
            {**env, "GHL_ACCESS_TOKEN": TOKEN, "GHL_API_BASE_URL": sandbox.url}
        )
        try:
            async with asyncio.timeout(90):
                while committed_offsets(kafka_bootstrap, group, topic, 3) != ends:
                    assert consumer.returncode is None, await consumer.stderr.read()  # type: ignore[union-attr]
                    await asyncio.sleep(0.5)
        finally:
            if consumer.returncode is None:
                consumer.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, consumer_log = await consumer.communicate()
        assert consumer.returncode == 0, consumer_log.decode()

        # Everything is accounted for. No token is needed: the audit sends nothing.
        code, out, err = await audit(env, "--sandbox", sandbox.url, "--json")
        assert code == 0, out + err
        report = orjson.loads(out)
        assert report["ok"] is True
        assert report["unaccounted"] == []
        assert report["records"] == total
        assert report["contacts"] == {"expected": USERS, "matching": USERS}
        identity_events = USERS * 3 + len(range(0, USERS, 3))
        assert report["identity_events"] == identity_events
        assert report["delivered_events"] == identity_events
        assert report["dead_lettered"] == 2
        assert report["parked"] == 0
        assert report["dropped"] == {"duplicate": 1, "not_mapped": USERS * 3}
        assert report["absent_topics"] == []  # the consumer creates its parking topic
        # Each contact key's HighLevel calls, named from the delivery topic: the upserts the
        # sandbox answered (their traceIds), user-0's first among them.
        upserts = {
            r["traceId"]: r for r in sandbox.requests if r["path"] == "/contacts/upsert"
        }
        assert report["delivery_records"] >= len(upserts)
        assert [e["subject"] for e in report["expected"]] == sorted(
            f"default/user-{user}" for user in range(USERS)
        )
        for entry in report["expected"]:
            assert entry["calls"], entry
            for named in entry["calls"]:
                answered = upserts[named["traceId"]]
                assert (named["endpoint"], named["verdict"]) == ("upsert", "delivered")
                assert named["status"] == answered["status"]
                assert named["contactId"] == answered["contactId"]
        user_3_calls = next(e for e in report["expected"] if e["subject"] == "default/user-3")

        # A contact disappears from HighLevel (user-3: three identifies, one lead) and another is
        # edited there.
        location = sandbox.state.locations[LOCATION]
        del location.contacts[contact_of(sandbox, 3).id]
        contact_of(sandbox, 4).fields["firstName"] = "Edited In HighLevel"

        code, out, err = await audit(env, "--sandbox", sandbox.url)
        assert code == 1, out + err
        # An older deployment, without delivery records: the same verdict, said once.
        code, older, err = await audit(
            env, "--sandbox", sandbox.url, "--delivery-topic", f"{group}.no-such-topic"
        )
    assert code == 1, older + err
    assert older.count("no delivery records") == 1
    assert "  call " not in older
    assert "UNACCOUNTED default/user-3: missing contact (4 event(s))" in older
    # The missing contact's calls: what HighLevel answered, though it no longer holds it.
    lines = out.splitlines()
    at = lines.index("UNACCOUNTED default/user-3: missing contact (4 event(s))")
    shown = lines[at + 1 : at + 1 + len(user_3_calls["calls"])]
    assert [line.split(" at ")[0] for line in shown] == [
        f"  call upsert {c['status']} delivered" for c in user_3_calls["calls"]
    ]
    assert all(f"traceId {c['traceId']}" in line for c, line in zip(
        user_3_calls["calls"], shown, strict=True
    ))
    assert "no delivery record" not in out
    assert "UNACCOUNTED default/user-3: missing contact (4 event(s))" in out
    assert "UNACCOUNTED default/user-4: field mismatch: firstName (3 event(s))" in out
    assert "delivered and matching   10 contact(s)" in out
    assert "Edited In HighLevel" not in out
    assert "user4@example.com" not in out.lower()
