"""The shared OAuth token store against a real redis-server and the sandbox over TCP: several
replicas (each its own OAuthClient, TokenStore and OAuthTokens) refresh one installation
exactly once, recover from a lease holder killed before refreshing, re-read the store after an
invalid grant, recover a lost refresh token by exactly one automatic reconnect (bounded: retried
a few times, refused when the app is uninstalled, not repeated too soon), park on an
installation invalidated behind their back until a reconnect when ``auto_reconnect`` is off,
share location tokens that the sandbox accepts, and renew a refused one once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from consumer.errors import InstallationBroken, InvalidGrant, OAuthError
from consumer.highlevel.oauth import OAuthClient, TokenGrant
from consumer.sandbox import Sandbox, run_sandbox
from consumer.sandbox.oauth import OAuthSettings
from consumer.state.oauth_tokens import OAuthTokens
from consumer.state.token_store import TokenStore
from tests.harness.clock import ManualClock
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

APP = OAuthSettings(company_id="agency-1", access_ttl_s=20)




@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def sandbox(clock: ManualClock) -> AsyncIterator[Sandbox]:
    async with run_sandbox(locations={}, clock=clock, oauth=APP, oauth_locations=2) as running:
        yield running


class SlowClient(OAuthClient):
    """Waits ``delay`` (real seconds) before sending each refresh."""

    delay = 0.0

    async def refresh(self, refresh_token: str, *, user_type: str = "Company") -> TokenGrant:
        await asyncio.sleep(self.delay)
        return await super().refresh(refresh_token, user_type=user_type)


class FlakyClient(OAuthClient):
    """``reconnect`` answers 503 the first ``failures`` times."""

    failures = 0

    async def reconnect(
        self, *, company_id: str | None = None, location_id: str | None = None
    ) -> str:
        if self.failures:
            self.failures -= 1
            raise OAuthError("/oauth/reconnect: HTTP 503: down", status=503, retriable=True)
        return await super().reconnect(company_id=company_id, location_id=location_id)


async def no_wait(_: float) -> None:
    await asyncio.sleep(0)


class Replicas:
    def __init__(self, sandbox: Sandbox, redis_url: str, clock: ManualClock) -> None:
        self.sandbox, self.redis_url, self.clock = sandbox, redis_url, clock
        self.stack = AsyncExitStack()

    async def client(self, cls: type[OAuthClient] = OAuthClient) -> OAuthClient:
        client = cls(
            base_url=self.sandbox.url, client_id=APP.client_id, client_secret=APP.client_secret
        )
        self.stack.push_async_callback(client.close)
        return client

    def store(self, lease_s: float = 30.0) -> TokenStore:
        store = TokenStore.from_url(self.redis_url, lease_s=lease_s)
        self.stack.push_async_callback(store.aclose)
        return store

    async def replica(
        self,
        *,
        lease_s: float = 30.0,
        client: OAuthClient | None = None,
        auto_reconnect: bool = True,
        reconnect_interval_s: float = 600.0,
    ) -> OAuthTokens:
        return OAuthTokens(
            store=self.store(lease_s),
            client=client or await self.client(),
            company_id=APP.company_id,
            margin_s=2.0,
            poll_s=0.02,
            wait_s=10.0,
            auto_reconnect=auto_reconnect,
            reconnect_interval_s=reconnect_interval_s,
            clock=self.clock,
            sleep=no_wait,
        )

    async def install(self) -> None:
        """What `oauth exchange` does: an install code -> tokens -> the store."""
        code = self.sandbox.oauth.issue_code(None, self.clock())
        grant = await (await self.client()).exchange_code(code)
        await self.store().install(APP.company_id, grant, self.clock())

    def counters(self) -> dict[str, int]:
        return dict(self.sandbox.oauth.counters)


@pytest.fixture
async def replicas(
    sandbox: Sandbox, redis_server: RedisServer, clock: ManualClock
) -> AsyncIterator[Replicas]:
    group = Replicas(sandbox, redis_server.url, clock)
    async with group.stack:
        yield group


async def test_three_concurrent_refreshers_refresh_exactly_once_per_expiry(
    replicas: Replicas, clock: ManualClock
) -> None:
    await replicas.install()
    three = [await replicas.replica() for _ in range(3)]
    for round_ in range(1, 6):
        clock.now += 20  # every replica's copy and the stored token are stale
        tokens = await asyncio.gather(*(r.company_token() for r in three for _ in range(4)))
        assert len(set(tokens)) == 1
        assert replicas.counters().get("refreshes") == round_
    assert "refreshReuses" not in replicas.counters()
    assert sum(r.refreshes for r in three) == 5
    stored = await replicas.store().read(APP.company_id)
    assert stored is not None
    assert stored.generation == 6


async def test_a_lease_holder_killed_before_storing_is_recovered_from_without_reuse(
    replicas: Replicas, clock: ManualClock
) -> None:
    await replicas.install()
    clock.now += 20
    dead = await replicas.store(lease_s=0.5).acquire_lease(APP.company_id)
    assert dead is not None  # a replica took the lease, then was SIGKILLed: never released
    survivor = await replicas.replica(lease_s=0.5)
    started = asyncio.get_running_loop().time()
    token = await survivor.company_token()
    assert asyncio.get_running_loop().time() - started >= 0.3  # it waited for the lease
    assert await upsert_allowed(replicas, token)
    assert replicas.counters()["refreshes"] == 1
    assert "refreshReuses" not in replicas.counters()


async def test_invalid_grant_rereads_the_store_and_uses_another_replicas_refresh(
    replicas: Replicas, clock: ManualClock
) -> None:
    """A's lease expires while its refresh is slow; B refreshes and stores; A's refresh is
    refused (a reuse of the token B spent), A reads the store and takes B's grant."""
    await replicas.install()
    clock.now += 20
    slow = await replicas.client(SlowClient)
    assert isinstance(slow, SlowClient)
    slow.delay = 0.8
    a = await replicas.replica(lease_s=0.3, client=slow)
    b = await replicas.replica(lease_s=0.3)
    a_task = asyncio.create_task(a.company_token())
    await asyncio.sleep(0.5)  # A holds an expired lease, its refresh not yet sent
    b_token = await b.company_token()
    assert await a_task == b_token
    counters = replicas.counters()
    assert (counters["refreshes"], counters["refreshReuses"]) == (1, 1)
    stored = await replicas.store().read(APP.company_id)
    assert stored is not None
    assert not stored.broken


