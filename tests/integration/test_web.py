"""consumer.observe.web over real sockets:
/metrics, /healthz, /readyz, the debugger page and feeds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from consumer.engine.offsets import PartitionStats
from consumer.highlevel.verdicts import Answer, classify
from consumer.observe.metrics import Metrics, StateSnapshot
from consumer.observe.readiness import Readiness
from consumer.observe.recent_deliveries import RecentDeliveries
from consumer.observe.web import WebServer, serve_web

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
        self.readiness = Readiness(assigned=True, broker_reachable=True)
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
async def server(
    metrics: Metrics, debugger: RecentDeliveries, probe: Probe
) -> AsyncIterator[WebServer]:
    async with serve_web(
        port=0,
        metrics=metrics,
        readiness=lambda: probe.readiness,
        state=probe.state,
        debugger=debugger,
        access_token=TOKEN,
        heartbeat_s=0.2,
    ) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


# -- metrics and probes ---------------------------------------------------------------------------


async def test_binds_loopback_by_default(server: WebServer) -> None:
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
    probe.readiness = Readiness(assigned=True, broker_reachable=False, stalled=(("events", 2),))
    async with http.get(f"{server.url}/readyz") as response:
        assert response.status == 503
        assert await response.json() == {
            "ready": False,
            "reasons": ["Kafka broker unreachable", "partition events[2] stalled"],
        }


async def test_probes_and_metrics_need_no_token(
    server: WebServer, http: aiohttp.ClientSession
) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        async with http.get(server.url + path) as response:
            assert response.status == 200, path


# -- the debugger ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/debug", "/debug/deliveries.json", "/debug/events"]
)
async def test_debug_paths_need_the_token(
    server: WebServer, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(server.url + path) as response:
        assert response.status == 401
        assert TOKEN not in await response.text()
    async with http.get(server.url + path, params={"token": "wrong"}) as response:
        assert response.status == 401
    async with http.get(
        server.url + path, headers={"Authorization": "Bearer wrong"}, params={"token": TOKEN}
    ) as response:
        assert response.status == 401  # a header, when present, is what counts


async def test_page_with_token_in_query_or_header(
    server: WebServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{server.url}/debug", params={"token": TOKEN}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert "script-src 'sha256-" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
        page = await response.text()
    assert "Event Debugger" in page
    assert TOKEN not in page
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(f"{server.url}/debug", headers=headers) as response:
        assert response.status == 200


async def test_deliveries_json_is_masked_and_filtered(
    server: WebServer, http: aiohttp.ClientSession, debugger: RecentDeliveries
) -> None:
    deliver(debugger, "acme", 201)
    deliver(debugger, "beta", 422)
    deliver(debugger, "acme", 429)
    url = f"{server.url}/debug/deliveries.json"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(url, headers=headers) as response:
        body = await response.read()
    assert b"sam@example.com" not in body
    assert b"4155550142" not in body
    data = orjson.loads(body)
    assert data["integrations"] == ["acme", "beta"]
    assert "delivered" in data["outcomes"]
    assert data["last_seq"] == 3
    assert [d["seq"] for d in data["deliveries"]] == [3, 2, 1]
    assert data["deliveries"][0]["payload"]["email"] == "s***@example.com"
    assert data["deliveries"][0]["payload"]["phone"] == "+1******0142"
    async with http.get(url, headers=headers, params={"integration": "acme",
                                                      "outcome": "delivered"}) as response:
        assert [d["seq"] for d in (await response.json())["deliveries"]] == [1]
    async with http.get(url, headers=headers, params={"after": "1", "limit": "1"}) as response:
        assert [d["seq"] for d in (await response.json())["deliveries"]] == [3]
    async with http.get(url, headers=headers, params={"after": "x"}) as response:
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
    server: WebServer, http: aiohttp.ClientSession, debugger: RecentDeliveries
) -> None:
    deliver(debugger)  # seq 1, before the stream opens
    url = f"{server.url}/debug/events"
    async with http.get(url, params={"token": TOKEN, "after": "1"}) as response:
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
    headers = {"Authorization": f"Bearer {TOKEN}", "Last-Event-ID": "2"}
    async with http.get(url, headers=headers) as response:
        event = await read_event(response)
        assert event["id"] == 3


async def test_exit_ends_open_streams_promptly(
    metrics: Metrics, debugger: RecentDeliveries, http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    async with serve_web(
        port=0, metrics=metrics, readiness=lambda: Readiness(assigned=True,
                                                             broker_reachable=True),
        debugger=debugger,
    ) as running:
        response = await http.get(f"{running.url}/debug/events")
        assert response.status == 200
    response.close()
    assert time.monotonic() - started < 5


async def test_without_debugger_the_debug_paths_are_absent(
    metrics: Metrics, http: aiohttp.ClientSession
) -> None:
    async with serve_web(
        port=0, metrics=metrics,
        readiness=lambda: Readiness(assigned=False, broker_reachable=True),
    ) as running:
        async with http.get(f"{running.url}/debug") as response:
            assert response.status == 404
        async with http.get(f"{running.url}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["reasons"] == ["no partitions assigned"]


@pytest.mark.slow
async def test_the_token_never_reaches_a_log(
    server: WebServer,
    http: aiohttp.ClientSession,
    debugger: RecentDeliveries,
    caplog: pytest.LogCaptureFixture,
) -> None:
    deliver(debugger)
    with caplog.at_level(logging.DEBUG):
        for path in ("/debug", "/debug/deliveries.json"):
            async with http.get(server.url + path, params={"token": TOKEN}) as response:
                assert response.status == 200
        async with http.get(server.url + "/debug", params={"token": "nope"}) as response:
            assert response.status == 401
    assert TOKEN not in caplog.text
    assert "nope" not in caplog.text
