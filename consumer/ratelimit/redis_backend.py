"""The rate limiter's shared backend: one location's budget in Redis, for every instance.

Same model as ``consumer.ratelimit.budget.LocationBudget`` (read that docstring first), executed
atomically by Lua scripts with Redis's own clock (``TIME``), so N instances together stay
inside one location's budget whatever their clocks say. Per location::

    {prefix}{<location>}     hash: tat (GCRA), pause (429 pause until), dr / dreset / dblock
                             (daily remaining, local period end, exhausted until), smax /
                             sint / dlimit (limits the server announced), seq (phantom ids)
    {prefix}{<location>}:w   sorted set, the window: member per request, score = when its
                             slot frees (in flight: grant + interval + lease; answered:
                             answer + interval; phantom: seen + interval)

The lease frees the slots of an instance that dies with requests in flight.

Outage: any Redis error switches this instance to a ``LocalBackend`` holding
``budget.share(expected_instances)`` (logged once at WARNING, ``fallback_active`` true); a
background task pings every ``reconnect_interval_s`` and switches back (logged once).
Nothing waits on Redis while it is down, and nothing is dropped. Releases and observations
go to Redis in batches from one background task, so ``release`` / ``observe`` never block.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import uuid
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from consumer.ratelimit.budget import (
    Acquired,
    Budget,
    Decision,
    Exhausted,
    LimiterState,
    RateSignal,
    Wait,
)
from consumer.ratelimit.limiter import LocalBackend

__all__ = ["RedisBackend", "connect"]

logger = logging.getLogger(__name__)

# Unreachable, timed out, refused, loading, or a failing script: all mean "decide locally".
_REDIS_DOWN = (RedisError, OSError)

# ARGV[1..8] is the configuration every script shares; script arguments follow.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cfg_max, cfg_int, cfg_sus = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cfg_daily, period, recheck = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease, poll = tonumber(ARGV[7]), tonumber(ARGV[8])
local h = redis.call('HMGET', KEYS[1], 'tat', 'pause', 'dr', 'dreset', 'dblock',
                     'smax', 'sint', 'dlimit')
local tat, pause = tonumber(h[1]) or 0, tonumber(h[2]) or 0
local dreset, dblock = tonumber(h[4]), tonumber(h[5])
local smax, sint, dlimit = tonumber(h[6]), tonumber(h[7]), tonumber(h[8])
local max, int, sustained, emission, daily_cap
local function limits()
  max = cfg_max
  if smax and smax < max then max = smax end
  int = cfg_int
  if sint and sint > int then int = sint end
  sustained = cfg_sus * max / cfg_max
  emission = int / sustained
  daily_cap = cfg_daily
  if dlimit and dlimit < daily_cap then daily_cap = dlimit end
end
limits()
local dr = tonumber(h[3]) or daily_cap
local ttl = math.ceil(period + recheck + int)
"""

# ARGV[9]: member. Returns {code, ms, window remaining, daily remaining};
# code 0 granted, 1 wait ms, 2 daily budget spent for ms.
_ACQUIRE = (
    _PRELUDE
    + """
if dr <= 0 then
  if not dblock then
    dblock = now + recheck
    if dreset then dblock = math.min(dblock, math.max(now, dreset)) end
    redis.call('HSET', KEYS[1], 'dblock', dblock)
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  if now < dblock then return {2, math.ceil(dblock - now), 0, 0} end
  if dreset and now >= dreset then
    dr = daily_cap
    dreset = nil
    redis.call('HDEL', KEYS[1], 'dreset')
  else
    dr = 1  -- one probe; its answer tells the server's count
  end
  redis.call('HSET', KEYS[1], 'dr', dr)
  redis.call('HDEL', KEYS[1], 'dblock')
end
if now < pause then return {1, math.ceil(pause - now), 0, dr} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local count = redis.call('ZCARD', KEYS[2])
local excess = count - max
if excess >= 0 then
  local at = tonumber(redis.call('ZRANGE', KEYS[2], excess, excess, 'WITHSCORES')[2])
  if at > now + int then return {1, poll, 0, dr} end  -- unanswered: any instance may answer
  return {1, math.ceil(at - now), 0, dr}
end
local allow_at = tat - (sustained - 1) * emission
if now < allow_at then return {1, math.ceil(allow_at - now), max - count, dr} end
tat = math.max(tat, now) + emission
dr = dr - 1
if not dreset then dreset = now + period end
redis.call('ZADD', KEYS[2], now + int + lease, ARGV[9])
redis.call('HSET', KEYS[1], 'tat', tat, 'dr', dr, 'dreset', dreset)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], math.ceil(int + lease))
return {0, 0, max - count - 1, dr}
"""
)

