"""The sandbox's fault injection, admin endpoints, state file and command line, over real
sockets (and a real child process for the command line)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from consumer.commands.sandbox import add_arguments
from consumer.sandbox import Faults, Sandbox, run_sandbox, sandbox_process
from consumer.sandbox.process import sandbox_command

pytestmark = pytest.mark.integration

L1, T1, L2, T2 = "ve9EPM428h8vShlRW1KT", "pit-one-secret", "otherLocation0000002", "pit-two"
HEADERS = {"Authorization": f"Bearer {T1}", "Version": "2021-07-28"}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox(locations=[(L1, T1), (L2, T2)], seed=7) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def upsert(
    http: aiohttp.ClientSession,
    url: str,
    email: str,
    *,
    token: str = T1,
    location: str = L1,
    seconds: float = 10.0,
) -> tuple[int, Any]:
    body = {"locationId": location, "email": email}
    sent = {**HEADERS, "Authorization": f"Bearer {token}"}
    async with http.post(
        f"{url}/contacts/upsert",
        json=body,
        headers=sent,
        timeout=aiohttp.ClientTimeout(total=seconds),
    ) as response:
        return response.status, await response.json()


async def admin(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    """An admin call as a client should make it: changes carry a JSON body ({} by default)."""
    sent = None if method == "GET" else ({} if body is None else body)
    async with http.request(method, url, json=sent) as response:
        assert response.status == 200, await response.text()
        return await response.json()


# -- fault injection ----------------------------------------------------------------------


async def test_fail_rate_answers_5xx_without_touching_state(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    await admin(
        http,
        "PUT",
        f"{sandbox.url}/_sandbox/faults",
        {"locationId": L1, "failRate": 1, "failStatus": 503},
    )
    status, answer = await upsert(http, sandbox.url, "sam@example.com")
    assert status == 503
    assert answer == {"statusCode": 503, "message": "Internal server error"}  # no traceId
    assert sandbox.contacts(L1) == []
    # other locations are not affected
    assert (await upsert(http, sandbox.url, "sam@example.com", token=T2, location=L2))[0] == 200
    await admin(http, "PUT", f"{sandbox.url}/_sandbox/faults", {"failRate": 0})
    assert (await upsert(http, sandbox.url, "sam@example.com"))[0] == 200


async def test_fail_rate_below_one_fails_a_matching_share(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.configure(L1, faults=Faults(fail_rate=0.5))
    statuses = [(await upsert(http, sandbox.url, f"u{n}@example.com"))[0] for n in range(60)]
    failed = statuses.count(500)
    assert failed + statuses.count(200) == 60
    assert 15 <= failed <= 45


async def test_latency_is_added_to_answers(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    sandbox.configure(L1, faults=Faults(latency_ms=300))
    started = time.perf_counter()
    status, _ = await upsert(http, sandbox.url, "sam@example.com")
    assert status == 200
    assert time.perf_counter() - started >= 0.3


async def test_hanging_requests_time_out_and_change_nothing(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.configure(L1, faults=Faults(hang_rate=1))
    with pytest.raises(asyncio.TimeoutError):
        await upsert(http, sandbox.url, "sam@example.com", seconds=0.3)
    assert sandbox.contacts(L1) == []
    assert sandbox.requests[-1]["fault"] == "hang"
    sandbox.configure(L1, faults=Faults())
    assert (await upsert(http, sandbox.url, "sam@example.com"))[0] == 200


async def test_stopping_releases_hanging_requests(http: aiohttp.ClientSession) -> None:
    async with run_sandbox(locations={L1: T1}, faults=Faults(hang_rate=1)) as sandbox:
        pending = asyncio.ensure_future(upsert(http, sandbox.url, "sam@example.com"))
        async with asyncio.timeout(10):
            while not sandbox.requests:  # polls the log: the sandbox has no event for it
                await asyncio.sleep(0.01)
        started = time.perf_counter()
    assert time.perf_counter() - started < 5
    with pytest.raises(aiohttp.ClientError):
        await pending


async def test_reset_cuts_the_answer_after_applying_the_upsert(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.configure(L1, faults=Faults(reset_rate=1))
    with pytest.raises(aiohttp.ClientPayloadError):
        await upsert(http, sandbox.url, "sam@example.com")
    assert [c["email"] for c in sandbox.contacts(L1)] == ["sam@example.com"]
    assert sandbox.requests[-1]["fault"] == "reset"
    sandbox.configure(L1, faults=Faults())
    status, answer = await upsert(http, sandbox.url, "sam@example.com")
    assert status == 200
    assert answer["new"] is False  # the retry finds the contact the cut answer created


async def test_invalid_fault_settings_are_refused_and_change_nothing(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    async with http.put(
        f"{sandbox.url}/_sandbox/faults", json={"failRate": 0.7, "hangRate": 0.7}
    ) as response:
        assert response.status == 400
        assert "sum to at most 1" in (await response.json())["error"]
    async with http.put(f"{sandbox.url}/_sandbox/faults", json={"locationId": "nope"}) as response:
        assert response.status == 404
    settings = await admin(http, "GET", f"{sandbox.url}/_sandbox/settings")
    assert settings["locations"][L1]["faults"] == Faults().to_json()


# -- inspection ---------------------------------------------------------------------------


async def test_contacts_requests_and_counters_are_inspectable(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    await upsert(http, sandbox.url, "sam@example.com")
    await upsert(http, sandbox.url, "sam@example.com")
    await upsert(http, sandbox.url, "bad-email")
    await upsert(http, sandbox.url, "x@example.com", token="wrong")

    listed = await admin(
        http, "GET", f"{sandbox.url}/_sandbox/contacts?locationId={L1}&unmasked=1"
    )
    assert listed["locationId"] == L1
    assert [c["email"] for c in listed["contacts"]] == ["sam@example.com"]
    empty = await admin(http, "GET", f"{sandbox.url}/_sandbox/contacts?locationId={L2}")
    assert empty["contacts"] == []

    log = await admin(http, "GET", f"{sandbox.url}/_sandbox/requests?unmasked=1")
    assert [(e["status"], e["locationId"]) for e in log["requests"]] == [
        (200, L1),
        (200, L1),
        (422, L1),
        (401, None),
    ]
    assert log["requests"][1]["new"] is False
    assert log["requests"][0]["body"] == {"locationId": L1, "email": "sam@example.com"}
    last_two = await admin(http, "GET", f"{sandbox.url}/_sandbox/requests?locationId={L1}&limit=2")
    assert [e["status"] for e in last_two["requests"]] == [200, 422]
    assert T1 not in orjson.dumps(log).decode()  # tokens are never recorded

    counters = await admin(http, "GET", f"{sandbox.url}/_sandbox/counters")
    assert counters["unauthorized"] == 1
    assert counters["locations"][L1] == {
        "requests": 3,
        "status.200": 2,
        "status.422": 1,
        "created": 1,
        "updated": 1,
        "contacts": 1,
        "dailyUsed": 3,
    }


async def test_admin_listings_mask_email_and_phone_unless_asked(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    """Issue 15, finding 9: the admin API shows personal data masked by default."""
    body = {"locationId": L1, "email": "sam@example.com", "phone": "+14155550142"}
    async with http.post(f"{sandbox.url}/contacts/upsert", json=body, headers=HEADERS) as r:
        assert r.status == 200
    url = f"{sandbox.url}/_sandbox/contacts?locationId={L1}"
    [masked] = (await admin(http, "GET", url))["contacts"]
    assert (masked["email"], masked["emailLowerCase"], masked["phone"]) == (
        "s***@example.com",
        "s***@example.com",
        "+1******0142",
    )
    [logged] = (await admin(http, "GET", f"{sandbox.url}/_sandbox/requests"))["requests"]
    assert logged["body"] == {**body, "email": "s***@example.com", "phone": "+1******0142"}
    listings = [url, f"{sandbox.url}/_sandbox/requests"]
    everything = orjson.dumps([await admin(http, "GET", u) for u in listings]).decode()
    assert "sam@example.com" not in everything
    assert "5550142" not in everything
    [unmasked] = (await admin(http, "GET", url + "&unmasked=1"))["contacts"]
    assert (unmasked["email"], unmasked["phone"]) == ("sam@example.com", "+14155550142")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/_sandbox/reset"),
        ("POST", "/_sandbox/reset-daily"),
        ("POST", "/_sandbox/save"),
        ("PUT", "/_sandbox/faults"),
        ("PUT", "/_sandbox/limits"),
        ("PUT", "/_sandbox/scopes"),
    ],
)
async def test_admin_changes_refuse_what_a_web_page_can_send(
    sandbox: Sandbox, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    """Issue 15, finding 9: an HTML form (url-encoded, multipart, text/plain) or a bodiless
    request cannot change the sandbox: 415, nothing changed."""
    await upsert(http, sandbox.url, "sam@example.com")
    form = aiohttp.FormData({"failRate": "1"})
    for sent in (
        {"data": form},
        {"data": b'{"failRate": 1}', "headers": {"Content-Type": "text/plain"}},
        {"data": aiohttp.FormData({"f": "1"}, default_to_multipart=True)},
        {},
    ):
        async with http.request(method, sandbox.url + path, **sent) as response:
            assert response.status == 415, await response.text()
            assert "application/json" in (await response.json())["error"]
    assert len(sandbox.contacts(L1)) == 1
    assert sandbox.state.locations[L1].faults == Faults()


async def test_admin_contacts_needs_a_known_location(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sandbox.url}/_sandbox/contacts") as response:
        assert response.status == 400
    async with http.get(f"{sandbox.url}/_sandbox/contacts?locationId=nope") as response:
        assert response.status == 404


async def test_reset_forgets_contacts_and_log(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    await upsert(http, sandbox.url, "sam@example.com")
    await admin(http, "POST", f"{sandbox.url}/_sandbox/reset")
    assert sandbox.contacts(L1) == []
    assert (await admin(http, "GET", f"{sandbox.url}/_sandbox/requests"))["requests"] == []
    _status, answer = await upsert(http, sandbox.url, "sam@example.com")
    assert answer["new"] is True


# -- state file ---------------------------------------------------------------------------


async def test_state_file_round_trip(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    path = tmp_path / "sandbox.json"
    async with run_sandbox(locations={L1: T1}, state_file=path) as first:
        _, created = await upsert(http, first.url, "sam@example.com")
        saved = await admin(http, "POST", f"{first.url}/_sandbox/save")
        assert saved["saved"] is True
        assert path.exists()
        await upsert(http, first.url, "kim@example.com")  # saved on exit
    assert T1 not in path.read_text()

    async with run_sandbox(locations={L1: T1}, state_file=path) as second:
        assert sorted(c["email"] for c in second.contacts(L1)) == [
            "kim@example.com",
            "sam@example.com",
        ]
        status, again = await upsert(http, second.url, "sam@example.com")
        counters = await admin(http, "GET", f"{second.url}/_sandbox/counters")
    assert status == 200
    assert again["new"] is False
    assert again["contact"]["id"] == created["contact"]["id"]
    assert counters["locations"][L1]["dailyUsed"] == 3  # the daily budget survives restarts


async def test_save_without_state_file_is_refused(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sandbox.url}/_sandbox/save", json={}) as response:
        assert response.status == 400


# -- command line -------------------------------------------------------------------------


async def test_cli_serves_on_a_free_port_with_flag_limits_and_faults(
    http: aiohttp.ClientSession,
) -> None:
    flags = ["--burst", "2", "--interval-ms", "60000", "--duplicate-priority", "phone,email"]
    flags += ["--race-window-ms", "25"]
    async with sandbox_process({L1: T1, L2: T2}, flags) as child:
        assert child.url.startswith("http://127.0.0.1:")
        assert (await upsert(http, child.url, "a@example.com"))[0] == 200
        assert (await upsert(http, child.url, "b@example.com"))[0] == 200
        assert (await upsert(http, child.url, "c@example.com"))[0] == 429
        status, _ = await upsert(http, child.url, "sam@example.com", token=T2, location=L1)
        assert status == 403
        settings = await admin(http, "GET", f"{child.url}/_sandbox/settings")
        assert settings["locations"][L2]["duplicates"]["priority"] == ["phone", "email"]
        assert settings["locations"][L2]["duplicates"]["raceWindowMs"] == 25

    async with sandbox_process({L1: T1}, ["--fail-rate", "1", "--fail-status", "502"]) as child:
        assert (await upsert(http, child.url, "a@example.com"))[0] == 502


async def test_cli_loads_custom_field_definitions(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    path = tmp_path / "fields.json"
    path.write_bytes(
        orjson.dumps({"customFields": [{"id": "fldAge", "dataType": "NUMERICAL", "name": "Age"}]})
    )
    async with sandbox_process({L1: T1}, ["--custom-fields", str(path)]) as child:
        settings = await admin(http, "GET", f"{child.url}/_sandbox/settings")
    assert settings["locations"][L1]["customFields"] == [
        {"id": "fldAge", "fieldKey": "", "dataType": "NUMERICAL", "picklistOptions": []}
    ]

    path.write_bytes(b'{"customFields": [{"id": "fldAge", "dataType": "AGE"}]}')
    invalid = await asyncio.create_subprocess_exec(
        *sandbox_command({L1: T1}, ["--custom-fields", str(path)]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(invalid.communicate(), 30)
    assert invalid.returncode == 2
    assert b"dataType must be one of" in stderr


async def test_cli_exits_0_on_sigterm_and_2_on_invalid_settings() -> None:
    process = await asyncio.create_subprocess_exec(
        *sandbox_command({L1: T1}), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    assert (await asyncio.wait_for(process.stdout.readline(), 30)).startswith(b"http://")
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 10) == 0

    invalid = await asyncio.create_subprocess_exec(
        *sandbox_command({L1: T1}, ["--fail-rate", "2"]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(invalid.communicate(), 30)
    assert invalid.returncode == 2
    assert b"fault rates" in stderr


def test_the_command_binds_loopback_by_default() -> None:
    """Issue 15, finding 9: the admin API has no authentication; only --host exposes it."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).host == "127.0.0.1"