async def lose_the_refresh_token(replicas: Replicas) -> None:
    """What a replica SIGKILLed between HighLevel's refresh answer and its Redis write does:
    spend the stored refresh token, store nothing."""
    stored = await replicas.store().read(APP.company_id)
    assert stored is not None
    await (await replicas.client()).refresh(stored.refresh_token)


async def test_a_lost_refresh_token_is_recovered_by_exactly_one_automatic_reconnect(
    replicas: Replicas, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    await replicas.install()
    await lose_the_refresh_token(replicas)
    clock.now += 20
    three = [await replicas.replica() for _ in range(3)]
    tokens = await asyncio.gather(*(r.company_token() for r in three for _ in range(3)))
    assert len(set(tokens)) == 1
    assert await upsert_allowed(replicas, tokens[0])
    counters = replicas.counters()
    assert (counters["reconnects"], counters["refreshReuses"], counters["exchanges"]) == (1, 1, 2)
    assert sum((r.reconnects for r in three), Counter()) == Counter(ok=1)
    stored = await replicas.store().read(APP.company_id)
    assert stored is not None
    assert (stored.generation, stored.reconnected_at, stored.broken) == (2, clock.now, "")
    assert stored.access_token == tokens[0]  # stored before it was used
    clock.now += 20  # the recovered grant refreshes as any other
    assert await three[1].company_token() != tokens[0]
    assert replicas.counters()["refreshes"] == 2
    assert "recovered by an automatic reconnect" in caplog.text
    assert stored.refresh_token not in caplog.text
    assert APP.client_secret not in caplog.text


async def test_a_holder_whose_lease_expired_leaves_the_reconnect_to_the_next_holder(
    replicas: Replicas, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The refused refresh outlasted the lease: another replica may hold it now, so this one
    does not reconnect but looks again (and, holding the lease again, reconnects)."""
    await replicas.install()
    slow = await replicas.client(SlowClient)
    assert isinstance(slow, SlowClient)
    slow.delay = 0.5
    replica = await replicas.replica(lease_s=0.3, client=slow)
    await lose_the_refresh_token(replicas)
    clock.now += 20
    task = asyncio.create_task(replica.company_token())
    while "lease expired before a reconnect" not in caplog.text:
        await asyncio.sleep(0.05)
    slow.delay = 0.0
    token = await task
    assert await upsert_allowed(replicas, token)
    counters = replicas.counters()
    assert counters["reconnects"] == 1  # only once a refusal came within the lease
    assert counters["refreshReuses"] >= 2  # (a slow refresh already under way is refused too)
    assert replica.reconnects == Counter(ok=1)


async def test_a_refused_reconnect_breaks_the_installation_once_for_every_replica(
    replicas: Replicas, clock: ManualClock
) -> None:
    await replicas.install()
    replicas.sandbox.oauth.uninstall()  # the refresh token is spent and reconnect refused
    clock.now += 20
    first, second = await replicas.replica(), await replicas.replica()
    with pytest.raises(InstallationBroken, match=r"automatic reconnect refused.*not installed"):
        await first.company_token()
    with pytest.raises(InstallationBroken):
        await second.company_token()
    assert replicas.counters()["refusedReconnects"] == 1  # the second never tried
    assert first.reconnects == Counter(refused=1)
    assert "reconnects" not in replicas.counters()


async def test_reconnect_is_retried_a_bounded_number_of_times_then_breaks(
    replicas: Replicas, clock: ManualClock
) -> None:
    await replicas.install()
    flaky = await replicas.client(FlakyClient)
    assert isinstance(flaky, FlakyClient)
    flaky.failures = 2
    replica = await replicas.replica(client=flaky)
    await lose_the_refresh_token(replicas)
    clock.now += 20
    await replica.company_token()  # the third attempt succeeds
    assert replica.reconnects == Counter(ok=1)
    flaky.failures = 3
    await lose_the_refresh_token(replicas)
    clock.now += 700
    with pytest.raises(InstallationBroken, match=r"failed 3 times, last: .*HTTP 503"):
        await replica.company_token()
    assert replica.reconnects == Counter(ok=1, failed=1)
    assert replicas.counters()["reconnects"] == 1


async def test_a_token_lost_again_soon_after_a_reconnect_breaks_the_installation(
    replicas: Replicas, clock: ManualClock
) -> None:
    """Tokens lost twice within ``reconnect_interval_s``: a bug or another party using the
    app's tokens; reconnecting again would fight it."""
    await replicas.install()
    replica = await replicas.replica(reconnect_interval_s=60)
    for _ in range(2):
        await lose_the_refresh_token(replicas)
        clock.now += 61
        await replica.company_token()
    await lose_the_refresh_token(replicas)
    clock.now += 20
    with pytest.raises(InstallationBroken, match="previous one was 20s ago"):
        await replica.company_token()
    assert replica.reconnects == Counter(ok=2, too_soon=1)
    assert replicas.counters()["reconnects"] == 2


async def test_command_reconnect_results_are_counted_once(replicas: Replicas) -> None:
    store = replicas.store()
    await store.add_reconnect_result(APP.company_id, "ok")
    await store.add_reconnect_result(APP.company_id, "refused")
    a, b = await replicas.replica(), await replicas.replica()
    taken = await asyncio.gather(a.take_reconnect_results(), b.take_reconnect_results())
    assert sorted(taken, key=len) == [[], ["ok", "refused"]]


async def test_invalidated_behind_our_back_breaks_every_replica_until_reconnect(
    replicas: Replicas, clock: ManualClock
) -> None:
    """With ``auto_reconnect`` off (the behaviour before automatic recovery)."""
    await replicas.install()
    assert replicas.sandbox.oauth.invalidate(None)
    clock.now += 20
    first = await replicas.replica(auto_reconnect=False)
    second = await replicas.replica(auto_reconnect=False)
    with pytest.raises(InstallationBroken, match="refresh token is invalid"):
        await first.company_token()
    with pytest.raises(InstallationBroken):
        await second.company_token()
    assert replicas.counters()["invalidGrants"] == 1  # the second never tried
    client = await replicas.client()
    code = await client.reconnect(company_id=APP.company_id)
    await replicas.store().install(APP.company_id, await client.exchange_code(code), clock())
    assert await first.company_token() == await second.company_token()


async def test_location_tokens_are_minted_once_shared_and_accepted_by_the_sandbox(
    replicas: Replicas, clock: ManualClock
) -> None:
    await replicas.install()
    a, b = await replicas.replica(), await replicas.replica()
    minted = await asyncio.gather(*(a.location_token("oauth-location-01") for _ in range(5)))
    shared = await b.location_token("oauth-location-01")
    assert set(minted) == {shared}
    assert replicas.counters()["locationTokens"] == 1
    status = await upsert(replicas.sandbox, shared, "oauth-location-01")
    assert status == 200
    clock.now += 19  # within the margin before expiry: minted anew (after a refresh)
    fresh = await b.location_token("oauth-location-01")
    assert fresh != shared
    assert replicas.counters()["locationTokens"] == 2
    clock.now += 1
    assert await upsert(replicas.sandbox, shared, "oauth-location-01") == 401
    assert await upsert(replicas.sandbox, fresh, "oauth-location-01") == 200


async def test_a_refused_location_token_is_renewed_once_and_shared(
    replicas: Replicas,
) -> None:
    """After a 401 (a token HighLevel dropped before its expiry), one replica mints another,
    the others take it from the store; the renewed token refused too is not renewed again (its
    401 is a real refusal: the events then park instead of a 401 storm)."""
    await replicas.install()
    a, b = await replicas.replica(), await replicas.replica()
    refused = await a.location_token("oauth-location-01")
    renewed = await a.renew_location_token("oauth-location-01", refused)
    assert renewed != refused
    assert await b.renew_location_token("oauth-location-01", refused) == renewed
    assert await a.renew_location_token("oauth-location-01", refused) == renewed
    assert replicas.counters()["locationTokens"] == 2
    assert await a.renew_location_token("oauth-location-01", renewed) == renewed
    assert replicas.counters()["locationTokens"] == 2
    assert await upsert(replicas.sandbox, renewed, "oauth-location-01") == 200


async def upsert_allowed(replicas: Replicas, company_token: str) -> bool:
    """Whether ``company_token`` is a valid Company token (it can list the installation)."""
    client = await replicas.client()
    listed = await client.installed_locations(
        company_token, company_id=APP.company_id, app_id=APP.app_id
    )
    return listed == ["oauth-location-01", "oauth-location-02"]


async def upsert(sandbox: Sandbox, token: str, location_id: str) -> int:
    headers: dict[str, Any] = {"Authorization": f"Bearer {token}", "Version": "2021-07-28"}
    body = {"locationId": location_id, "email": "ada@example.com"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sandbox.url}/contacts/upsert", json=body, headers=headers) as response,
    ):
        return response.status


async def test_client_errors_are_typed_and_never_carry_a_secret(replicas: Replicas) -> None:
    bad = OAuthClient(
        base_url=replicas.sandbox.url, client_id=APP.client_id, client_secret="s3cret-value"
    )
    try:
        with pytest.raises(OAuthError) as refused:
            await bad.refresh("rt-value")
        assert (refused.value.status, refused.value.retriable) == (401, False)
        assert "s3cret-value" not in str(refused.value)
    finally:
        await bad.close()
    client = await replicas.client()
    with pytest.raises(InvalidGrant, match="refresh token is invalid") as invalid:
        await client.refresh("never-issued")
    assert "never-issued" not in str(invalid.value)
    down = OAuthClient(base_url="http://127.0.0.1:9", client_id="c", client_secret="s")
    try:
        with pytest.raises(OAuthError) as unreachable:
            await down.exchange_code("code")
        assert unreachable.value.retriable
        assert unreachable.value.status is None
    finally:
        await down.close()
