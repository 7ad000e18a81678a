"""The ``[[oauth]]`` tables of the configuration (``read_oauth_apps``): a Marketplace app, its
secret (``{ env = ... }`` or ``{ file = ... }``, never literal), the company it is installed in
and its locations, listed or discovered. Example::

    [[oauth]]
    id = "agency"                                   # optional when there is one table
    client_id = "66f1...-m1x2y3"
    client_secret = { env = "GHL_OAUTH_CLIENT_SECRET" }
    app_id = "66f1..."                              # the part of client_id before the "-"
    company_id = "5DP4iH6HLkQsiKESj6rh"
    locations = ["ve9EPM428h8vShlRW1KT"]            # or: discover = true
    discover_seconds = 300                          # how often discovery asks again
    auto_reconnect = true                           # recover a lost refresh token itself
    reconnect_interval_seconds = 600                # the least time between two of those
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from consumer.config.settings import OAuthApp
from consumer.config.tables import read_secret, reject_unknown_keys, string_list
from consumer.errors import ConfigError

_KEYS: Final = (
    "id",
    "client_id",
    "client_secret",
    "app_id",
    "company_id",
    "locations",
    "discover",
    "discover_seconds",
    "auto_reconnect",
    "reconnect_interval_seconds",
)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_OAUTH_ID: Final = "oauth"


def read_oauth_apps(
    value: object, environ: Mapping[str, str], read_secrets: bool
) -> tuple[OAuthApp, ...]:
    """The ``[[oauth]]`` tables (``value``; None: none). ``read_secrets=False`` leaves the
    client secrets unread. Raises ConfigError naming the field (``oauth[0].company_id: ...``),
    never a secret's value."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("oauth: expected [[oauth]] tables")
    apps: list[OAuthApp] = []
    for index, table in enumerate(value):
        where = f"oauth[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        app = _app(table, where, environ, read_secrets, single=len(value) == 1)
        if any(other.id == app.id for other in apps):
            raise ConfigError(f"{where}.id: duplicate id {app.id!r}")
        if any(other.company_id == app.company_id for other in apps):
            raise ConfigError(f"{where}.company_id: {app.company_id!r} is configured twice")
        apps.append(app)
    return tuple(apps)


def _app(
    table: dict[str, Any],
    where: str,
    environ: Mapping[str, str],
    read_secrets: bool,
    *,
    single: bool,
) -> OAuthApp:
    reject_unknown_keys(table, _KEYS, where)
    ident = table.get("id", DEFAULT_OAUTH_ID if single else None)
    if ident is None:
        raise ConfigError(f"{where}.id: required when there are several [[oauth]] tables")
    if not isinstance(ident, str) or not _ID.fullmatch(ident):
        raise ConfigError(f"{where}.id: expected letters, digits, '_', '.', '-' (at most 64)")

    def text(key: str) -> str:
        found = table.get(key)
        if found is None or found == "":
            raise ConfigError(f"{where}.{key}: required")
        if not isinstance(found, str) or not found.strip():
            raise ConfigError(f"{where}.{key}: expected a non-empty string")
        return found.strip()

    client_id, app_id, company_id = text("client_id"), text("app_id"), text("company_id")
    if "client_secret" not in table:
        raise ConfigError(
            f'{where}.client_secret: required ({{ env = "NAME" }} or {{ file = "PATH" }})'
        )
    secret = read_secret(table["client_secret"], f"{where}.client_secret", environ, read_secrets)
    discover = table.get("discover", False)
    if not isinstance(discover, bool):
        raise ConfigError(f"{where}.discover: expected true or false")
    listed = table.get("locations")
    if discover and listed is not None:
        raise ConfigError(f"{where}.locations: give the locations or discover = true, not both")
    if not discover:
        if listed is None:
            raise ConfigError(
                f"{where}.locations: required (a list of location ids), or discover = true"
            )
        locations = string_list(listed, f"{where}.locations")
        if not locations:
            raise ConfigError(f"{where}.locations: must not be empty")
        if len(set(locations)) != len(locations):
            raise ConfigError(f"{where}.locations: a location is listed twice")
    else:
        locations = []
    every = _seconds(table, "discover_seconds", 300, where)
    auto_reconnect = table.get("auto_reconnect", True)
    if not isinstance(auto_reconnect, bool):
        raise ConfigError(f"{where}.auto_reconnect: expected true or false")
    return OAuthApp(
        id=ident,
        client_id=client_id,
        client_secret=secret,
        app_id=app_id,
        company_id=company_id,
        locations=tuple(locations),
        discover=discover,
        discover_seconds=every,
        auto_reconnect=auto_reconnect,
        reconnect_interval_seconds=_seconds(table, "reconnect_interval_seconds", 600, where),
    )


def _seconds(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        raise ConfigError(f"{where}.{key}: expected a number of seconds, at least 1")
    return float(value)
