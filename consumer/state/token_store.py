"""The OAuth token store every replica shares, in Redis (``REDIS_URL``, the rate limiter's home).

Why Redis rather than a compacted Kafka topic: refreshing a single-use refresh token needs
mutual exclusion that survives a crashed holder (a lease with an expiry: ``SET NX PX``) and a
write that lands only on the state it was computed from (an atomic compare-and-set, a Lua
script). A compacted topic offers neither: two replicas could both read the same refresh token
and both spend it, and a reader learns of a write only after consuming up to it.

Keys, per installation (company), in one hash slot (``{company}``)::

    {prefix}{<company>}              hash: access, refresh, expires_at, refreshed_at (epoch s),
                                     scope, user_id, generation (one per stored grant),
                                     fence (of the write that stored it), broken (a reason),
                                     reconnected_at (epoch s of the last automatic reconnect)
    {prefix}{<company>}:lease        the refresh lease: the holder's fence, with a PX expiry
    {prefix}{<company>}:fence        the fence counter (INCR: strictly increasing)
    {prefix}{<company>}:loc:<id>     hash: access, expires_at, obtained_at of a location token,
                                     expiring with it (PEXPIRE)
    {prefix}{<company>}:reconnects   list: results of ``oauth reconnect`` commands not yet
                                     counted by a ``run`` replica (``take_reconnect_results``)

Protocol (``consumer.state.oauth_tokens`` drives it): ``acquire_lease`` gives at most one
holder a fence at a time; the holder reads the store again, refreshes, and
``store_refreshed(fence, from_generation)`` writes the new grant only if the store still holds
``from_generation`` and no write with a later fence landed. It does not require the lease to
be still held: a refresh that succeeded has spent the old token at HighLevel, so its answer is
the only valid grant and must land unless the store has moved on. An automatic reconnect's
grant is stored the same way (``reconnected=True``); ``renew_lease`` gives the holder a full
lease again before that longer step, if it still holds it. ``install`` (a code exchange)
writes unconditionally and moves the generation on, so an older refresh's write is refused.

Durability: Redis acknowledges a write once in memory. Run it with ``appendonly yes`` (and
``appendfsync always`` for the strictest guarantee) so that a stored refresh token survives a
Redis restart. Token values are never logged; ``status`` returns none.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT

from consumer.errors import TokenStoreError
from consumer.highlevel.oauth import TokenGrant
from consumer.ratelimit.redis_backend import connect

__all__ = ["Lease", "LocationToken", "StoredGrant", "TokenStore"]

_T = TypeVar("_T")

# KEYS: lease, fence counter. ARGV: lease ms. -> {fence, 0} granted, {0, pttl} held.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('PTTL', KEYS[1])} end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence, 'NX', 'PX', ARGV[1])
return {fence, 0}
"""

# KEYS: lease. ARGV: fence. Deletes the lease only if this fence still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lease. ARGV: fence, lease ms. -> 1 renewed, 0 another fence holds it (or nobody).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: list. -> its items, taken (each by exactly one caller).
_TAKE_ALL = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return items
"""

_RESULTS_TTL_S = 7 * 86_400
"""How long command reconnect results wait for a ``run`` replica to count them."""

# KEYS: hash. ARGV: fence, from generation, field/value pairs. -> the new generation, or 0.
_STORE_REFRESHED = """
local fence, from = tonumber(ARGV[1]), tonumber(ARGV[2])
local h = redis.call('HMGET', KEYS[1], 'generation', 'fence')
local generation, last = tonumber(h[1]) or 0, tonumber(h[2]) or 0
if generation ~= from or fence <= last then return 0 end
redis.call('HSET', KEYS[1], 'generation', generation + 1, 'fence', fence, unpack(ARGV, 3))
redis.call('HDEL', KEYS[1], 'broken')
return generation + 1
"""

# KEYS: hash, fence counter. ARGV: field/value pairs. -> the new generation.
_INSTALL = """
local generation = tonumber(redis.call('HGET', KEYS[1], 'generation')) or 0
local fence = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'generation', generation + 1, 'fence', fence, unpack(ARGV))
redis.call('HDEL', KEYS[1], 'broken')
return generation + 1
"""

# KEYS: hash. ARGV: generation, reason. -> 1 marked, 0 the store moved on meanwhile.
_MARK_BROKEN = """
if tonumber(redis.call('HGET', KEYS[1], 'generation')) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'broken', ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class StoredGrant:
    """An installation's tokens as stored (``repr`` leaves the tokens out)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float
    refreshed_at: float
    generation: int
    scope: str = ""
    broken: str = ""
    """Why the installation is broken; empty while it is not."""
    reconnected_at: float | None = None
    """When the last automatic reconnect stored a grant (epoch s); None: never."""

    def fresh(self, now: float, margin_s: float) -> bool:
        """Whether the access token is still good at ``now`` with ``margin_s`` to spare (at
        most a quarter of its lifetime, so a short-lived token is not always stale)."""
        lifetime = self.expires_at - self.refreshed_at
        return now < self.expires_at - min(margin_s, lifetime / 4)


@dataclass(frozen=True, slots=True)
class LocationToken:
    access_token: str = field(repr=False)
    expires_at: float
    obtained_at: float

    def fresh(self, now: float, margin_s: float) -> bool:
        lifetime = self.expires_at - self.obtained_at
        return now < self.expires_at - min(margin_s, lifetime / 4)


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to refresh an installation's grant, until it expires; ``fence`` orders it."""

    fence: int


