"""Issue 17's "Done when" soak for OAuth, scaled for CI: three ``ghl-consumer run`` members in one
group share one installation (a real broker, redis-server, the sandbox over TCP); its 20
locations are discovered; the sandbox's tokens live 20 s, so the Company token is refreshed
about every 15 s and every Location token is minted again as often. Traffic flows for
``GHL_OAUTH_SOAK_SECONDS`` (default 60; the issue's full run is 300 s:
``GHL_OAUTH_SOAK_SECONDS=300``) while one member is SIGKILLed and restarted every ~20 s. Each
kill waits for the sandbox to answer a Company refresh and kills the member that asked for it
(found by the TCP port it asked from). When no refresh comes within the slot, a member is killed
anyway.

Kills in the refresh window: until one has landed (every time with
``GHL_OAUTH_SOAK_KILL_IN_WINDOW=1``), the asker is killed from inside the sandbox's handler,
before the answer leaves: certainly between HighLevel's answer and the member's Redis write,
where the new refresh token is lost with the member. The next refresher (once the dead member's
lease expires) presents the spent token, is refused, and recovers the installation by an
automatic reconnect (``consumer.state.oauth_tokens``; the soak's ``reconnect_interval_seconds``
is 1 so that every such loss is recovered, however close). Later kills are sent from the test's
loop as soon as it sees the answer, racing the member's write; whether it had stored the new
refresh token is recorded.

Asserted: every event is delivered or accounted for by ``ghl-consumer audit`` (0 unaccounted,
none parked); at least one kill landed in the refresh window; no refresh token was presented
twice except one a killed member's refresh had spent (the sandbox lists each reused token,
``OAuthState.reused``; the killer records the token each answered refresh spent, read from the
sandbox's grant just before it answers, for the refreshes whose asker it killed), and every
such loss was recovered by a reconnect; the installation never broke; no location answered
upserts 401 more often than it was issued tokens (each expires once); no token value (access,
refresh, code) nor the client secret in any member's log, metrics page or debugger page. What
happened (kills, which were in the window, refreshes, reconnects, 401s) is printed for the
record (``pytest -s``)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from consumer.sandbox import Sandbox, run_sandbox
from consumer.sandbox.oauth import OAuthSettings
from consumer.state.token_store import TokenStore
from tests.harness.oauth import install, oauth_config, record_tokens
from tests.integration.consumer_harness import (
    ProcessLog,
    committed_offsets,
    end_offsets,
    produce_rounds,
    run_command,
    start_consumer,
    stop_process,
)
from tests.integration.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECONDS = float(os.environ.get("GHL_OAUTH_SOAK_SECONDS", "60"))
IN_WINDOW = os.environ.get("GHL_OAUTH_SOAK_KILL_IN_WINDOW") == "1"
KILL_EVERY_S = 20.0
TTL = 20.0  # seconds: Company and Location tokens
MEMBERS = 3
LOCATION_COUNT = 20
USERS = 4  # per location
RATE = 20  # events per second
PARTITIONS = 6
APP = OAuthSettings(company_id="agency-soak", client_secret="soak-secret-value", access_ttl_s=TTL)
CONFIG = oauth_config(APP, reconnect_interval_s=1)
UNKNOWN = "loc-not-installed"


def locations() -> list[str]:
    return [f"oauth-location-{n:02d}" for n in range(1, LOCATION_COUNT + 1)]


def traffic(seconds: float) -> Iterator[list[tuple[bytes, bytes]]]:
    """One round a second: RATE identify events over every location's users, versions rising
    per contact; one in 50 names a location the app is not installed in."""
    where = locations()
    versions: Counter[str] = Counter()
    for second in range(int(seconds)):
        batch = []
        for n in range(RATE):
            location = UNKNOWN if (second * RATE + n) % 50 == 49 else random.choice(where)
            user = random.randrange(USERS)
            key = f"{location}-u{user}"
            versions[key] += 1
            event = {
                "type": "identify",
                "userId": key,
                "messageId": f"{key}-{versions[key]}",
                "traits": {
                    "email": f"u{user}@example.com",
                    "first_name": f"v{versions[key]:04d}",
                },
                "context": {"groupId": location},
            }
            batch.append((key.encode(), orjson.dumps(event)))
        yield batch



def owner_of_port(pids: dict[int, int], port: int) -> int | None:
    """The member (index into ``pids``: member -> pid) holding a local TCP socket on ``port``,
    from /proc (Linux)."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes[fields[9]] = port
    for member, pid in pids.items():
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(link[len("socket:[") : -1] in inodes for link in links if link.startswith("sock")):
            return member
    return None


