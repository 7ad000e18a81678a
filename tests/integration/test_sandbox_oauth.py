"""The sandbox's OAuth endpoints over real sockets: token grants, rotation and reuse, location
tokens accepted by /contacts/upsert until they expire, installed locations, reconnect, and the
admin endpoints (lifetimes, install codes, invalidation). The clock is a fake the tests move."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from consumer.sandbox import Sandbox, run_sandbox
from consumer.sandbox.oauth import INVALID_REFRESH, OAuthSettings
from tests.harness.clock import ManualClock

pytestmark = pytest.mark.integration

APP = OAuthSettings(company_id="agency-1", access_ttl_s=20)
VERSION = {"Version": "2021-07-28"}




@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sandbox(clock: ManualClock) -> AsyncIterator[Sandbox]:
    async with run_sandbox(
        locations=[("pit-location", "pit-token")], clock=clock, oauth=APP, oauth_locations=3
    ) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.json()


async def admin(http: aiohttp.ClientSession, sandbox: Sandbox, path: str, body: Any) -> Any:
    status, answer = await send(http, "POST", f"{sandbox.url}/_sandbox/oauth/{path}", json=body)
    assert status == 200, answer
    return answer


async def token(
    http: aiohttp.ClientSession, sandbox: Sandbox, **form: str
) -> tuple[int, dict[str, Any]]:
    data = {"client_id": APP.client_id, "client_secret": APP.client_secret, **form}
    return await send(http, "POST", f"{sandbox.url}/oauth/token", data=data)


async def install(http: aiohttp.ClientSession, sandbox: Sandbox) -> dict[str, Any]:
    code = (await admin(http, sandbox, "code", {}))["code"]
    status, answer = await token(
        http, sandbox, grant_type="authorization_code", code=code, user_type="Company"
    )
    assert status == 200, answer
    return answer


async def test_token_grants_rotate_and_reuse_is_400_and_counted(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    first = await install(http, sandbox)
    assert first["userType"] == "Company"
    assert first["companyId"] == "agency-1"
    assert first["expires_in"] == 20
    assert "contacts.write" in first["scope"]
    status, second = await token(
        http, sandbox, grant_type="refresh_token", refresh_token=first["refresh_token"],
        user_type="Company",
    )
    assert status == 200
    assert second["refresh_token"] != first["refresh_token"]
    status, reuse = await token(
        http, sandbox, grant_type="refresh_token", refresh_token=first["refresh_token"],
        user_type="Company",
    )
    assert status == 400
    assert reuse == {"error": "invalid_grant", "error_description": INVALID_REFRESH}
    _, state = await send(http, "GET", f"{sandbox.url}/_sandbox/oauth")
    assert state["counters"]["refreshReuses"] == 1
    assert state["counters"]["refreshes"] == 1
    assert first["refresh_token"] not in str(state)
    assert second["access_token"] not in str(state)
    logged = str(list(sandbox.requests))
    assert first["refresh_token"] not in logged
    assert APP.client_secret not in logged


async def test_location_token_upserts_for_its_location_until_it_expires(
    sandbox: Sandbox, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    company = await install(http, sandbox)
    bearer = {"Authorization": f"Bearer {company['access_token']}", **VERSION}
    form = {"companyId": "agency-1", "locationId": "oauth-location-02"}
    status, minted = await send(
        http, "POST", f"{sandbox.url}/oauth/locationToken", data=form, headers=bearer
    )
    assert status == 200, minted
    assert (minted["userType"], minted["locationId"]) == ("Location", "oauth-location-02")
    location_bearer = {"Authorization": f"Bearer {minted['access_token']}", **VERSION}

    async def upsert(location_id: str) -> int:
        body = {"locationId": location_id, "email": "ada@example.com"}
        status, _ = await send(
            http, "POST", f"{sandbox.url}/contacts/upsert", json=body, headers=location_bearer
        )
        return status

    assert await upsert("oauth-location-02") == 200
    assert await upsert("oauth-location-01") == 403  # another location
    status, _ = await send(
        http, "POST", f"{sandbox.url}/contacts/upsert",
        json={"locationId": "oauth-location-02", "email": "ada@example.com"}, headers=bearer,
    )
    assert status == 401  # a Company token does not reach contacts
    clock.now += 20
    assert await upsert("oauth-location-02") == 401  # expired
    status, _ = await send(
        http, "POST", f"{sandbox.url}/oauth/locationToken", data=form, headers=bearer
    )
    assert status == 401  # the company token expired too
    status, _ = await send(
        http, "POST", f"{sandbox.url}/oauth/locationToken", data=form,
        headers={"Authorization": f"Bearer {company['access_token']}"},
    )
    assert status == 401  # no Version header


async def test_installed_locations_and_lifetimes_set_at_runtime(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, settings = await send(
        http, "PUT", f"{sandbox.url}/_sandbox/oauth", json={"accessTtlS": 7}
    )
    assert status == 200
    assert settings["accessTtlS"] == 7
    company = await install(http, sandbox)
    assert company["expires_in"] == 7
    bearer = {"Authorization": f"Bearer {company['access_token']}", **VERSION}
    status, listed = await send(
        http, "GET", f"{sandbox.url}/oauth/installedLocations",
        params={"companyId": "agency-1", "appId": APP.app_id}, headers=bearer,
    )
    assert status == 200
    assert [loc["_id"] for loc in listed["locations"]] == [
        "pit-location", "oauth-location-01", "oauth-location-02", "oauth-location-03",
    ]
    status, bad = await send(
        http, "PUT", f"{sandbox.url}/_sandbox/oauth", json={"accessTtlS": -1}
    )
    assert status == 400
    assert "positive" in bad["error"]


async def test_invalidated_refresh_token_then_reconnect(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    first = await install(http, sandbox)
    await admin(http, sandbox, "invalidate", {})
    status, lost = await token(
        http, sandbox, grant_type="refresh_token", refresh_token=first["refresh_token"],
        user_type="Company",
    )
    assert status == 400
    assert lost["error_description"] == INVALID_REFRESH
    status, code = await send(
        http, "POST", f"{sandbox.url}/oauth/reconnect",
        json={"clientKey": APP.client_id, "clientSecret": APP.client_secret,
              "companyId": "agency-1"},
    )
    assert status == 200
    assert code["authorizationCode"]
    assert code["expiresAt"]
    status, again = await token(
        http, sandbox, grant_type="authorization_code", code=code["authorizationCode"],
        user_type="Company",
    )
    assert status == 200
    assert again["refresh_token"] != first["refresh_token"]
    status, _ = await send(
        http, "POST", f"{sandbox.url}/oauth/reconnect",
        json={"clientKey": APP.client_id, "clientSecret": "wrong", "companyId": "agency-1"},
    )
    assert status == 401