class TokenStore:
    """The shared store. Every method raises ``TokenStoreError`` when Redis does not answer.
    Create with ``from_url``; ``aclose`` when done."""

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str = "ghl-consumer:oauth:",
        lease_s: float = 30.0,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._lease_ms = max(1, round(lease_s * 1000))
        self._owns_client = owns_client
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._take_all = client.register_script(_TAKE_ALL)
        self._store_refreshed = client.register_script(_STORE_REFRESHED)
        self._install = client.register_script(_INSTALL)
        self._mark_broken = client.register_script(_MARK_BROKEN)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 2.0, **kwargs: Any) -> TokenStore:
        """Connect lazily to ``url`` (``consumer.ratelimit.redis_backend.connect``)."""
        client = connect(url, timeout_s=timeout_s, max_connections=8)
        return cls(client, owns_client=True, **kwargs)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _key(self, company_id: str, suffix: str = "") -> str:
        return f"{self._prefix}{{{company_id}}}{suffix}"

    async def read(self, company_id: str) -> StoredGrant | None:
        """The installation's stored grant; None when nothing was ever installed."""
        text = await self._hash(self._key(company_id))
        if "generation" not in text:
            return None
        return StoredGrant(
            access_token=text.get("access", ""),
            refresh_token=text.get("refresh", ""),
            expires_at=float(text.get("expires_at", 0)),
            refreshed_at=float(text.get("refreshed_at", 0)),
            generation=int(text["generation"]),
            scope=text.get("scope", ""),
            broken=text.get("broken", ""),
            reconnected_at=float(text["reconnected_at"]) if "reconnected_at" in text else None,
        )

    async def acquire_lease(self, company_id: str) -> Lease | None:
        """The refresh lease with a new fence, or None while another holder has it."""
        keys = [self._key(company_id, ":lease"), self._key(company_id, ":fence")]
        fence, _ = await _call(self._acquire(keys=keys, args=[self._lease_ms]))
        return Lease(int(fence)) if fence else None

    async def release_lease(self, company_id: str, lease: Lease) -> None:
        """Give the lease back if it is still this one's (a no-op after it expired)."""
        key = self._key(company_id, ":lease")
        await _call(self._release(keys=[key], args=[lease.fence]))

    async def renew_lease(self, company_id: str, lease: Lease) -> bool:
        """Give ``lease`` its full duration again; False when it expired (another replica may
        hold the lease now: the caller must stop)."""
        key = self._key(company_id, ":lease")
        return bool(await _call(self._renew(keys=[key], args=[lease.fence, self._lease_ms])))

    async def store_refreshed(
        self,
        company_id: str,
        lease: Lease,
        from_generation: int,
        grant: TokenGrant,
        now: float,
        *,
        reconnected: bool = False,
    ) -> int | None:
        """Store ``grant`` (the answer of refreshing generation ``from_generation``, or with
        ``reconnected`` of the code an automatic reconnect gave, which also records
        ``reconnected_at``); the new generation, or None when the store moved on (see the
        module docstring)."""
        fields = _fields(grant, now)
        if reconnected:
            fields += ["reconnected_at", repr(now)]
        args: list[EncodableT] = [lease.fence, from_generation, *fields]
        stored = await _call(self._store_refreshed(keys=[self._key(company_id)], args=args))
        return int(stored) or None

    async def install(self, company_id: str, grant: TokenGrant, now: float) -> int:
        """Store ``grant`` whatever is stored (a code exchange: install or reconnect) and clear
        ``broken``; the new generation."""
        keys = [self._key(company_id), self._key(company_id, ":fence")]
        return int(await _call(self._install(keys=keys, args=_fields(grant, now))))

    async def mark_broken(self, company_id: str, generation: int, reason: str) -> bool:
        """Mark the installation broken if it still holds ``generation``; whether it did."""
        args: list[EncodableT] = [generation, reason]
        return bool(await _call(self._mark_broken(keys=[self._key(company_id)], args=args)))

    async def add_reconnect_result(self, company_id: str, result: str) -> None:
        """Record how an ``oauth reconnect`` command ended, for a ``run`` replica to count
        (kept a week at most)."""
        key = self._key(company_id, ":reconnects")
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, result)
            pipe.expire(key, _RESULTS_TTL_S)
            await _call(pipe.execute())

    async def take_reconnect_results(self, company_id: str) -> list[str]:
        """The results ``add_reconnect_result`` recorded since the last call (by any replica):
        each one is returned to exactly one caller."""
        key = self._key(company_id, ":reconnects")
        return [_text(item) for item in await _call(self._take_all(keys=[key]))]

    async def read_location(self, company_id: str, location_id: str) -> LocationToken | None:
        """The location token shared by a replica, None when none (or it expired)."""
        text = await self._hash(self._key(company_id, f":loc:{location_id}"))
        if "access" not in text:
            return None
        return LocationToken(
            access_token=text["access"],
            expires_at=float(text["expires_at"]),
            obtained_at=float(text["obtained_at"]),
        )

    async def location_tokens(self, company_id: str) -> dict[str, LocationToken]:
        """Every location token shared for the installation, by location id (for status)."""
        prefix = self._key(company_id, ":loc:")
        found: dict[str, LocationToken] = {}
        try:
            keys = [_text(k) async for k in self._client.scan_iter(match=_glob(prefix) + "*")]
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        for key in sorted(keys):
            token = await self.read_location(company_id, key[len(prefix) :])
            if token is not None:
                found[key[len(prefix) :]] = token
        return found

    async def _hash(self, key: str) -> dict[str, str]:
        fields = await _call(self._client.hgetall(key))
        return {_text(k): _text(v) for k, v in fields.items()}

    async def store_location(
        self, company_id: str, location_id: str, token: LocationToken
    ) -> None:
        """Share a location token until it expires (it then disappears from Redis)."""
        key = self._key(company_id, f":loc:{location_id}")
        mapping: dict[EncodableT, EncodableT] = {
            "access": token.access_token,
            "expires_at": repr(token.expires_at),
            "obtained_at": repr(token.obtained_at),
        }
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            # relative to when it was minted, so the machines' clocks need not agree with Redis's
            lifetime_ms = round((token.expires_at - token.obtained_at) * 1000)
            pipe.pexpire(key, max(1, lifetime_ms))
            await _call(pipe.execute())


def _fields(grant: TokenGrant, now: float) -> list[str]:
    return [
        "access", grant.access_token,
        "refresh", grant.refresh_token,
        "expires_at", repr(now + grant.expires_in_s),
        "refreshed_at", repr(now),
        "scope", grant.scope,
        "user_id", grant.user_id or "",
    ]  # fmt: skip


def _glob(text: str) -> str:
    """``text`` with Redis's glob characters escaped (a company id is the operator's)."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _call(awaitable: Awaitable[_T]) -> _T:
    try:
        return await awaitable
    except (RedisError, OSError) as exc:
        raise _unavailable(exc) from None


def _unavailable(exc: Exception) -> TokenStoreError:
    return TokenStoreError(f"token store: Redis: {type(exc).__name__}: {exc}")

