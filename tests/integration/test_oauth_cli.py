"""``ghl-consumer oauth exchange | status | reconnect`` as subprocesses, against the sandbox
over TCP and a real redis-server: the install flow, a broken installation reported and
recovered, configuration errors naming the field, and no token value in any output."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from consumer.errors import InstallationBroken
from consumer.highlevel.oauth import OAuthClient
from consumer.sandbox import Sandbox, run_sandbox
from consumer.sandbox.oauth import OAuthSettings
from consumer.state.oauth_tokens import OAuthTokens
from consumer.state.token_store import TokenStore
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

APP = OAuthSettings(company_id="agency-1", client_secret="cli-secret-value")
ROOT = Path(__file__).parents[2]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox(locations={}, oauth=APP, oauth_locations=3) as running:
        yield running


def config(tmp_path: Path, extra: str = "discover = true\n") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[[oauth]]
id = "agency"
client_id = "{APP.client_id}"
client_secret = {{ env = "TEST_OAUTH_SECRET" }}
app_id = "{APP.app_id}"
company_id = "agency-1"
{extra}"""
    )
    return path


async def cli(
    sandbox: Sandbox, redis: RedisServer, path: Path, *args: str, secret: str = APP.client_secret
) -> tuple[int, str, str]:
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GHL_API_BASE_URL": sandbox.url,
        "REDIS_URL": redis.url,
        "TEST_OAUTH_SECRET": secret,
    }
    environ.pop("GHL_LOCATION_ID", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumer", "oauth", "--config", str(path), *args,
        env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def stored_tokens(redis: RedisServer) -> tuple[str, str]:
    store = TokenStore.from_url(redis.url)
    try:
        stored = await store.read("agency-1")
    finally:
        await store.aclose()
    assert stored is not None
    return stored.access_token, stored.refresh_token


async def test_install_status_broken_and_reconnect(
    sandbox: Sandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    path = config(tmp_path)
    code, out, err = await cli(sandbox, redis_server, path, "status")
    assert code == 1, err
    assert "not installed" in out

    install_code = sandbox.oauth.issue_code(None, time.time())
    code, out, err = await cli(sandbox, redis_server, path, "exchange", "--code", install_code)
    assert code == 0, err
    assert "generation 1" in out
    assert "3 discovered: oauth-location-01, oauth-location-02, oauth-location-03" in out
    seen = [out + err]
    issued = list(await stored_tokens(redis_server))

    code, out, err = await cli(sandbox, redis_server, path, "status", "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert (report["state"], report["generation"]) == ("ok", 1)
    assert report["accessExpiresInS"] > 86_000
    seen.append(out + err)

    # the refresh token is invalidated behind the consumer's back; a replica finds out
    sandbox.oauth.invalidate(None)
    store = TokenStore.from_url(redis_server.url)
    client = OAuthClient(base_url=sandbox.url, client_id=APP.client_id,
                         client_secret=APP.client_secret)
    try:
        tokens = OAuthTokens(
            store=store,
            client=client,
            company_id="agency-1",
            auto_reconnect=False,  # `run` would reconnect by itself
            clock=lambda: time.time() + 86_400,  # a day later: the access token expired
        )
        with pytest.raises(InstallationBroken, match="refresh token is invalid"):
            await tokens.company_token()
    finally:
        await client.close()
        await store.aclose()
    code, out, err = await cli(sandbox, redis_server, path, "status")
    assert code == 1, err
    assert "broken: " in out
    assert "ghl-consumer oauth reconnect" in out
    seen.append(out + err)

    code, out, err = await cli(sandbox, redis_server, path, "reconnect")
    assert code == 0, err
    assert "generation 3" not in out
    assert "generation 2" in out
    seen.append(out + err)
    code, out, err = await cli(sandbox, redis_server, path, "status")
    assert code == 0, err
    assert ": ok" in out
    seen.append(out + err)

    sandbox.oauth.uninstall()
    code, out, err = await cli(sandbox, redis_server, path, "reconnect")
    assert code == 1
    assert "not installed" in err
    seen.append(out + err)

    issued += await stored_tokens(redis_server)
    for text in seen:
        assert not [token for token in issued if token in text]
        assert APP.client_secret not in text
    assert sandbox.oauth.counters.get("reconnects") == 1
    store = TokenStore.from_url(redis_server.url)
    try:  # left for a `run` replica to count (ghl_oauth_reconnects_total{trigger="command"})
        assert await store.take_reconnect_results("agency-1") == ["ok", "refused"]
    finally:
        await store.aclose()


async def test_configuration_errors_name_the_field(
    sandbox: Sandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    code, _, err = await cli(sandbox, redis_server, config(tmp_path, ""), "status")
    assert code == 2
    assert "configuration error: oauth[0].locations: required" in err
    code, _, err = await cli(
        sandbox, redis_server, config(tmp_path), "exchange", "--code", "x", secret=""
    )
    assert code == 2
    assert "oauth[0].client_secret: environment variable TEST_OAUTH_SECRET is not set" in err
    code, _, err = await cli(
        sandbox, redis_server, config(tmp_path), "--app", "other", "status"
    )
    assert code == 2
    assert "--app: no [[oauth]] table with id 'other'" in err


async def test_a_wrong_code_or_secret_stores_nothing(
    sandbox: Sandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    path = config(tmp_path, 'locations = ["oauth-location-01"]\n')
    code, _, err = await cli(sandbox, redis_server, path, "exchange", "--code", "not-a-code")
    assert code == 1
    assert "authorization code is invalid" in err
    code, _, err = await cli(sandbox, redis_server, path, "reconnect", secret="wrong-secret")
    assert code == 1
    assert "HTTP 401" in err
    assert "wrong-secret" not in err
    code, out, _ = await cli(sandbox, redis_server, path, "status")
    assert code == 1
    assert "not installed" in out
