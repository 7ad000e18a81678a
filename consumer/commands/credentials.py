"""The engine's ``Credentials`` (``EngineCredentials``): each integration's private integration
token (``SettingsCredentials``), or, for an integration with ``oauth = "<id>"``, the location
tokens of that OAuth installation (``consumer.state.oauth_tokens``, shared by every replica
through Redis). ``ghl-consumer run`` builds it (``consumer.commands.run``).

Per request, a cached token costs no I/O: ``OAuthTokens.location_token`` answers from this
replica's copy while it is fresh, and goes to Redis (or mints) only near its expiry.

``EngineCredentials.check`` (once before the engine starts, then every ``check_seconds`` from
``maintain``) keeps each installation's company token fresh (refreshed here rather than by a
request), asks ``/oauth/installedLocations`` again every ``discover_seconds`` for a
discovering installation, counts reconnects (this replica's automatic ones, and the results
``ghl-consumer oauth reconnect`` left in the store) and sets the ``ghl_oauth_*`` gauges.
Failures are logged when the state changes, never raised: a lost refresh token is recovered by
an automatic reconnect (``consumer.state.oauth_tokens``); a broken installation's events park
(the dispatcher), and ``ghl-consumer oauth reconnect`` stores a new grant that the next check
or request reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from consumer.config import Integration, OAuthApp, Secret, Settings, read_secret_file
from consumer.errors import ConfigError, InstallationBroken, OAuthError, TokenStoreError
from consumer.highlevel.oauth import OAuthClient
from consumer.observe.metrics import Metrics
from consumer.state.oauth_tokens import OAuthTokens

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _FollowedFile:
    """A token given as ``{ file = ... }``: the value last read, and the file's
    (mtime, size, inode) when last checked (None: not yet)."""

    secret: Secret
    path: str
    stamp: tuple[int, int, int] | None = None
    checked_at: float = float("-inf")


class SettingsCredentials:
    """The engine's ``Credentials``: each configured integration's private integration token,
    revealed only when a request is sent.

    A token given as ``{ file = ... }`` (a mounted Kubernetes Secret) follows its file: at most
    once per ``check_interval`` seconds a request stats it, and reads it anew when its mtime,
    size or inode changed; ``reread`` (after a 401) reads it anew at once. A file that cannot
    be read or is empty keeps the token read before (a warning naming the file, never the
    token). Tokens from the environment never change. Event loop thread only."""

    __slots__ = ("_check_interval", "_clock", "_files", "_fixed")

    def __init__(
        self,
        integrations: Iterable[Integration],
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check_interval = check_interval
        self._clock = clock
        self._fixed: dict[str, Secret] = {}
        self._files: dict[str, _FollowedFile] = {}
        for integration in integrations:
            if integration.access_token is None:
                continue  # an OAuth integration (OAuthCredentials)
            secret = integration.access_token
            if secret.file is None:
                self._fixed[integration.id] = secret
            else:
                self._files[integration.id] = _FollowedFile(secret, secret.file)

    async def token(self, integration_id: str, location_id: str) -> str:
        """Raises KeyError for an integration that is not configured. ``location_id`` is the
        integration's own (a private integration token reaches one location)."""
        followed = self._files.get(integration_id)
        if followed is None:
            return self._fixed[integration_id].reveal()
        now = self._clock()
        if now - followed.checked_at >= self._check_interval:
            self._check(integration_id, followed, now, force=False)
        return followed.secret.reveal()

    async def reread(self, integration_id: str, location_id: str, refused: str) -> str:
        """Raises KeyError for an integration that is not configured."""
        followed = self._files.get(integration_id)
        if followed is None:
            return self._fixed[integration_id].reveal()
        self._check(integration_id, followed, self._clock(), force=True)
        return followed.secret.reveal()

    def serves(self, integration_id: str, location_id: str) -> bool:
        """Always: the mapper gives an integration's upserts its own location."""
        return True

    def _check(
        self, integration_id: str, followed: _FollowedFile, now: float, *, force: bool
    ) -> None:
        """Stat the file; read it when it changed (always with ``force``); keep a new token."""
        followed.checked_at = now
        where = f"integration {integration_id}: access_token"
        try:
            stat = os.stat(followed.path)
        except OSError as exc:
            logger.warning("%s: cannot read file %s: %s", where, followed.path, exc.strerror)
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == followed.stamp and not force:
            return
        try:
            value = read_secret_file(followed.path, where)
        except ConfigError as exc:
            logger.warning("%s; keeping the token read before", exc)
            return
        followed.stamp = stamp
        if value != followed.secret.reveal():
            followed.secret = Secret(value, followed.secret.source, file=followed.path)
            logger.warning("%s: a new token read from file %s", where, followed.path)


@dataclass(slots=True, eq=False)
class Installation:
    """One ``[[oauth]]`` app's installation as ``run`` uses it. ``locations``: the listed ones,
    or the last discovered (None: never discovered yet); ``broken``: as last seen."""

    app: OAuthApp
    tokens: OAuthTokens
    client: OAuthClient
    locations: frozenset[str] | None = None
    discovered_at: float = float("-inf")
    refreshes_counted: int = 0
    reconnects_counted: Counter[str] = field(default_factory=Counter)
    broken: bool = False

    @classmethod
    def build(cls, app: OAuthApp, tokens: OAuthTokens, client: OAuthClient) -> Installation:
        listed = None if app.discover else frozenset(app.locations)
        return cls(app, tokens, client, listed)


