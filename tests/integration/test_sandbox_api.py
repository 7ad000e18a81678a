"""The sandbox's HighLevel endpoints over real sockets: auth, version, schema, matching, tags,
rate limits. The clock is a fake one the tests move, so window edges are exact."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from consumer.highlevel.client import HighLevelClient
from consumer.sandbox import DuplicateSettings, RateLimits, Sandbox, run_sandbox
from tests.harness.clock import ManualClock

pytestmark = pytest.mark.integration

L1, T1, L2, T2 = "ve9EPM428h8vShlRW1KT", "pit-one", "otherLocation0000002", "pit-two"
RATE_HEADERS = (
    "X-RateLimit-Max",
    "X-RateLimit-Remaining",
    "X-RateLimit-Interval-Milliseconds",
    "X-RateLimit-Limit-Daily",
    "X-RateLimit-Daily-Remaining",
)




@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sandbox(clock: ManualClock) -> AsyncIterator[Sandbox]:
    async with run_sandbox(
        locations=[(L1, T1), (L2, T2)],
        limits=RateLimits(burst=5, interval_ms=1000, daily=1000),
        clock=clock,
    ) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def headers(token: str = T1, version: str | None = "2021-07-28") -> dict[str, str]:
    sent = {"Authorization": f"Bearer {token}"}
    if version is not None:
        sent["Version"] = version
    return sent


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str = T1,
    version: str | None = "2021-07-28",
) -> tuple[int, Any, Any]:
    """Send one request; return status, decoded JSON body and response headers."""
    async with http.request(
        method, url, json=body, headers=headers(token, version)
    ) as response:
        return response.status, await response.json(), response.headers


async def upsert(
    http: aiohttp.ClientSession, sandbox: Sandbox, token: str = T1, **fields: Any
) -> tuple[int, Any, Any]:
    body = {"locationId": L1 if token == T1 else L2, **fields}
    return await call(http, "POST", f"{sandbox.url}/contacts/upsert", body, token=token)


def is_trace_id(value: Any) -> bool:
    return str(uuid.UUID(value)) == value


# -- auth and version ---------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer nope", f"Basic {T1}", T1])
async def test_unknown_or_missing_token_is_401_invalid_jwt(
    sandbox: Sandbox, http: aiohttp.ClientSession, authorization: str | None
) -> None:
    sent = {"Version": "2021-07-28"}
    if authorization is not None:
        sent["Authorization"] = authorization
    body = {"locationId": L1, "email": "sam@example.com"}
    async with http.post(f"{sandbox.url}/contacts/upsert", json=body, headers=sent) as response:
        answer = await response.json()
        assert response.status == 401
        assert not any(name in response.headers for name in RATE_HEADERS)
    # live answer (highlevel-api-docs#213); error bodies carry no traceId (#262, #213)
    assert answer == {"statusCode": 401, "message": "Invalid JWT"}
    assert sandbox.contacts(L1) == []


async def test_token_without_the_scope_is_401_not_403(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    # live reports (docs/highlevel.md, "Known pitfalls"): 401, not 403, and no rate headers
    async with http.put(
        f"{sandbox.url}/_sandbox/scopes", json={"token": T1, "scopes": ["contacts.readonly"]}
    ) as response:
        assert response.status == 200
        assert await response.json() == {"scopes": ["contacts.readonly"]}
    status, answer, sent_headers = await upsert(http, sandbox, email="sam@example.com")
    assert status == 401
    assert answer == {"statusCode": 401, "message": "The token is not authorized for this scope."}
    assert not any(name in sent_headers for name in RATE_HEADERS)
    assert sandbox.contacts(L1) == []
    assert sandbox.requests[-1]["missingScope"] == "contacts.write"

    async with http.put(
        f"{sandbox.url}/_sandbox/scopes", json={"token": T1, "scopes": ["contacts.write"]}
    ) as response:
        assert response.status == 200
    status, created, _ = await upsert(http, sandbox, email="sam@example.com")
    assert status == 200
    contact_id = created["contact"]["id"]
    status, answer, _ = await call(http, "GET", f"{sandbox.url}/contacts/{contact_id}")
    assert (status, answer["message"]) == (401, "The token is not authorized for this scope.")

    async with http.put(
        f"{sandbox.url}/_sandbox/scopes", json={"token": "nope", "scopes": []}
    ) as response:
        assert response.status == 404
        assert "nope" not in await response.text()
    async with http.put(f"{sandbox.url}/_sandbox/scopes", json={"token": T1}) as response:
        assert response.status == 400


async def test_token_of_another_location_is_403(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    body = {"locationId": L1, "email": "sam@example.com"}
    status, answer, sent_headers = await call(
        http, "POST", f"{sandbox.url}/contacts/upsert", body, token=T2
    )
    assert status == 403
    assert answer == {
        "statusCode": 403,
        "message": "The token does not have access to this location.",
    }
    assert sent_headers["X-RateLimit-Remaining"] == "4"  # counted against the token's location
    assert sandbox.contacts(L1) == []
    assert sandbox.contacts(L2) == []


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (None, "version header was not found."),
        ("v3", "version header is invalid"),
        ("2021-04-15", "version header is invalid"),
    ],
)
async def test_missing_or_other_version_is_401(
    sandbox: Sandbox, http: aiohttp.ClientSession, version: str | None, message: str
) -> None:
    # callers' probes of the live API (docs/highlevel.md, "Sandbox fidelity")
    body = {"locationId": L1, "email": "sam@example.com"}
    status, answer, _ = await call(
        http, "POST", f"{sandbox.url}/contacts/upsert", body, version=version
    )
    assert status == 401
    assert answer == {"statusCode": 401, "message": message}
    assert sandbox.contacts(L1) == []


# -- body and schema ----------------------------------------------------------------------


async def test_body_that_is_not_a_json_object_is_400(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{sandbox.url}/contacts/upsert", data=b"{not json", headers=headers()
    ) as response:
        answer = await response.json()
        assert response.status == 400
    assert answer == {"statusCode": 400, "message": "Bad Request"}


@pytest.mark.parametrize(
    ("fields", "messages"),
    [
        (
            {"email": "sam@example.com", "additionalEmails": []},
            ["property additionalEmails should not exist"],
        ),
        ({"email": "sam@example.com", "firstName": 7}, ["firstName must be a string"]),
        ({"email": "sam@example"}, ["email must be an email"]),
        ({"phone": "555"}, ["phone must be a valid phone number"]),
        ({"email": "sam@example.com", "dnd": "false"}, ["dnd must be a boolean value"]),
    ],
)
async def test_schema_violations_are_422_with_a_message_array(
    sandbox: Sandbox, http: aiohttp.ClientSession, fields: dict[str, Any], messages: list[str]
) -> None:
    status, answer, sent_headers = await upsert(http, sandbox, **fields)
    assert status == 422
    assert answer == {"statusCode": 422, "message": messages, "error": "Unprocessable Entity"}
    assert all(name in sent_headers for name in RATE_HEADERS)
    assert sandbox.contacts(L1) == []


async def test_missing_location_id_is_422(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    status, answer, _ = await call(
        http, "POST", f"{sandbox.url}/contacts/upsert", {"email": "sam@example.com"}
    )
    assert status == 422
    assert answer["message"] == ["locationId must be a string", "locationId should not be empty"]


# -- upsert semantics ---------------------------------------------------------------------


async def test_upsert_creates_then_updates_with_the_documented_response(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, created, _ = await upsert(
        http,
        sandbox,
        email="sam@example.com",
        phone="+1 415 555 0142",
        firstName="Sam",
        lastName="Rivera",
        source="Pricing Page Form",
        tags=["website-lead"],
        dnd=False,
        customFields=[{"id": "fld1", "field_value": "gold"}],
    )
    assert status == 200
    assert created["new"] is True
    assert is_trace_id(created["traceId"])
    contact = created["contact"]
    assert contact["id"]
    assert contact["locationId"] == L1
    assert contact["phone"] == "+14155550142"
    assert contact["name"] == "Sam Rivera"
    assert contact["firstNameLowerCase"] == "sam"
    assert contact["emailLowerCase"] == "sam@example.com"
    assert contact["customFields"] == [{"id": "fld1", "value": "gold"}]
    assert contact["dateAdded"] == "2026-09-21T14:13:20.000Z"

    status, updated, _ = await upsert(http, sandbox, email="SAM@example.com", city="Austin")
    assert status == 200
    assert updated["new"] is False
    assert updated["contact"]["id"] == contact["id"]
    assert updated["contact"]["city"] == "Austin"
    assert updated["contact"]["firstName"] == "Sam"  # absent fields are kept
    assert updated["contact"]["tags"] == ["website-lead"]
    assert updated["traceId"] != created["traceId"]
    assert len(sandbox.contacts(L1)) == 1


@pytest.mark.parametrize(
    ("priority", "winner", "dropped"),
    [(["email", "phone"], "by_email", "phone"), (["phone", "email"], "by_phone", "email")],
)
async def test_email_and_phone_on_two_contacts_follow_the_priority(
    sandbox: Sandbox,
    http: aiohttp.ClientSession,
    priority: list[str],
    winner: str,
    dropped: str,
) -> None:
    async with http.put(
        f"{sandbox.url}/_sandbox/duplicates", json={"locationId": L1, "priority": priority}
    ) as response:
        assert response.status == 200
    ids = {
        "by_email": (await upsert(http, sandbox, email="sam@example.com"))[1]["contact"]["id"],
        "by_phone": (await upsert(http, sandbox, phone="+14155550142"))[1]["contact"]["id"],
    }
    status, answer, _ = await upsert(
        http, sandbox, email="sam@example.com", phone="+14155550142", lastName="Rivera"
    )
    assert status == 200
    assert answer["new"] is False
    assert answer["contact"]["id"] == ids[winner]
    assert answer["contact"]["lastName"] == "Rivera"
    assert dropped not in answer["contact"]  # silently not applied (issue #37)
    assert len(sandbox.contacts(L1)) == 2
    log = sandbox.requests[-1]
    assert log["ignored"] == [dropped]
    assert log["contactId"] == ids[winner]


async def test_gender_on_an_existing_contact_is_silently_ignored(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    await upsert(http, sandbox, email="sam@example.com", gender="male")
    status, answer, _ = await upsert(http, sandbox, email="sam@example.com", gender="female")
    assert status == 200
    assert answer["contact"]["gender"] == "male"
    assert sandbox.requests[-1]["ignored"] == ["gender"]


async def test_upsert_tags_replace_and_the_tags_endpoint_adds(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    _, created, _ = await upsert(http, sandbox, email="sam@example.com", tags=["a", "b"])
    contact_id = created["contact"]["id"]
    _, replaced, _ = await upsert(http, sandbox, email="sam@example.com", tags=["c"])
    assert replaced["contact"]["tags"] == ["c"]

    status, added, sent_headers = await call(
        http, "POST", f"{sandbox.url}/contacts/{contact_id}/tags", {"tags": ["d", "c"]}
    )
    assert status == 201
    assert added["tags"] == ["c", "d"]
    assert is_trace_id(added["traceId"])  # 2xx answers carry one
    assert all(name in sent_headers for name in RATE_HEADERS)

    status, fetched, _ = await call(http, "GET", f"{sandbox.url}/contacts/{contact_id}")
    assert status == 200
    assert fetched["contact"]["tags"] == ["c", "d"]
    assert fetched["contact"]["email"] == "sam@example.com"

    status, refused, _ = await call(
        http, "POST", f"{sandbox.url}/contacts/{contact_id}/tags", {"tags": "e"}
    )
    assert status == 422
    assert refused["message"] == ["tags must be an array"]


async def test_a_permanent_dnd_refuses_the_update_that_would_lift_it(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    # HighLevel's message from a caller's live report; the 400 is the sandbox's choice
    _, created, _ = await upsert(http, sandbox, email="sam@example.com", dnd=True)
    async with http.put(
        f"{sandbox.url}/_sandbox/dnd",
        json={
            "locationId": L1,
            "email": "Sam@Example.com",
            "dndSettings": {"SMS": {"status": "permanent", "message": "STOP"}},
        },
    ) as response:
        assert response.status == 200
        marked = (await response.json())["contact"]
    assert marked["id"] == created["contact"]["id"]
    assert marked["dndSettings"] == {"SMS": {"status": "permanent", "message": "STOP"}}
    assert marked["dnd"] is True  # stored apart from the channels

    for change in ({"dnd": False}, {"dndSettings": {"SMS": {"status": "inactive"}}}):
        status, answer, sent_headers = await upsert(
            http, sandbox, email="sam@example.com", firstName="Sam", **change
        )
        assert status == 400
        assert answer == {
            "statusCode": 400,
            "message": "Not authorized to update permanent dnd setting for SMS",
            "error": "Bad Request",
        }
        assert all(name in sent_headers for name in RATE_HEADERS)
        assert sandbox.requests[-1]["permanentDnd"] == "SMS"
    assert "firstName" not in sandbox.contacts(L1)[0]  # nothing of a refused update applies

    status, answer, _ = await upsert(http, sandbox, email="sam@example.com", firstName="Sam")
    assert status == 200
    assert answer["contact"]["dndSettings"]["SMS"]["status"] == "permanent"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"locationId": L1, "email": "nobody@example.com", "dndSettings": {}}, 404),
        ({"locationId": L1, "contactId": "x", "dndSettings": {"SMS": {"status": "on"}}}, 422),
        ({"email": "sam@example.com", "dndSettings": {}}, 400),
    ],
)
async def test_admin_dnd_needs_a_contact_and_valid_settings(
    sandbox: Sandbox, http: aiohttp.ClientSession, body: dict[str, Any], status: int
) -> None:
    async with http.put(f"{sandbox.url}/_sandbox/dnd", json=body) as response:
        assert response.status == status


async def test_custom_field_definitions_drop_unknown_ids_and_convert_values(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    # callers' live reports; definitions in the shape of GET .../customFields
    definitions = [
        {"id": "fldAge", "fieldKey": "contact.age", "dataType": "NUMERICAL"},
        {"id": "fldPlan", "dataType": "SINGLE_OPTIONS", "picklistOptions": ["Gold", "Silver"]},
    ]
    async with http.put(
        f"{sandbox.url}/_sandbox/custom-fields",
        json={"locationId": L1, "customFields": definitions},
    ) as response:
        assert response.status == 200
        settings = await response.json()
    assert [d["id"] for d in settings["locations"][L1]["customFields"]] == ["fldAge", "fldPlan"]
    assert settings["locations"][L2]["customFields"] is None  # L2 still stores any field

    fields = [
        {"id": "fldAge", "field_value": "42"},
        {"id": "fldPlan", "field_value": "Gold"},
        {"id": "fldTypo", "field_value": "lost"},
    ]
    status, answer, _ = await upsert(http, sandbox, email="sam@example.com", customFields=fields)
    assert status == 200
    assert answer["contact"]["customFields"] == [
        {"id": "fldAge", "value": 42},
        {"id": "fldPlan", "value": "Gold"},
    ]
    assert sandbox.requests[-1]["ignored"] == ["customFields.fldTypo"]

    status, answer, _ = await upsert(
        http, sandbox, email="sam@example.com", customFields=[{"id": "fldPlan", "fieldValue": "X"}]
    )
    assert status == 422
    assert answer["message"] == ["customFields.fldPlan must be one of: Gold, Silver"]

    status, answer, _ = await upsert(
        http, sandbox, token=T2, email="sam@example.com", customFields=fields
    )
    assert [f["id"] for f in answer["contact"]["customFields"]] == ["fldAge", "fldPlan", "fldTypo"]

    async with http.put(
        f"{sandbox.url}/_sandbox/custom-fields", json={"customFields": [{"id": "x"}]}
    ) as response:
        assert response.status == 400
    async with http.put(
        f"{sandbox.url}/_sandbox/custom-fields", json={"locationId": L1, "customFields": None}
    ) as response:
        assert response.status == 200
        assert (await response.json())["locations"][L1]["customFields"] is None


async def test_contacts_are_scoped_to_the_token_location(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    _, created, _ = await upsert(http, sandbox, email="sam@example.com")
    contact_id = created["contact"]["id"]
    status, answer, _ = await call(http, "GET", f"{sandbox.url}/contacts/{contact_id}", token=T2)
    assert status == 403
    assert answer["message"] == "The token does not have access to this location."
    status, answer, _ = await call(
        http, "POST", f"{sandbox.url}/contacts/{contact_id}/tags", {"tags": ["x"]}, token=T2
    )
    assert status == 403
    status, answer, _ = await call(http, "GET", f"{sandbox.url}/contacts/doesNotExist0000000")
    assert status == 400
    assert answer["message"] == "Contact not found"


async def test_search_duplicate_finds_by_email_or_by_number(
    sandbox: Sandbox, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    _, by_phone, _ = await upsert(http, sandbox, phone="+14155550123", firstName="Pat")
    _, by_email, _ = await upsert(http, sandbox, email="sam@example.com")
    client = HighLevelClient(base_url=sandbox.url)
    try:
        # The client escapes the "+" (HighLevel's parameter is ``number``); a national number
        # is read as the upsert stored it (E.164).
        for number in ("+14155550123", "(415) 555-0123"):
            found = await client.find_by_phone(token=T1, location_id=L1, phone=number)
            assert found.status == 200
            assert found.body["contact"]["id"] == by_phone["contact"]["id"]
            assert found.body["contact"]["phone"] == "+14155550123"
        found = await client.find_by_email(token=T1, location_id=L1, email="SAM@example.com")
        assert found.body["contact"]["id"] == by_email["contact"]["id"]
        clock.now += 1  # past the burst of 5
        for number in ("+14155550199", "not a phone"):
            found = await client.find_by_phone(token=T1, location_id=L1, phone=number)
            assert (found.status, found.message, found.contact) == (200, "", None)
        # Another location's token, and no locationId: refused as the other endpoints do.
        found = await client.find_by_phone(token=T2, location_id=L1, phone="+14155550123")
        assert found.status == 403
    finally:
        await client.close()
    status, _, _ = await call(
        http, "GET", f"{sandbox.url}/contacts/search/duplicate?number=%2B14155550123"
    )
    assert status == 400


# -- rate limits --------------------------------------------------------------------------


async def test_429_exactly_after_the_burst_and_headers_on_every_answer(
    sandbox: Sandbox, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    remaining = []
    for n in range(5):
        status, _, sent_headers = await upsert(http, sandbox, email=f"u{n}@example.com")
        assert status == 200
        remaining.append(sent_headers["X-RateLimit-Remaining"])
    assert remaining == ["4", "3", "2", "1", "0"]
    status, answer, sent_headers = await upsert(http, sandbox, email="late@example.com")
    assert status == 429
    assert "traceId" not in answer
    assert answer["statusCode"] == 429
    assert {name: sent_headers[name] for name in RATE_HEADERS} == {
        "X-RateLimit-Max": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Interval-Milliseconds": "1000",
        "X-RateLimit-Limit-Daily": "1000",
        "X-RateLimit-Daily-Remaining": "995",
    }
    assert "Retry-After" not in sent_headers
    assert len(sandbox.contacts(L1)) == 5

    # another location has its own bucket
    status, _, sent_headers = await upsert(http, sandbox, token=T2, email="x@example.com")
    assert status == 200
    assert sent_headers["X-RateLimit-Remaining"] == "4"

    clock.now += 1.0  # the window rolls over
    status, _, sent_headers = await upsert(http, sandbox, email="late@example.com")
    assert status == 200
    assert sent_headers["X-RateLimit-Remaining"] == "4"


async def test_daily_budget_429_until_the_admin_resets_it(
    sandbox: Sandbox, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox.configure(L1, limits=RateLimits(burst=100, interval_ms=1000, daily=3))
    for n in range(3):
        assert (await upsert(http, sandbox, email=f"u{n}@example.com"))[0] == 200
    status, _, sent_headers = await upsert(http, sandbox, email="late@example.com")
    assert status == 429
    assert sent_headers["X-RateLimit-Daily-Remaining"] == "0"
    assert sent_headers["X-RateLimit-Remaining"] == "97"
    clock.now += 5  # waiting seconds does not help with the daily budget
    assert (await upsert(http, sandbox, email="late@example.com"))[0] == 429

    async with http.post(
        f"{sandbox.url}/_sandbox/reset-daily?locationId={L1}", json={}
    ) as response:
        assert response.status == 200
        counters = await response.json()
    assert counters["locations"][L1]["dailyUsed"] == 0
    assert counters["locations"][L1]["rateLimited.daily"] == 2
    status, _, sent_headers = await upsert(http, sandbox, email="late@example.com")
    assert status == 200
    assert sent_headers["X-RateLimit-Daily-Remaining"] == "2"


async def test_limits_change_at_runtime_over_the_admin_endpoint(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    async with http.put(
        f"{sandbox.url}/_sandbox/limits", json={"locationId": L1, "burst": 1}
    ) as response:
        assert response.status == 200
        settings = await response.json()
    assert settings["locations"][L1]["limits"]["burst"] == 1
    assert settings["locations"][L2]["limits"]["burst"] == 5
    assert (await upsert(http, sandbox, email="a@example.com"))[0] == 200
    status, _, sent_headers = await upsert(http, sandbox, email="b@example.com")
    assert status == 429
    assert sent_headers["X-RateLimit-Max"] == "1"

    async with http.put(f"{sandbox.url}/_sandbox/limits", json={"enforced": False}) as response:
        assert response.status == 200
    status, _, sent_headers = await upsert(http, sandbox, email="b@example.com")
    assert status == 200
    assert sent_headers["X-RateLimit-Remaining"] == "0"


async def test_retry_after_is_sent_only_when_enabled(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    limits = RateLimits(burst=1, interval_ms=10_000, daily=1000)
    async with run_sandbox(
        locations={L1: T1}, limits=limits, retry_after=True, clock=clock
    ) as sandbox:
        assert (await upsert(http, sandbox, email="a@example.com"))[0] == 200
        clock.now += 2.5
        status, _, sent_headers = await upsert(http, sandbox, email="b@example.com")
    assert status == 429
    assert sent_headers["Retry-After"] == "8"  # 7.5 s left in the window, rounded up


async def test_duplicates_allowed_honours_create_new_if_duplicate_allowed(
    http: aiohttp.ClientSession,
) -> None:
    async with run_sandbox(
        locations={L1: T1}, duplicates=DuplicateSettings(allow_duplicates=True)
    ) as sandbox:
        first = (await upsert(http, sandbox, email="sam@example.com"))[1]
        second = (
            await upsert(http, sandbox, email="sam@example.com", createNewIfDuplicateAllowed=True)
        )[1]
    assert second["new"] is True
    assert second["contact"]["id"] != first["contact"]["id"]


# -- race mode ----------------------------------------------------------------------------


async def test_race_mode_lets_concurrent_upserts_for_one_new_email_create_two_contacts(
    http: aiohttp.ClientSession,
) -> None:
    # callers' reports: two upserts for the same new email at the same moment can
    # create two contacts; the race mode reproduces it, and only for requests in flight together
    async with run_sandbox(
        locations={L1: T1}, duplicates=DuplicateSettings(race_window_ms=200)
    ) as sandbox:
        together = await asyncio.gather(
            upsert(http, sandbox, email="sam@example.com", firstName="Sam"),
            upsert(http, sandbox, email="SAM@example.com", phone="+14155550142"),
        )
        assert [(status, answer["new"]) for status, answer, _ in together] == [(200, True)] * 2
        assert len({answer["contact"]["id"] for _, answer, _ in together}) == 2

        _, later, _ = await upsert(http, sandbox, email="sam@example.com", lastName="Rivera")
        assert later["new"] is False  # once created, the oldest contact matches
        assert later["contact"]["id"] == sandbox.contacts(L1)[0]["id"]
        assert len(sandbox.contacts(L1)) == 2

        async with http.put(
            f"{sandbox.url}/_sandbox/duplicates", json={"raceWindowMs": 0}
        ) as response:
            assert response.status == 200
            settings = await response.json()
        assert settings["locations"][L1]["duplicates"]["raceWindowMs"] == 0
        again = await asyncio.gather(
            *(upsert(http, sandbox, email="kim@example.com") for _ in range(2))
        )
        assert sorted(answer["new"] for _, answer, _ in again) == [False, True]
        assert len(sandbox.contacts(L1)) == 3
