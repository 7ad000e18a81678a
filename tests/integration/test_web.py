"""consumer.observe.web over real sockets: /metrics, /healthz, /readyz on the metrics listener;
the Event Debugger on its own: login, Host allow-list, stream cap, the page and feeds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import aiohttp
import orjson
import pytest

from consumer.core.events import Record
from consumer.engine.offsets import PartitionStats
from consumer.highlevel.verdicts import Answer, classify
from consumer.observe.metrics import Metrics, StateSnapshot
from consumer.observe.readiness import Health, Readiness
from consumer.observe.recent_deliveries import RecentDeliveries
from consumer.observe.web import SESSION_COOKIE, WebServer, serve_debugger, serve_web

pytestmark = pytest.mark.integration

TOKEN = "debug-token-7f3a"
PAYLOAD = {"locationId": "loc-acme", "email": "sam@example.com", "phone": "+14155550142",
           "firstName": "Sam"}


def stats(partition: int, incomplete: int) -> PartitionStats:
    return PartitionStats("events", partition, 40, 40, 45, incomplete, incomplete, 0, 0, 0, 0.0)


def deliver(debugger: RecentDeliveries, integration: str = "acme", status: int = 201) -> None:
    debugger.record(
        integration=integration,
        location_id=f"loc-{integration}",
        endpoint="upsert",
        events=["identify"],
        contact_key="lead-987",
        payload=PAYLOAD,
        answer=Answer(verdict=classify(status), status=status, latency_s=0.08, trace_id="t-1"),
        attempts=1,
        now=time.time(),
    )


class Probe:
    """What the engine would fill: readiness inputs and the scrape-time state."""

    def __init__(self) -> None:
        self.readiness = Readiness(joined=True, broker_reachable=True)
        self.health = Health()
        self.state_calls = 0
        self.fail_state = False

    async def state(self) -> StateSnapshot:
        self.state_calls += 1
        if self.fail_state:
            raise RuntimeError("source closed")
        return StateSnapshot(
            partitions=[stats(0, 3)], high_watermarks={("events", 0): 50}, buffered_records=3
        )


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(integrations={"acme": "loc-acme", "beta": "loc-beta"}, topics=["events"])


@pytest.fixture
def debugger() -> RecentDeliveries:
    return RecentDeliveries(integrations=["acme", "beta"])


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def server(metrics: Metrics, probe: Probe) -> AsyncIterator[WebServer]:
    async with serve_web(
        port=0,
        metrics=metrics,
        readiness=lambda: probe.readiness,
        liveness=lambda: probe.health,
        state=probe.state,
    ) as running:
        yield running


@pytest.fixture
async def debug_server(debugger: RecentDeliveries) -> AsyncIterator[WebServer]:
    async with serve_debugger(
        port=0, debugger=debugger, access_token=TOKEN, heartbeat_s=0.2
    ) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


# -- metrics and probes ---------------------------------------------------------------------------


async def test_metrics_bind_loopback_by_default(server: WebServer) -> None:
    assert server.host == "127.0.0.1"
    assert server.port > 0


async def test_metrics_are_refreshed_per_scrape(
    server: WebServer, http: aiohttp.ClientSession, metrics: Metrics, probe: Probe
) -> None:
    metrics.consumed("events")
    async with http.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    assert 'ghl_events_consumed_total{topic="events"} 1.0' in text
    assert 'ghl_partition_lag{partition="0",topic="events"} 10.0' in text
    assert "ghl_buffered_records 3.0" in text
    assert probe.state_calls == 1


async def test_metrics_still_answer_when_state_fails(
    server: WebServer,
    http: aiohttp.ClientSession,
    metrics: Metrics,
    probe: Probe,
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe.fail_state = True
    metrics.dropped("not_mapped")
    with caplog.at_level(logging.ERROR, logger="consumer.observe.web"):
        async with http.get(f"{server.url}/metrics") as response:
            assert response.status == 200
            assert 'ghl_events_dropped_total{reason="not_mapped"} 1.0' in await response.text()
    assert "reading state for /metrics failed" in caplog.text


async def test_healthz_and_readyz(
    server: WebServer, http: aiohttp.ClientSession, probe: Probe
) -> None:
    async with http.get(f"{server.url}/healthz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ok"})
    async with http.get(f"{server.url}/readyz") as response:
        assert (response.status, await response.json()) == (200, {"ready": True})
    probe.readiness = Readiness(joined=True, broker_reachable=False, stopping=True)
    async with http.get(f"{server.url}/readyz") as response:
        assert response.status == 503
        assert await response.json() == {
            "ready": False,
            "reasons": ["shutting down", "Kafka broker unreachable"],
        }
    probe.health = Health(("event loop blocked for 12 s",))
    async with http.get(f"{server.url}/healthz") as response:
        assert response.status == 503
        assert await response.json() == {
            "status": "stuck",
            "reasons": ["event loop blocked for 12 s"],
        }


async def test_probes_and_metrics_need_no_token(
    server: WebServer, http: aiohttp.ClientSession
) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        async with http.get(server.url + path) as response:
            assert response.status == 200, path


async def test_the_metrics_listener_serves_no_debugger(
    server: WebServer, http: aiohttp.ClientSession, debugger: RecentDeliveries
) -> None:
    deliver(debugger)
    for path in ("/debug", "/debug/deliveries.json", "/debug/events"):
        async with http.get(server.url + path, headers=BEARER) as response:
            assert response.status == 404, path


# -- the debugger ---------------------------------------------------------------------------------

BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def login(
    http: aiohttp.ClientSession, url: str, token: str = TOKEN, **headers: str
) -> aiohttp.ClientResponse:
    """POST the login form; the response, read and released (redirects not followed)."""
    async with http.post(
        f"{url}/debug", data={"token": token}, headers=headers, allow_redirects=False
    ) as response:
        await response.read()
        return response


def session_of(response: aiohttp.ClientResponse) -> dict[str, str]:
    """The Cookie header carrying the session the login set (aiohttp's jar refuses IPs)."""
    return {"Cookie": f"{SESSION_COOKIE}={response.cookies[SESSION_COOKIE].value}"}


async def test_binds_loopback_by_default_apart_from_metrics(
    server: WebServer, debug_server: WebServer
) -> None:
    assert debug_server.host == "127.0.0.1"
    assert debug_server.port not in (0, server.port)


@pytest.mark.parametrize(
    "path",
    [
        "/debug/deliveries.json",
        "/debug/events",
        "/debug/outcomes.json",
        "/debug/search.json?q=lead-987",
    ],
)
async def test_debug_feeds_need_the_token(
    debug_server: WebServer, http: aiohttp.ClientSession, debugger: RecentDeliveries, path: str
) -> None:
    deliver(debugger)
    async with http.get(debug_server.url + path) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "lead" not in await response.text()
    async with http.get(
        debug_server.url + path, headers={"Authorization": "Bearer wrong"}
    ) as response:
        assert response.status == 401
    async with http.get(debug_server.url + path, headers={"Authorization": TOKEN}) as response:
        assert response.status == 401  # the scheme is part of it
    async with http.get(debug_server.url + path, headers=BEARER) as response:
        assert response.status == 200


async def test_the_page_without_access_is_a_login_form_posting_the_token(
    debug_server: WebServer, http: aiohttp.ClientSession, debugger: RecentDeliveries
) -> None:
    deliver(debugger)
    async with http.get(f"{debug_server.url}/debug") as response:
        assert response.status == 401
        page = await response.text()
        assert "form-action 'self'" in response.headers["Content-Security-Policy"]
    assert '<form class="login" method="post" action="debug">' in page
    assert 'name="token" type="password"' in page
    assert "hidden:" not in page
    assert "<script" not in page


@pytest.mark.parametrize("path", ["/debug", "/debug/deliveries.json", "/debug/events"])
async def test_a_token_in_the_url_is_refused_even_the_right_one(
    debug_server: WebServer, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(
        debug_server.url + path, params={"token": TOKEN}, headers=BEARER
    ) as response:
        assert response.status == 400
        text = await response.text()
    assert "never accepted in a URL" in text
    assert TOKEN not in text


async def test_login_sets_a_short_lived_strict_httponly_cookie_not_the_token(
    debug_server: WebServer, http: aiohttp.ClientSession, debugger: RecentDeliveries
) -> None:
    deliver(debugger)
    response = await login(http, debug_server.url)
    assert response.status == 303
    assert response.headers["Location"] == "debug"
    cookie = SimpleCookie(response.headers["Set-Cookie"])[SESSION_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/debug"
    assert cookie["max-age"] == "900"
    assert TOKEN not in response.headers["Set-Cookie"]
    session = session_of(response)
    async with http.get(f"{debug_server.url}/debug", headers=session) as page:
        assert page.status == 200
        assert "Event Debugger" in await page.text()
    async with http.get(f"{debug_server.url}/debug/deliveries.json", headers=session) as feed:
        assert [d["seq"] for d in (await feed.json())["deliveries"]] == [1]
    # A header, when present, is what counts: a wrong one is not rescued by the cookie.
    wrong = {**session, "Authorization": "Bearer wrong"}
    async with http.get(f"{debug_server.url}/debug/deliveries.json", headers=wrong) as feed:
        assert feed.status == 401


async def test_a_wrong_token_forged_or_expired_cookie_gets_no_access(
    debugger: RecentDeliveries, http: aiohttp.ClientSession
) -> None:
    async with serve_debugger(
        port=0, debugger=debugger, access_token=TOKEN, session_seconds=1
    ) as running:
        refused = await login(http, running.url, token="wrong")
        assert refused.status == 401
        assert SESSION_COOKIE not in refused.cookies
        forged = {"Cookie": f"{SESSION_COOKIE}=9999999999.{'0' * 64}"}
        async with http.get(f"{running.url}/debug/deliveries.json", headers=forged) as r:
            assert r.status == 401
        session = session_of(await login(http, running.url))
        await asyncio.sleep(1.1)
        async with http.get(f"{running.url}/debug/deliveries.json", headers=session) as r:
            assert r.status == 401
    # a cookie of another process (a restart) is not valid either
    async with serve_debugger(port=0, debugger=debugger, access_token=TOKEN) as running:
        session = session_of(await login(http, running.url))
    async with (
        serve_debugger(port=0, debugger=debugger, access_token=TOKEN) as running,
        http.get(f"{running.url}/debug/deliveries.json", headers=session) as r,
    ):
        assert r.status == 401


async def test_login_from_another_origin_is_refused(
    debug_server: WebServer, http: aiohttp.ClientSession
) -> None:
    refused = await login(http, debug_server.url, Origin="http://evil.example")
    assert refused.status == 403
    assert SESSION_COOKIE not in refused.cookies
    same = await login(http, debug_server.url, Origin=debug_server.url)
    assert same.status == 303


async def test_only_allowed_host_names_are_answered(
    debugger: RecentDeliveries, http: aiohttp.ClientSession
) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    async with serve_debugger(
        port=0, debugger=debugger, allowed_hosts=["Debugger.Example.org"]
    ) as running:
        url = f"{running.url}/debug/deliveries.json"
        for host in ("evil.example", f"evil.example:{running.port}", "10.0.0.7"):
            async with http.get(url, headers={"Host": host}) as response:
                assert response.status == 421, host
                assert "debug.allowed_hosts" in await response.text()
        for host in (f"localhost:{running.port}", "127.0.0.1", f"[::1]:{running.port}",
                     "debugger.example.org:443", "DEBUGGER.example.org"):
            async with http.get(url, headers={"Host": host}) as response:
                assert response.status == 200, host


async def test_live_streams_are_capped(
    debugger: RecentDeliveries, http: aiohttp.ClientSession
) -> None:
    async with serve_debugger(port=0, debugger=debugger, max_streams=2) as running:
        url = f"{running.url}/debug/events"
        first, second = await http.get(url), await http.get(url)
        assert (first.status, second.status) == (200, 200)
        async with http.get(url) as third:
            assert third.status == 503
            assert third.headers["Retry-After"] == "10"
            assert "debug.max_streams" in await third.text()
        first.close()
        async with asyncio.timeout(5):
            while True:  # the server notices the closed stream at its next write
                deliver(debugger)
                async with http.get(url) as again:
                    if again.status == 200:
                        break
                await asyncio.sleep(0.05)
        second.close()


async def test_without_a_token_a_loopback_debugger_is_open(
    debugger: RecentDeliveries, http: aiohttp.ClientSession
) -> None:
    async with (
        serve_debugger(port=0, debugger=debugger) as running,
        http.get(f"{running.url}/debug") as response,
    ):
        assert response.status == 200
        assert "personal data masked" in await response.text()


async def test_page_headers(debug_server: WebServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{debug_server.url}/debug", headers=BEARER) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert "script-src 'sha256-" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
        page = await response.text()
    assert "Event Debugger" in page
    assert TOKEN not in page
    script = page.split("<script>")[1]
    assert "token=" not in script  # the page's fetch and stream URLs carry no token
    assert "location.search" not in script


async def test_deliveries_json_is_masked_and_filtered(
    debug_server: WebServer, http: aiohttp.ClientSession, debugger: RecentDeliveries
) -> None:
    deliver(debugger, "acme", 201)
    deliver(debugger, "beta", 422)
    deliver(debugger, "acme", 429)
    url = f"{debug_server.url}/debug/deliveries.json"
    async with http.get(url, headers=BEARER) as response:
        body = await response.read()
    for personal in (b"sam@example.com", b"4155550142", b"Sam", b"lead-987"):
        assert personal not in body
    data = orjson.loads(body)
    assert data["integrations"] == ["acme", "beta"]
    assert "delivered" in data["outcomes"]
    assert data["last_seq"] == 3
    assert [d["seq"] for d in data["deliveries"]] == [3, 2, 1]
    assert data["deliveries"][0]["payload"]["email"] == "s***@example.com"
    assert data["deliveries"][0]["payload"]["phone"] == "+1******0142"
    assert data["deliveries"][0]["payload"]["firstName"].startswith("hidden:")
    assert data["deliveries"][0]["contact_key"].startswith("hidden:")
    async with http.get(url, headers=BEARER, params={"integration": "acme",
                                                     "outcome": "delivered"}) as response:
        assert [d["seq"] for d in (await response.json())["deliveries"]] == [1]
    async with http.get(url, headers=BEARER, params={"after": "1", "limit": "1"}) as response:
        assert [d["seq"] for d in (await response.json())["deliveries"]] == [3]
    async with http.get(url, headers=BEARER, params={"after": "x"}) as response:
        assert response.status == 400


def drop(debugger: RecentDeliveries, offset: int, message_id: str) -> None:
    value = {"type": "page", "userId": "lead-987", "messageId": message_id,
             "traits": {"email": "sam@example.com", "phone": "+14155550142"}}
    record = Record("events", 0, offset, b"sam@example.com", orjson.dumps(value))
    debugger.dropped(record, "not_mapped", None, time.time())


async def test_outcomes_json_is_masked_and_filtered_by_kind(
    debug_server: WebServer, http: aiohttp.ClientSession, debugger: RecentDeliveries
) -> None:
    drop(debugger, 7, "m-7")
    debugger.rejected(Record("events", 1, 3, b"u-2", b"{"), "invalid_json", "not JSON", None, 1.0)
    url = f"{debug_server.url}/debug/outcomes.json"
    async with http.get(url, headers=BEARER) as response:
        body = await response.read()
    for personal in (b"sam@example.com", b"4155550142", b"lead-987"):
        assert personal not in body
    data = orjson.loads(body)
    assert "duplicate" in data["kinds"]
    assert [(o["kind"], o["offset"]) for o in data["outcomes"]] == [("dropped", 7),
                                                                  ("rejected", 3)]
    assert data["outcomes"][0]["message_ids"] == ["m-7"]
    async with http.get(url, headers=BEARER, params={"kind": "rejected"}) as response:
        assert [o["offset"] for o in (await response.json())["outcomes"]] == [3]


async def test_search_json_finds_a_persons_records_masked(
    debug_server: WebServer, http: aiohttp.ClientSession, debugger: RecentDeliveries
) -> None:
    drop(debugger, 7, "m-7")
    drop(debugger, 8, "m-8")
    deliver(debugger)  # contact key lead-987
    url = f"{debug_server.url}/debug/search.json"
    async with http.get(url, headers=BEARER, params={"q": "lead-987"}) as response:
        assert response.status == 200
        body = await response.read()
    for personal in (b"sam@example.com", b"4155550142", b"lead-987"):
        assert personal not in body
    data = orjson.loads(body)
    assert "this member" in data["scope"]
    assert "ghl-consumer trace" in data["scope"]
    assert [o["offset"] for o in data["outcomes"]] == [8, 7]
    assert len(data["deliveries"]) == 1
    async with http.get(url, headers=BEARER, params={"q": "m-7"}) as response:
        found = await response.json()
    assert ([o["offset"] for o in found["outcomes"]], found["deliveries"]) == ([7], [])
    for bad in ({}, {"q": "  "}, {"q": "x" * 1025}):
        async with http.get(url, headers=BEARER, params=bad) as response:
            assert response.status == 400


async def read_event(response: aiohttp.ClientResponse) -> dict[str, object]:
    """The next ``data:`` event of an SSE stream (heartbeat comments skipped)."""
    event: dict[str, object] = {}
    async with asyncio.timeout(5):
        while True:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("data: "):
                event["data"] = orjson.loads(line[6:])
            elif line == "" and "data" in event:
                return event


async def test_event_stream_sends_new_deliveries_live(
    debug_server: WebServer, http: aiohttp.ClientSession, debugger: RecentDeliveries
) -> None:
    deliver(debugger)  # seq 1, before the stream opens
    url = f"{debug_server.url}/debug/events"
    session = session_of(await login(http, debug_server.url))
    async with http.get(url, params={"after": "1"}, headers=session) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        await asyncio.sleep(0.3)  # past a heartbeat: the stream stays open
        deliver(debugger, "beta", 201)
        event = await read_event(response)
        assert event["id"] == 2
        data = event["data"]
        assert isinstance(data, dict)
        assert data["integration"] == "beta"
        assert data["payload"]["email"] == "s***@example.com"
    # resuming with Last-Event-ID replays what was missed
    deliver(debugger, "acme", 422)
    async with http.get(url, headers={**BEARER, "Last-Event-ID": "2"}) as response:
        event = await read_event(response)
        assert event["id"] == 3


async def test_exit_ends_open_streams_promptly(
    debugger: RecentDeliveries, http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    async with serve_debugger(port=0, debugger=debugger) as running:
        response = await http.get(f"{running.url}/debug/events")
        assert response.status == 200
    response.close()
    assert time.monotonic() - started < 5


async def test_readyz_names_its_reasons(
    metrics: Metrics, http: aiohttp.ClientSession
) -> None:
    async with (
        serve_web(
            port=0,
            metrics=metrics,
            readiness=lambda: Readiness(joined=False, broker_reachable=True),
        ) as running,
        http.get(f"{running.url}/readyz") as response,
    ):
        assert response.status == 503
        assert (await response.json())["reasons"] == ["consumer group not joined yet"]


@pytest.mark.slow
async def test_the_token_never_reaches_a_log(
    debug_server: WebServer,
    http: aiohttp.ClientSession,
    debugger: RecentDeliveries,
    caplog: pytest.LogCaptureFixture,
) -> None:
    deliver(debugger)
    with caplog.at_level(logging.DEBUG):
        session = session_of(await login(http, debug_server.url))
        for path in ("/debug", "/debug/deliveries.json"):
            async with http.get(debug_server.url + path, headers=session) as response:
                assert response.status == 200
        assert (await login(http, debug_server.url, token="nope")).status == 401
        async with http.get(debug_server.url + "/debug", params={"token": TOKEN}) as response:
            assert response.status == 400
    assert TOKEN not in caplog.text
    assert "nope" not in caplog.text