class Members:
    """The group's members: started, killed, restarted; every one's log kept."""

    def __init__(self, env: dict[str, str], config: Path) -> None:
        self._env = env
        self._config = config
        self.current: dict[int, ProcessLog] = {}
        self.logs: list[ProcessLog] = []

    async def start(self, member: int) -> None:
        process = await start_consumer(
            self._env, "--config", str(self._config), "--log-level", "DEBUG"
        )
        log = ProcessLog(process)
        self.current[member] = log
        self.logs.append(log)

    def pids(self) -> dict[int, int]:
        return {m: log.process.pid for m, log in self.current.items()}

    async def kill(self, member: int) -> None:
        await stop_process(self.current[member].process, signal.SIGKILL)
        await self.current[member].finished()

    async def pages(self, http: aiohttp.ClientSession) -> list[str]:
        """Every running member's metrics page and debugger pages (a member killed meanwhile
        is skipped)."""
        texts: list[str] = []
        for log in list(self.current.values()):
            try:
                texts += await self._pages(http, log)
            except aiohttp.ClientConnectionError:
                async with asyncio.timeout(10):
                    await log.process.wait()  # killed while scraped; else this raises
        return texts

    @staticmethod
    async def _pages(http: aiohttp.ClientSession, log: ProcessLog) -> list[str]:
        texts = []
        if log.process.returncode is None:
            urls = [line for line in log.lines if "event debugger on" in line]
            if not urls:
                return texts
            metrics, debug = re.findall(r"(http://\S+?)/(?:metrics|debug)\b", urls[-1])[:2]
            for url in (
                f"{metrics}/metrics",
                f"{debug}/debug",
                f"{debug}/debug/deliveries.json",
                f"{debug}/debug/outcomes.json",
            ):
                async with http.get(url) as response:
                    assert response.status == 200, url
                    texts.append(await response.text())
        return texts


@dataclass
class Kill:
    """One SIGKILL: when (seconds into the run), which member, and for a kill on a refresh the
    milliseconds from the sandbox's answer to the signal, whether it was sent from inside the
    sandbox's handler (``in_window``: before the answer left) and whether the member had stored
    the new refresh token in Redis by then (False: it was lost with the member)."""

    at: float
    member: int
    delay_ms: float | None = None
    in_window: bool = False
    stored: bool | None = None