# ARGV[9]: member, ARGV[10]: '1' answered / '0' never sent (give slot, pace, daily unit back).
_RELEASE = (
    _PRELUDE
    + """
if ARGV[10] == '1' then
  redis.call('ZADD', KEYS[2], 'XX', now + int, ARGV[9])
elseif redis.call('ZREM', KEYS[2], ARGV[9]) == 1 then
  redis.call('HSET', KEYS[1], 'tat', tat - emission, 'dr', dr + 1)
end
return 0
"""
)

# ARGV[9..16]: status, retry-after ms, max, interval ms, remaining, daily remaining,
# daily limit ('' when absent), pause multiplier (1 + jitter).
_OBSERVE = (
    _PRELUDE
    + """
local function arg(i) if ARGV[i] == '' then return nil end return tonumber(ARGV[i]) end
local status, retry, hmax, hint = arg(9), arg(10), arg(11), arg(12)
local rem, drem, dlim, jit = arg(13), arg(14), arg(15), arg(16)
if hmax and hmax > 0 then smax = hmax; redis.call('HSET', KEYS[1], 'smax', hmax) end
if hint and hint > 0 then sint = hint; redis.call('HSET', KEYS[1], 'sint', hint) end
if dlim and dlim > 0 then dlimit = dlim; redis.call('HSET', KEYS[1], 'dlimit', dlim) end
limits()
if rem then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local unknown = (hmax or max) - rem - redis.call('ZCARD', KEYS[2])
  if unknown > 0 then  -- requests the server counted and no instance knows of
    local seq = redis.call('HINCRBY', KEYS[1], 'seq', unknown)
    for i = 1, unknown do redis.call('ZADD', KEYS[2], now + int, 'p' .. (seq - i)) end
    redis.call('PEXPIRE', KEYS[2], math.ceil(int + lease))
  end
end
if drem then
  local in_flight = redis.call('ZCOUNT', KEYS[2], '(' .. (now + int), '+inf')
  redis.call('HSET', KEYS[1], 'dr', math.max(0, drem - math.max(0, in_flight - 1)))
  if drem > 0 then redis.call('HDEL', KEYS[1], 'dblock') end
end
if status == 429 and drem ~= 0 then
  local until_ = now + (retry or hint or int) * jit
  if until_ > pause then redis.call('HSET', KEYS[1], 'pause', until_) end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 0
"""
)


@dataclass(slots=True)
class _Mirror:
    """What this instance last learnt of a location from Redis (for snapshots), and its own
    view of a 429 pause (so its waiters stop at once, before Redis is asked again)."""

    remaining: int
    daily_remaining: int
    in_flight: int = 0
    paused_until: float = -math.inf
    exhausted_until: float | None = None


def _opt(value: float | None) -> str:
    return "" if value is None else str(value)


