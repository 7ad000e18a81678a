"""HighLevelClient against the sandbox over real HTTP: every answer becomes the right Answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from consumer.highlevel.client import MAX_BODY_BYTES, HighLevelClient, Timeouts
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


@pytest.fixture
async def tiny() -> AsyncIterator[tuple[str, list[str]]]:
    """A tiny HTTP server: records each request's raw path; ``/big`` answers 2 MiB with a
    Content-Length, ``/stream`` 2 MiB chunked (no length), anything else ``{}``."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append(request.raw_path)
        if request.path.startswith("/big"):
            return web.Response(body=b"x" * (2 << 20), content_type="application/json")
        if request.path.startswith("/stream"):
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(32):
                await response.write(b"y" * 65_536)
            await response.write_eof()
            return response
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_the_contact_id_is_escaped_into_its_path_segment(
    tiny: tuple[str, list[str]],
) -> None:
    """Issue 15, finding 8: an id with ``/``, ``?``, ``#`` or ``%`` cannot reach another path,
    query or fragment; a dot segment (which URLs resolve away) is not sent."""
    url, seen = tiny
    c = HighLevelClient(base_url=url)
    try:
        answer = await c.add_tags(token=TOKEN, contact_id="a/../../locations/x?y=1#z%", tags=["t"])
        assert answer.verdict is Verdict.DELIVERED
        for dots in ("..", ".", ""):
            refused = await c.add_tags(token=TOKEN, contact_id=dots, tags=["t"])
            assert (refused.verdict, refused.status) == (Verdict.REJECTED, None)
            assert refused.error == f"contact id {dots!r} cannot name a contact in a URL path"
    finally:
        await c.close()
    assert seen == ["/contacts/a%2F..%2F..%2Flocations%2Fx%3Fy=1%23z%25/tags"]


async def test_the_sandbox_reads_an_escaped_id_as_one_unknown_contact(
    client: HighLevelClient, sandbox: Sandbox
) -> None:
    """Unescaped, ``x/../../upsert`` would resolve to ``/upsert/tags``; escaped it is an
    unknown contact id of the tags route (HighLevel's 400)."""
    answer = await client.add_tags(token=TOKEN, contact_id="x/../../upsert", tags=["t"])
    assert (answer.verdict, answer.status) == (Verdict.REJECTED, 400)
    assert sandbox.requests[-1]["contactId"] == "x/../../upsert"


@pytest.mark.parametrize("path", ["/big", "/stream"], ids=["content-length", "chunked"])
async def test_a_body_over_the_cap_is_not_read_and_is_retryable(
    tiny: tuple[str, list[str]], path: str
) -> None:
    """Issue 15, finding 8: a 2 MiB answer (announced or streamed) is cut at 1 MiB: a RETRY
    saying why, nothing parsed."""
    url, _ = tiny
    c = HighLevelClient(base_url=url + path)
    try:
        answer = await c.upsert(token=TOKEN, payload=SAM)
    finally:
        await c.close()
    assert (answer.verdict, answer.status) == (Verdict.RETRY, 200)
    assert answer.error == f"response body over {MAX_BODY_BYTES} bytes: not read"
    assert answer.body == {}