class RefreshKiller:
    """SIGKILLs the member whose Company refresh the sandbox just answered (found by the TCP
    port it asked from): from inside the sandbox's handler, before the answer is sent (the member
    is certainly killed between HighLevel's answer and its Redis write) until one such kill
    landed (every time with ``IN_WINDOW``); else from the test's loop as soon as it sees the
    answer. ``killed_spent``: the refresh token each refresh whose asker was killed spent."""

    def __init__(self, sandbox: Sandbox, members: Members) -> None:
        self._sandbox = sandbox
        self._members = members
        self._armed = False
        self._in_window_left = float("inf") if IN_WINDOW else 1
        self._answered: asyncio.Queue[tuple[float, int, int | None, str]] = asyncio.Queue()
        self.killed_spent: set[str] = set()
        original = sandbox._oauth_answer

        def answer(request: web.Request, make: Callable[[float], Any]) -> web.Response:
            before = sandbox.oauth.counters.get("refreshes", 0)
            grant = sandbox.oauth._grants.get(None)
            current = grant.refresh_token if grant else None  # what a valid refresh spends
            response = original(request, make)
            peer = request.transport.get_extra_info("peername") if request.transport else None
            refreshed = sandbox.oauth.counters.get("refreshes", 0) > before
            if self._armed and refreshed and response.status == 200 and peer and current:
                self._on_refresh(int(peer[1]), current)
            return response

        sandbox._oauth_answer = answer  # type: ignore[method-assign]

    def _on_refresh(self, port: int, spent: str) -> None:
        asker = None
        if self._in_window_left > 0:
            asker = owner_of_port(self._members.pids(), port)
            if asker is not None:
                os.kill(self._members.pids()[asker], signal.SIGKILL)
                self._in_window_left -= 1
        self._answered.put_nowait((time.monotonic(), port, asker, spent))

    async def kill(self, started: float, deadline: float, redis_url: str) -> Kill:
        """Wait (until ``deadline``) for a Company refresh and SIGKILL its asker; else SIGKILL a
        random member. Restart the member."""
        self._armed = True
        kill = Kill(0.0, random.randrange(MEMBERS))
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    async with asyncio.timeout(left):
                        answered_at, port, killed, spent = await self._answered.get()
                except TimeoutError:
                    break
                asker = killed if killed is not None else owner_of_port(self._members.pids(), port)
                if asker is not None:
                    if killed is None:
                        os.kill(self._members.pids()[asker], signal.SIGKILL)
                    delay_ms = (time.monotonic() - answered_at) * 1000
                    kill = Kill(0.0, asker, delay_ms, in_window=killed is not None)
                    self.killed_spent.add(spent)
                    break
        finally:
            self._armed = False
        await self._members.kill(kill.member)
        kill.at = time.monotonic() - started
        if kill.delay_ms is not None:
            kill.stored = await self._stored(redis_url)
        await self._members.start(kill.member)
        return kill

    async def _stored(self, redis_url: str) -> bool:
        """Whether Redis holds the refresh token the sandbox issued last."""
        store = TokenStore.from_url(redis_url)
        try:
            stored = await store.read(APP.company_id)
        finally:
            await store.aclose()
        current = self._sandbox.oauth._grants[None].refresh_token
        return stored is not None and stored.refresh_token == current


