"""``ghl-consumer oauth``: the OAuth installation of a Marketplace app (``[[oauth]]`` in the
configuration; README, "HighLevel at agency scale: OAuth").

- ``oauth exchange --code CODE``: the code of the install redirect -> tokens, stored in the
  shared token store (Redis) where every replica reads them.
- ``oauth status [--json]``: each installation as stored: generation, access token expiry,
  last refresh, broken or not, and the location tokens shared; never a token value. No HTTP.
- ``oauth reconnect``: HighLevel's ``POST /oauth/reconnect`` gives a new code for the
  installation, exchanged and stored as above: recovers an installation whose refresh token
  was lost (marked broken: ``run`` recovers by itself unless ``auto_reconnect = false`` or
  its own reconnect failed). Its result (ok, refused, failed) is left in the store for a
  ``run`` replica to count (``ghl_oauth_reconnects_total{trigger="command"}``).

``--app ID`` picks the ``[[oauth]]`` table (not needed when there is one). Exit status: 0 done
(``status``: every installation shown is healthy); 1 ``status`` found an installation broken or
never installed, or HighLevel or Redis failed; 2 a configuration error or a code for another
company (nothing stored).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from consumer.commands.preamble import (
    Failure,
    add_config_argument,
    add_log_level_argument,
    configure_logging,
    load,
    run_command,
)
from consumer.config import OAuthApp, Settings
from consumer.errors import ConfigError, OAuthError, TokenStoreError
from consumer.highlevel.oauth import OAuthClient, TokenGrant
from consumer.state.token_store import TokenStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    add_log_level_argument(parser, default="WARNING")
    parser.add_argument(
        "--app", metavar="ID", help="the [[oauth]] table's id (default: the only one)"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    exchange = actions.add_parser(
        "exchange", help="store the tokens of an install's authorization code"
    )
    exchange.add_argument("--code", required=True, help="the code of the install redirect")
    status = actions.add_parser("status", help="the stored installations (never a token)")
    status.add_argument("--json", action="store_true", help="one JSON object per installation")
    actions.add_parser("reconnect", help="get a new code from HighLevel, store its tokens")


def main(args: argparse.Namespace) -> int:
    """``ghl-consumer oauth``: see the module docstring for the exit status."""
    configure_logging(args.log_level, log_format=args.log_format)

    def body() -> int:
        settings = load(
            args.config,
            read_secrets=False,
            kafka_secrets=False,
            profile_keys=False,
            oauth_secrets=args.action != "status",
            token_store=True,
            integrations_required=False,
        )
        apps = selected_apps(settings, args.app, every=args.action == "status")
        if args.action == "status":
            return asyncio.run(status(settings, apps, json_lines=args.json, out=sys.stdout))
        code = args.code if args.action == "exchange" else None
        return asyncio.run(install(settings, apps[0], code=code, out=sys.stdout))

    return run_command(
        "ghl-consumer oauth",
        body,
        Failure((OAuthError,), "HighLevel", 1),
        Failure((TokenStoreError,), "token store", 1),
    )


def selected_apps(settings: Settings, app_id: str | None, *, every: bool) -> list[OAuthApp]:
    """The ``[[oauth]]`` table named ``app_id``; without one, the only table (or, with
    ``every``, all of them). ConfigError otherwise."""
    apps = list(settings.oauth)
    if not apps:
        raise ConfigError("oauth: no [[oauth]] table in the configuration")
    if app_id is not None:
        chosen = [app for app in apps if app.id == app_id]
        if not chosen:
            known = ", ".join(app.id for app in apps)
            raise ConfigError(f"--app: no [[oauth]] table with id {app_id!r} (known: {known})")
        return chosen
    if len(apps) > 1 and not every:
        raise ConfigError(f"--app: required, one of {', '.join(app.id for app in apps)}")
    return apps


async def install(settings: Settings, app: OAuthApp, *, code: str | None, out: TextIO) -> int:
    """Exchange ``code`` (None: ask ``/oauth/reconnect`` for one) and store the tokens."""
    client = OAuthClient(
        base_url=settings.highlevel.api_base_url,
        client_id=app.client_id,
        client_secret=app.client_secret.reveal(),
    )
    store = TokenStore.from_url(settings.redis.url)
    reconnecting = code is None
    try:
        try:
            if code is None:
                code = await client.reconnect(company_id=app.company_id)
            now = time.time()
            grant = await client.exchange_code(code)
            if grant.company_id and grant.company_id != app.company_id:
                raise ConfigError(
                    f"the code is for company {grant.company_id}, [[oauth]] {app.id} names "
                    f"{app.company_id}: nothing stored"
                )
            generation = await store.install(app.company_id, grant, now)
        except (OAuthError, ConfigError) as failure:
            if reconnecting:
                retriable = isinstance(failure, OAuthError) and failure.retriable
                await store.add_reconnect_result(
                    app.company_id, "failed" if retriable else "refused"
                )
            raise
        if reconnecting:
            await store.add_reconnect_result(app.company_id, "ok")
        locations = await _locations(client, app, grant)
    finally:
        await client.close()
        await store.aclose()
    print(
        f"oauth {app.id}: company {app.company_id} installed (generation {generation}); "
        f"access token valid until {_iso(now + grant.expires_in_s)}",
        file=out,
    )
    print(f"  locations: {locations}", file=out)
    return 0


async def _locations(client: OAuthClient, app: OAuthApp, grant: TokenGrant) -> str:
    if not app.discover:
        return f"{len(app.locations)} listed: {', '.join(app.locations)}"
    found = await client.installed_locations(
        grant.access_token, company_id=app.company_id, app_id=app.app_id
    )
    return f"{len(found)} discovered: {', '.join(found)}"


async def status(
    settings: Settings, apps: list[OAuthApp], *, json_lines: bool, out: TextIO
) -> int:
    """Print each installation as stored; 1 when one is broken or never installed."""
    store = TokenStore.from_url(settings.redis.url)
    healthy = True
    try:
        for app in apps:
            report = await _report(store, app, time.time())
            healthy = healthy and report["state"] == "ok"
            if json_lines:
                print(orjson.dumps(report).decode(), file=out)
            else:
                _print_report(report, out)
    finally:
        await store.aclose()
    return 0 if healthy else 1


async def _report(store: TokenStore, app: OAuthApp, now: float) -> dict[str, Any]:
    stored = await store.read(app.company_id)
    report: dict[str, Any] = {
        "app": app.id,
        "companyId": app.company_id,
        "locations": "discover" if app.discover else list(app.locations),
    }
    if stored is None:
        return {**report, "state": "not installed"}
    shared = await store.location_tokens(app.company_id)
    return {
        **report,
        "state": "broken" if stored.broken else "ok",
        "broken": stored.broken or None,
        "generation": stored.generation,
        "accessExpiresAt": _iso(stored.expires_at),
        "accessExpiresInS": round(stored.expires_at - now),
        "lastRefresh": _iso(stored.refreshed_at),
        "scope": stored.scope,
        "locationTokens": {
            location: {"expiresAt": _iso(token.expires_at)} for location, token in shared.items()
        },
    }


def _print_report(report: dict[str, Any], out: TextIO) -> None:
    print(f"oauth {report['app']}: company {report['companyId']}: {report['state']}", file=out)
    if report.get("broken"):
        print(f"  broken: {report['broken']} (run `ghl-consumer oauth reconnect`)", file=out)
    if "generation" in report:
        print(
            f"  access token valid until {report['accessExpiresAt']} "
            f"({report['accessExpiresInS']} s); last refresh {report['lastRefresh']}; "
            f"generation {report['generation']}",
            file=out,
        )
    locations = report["locations"]
    listed = "discovered" if locations == "discover" else ", ".join(locations)
    print(f"  locations: {listed}", file=out)
    for location, token in report.get("locationTokens", {}).items():
        print(f"    {location}: location token until {token['expiresAt']}", file=out)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z"
    )