def _failure_kind(failure: Exception) -> str:
    if isinstance(failure, InstallationBroken):
        return "broken"
    return "token_store" if isinstance(failure, TokenStoreError) else "highlevel"


class EngineCredentials:
    """The ``Credentials`` port over ``private`` (integrations with an access token) and
    ``installations`` (``[[oauth]]`` id -> its installation) for the integrations naming one.
    Event loop thread only."""

    def __init__(
        self,
        integrations: Iterable[Integration],
        private: SettingsCredentials,
        installations: Mapping[str, Installation],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._private = private
        self._installations = dict(installations)
        self._by_integration = {
            i.id: installations[i.oauth] for i in integrations if i.oauth is not None
        }
        self._metrics = metrics
        self._clock = clock

    async def token(self, integration_id: str, location_id: str) -> str:
        installation = self._by_integration.get(integration_id)
        if installation is None:
            return await self._private.token(integration_id, location_id)
        try:
            return await installation.tokens.location_token(location_id)
        except (InstallationBroken, OAuthError, TokenStoreError) as failure:
            self._metrics.oauth_failed(installation.app.id, _failure_kind(failure))
            raise

    async def reread(self, integration_id: str, location_id: str, refused: str) -> str:
        installation = self._by_integration.get(integration_id)
        if installation is None:
            return await self._private.reread(integration_id, location_id, refused)
        try:
            return await installation.tokens.renew_location_token(location_id, refused)
        except (InstallationBroken, OAuthError, TokenStoreError) as failure:
            self._metrics.oauth_failed(installation.app.id, _failure_kind(failure))
            raise

    def serves(self, integration_id: str, location_id: str) -> bool:
        installation = self._by_integration.get(integration_id)
        if installation is None or installation.locations is None:
            return True
        return location_id in installation.locations

    async def maintain(self, check_seconds: float = 5.0) -> None:
        """``check`` every ``check_seconds``; runs until cancelled."""
        while True:
            await asyncio.sleep(check_seconds)
            await self.check()

    async def check(self) -> None:
        """Refresh each installation's company token when due, discover its locations when due,
        set its gauges. Never raises for a token, HighLevel or Redis failure."""
        for installation in self._installations.values():
            await self._check(installation)

    async def _check(self, installation: Installation) -> None:
        app, tokens = installation.app, installation.tokens
        broken = False
        try:
            company = await tokens.company_token()
            now = self._clock()
            if app.discover and now - installation.discovered_at >= app.discover_seconds:
                found = frozenset(
                    await installation.client.installed_locations(
                        company, company_id=app.company_id, app_id=app.app_id
                    )
                )
                if found != installation.locations:
                    logger.info(
                        "oauth %s: installed in %d location(s)",
                        app.id,
                        len(found),
                        extra={"event": "oauth_locations", "installation": app.id},
                    )
                installation.locations = found
                installation.discovered_at = now
        except InstallationBroken as failure:
            broken = True
            if not installation.broken:
                logger.error("oauth %s: %s; its events park until then", app.id, failure)
        except (OAuthError, TokenStoreError) as failure:
            self._metrics.oauth_failed(app.id, _failure_kind(failure))
            logger.warning("oauth %s: check failed, will try again: %s", app.id, failure)
        if installation.broken and not broken:
            logger.warning("oauth %s: the installation works again", app.id)
        installation.broken = broken
        self._metrics.oauth_refreshed(app.id, tokens.refreshes - installation.refreshes_counted)
        installation.refreshes_counted = tokens.refreshes
        for result, count in (tokens.reconnects - installation.reconnects_counted).items():
            self._metrics.oauth_reconnected(app.id, "auto", result, count)
        installation.reconnects_counted = Counter(tokens.reconnects)
        try:
            for result in await tokens.take_reconnect_results():
                self._metrics.oauth_reconnected(app.id, "command", result, 1)
        except TokenStoreError as failure:
            logger.debug("oauth %s: reconnect results not read: %s", app.id, failure)
        expires_at = tokens.company_expires_at
        self._metrics.oauth_state(
            app.id,
            expires_in=None if expires_at is None else max(0.0, expires_at - time.time()),
            broken=broken,
            locations=len(installation.locations or ()),
        )


def open_installations(
    settings: Settings, closers: list[Callable[[], Awaitable[None]]]
) -> dict[str, Installation]:
    """Each ``[[oauth]]`` app's installation (by id) over one shared token store, as ``run``
    and ``forget --delete-contact`` use them; what must be closed is appended to ``closers``
    (awaited in order)."""
    from consumer.state.token_store import TokenStore  # only with [[oauth]] (Redis)

    store = TokenStore.from_url(settings.redis.url)
    closers.append(store.aclose)
    installations = {}
    for app in settings.oauth:
        client = OAuthClient(
            base_url=settings.highlevel.api_base_url,
            client_id=app.client_id,
            client_secret=app.client_secret.reveal(),
        )
        closers.insert(0, client.close)
        tokens = OAuthTokens(
            store=store,
            client=client,
            company_id=app.company_id,
            auto_reconnect=app.auto_reconnect,
            reconnect_interval_s=app.reconnect_interval_seconds,
        )
        installations[app.id] = Installation.build(app, tokens, client)
    return installations