@pytest.mark.timeout(600 + 2 * SECONDS)
async def test_members_killed_mid_refresh_lose_no_event_and_reuse_no_refresh_token(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=PARTITIONS)
    group = f"oauth-soak-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    kills: list[Kill] = []
    with RedisServer() as redis:
        async with run_sandbox(
            locations={}, oauth=APP, oauth_locations=LOCATION_COUNT, request_log_size=1_000_000
        ) as sandbox:
            issued = record_tokens(sandbox)
            await install(sandbox, redis.url, APP)
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "KAFKA_TOPICS": topic,
                "KAFKA_GROUP_ID": group,
                "GHL_API_BASE_URL": sandbox.url,
                "REDIS_URL": redis.url,
                "TEST_OAUTH_SECRET": APP.client_secret,
            }
            members = Members(env, config)
            killer = RefreshKiller(sandbox, members)
            pages: list[str] = []
            scrapes: list[asyncio.Task[list[str]]] = []
            try:
                for member in range(MEMBERS):
                    await members.start(member)
                started = time.monotonic()
                producing = threading.Thread(
                    target=produce_rounds,
                    args=(kafka_bootstrap, topic, list(traffic(SECONDS))),
                    kwargs={"interval_s": 1.0},
                    daemon=True,
                )
                producing.start()
                async with aiohttp.ClientSession() as http:
                    slot = 1
                    while time.monotonic() - started < SECONDS - 2:
                        await asyncio.sleep(5)  # the restarted member starts first
                        # (in the background: a member's /metrics may wait out a rebalance)
                        scrapes.append(asyncio.create_task(members.pages(http)))
                        slot_end = started + slot * KILL_EVERY_S
                        kills.append(await killer.kill(started, slot_end, redis.url))
                        slot += 1
                    await asyncio.to_thread(producing.join, 120)
                    assert not producing.is_alive()
                    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
                    async with asyncio.timeout(180):
                        while committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) != ends:
                            await asyncio.sleep(0.5)
                    drained = time.monotonic() - started
                    scrapes.append(asyncio.create_task(members.pages(http)))
                    for scraped in await asyncio.gather(*scrapes):
                        pages += scraped
                code, out, err = await run_command(
                    {
                        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                        "KAFKA_TOPICS": topic,
                        "KAFKA_GROUP_ID": group,
                    },
                    "audit", "--config", str(config), "--sandbox", sandbox.url, "--json",
                )  # fmt: skip
                store = TokenStore.from_url(redis.url)
                try:
                    stored = await store.read(APP.company_id)
                finally:
                    await store.aclose()
            finally:
                for member in list(members.current):
                    await stop_process(members.current[member].process)
                for log in members.logs:
                    await log.finished()
            counters = dict(sandbox.oauth.counters)
            reused = list(sandbox.oauth.reused)
            grants = sandbox.oauth.to_json(time.time())["grants"]
            requests = list(sandbox.requests)

    unauthorized: Counter[str] = Counter()
    for request in requests:
        if request["path"] == "/contacts/upsert" and request["status"] == 401:
            unauthorized[str(request.get("tokenLocationId") or request.get("locationId"))] += 1
    shown = [
        (round(k.at), k.member, k.delay_ms and round(k.delay_ms, 1), k.in_window, k.stored)
        for k in kills
    ]
    print(
        f"\nOAuth soak: {SECONDS:.0f} s, drained at {drained:.0f} s; kills (s, member, ms "
        f"after a refresh answer, in the window, new refresh token stored by then): {shown}; "
        f"sandbox counters {counters}; 401s by location {dict(unauthorized)}"
    )
    assert code == 0, out + err[-3000:]
    report = orjson.loads(out)
    print(
        f"audit: {report['records']} records, {report['delivered_events']} events delivered, "
        f"{report['dead_lettered']} dead-lettered, {report['parked']} parked, "
        f"{len(report['unaccounted'])} unaccounted; allowed {report['allowed_differences']}"
    )
    assert report["unaccounted"] == []
    assert report["parked"] == 0
    assert report["dead_lettered"] >= SECONDS * RATE // 50 * 0.9  # the unknown location's
    assert len(kills) >= max(1, int(SECONDS // KILL_EVERY_S) - 1)
    assert any(kill.delay_ms is not None for kill in kills), "no kill landed on a refresh"

    assert any(kill.in_window for kill in kills), "no kill landed in the refresh window"
    lost = set(reused)
    assert lost <= killer.killed_spent, (
        "a refresh token was presented twice that no killed member had spent: two members "
        f"refreshed the same token (kills: {kills})"
    )
    assert lost, "a member killed in the refresh window lost no refresh token"
    assert counters["reconnects"] >= len(lost)  # each loss recovered by a reconnect
    assert counters.get("refusedReconnects", 0) == 0
    assert stored is not None
    assert not stored.broken, stored.broken
    assert report["delivered_events"] > 0.9 * (report["identity_events"] - report["dead_lettered"])
    for location, count in unauthorized.items():
        issued_for_location = grants.get(location, {}).get("generation", 0)
        assert count <= issued_for_location, (location, count, issued_for_location)

    secrets = [*issued, APP.client_secret]
    texts = [log.text() for log in members.logs] + pages + [out, err]
    leaked = [n for n, text in enumerate(texts) for secret in secrets if secret in text]
    assert not leaked
