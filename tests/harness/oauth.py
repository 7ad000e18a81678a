"""An OAuth installation for the tests that run ``ghl-consumer run`` on OAuth tokens: the
configuration (one ``[[oauth]]`` app discovering its locations, one integration taking the
location from ``context.groupId``), the install that ``oauth exchange --code`` does, and a
record of every token the sandbox issues (to prove none reaches a log)."""

from __future__ import annotations

import time

from consumer.highlevel.oauth import OAuthClient
from consumer.sandbox import Sandbox
from consumer.sandbox.oauth import OAuthSettings
from consumer.state.token_store import TokenStore


def oauth_config(
    app: OAuthSettings, *, auto_reconnect: bool = True, reconnect_interval_s: int = 600
) -> str:
    """config.toml for ``run``: ``app`` as ``[[oauth]] id = "agency"`` (its secret from
    ``TEST_OAUTH_SECRET``) and integration ``agency-events`` located by ``context.groupId``."""
    return f"""
[engine]
coalesce_window_ms = 0

[delivery]
unauthorized_probe_seconds = 1

[[oauth]]
id = "agency"
client_id = "{app.client_id}"
client_secret = {{ env = "TEST_OAUTH_SECRET" }}
app_id = "{app.app_id}"
company_id = "{app.company_id}"
discover = true
auto_reconnect = {"true" if auto_reconnect else "false"}
reconnect_interval_seconds = {reconnect_interval_s}

[[integrations]]
id = "agency-events"
oauth = "agency"
location_path = "context.groupId"
"""


async def install(sandbox: Sandbox, redis_url: str, app: OAuthSettings) -> None:
    """What ``oauth exchange --code`` does (the CLI is tested on its own): an install code
    exchanged for the company's tokens, stored in the Redis at ``redis_url``."""
    client = OAuthClient(
        base_url=sandbox.url, client_id=app.client_id, client_secret=app.client_secret
    )
    store = TokenStore.from_url(redis_url)
    try:
        grant = await client.exchange_code(sandbox.oauth.issue_code(None, time.time()))
        await store.install(app.company_id, grant, time.time())
    finally:
        await client.close()
        await store.aclose()


def record_tokens(sandbox: Sandbox) -> list[str]:
    """Every token and code value the sandbox issues from now on."""
    issued: list[str] = []
    make = sandbox.oauth.new_token

    def new_token() -> str:
        issued.append(make())
        return issued[-1]

    sandbox.oauth.new_token = new_token
    return issued
