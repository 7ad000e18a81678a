"""HighLevelClient against the sandbox over real HTTP: every answer becomes the right Answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from consumer.highlevel.client import HighLevelClient, Timeouts
from consumer.highlevel.verdicts import Answer, Verdict
from consumer.sandbox.server import Sandbox, run_sandbox
from consumer.sandbox.settings import Faults, RateLimits

pytestmark = pytest.mark.integration

LOCATION, TOKEN = "loc-A", "token-A"
OTHER, OTHER_TOKEN = "loc-B", "token-B"
SAM = {"locationId": LOCATION, "email": "sam@example.com", "firstName": "Sam"}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox(locations={LOCATION: TOKEN, OTHER: OTHER_TOKEN}, seed=1) as box:
        yield box


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[HighLevelClient]:
    c = HighLevelClient(base_url=sandbox.url, timeouts=Timeouts(connect=1, total=1.5))
    yield c
    await c.close()


async def test_upsert_is_delivered_with_trace_id_and_contact(
    client: HighLevelClient, sandbox: Sandbox
) -> None:
    answer = await client.upsert(token=TOKEN, payload=SAM)
    assert answer.verdict is Verdict.DELIVERED
    assert answer.status in (200, 201)
    assert answer.trace_id
    assert answer.contact is not None
    assert answer.contact["email"] == "sam@example.com"
    assert answer.headers["X-RateLimit-Max"] == "100"
    assert [c["email"] for c in sandbox.contacts(LOCATION)] == ["sam@example.com"]


async def test_tags_are_added_by_contact_id(client: HighLevelClient, sandbox: Sandbox) -> None:
    upserted = await client.upsert(token=TOKEN, payload={**SAM, "tags": ["a"]})
    assert upserted.contact is not None
    contact_id = str(upserted.contact["id"])
    added = await client.add_tags(token=TOKEN, contact_id=contact_id, tags=["b"])
    assert added.verdict is Verdict.DELIVERED
    assert sorted(sandbox.contacts(LOCATION)[0]["tags"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        ("wrong", 401, "Invalid JWT"),
        (OTHER_TOKEN, 403, "The token does not have access to this location."),
        ("read-only", 401, "The token is not authorized for this scope."),
    ],
    ids=["unknown", "other-location", "missing-scope"],
)
async def test_auth_failures_are_unauthorized_and_never_echo_the_token(
    client: HighLevelClient, sandbox: Sandbox, token: str, status: int, message: str
) -> None:
    sandbox.state.grant_token(LOCATION, "read-only", scopes=["contacts.readonly"])
    answer = await client.upsert(token=token, payload=SAM)
    assert (answer.verdict, answer.status) == (Verdict.UNAUTHORIZED, status)
    assert answer.message == message
    assert answer.trace_id is None
    assert token not in repr(answer)


async def test_unknown_property_is_rejected_with_highlevel_message(client: HighLevelClient) -> None:
    answer = await client.upsert(token=TOKEN, payload={**SAM, "favouriteColour": "teal"})
    assert (answer.verdict, answer.status) == (Verdict.REJECTED, 422)
    assert answer.message == "property favouriteColour should not exist"
    assert answer.trace_id is None  # HighLevel's error bodies carry no traceId (#262, #213)


async def test_past_the_burst_the_answer_is_rate_limited(
    client: HighLevelClient, sandbox: Sandbox
) -> None:
    sandbox.configure(LOCATION, limits=RateLimits(burst=2, interval_ms=60_000))
    verdicts = [(await client.upsert(token=TOKEN, payload=SAM)).verdict for _ in range(3)]
    assert verdicts == [Verdict.DELIVERED, Verdict.DELIVERED, Verdict.RATE_LIMITED]


async def test_server_errors_hangs_and_resets_are_retryable(
    client: HighLevelClient, sandbox: Sandbox
) -> None:
    answers: list[Answer] = []
    for faults in (Faults(fail_rate=1.0), Faults(hang_rate=1.0), Faults(reset_rate=1.0)):
        sandbox.configure(LOCATION, faults=faults)
        answers.append(await client.upsert(token=TOKEN, payload=SAM))
    assert [a.verdict for a in answers] == [Verdict.RETRY] * 3
    assert answers[0].status is not None
    assert answers[0].status >= 500
    assert (answers[1].status, answers[1].error) == (None, "timeout")
    assert answers[2].status is None
    assert answers[2].error is not None
    assert answers[2].error.startswith("connection:")


async def test_nothing_listening_is_a_retryable_connection_error() -> None:
    from tests.kafka_broker import free_port

    c = HighLevelClient(base_url=f"http://127.0.0.1:{free_port()}")
    try:
        answer = await c.upsert(token=TOKEN, payload=SAM)
    finally:
        await c.close()
    assert (answer.verdict, answer.status) == (Verdict.RETRY, None)
    assert answer.error == "connection: ClientConnectorError"