def connect(url: str, *, timeout_s: float = 0.5, max_connections: int = 32) -> Redis:
    """A lazily connecting client of ``url`` (``redis://[:password@]host:port/db``) whose
    commands fail fast: no client-side retries, every wait bounded by ``timeout_s`` (a busy
    pool included). Shared by the rate limiter and the OAuth token store
    (``consumer.state.token_store``)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis(connection_pool=pool)


class RedisBackend:
    """``LimiterBackend`` whose budgets live in Redis and are shared by every instance.

    ``try_acquire`` costs one script round trip (none while this instance knows the location
    is paused); ``release`` / ``observe`` are queued and sent in pipelined batches. Create
    with ``from_url``; ``aclose`` when done. Attributes for metrics: ``fallback_active``,
    ``fallback_transitions``, ``redis_errors``."""

    def __init__(
        self,
        client: Redis,
        budget: Budget,
        *,
        expected_instances: int = 3,
        key_prefix: str = "ghl-consumer:rl:",
        lease_s: float = 30.0,
        poll_s: float = 0.02,
        reconnect_interval_s: float = 5.0,
        max_concurrent_calls: int = 30,
        owns_client: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        # Fair queueing for connections here, so a busy pool is never mistaken for an outage;
        # keep it below the pool's size (batches and reconnect pings use connections too).
        self._calls = asyncio.Semaphore(max_concurrent_calls)
        self._owns_client = owns_client
        self._budget = budget
        self._rng = rng or random.Random()
        self._expected_instances = expected_instances
        self._fallback = LocalBackend(budget.share(expected_instances), rng=self._rng)
        self._prefix = key_prefix
        self._reconnect_interval_s = reconnect_interval_s
        self._config = [
            budget.burst_max,
            round(budget.interval_s * 1000),
            budget.sustained_per_interval,
            budget.daily,
            round(budget.daily_period_s * 1000),
            round(budget.daily_recheck_s * 1000),
            round(lease_s * 1000),
            max(1, round(poll_s * 1000)),
        ]
        self._acquire_script = client.register_script(_ACQUIRE)
        self._release_script = client.register_script(_RELEASE)
        self._observe_script = client.register_script(_OBSERVE)
        self._instance = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self._mirrors: dict[str, _Mirror] = {}
        self._keys: dict[str, list[str]] = {}
        self._ops: list[tuple[Any, list[str], list[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self.fallback_active = False
        self.fallback_transitions = 0
        self.redis_errors = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        budget: Budget,
        *,
        timeout_s: float = 0.5,
        max_connections: int = 32,
        **kwargs: Any,
    ) -> RedisBackend:
        """Connect lazily to ``url`` (``connect``). Commands fail fast: a failure is the cue
        to fall back, not to wait."""
        kwargs.setdefault("max_concurrent_calls", max(1, max_connections - 2))
        client = connect(url, timeout_s=timeout_s, max_connections=max_connections)
        return cls(client, budget, owns_client=True, **kwargs)

    def _location_keys(self, location_id: str) -> list[str]:
        keys = self._keys.get(location_id)
        if keys is None:
            # {hash tag}: both keys of a location land on one Redis Cluster slot.
            base = f"{self._prefix}{{{location_id}}}"
            keys = self._keys[location_id] = [base, base + ":w"]
        return keys

    def _mirror(self, location_id: str) -> _Mirror:
        mirror = self._mirrors.get(location_id)
        if mirror is None:
            b = self._budget
            mirror = self._mirrors[location_id] = _Mirror(b.burst_max, b.daily)
        return mirror

    async def try_acquire(self, location_id: str, now: float) -> Decision:
        if self.fallback_active:
            return await self._fallback.try_acquire(location_id, now)
        mirror = self._mirror(location_id)
        if now < mirror.paused_until:
            return Wait(mirror.paused_until - now)
        member = f"{self._instance}:{next(self._ids)}"
        keys = self._location_keys(location_id)
        try:
            async with self._calls:
                code, ms, remaining, daily = await self._acquire_script(
                    keys=keys, args=[*self._config, member]
                )
        except asyncio.CancelledError:
            # The script may have run: hand the slot back (a no-op if it did not).
            self._enqueue(self._release_script, keys, [*self._config, member, "0"])
            raise
        except _REDIS_DOWN as exc:
            self._enter_fallback(exc)
            return await self._fallback.try_acquire(location_id, now)
        mirror.remaining, mirror.daily_remaining = int(remaining), int(daily)
        if code == 0:
            mirror.in_flight += 1
            mirror.exhausted_until = None
            return Acquired(member)
        if code == 1:
            return Wait(ms / 1000)
        mirror.exhausted_until = now + ms / 1000
        return Exhausted(mirror.exhausted_until)

    def release(self, location_id: str, token: str | None, now: float, *, sent: bool) -> None:
        if token is None:  # granted by the fallback
            self._fallback.release(location_id, None, now, sent=sent)
            return
        self._mirror(location_id).in_flight -= 1
        args = [*self._config, token, "1" if sent else "0"]
        self._enqueue(self._release_script, self._location_keys(location_id), args)

    def observe(self, location_id: str, signal: RateSignal, now: float) -> None:
        # The fallback learns too, so a switch to it starts from what the server said.
        self._fallback.observe(location_id, signal, now)
        jitter = 1 + self._budget.pause_jitter * self._rng.random()
        if signal.status == 429 and signal.daily_remaining != 0:
            delay = signal.retry_after_s
            if delay is None:
                delay = signal.interval_s or self._budget.interval_s
            mirror = self._mirror(location_id)
            mirror.paused_until = max(mirror.paused_until, now + delay * jitter)
        args = [
            *self._config,
            signal.status,
            _opt(None if signal.retry_after_s is None else round(signal.retry_after_s * 1000)),
            _opt(signal.max),
            _opt(None if signal.interval_s is None else round(signal.interval_s * 1000)),
            _opt(signal.remaining),
            _opt(signal.daily_remaining),
            _opt(signal.daily_limit),
            jitter,
        ]
        self._enqueue(self._observe_script, self._location_keys(location_id), args)

    def state(self, location_id: str, now: float) -> LimiterState:
        if self.fallback_active:
            return replace(self._fallback.state(location_id, now), fallback_active=True)
        m = self._mirror(location_id)
        return LimiterState.at(
            now,
            location_id=location_id,
            remaining=m.remaining,
            in_flight=m.in_flight,
            paused_until=m.paused_until,
            daily_remaining=m.daily_remaining,
            exhausted_until=m.exhausted_until,
        )

    def _enqueue(self, script: Any, keys: list[str], args: list[Any]) -> None:
        self._ops.append((script, keys, args))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._ops:
            ops, self._ops = self._ops, []
            if self.fallback_active:
                continue  # Redis is down: the slots free themselves when their leases end
            async with self._client.pipeline(transaction=False) as pipe:  # reset on any exit
                for script, keys, args in ops:
                    await script(keys=keys, args=args, client=pipe)
                try:
                    await pipe.execute()
                except _REDIS_DOWN as exc:
                    self._enter_fallback(exc)

    def _enter_fallback(self, exc: BaseException) -> None:
        self.redis_errors += 1
        if self.fallback_active:
            return
        self.fallback_active = True
        self.fallback_transitions += 1
        logger.warning(
            "rate limiter: Redis unavailable (%s: %s); limiting locally at 1/%d of each "
            "location's budget until it answers again",
            type(exc).__name__,
            exc,
            self._expected_instances,
            extra={"event": "ratelimit_fallback", "expected_instances": self._expected_instances},
        )
        self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(self._reconnect_interval_s)
            try:
                await self._client.ping()
                # The pool's connections from before the outage are dead: each would fail once
                # and switch back to the fallback. Nothing else uses the pool in fallback.
                await self._client.connection_pool.disconnect()
            except _REDIS_DOWN:
                self.redis_errors += 1
                continue
            self.fallback_active = False
            logger.warning(
                "rate limiter: Redis answers again; location budgets are shared again",
                extra={"event": "ratelimit_fallback_recovered"},
            )
            return

    async def aclose(self) -> None:
        """Stop reconnecting, send queued releases (bounded), close an owned client."""
        if self._reconnector is not None:
            self._reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnector
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._flusher), timeout=2.0)
        if self._owns_client:
            await self._client.aclose()
