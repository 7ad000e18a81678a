"""An installation's tokens for every replica: the Company token kept fresh through the shared
``TokenStore`` (exactly one replica refreshes at a time), Location tokens minted on demand.

``OAuthTokens.company_token()``:

1. this replica's copy, while fresh (``margin_s`` before expiry, at most a quarter of the
   lifetime); else the store's, while fresh;
2. else take the installation's lease. Without it, another replica is refreshing: poll the
   store until it holds a fresh token (or the lease frees, or ``wait_s`` passes:
   ``OAuthError``, retriable);
3. with it, read the store again (another replica may have refreshed between 1 and 2), then
   refresh the stored refresh token, and **store the answer before returning its access
   token** (``TokenStore.store_refreshed``: a compare-and-set on the fence and the generation).
   The lease is released in every case.
4. A refresh answered ``invalid_grant`` reads the store again: if it holds another generation,
   a replica refreshed meanwhile and that one is used. Otherwise the stored refresh token is
   lost (spent by a replica killed before it stored the answer, or used by someone else):
5. with ``auto_reconnect``, the lease holder (and only it) recovers the installation: it renews
   its lease, asks ``POST /oauth/reconnect`` (the app's client key and secret) for a new
   authorization code, exchanges it, and **stores the grant (fenced, as a refresh's) before
   using it**. A retriable failure (timeout, 429, 5xx) is tried again, ``_RECONNECT_ATTEMPTS``
   times in all with a doubling pause, the lease renewed before each attempt. An automatic
   reconnect less than ``reconnect_interval_s`` after the previous one (``reconnected_at`` in
   the store) is not made: tokens lost that often mean a bug or another party using the app's
   tokens, which a person must look at.
6. Otherwise (``auto_reconnect`` off, HighLevel refused the reconnect or the code, the retries
   ran out, too soon) the installation is marked broken in the store (every replica then raises
   ``InstallationBroken`` without refreshing) until ``ghl-consumer oauth exchange`` /
   ``reconnect`` stores a new grant. The reason is logged, never a token or the secret.

A replica killed while holding the lease, before refreshing, leaves the stored refresh token
unspent: the lease expires and another replica refreshes it. One killed after HighLevel
answered and before the store took the answer has lost the only valid refresh token: once its
lease expires, the next refresher's ``invalid_grant`` leads to the reconnect of step 5. The
window is one HTTP round trip and one Redis write.

``location_token(location_id)``: this replica's copy or the store's while fresh, else minted
with the Company token (``POST /oauth/locationToken``) and shared through the store until it
expires. Concurrent callers in one replica wait for one mint; replicas may mint concurrently
(each mint is valid; it costs a request, never a token).

``renew_location_token(location_id, refused)``: after a 401 to ``refused``, another token
(the store's, else minted): at most one renewal per token, so a location answers 401 at most
once per token lifetime before its events are handled as unauthorized.

Callers: the commands (``oauth status`` reads the store directly), and the engine through the
``Credentials`` port (``consumer.commands.credentials``). ``clock`` is epoch seconds (tokens'
expiries are shared between machines); ``sleep`` is awaited between polls (tests pass a fast one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final

from consumer.errors import InstallationBroken, InvalidGrant, OAuthError, TokenStoreError
from consumer.highlevel.oauth import OAuthClient, TokenGrant
from consumer.state.token_store import Lease, LocationToken, StoredGrant, TokenStore

logger = logging.getLogger(__name__)

_STORE_ATTEMPTS = 5
_RECONNECT_ATTEMPTS = 3
RECONNECT_RESULTS: Final = ("ok", "refused", "failed", "too_soon")
"""How a reconnect ended: a grant stored; HighLevel refused it (the app uninstalled, 4xx);
retriable failures until the attempts ran out (or the grant could not be stored); not tried,
the previous automatic one being too recent."""


class OAuthTokens:
    """The tokens of the app's installation in ``company_id``. One per process and company."""

    def __init__(
        self,
        *,
        store: TokenStore,
        client: OAuthClient,
        company_id: str,
        margin_s: float = 300.0,
        wait_s: float = 45.0,
        poll_s: float = 0.2,
        auto_reconnect: bool = True,
        reconnect_interval_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._client = client
        self.company_id = company_id
        self._margin_s = margin_s
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._auto_reconnect = auto_reconnect
        self._reconnect_interval_s = reconnect_interval_s
        self._clock = clock
        self._sleep = sleep
        self._company: StoredGrant | None = None
        self._company_lock = asyncio.Lock()
        self._locations: dict[str, LocationToken] = {}
        self._location_locks: dict[str, asyncio.Lock] = {}
        self._renewed: dict[str, str] = {}  # location -> token minted after a 401
        self.refreshes = 0
        """Refreshes this replica made (each one stored)."""
        self.reconnects: Counter[str] = Counter()
        """Automatic reconnects this replica made, by result (``RECONNECT_RESULTS``)."""

    @property
    def company_expires_at(self) -> float | None:
        """When the company token this replica holds expires (epoch s); None before one."""
        return None if self._company is None else self._company.expires_at

    async def company_token(self) -> str:
        """A fresh Company access token. Raises ``InstallationBroken``, ``OAuthError``
        (retriable: HighLevel or the lease holder did not answer in time) or
        ``TokenStoreError``."""
        cached = self._company
        if cached is not None and cached.fresh(self._clock(), self._margin_s):
            return cached.access_token
        async with self._company_lock:  # one coroutine per replica goes to the store
            stored = await self._fresh_company()
            self._company = stored
            return stored.access_token

    async def take_reconnect_results(self) -> list[str]:
        """The results of ``oauth reconnect`` commands no replica has counted yet
        (``TokenStore.take_reconnect_results``). Raises ``TokenStoreError``."""
        return await self._store.take_reconnect_results(self.company_id)

    async def location_token(self, location_id: str) -> str:
        """A fresh access token of ``location_id`` (minted when none is). Raises as
        ``company_token``, and ``OAuthError`` when HighLevel refuses the mint."""
        cached = self._locations.get(location_id)
        if cached is not None and cached.fresh(self._clock(), self._margin_s):
            return cached.access_token
        lock = self._location_locks.setdefault(location_id, asyncio.Lock())
        async with lock:
            token = await self._store.read_location(self.company_id, location_id)
            if token is None or not token.fresh(self._clock(), self._margin_s):
                token = await self._mint(location_id)
            self._locations[location_id] = token
            return token.access_token

    async def renew_location_token(self, location_id: str, refused: str) -> str:
        """A location token other than ``refused`` (HighLevel answered 401 to it): the one
        another coroutine or replica obtained meanwhile, else one minted now. ``refused``
        itself when it was minted by this method (a renewed token refused too is not an expiry:
        minting again would only repeat the 401). Raises as ``location_token``."""
        lock = self._location_locks.setdefault(location_id, asyncio.Lock())
        async with lock:
            cached = self._locations.get(location_id)
            if cached is not None and cached.access_token != refused:
                return cached.access_token
            if self._renewed.get(location_id) == refused:
                return refused
            token = await self._store.read_location(self.company_id, location_id)
            if token is None or token.access_token == refused:
                token = await self._mint(location_id)
                self._renewed[location_id] = token.access_token
            self._locations[location_id] = token
            return token.access_token

    async def _mint(self, location_id: str) -> LocationToken:
        company = await self.company_token()
        now = self._clock()
        grant = await self._client.location_token(
            company, company_id=self.company_id, location_id=location_id
        )
        token = LocationToken(grant.access_token, now + grant.expires_in_s, now)
        await self._store.store_location(self.company_id, location_id, token)
        return token

    async def _fresh_company(self) -> StoredGrant:
        deadline = self._clock() + self._wait_s
        while True:
            stored = await self._read()
            if stored.fresh(self._clock(), self._margin_s):
                return stored
            lease = await self._store.acquire_lease(self.company_id)
            if lease is not None:
                try:
                    refreshed = await self._refresh_under(lease)
                finally:
                    await self._store.release_lease(self.company_id, lease)
                if refreshed is not None:
                    return refreshed
            elif self._clock() >= deadline:
                raise OAuthError(
                    f"installation {self.company_id}: another replica's refresh did not finish "
                    f"in {self._wait_s:.0f}s",
                    status=None,
                    retriable=True,
                )
            else:
                await self._sleep(self._poll_s)

    async def _refresh_under(self, lease: Lease) -> StoredGrant | None:
        """Refresh while holding ``lease``; the stored grant, or None to look again."""
        stored = await self._read()  # another replica may have refreshed before our lease
        if stored.fresh(self._clock(), self._margin_s):
            return stored
        now = self._clock()
        try:
            grant = await self._client.refresh(stored.refresh_token)
        except InvalidGrant as refused:
            return await self._after_invalid_grant(lease, stored, str(refused))
        self.refreshes += 1
        generation = await self._store_answer(lease, stored.generation, grant, now)
        if generation is None:
            # an exchange or reconnect stored a grant meanwhile: ours is not the current one
            logger.warning(
                "oauth: installation %s: the store moved on during a refresh; using its grant",
                self.company_id,
                extra={"event": "oauth_refresh_superseded", "company_id": self.company_id},
            )
            return None
        logger.info(
            "oauth: installation %s refreshed (generation %d)",
            self.company_id,
            generation,
            extra={"event": "oauth_refreshed", "company_id": self.company_id},
        )
        return await self._read()

    async def _store_answer(
        self,
        lease: Lease,
        from_generation: int,
        grant: TokenGrant,
        now: float,
        *,
        reconnected: bool = False,
    ) -> int | None:
        """``store_refreshed``, tried again while Redis does not answer (``_STORE_ATTEMPTS``
        times): the old refresh token is spent, so this answer is the installation's only
        valid grant and is never used before it is stored."""
        attempt = 0
        while True:
            try:
                return await self._store.store_refreshed(
                    self.company_id, lease, from_generation, grant, now, reconnected=reconnected
                )
            except TokenStoreError:
                attempt += 1
                if attempt == _STORE_ATTEMPTS:
                    logger.error(
                        "oauth: installation %s: the new grant could not be stored; its refresh "
                        "token is lost (an automatic reconnect, or `ghl-consumer oauth "
                        "reconnect`, recovers it)",
                        self.company_id,
                        extra={"event": "oauth_store_failed", "company_id": self.company_id},
                    )
                    raise
                await self._sleep(0.2 * 2**attempt)

    async def _after_invalid_grant(
        self, lease: Lease, used: StoredGrant, refused: str
    ) -> StoredGrant | None:
        """Steps 4 to 6: the grant to use, None to look again, or ``InstallationBroken``."""
        again = await self._read()
        if again.generation != used.generation:
            return None  # another replica refreshed (or a reconnect landed): use that
        reason = refused
        if self._auto_reconnect:
            outcome = await self._reconnect(lease, again)
            if not isinstance(outcome, str):
                return outcome
            reason = f"{refused}; automatic reconnect {outcome}"
        marked = await self._store.mark_broken(self.company_id, used.generation, reason)
        if not marked:
            return None
        logger.error(
            "oauth: installation %s is broken: %s; run `ghl-consumer oauth reconnect`",
            self.company_id,
            reason,
            extra={"event": "oauth_installation_broken", "company_id": self.company_id},
        )
        raise InstallationBroken(self.company_id, reason)

    async def _reconnect(self, lease: Lease, lost: StoredGrant) -> StoredGrant | str | None:
        """Step 5, holding ``lease``, the store holding ``lost``: the grant a reconnect stored;
        why none was (the caller marks the installation broken); None when the lease expired
        or the store moved on meanwhile (look again)."""
        since = self._clock() - (lost.reconnected_at or float("-inf"))
        if since < self._reconnect_interval_s:
            return self._not_reconnected(
                "too_soon",
                f"not made: the previous one was {since:.0f}s ago "
                f"(less than {self._reconnect_interval_s:.0f}s)",
            )
        failure = ""
        for attempt in range(_RECONNECT_ATTEMPTS):
            if attempt:
                await self._sleep(2.0 ** (attempt - 1))
            if not await self._store.renew_lease(self.company_id, lease):
                logger.warning(
                    "oauth: installation %s: the refresh lease expired before a reconnect; "
                    "looking again",
                    self.company_id,
                    extra={"event": "oauth_reconnect_lease_lost", "company_id": self.company_id},
                )
                return None
            now = self._clock()
            try:
                grant = await self._client.exchange_code(
                    await self._client.reconnect(company_id=self.company_id)
                )
            except OAuthError as error:
                failure = str(error)
                if not error.retriable:
                    return self._not_reconnected("refused", f"refused: {failure}")
                continue
            if grant.company_id and grant.company_id != self.company_id:
                return self._not_reconnected(
                    "refused", f"refused: the code is for company {grant.company_id}"
                )
            try:
                generation = await self._store_answer(
                    lease, lost.generation, grant, now, reconnected=True
                )
            except TokenStoreError:
                self.reconnects["failed"] += 1
                raise
            if generation is None:
                logger.warning(
                    "oauth: installation %s: the store moved on during a reconnect; using its "
                    "grant",
                    self.company_id,
                    extra={"event": "oauth_reconnect_superseded", "company_id": self.company_id},
                )
                return None
            self.reconnects["ok"] += 1
            logger.warning(
                "oauth: installation %s: its refresh token was lost; recovered by an automatic "
                "reconnect (generation %d)",
                self.company_id,
                generation,
                extra={"event": "oauth_reconnected", "company_id": self.company_id},
            )
            return await self._read()
        return self._not_reconnected(
            "failed", f"failed {_RECONNECT_ATTEMPTS} times, last: {failure}"
        )

    def _not_reconnected(self, result: str, reason: str) -> str:
        self.reconnects[result] += 1
        logger.error(
            "oauth: installation %s: automatic reconnect %s",
            self.company_id,
            reason,
            extra={"event": "oauth_reconnect_failed", "company_id": self.company_id},
        )
        return reason

    async def _read(self) -> StoredGrant:
        stored = await self._store.read(self.company_id)
        if stored is None:
            raise InstallationBroken(
                self.company_id, "nothing stored: run `ghl-consumer oauth exchange --code CODE`"
            )
        if stored.broken:
            raise InstallationBroken(self.company_id, stored.broken)
        return stored
