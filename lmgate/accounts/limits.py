"""Limits (requests per minute, tokens per minute, budgets, models) of a key, and
of its user and team, which hold them alike ("the key" below is any of the three),
and the state several gateway processes share through Redis.

Requests per minute is a sliding 60-second window, so "rpm 10" means at most 10
in any minute. Tokens per minute counts the tokens of finished requests in the
current clock minute. The budget is checked against the key's running total in
the store, as this process last read or wrote it; with Redis, against the total
any process last wrote (without it, other processes' usage counts within
``store.key_cache_seconds``).

Budgets hold under concurrency: a request is admitted only while the key's total
plus what its requests in flight hold stays under the budget, and it holds its
estimate (prompt tokens and output cap, priced) until its record is written, the
estimate replaced by what it spent once it ends. So the key spends past its budget
by at most one admitted request's estimate, plus whatever requests without an
output cap produce beyond the default they were held at. A budget with a period
counts the running total of the current period only (``periods``): in Redis, each
period's total has a name of its own.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from lmgate.accounts.people import Holder
from lmgate.accounts.periods import bounds
from lmgate.accounts.store import KeyInfo, Spent
from lmgate.clock import SYSTEM, Clock
from lmgate.errors import GatewayError
from lmgate.ids import unique_hex
from lmgate.observe.dependencies import Dependency
from lmgate.routing.catalog import Catalog, Deployment

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("lmgate")
WINDOW = 60.0


def _limited(key: Holder, what: str, retry_after: float | None) -> GatewayError:
    return GatewayError(
        "rate_limit",
        f"{key.label} is over its {what}",
        code="key_limit_exceeded",
        retry_after=math.ceil(retry_after) if retry_after is not None else None,
    )


def over_budget(key: Holder, now: float) -> str | None:
    """The budget ``key`` has used up in its period, as this process knows its totals."""
    tokens, usd = key.current(now)
    if key.budget_tokens is not None and tokens >= key.budget_tokens:
        return "budget_tokens"
    if key.budget_usd is not None and usd >= key.budget_usd:
        return "budget_usd"
    return None


def key_state(key: KeyInfo, now: float | None = None) -> str:
    """active, revoked, expired, or exhausted (a budget used up)."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= (now or time.time()):
        return "expired"
    return "exhausted" if over_budget(key, now or time.time()) is not None else "active"


def _budget_exhausted(key: Holder, budget: str, now: float) -> GatewayError:
    what = f"{key.budget_tokens} tokens" if budget == "budget_tokens" else f"${key.budget_usd:g}"
    if key.budget_period == "total":
        return GatewayError(
            "rate_limit",
            f"{key.label} has used its budget of {what}",
            code="budget_exhausted",
        )
    end = bounds(key.budget_period, key.budget_reset_day, now)[1] or now
    resets = datetime.datetime.fromtimestamp(end, datetime.UTC).strftime("%Y-%m-%dT%H:%MZ")
    return GatewayError(
        "rate_limit",
        f"{key.label} has used its {key.budget_period} budget of {what}; it resets at {resets}",
        code="budget_exhausted",
        retry_after=math.ceil(end - now),
    )


def totals_member(key: Holder, now: float) -> str:
    """The key's running totals' name in Redis: its period's (a new one starts at 0)."""
    if key.budget_period == "total":
        return key.id
    return f"{key.id}@{int(bounds(key.budget_period, key.budget_reset_day, now)[0])}"


class Hold:
    """What one request holds of its key's budget: its estimate, then what it spent."""

    __slots__ = ("_held", "_limiter", "key_id", "tokens", "usd")

    def __init__(self, limiter: LocalLimiter, key_id: str, tokens: int, usd: float) -> None:
        self._limiter = limiter
        self.key_id, self.tokens, self.usd = key_id, tokens, usd
        self._held = True

    def settle(self, tokens: int, usd: float) -> None:
        """The request ended having spent this: held until its record is written."""
        if self._held:
            self._held = False
            self._limiter.hold(self.key_id, tokens - self.tokens, usd - self.usd)


class Holds:
    """A request's holds of its key's, user's and team's budgets, settled together."""

    __slots__ = ("_holds",)

    def __init__(self, holds: list[Hold]) -> None:
        self._holds = holds

    def settle(self, tokens: int, usd: float) -> None:
        for hold in self._holds:
            hold.settle(tokens, usd)


async def reserve_all(
    limiter: LocalLimiter, holders: list[Holder], tokens: int, usd: float
) -> Hold | Holds:
    """Hold the estimate on every budget the request counts against. When one refuses,
    or the request goes away between two (its client left), what the others took is
    given back: a hold nobody settles would count against the budget for good."""
    holds: list[Hold] = []
    try:
        for holder in holders:
            holds.append(await limiter.reserve(holder, tokens, usd))
    except BaseException:
        for hold in holds:
            hold.settle(0, 0.0)
        raise
    return holds[0] if len(holds) == 1 else Holds(holds)


class LocalLimiter:
    """Counters in this process: right for one gateway process."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self._clock = clock
        # Key id -> [tokens, USD] that its requests hold: estimates of those in flight,
        # and what finished ones spent until their records are written.
        self._held: dict[str, list[float]] = {}
        self._requests: dict[str, deque[float]] = {}
        self._minute_tokens: dict[str, tuple[int, int]] = {}  # key -> (minute, tokens)
        self.refused: dict[str, int] = {}  # requests refused, by limit (for the metrics)

    async def admit(self, key: Holder) -> str | None:
        """Raise the 429 of the first limit ``key`` is over; else count the request in
        its rpm window, and return what ``unadmit`` takes to take it out again."""
        now = self._clock.time()
        if (budget := over_budget(key, now)) is not None:
            raise self.refuse(budget, _budget_exhausted(key, budget, now))
        return await self._admit(key)

    async def unadmit(self, key: Holder, entry: str | None) -> None:
        """Take an admitted request out of ``key``'s rpm window: another holder (its
        user, its team) refused it, and a refused request spends no one's rpm."""
        if entry is None:
            return
        times = self._requests.get(key.id)
        if times is not None and float(entry) in times:
            times.remove(float(entry))

    async def reserve(self, key: Holder, tokens: int, usd: float) -> Hold:
        """Hold a request's estimate of ``key``'s budget; the 429 of a budget that what
        is spent and held already reaches."""
        held = self._held.get(key.id) or [0, 0.0]
        now = self._clock.time()
        used_tokens, used_usd = key.current(now)
        if key.budget_tokens is not None and used_tokens + held[0] >= key.budget_tokens:
            raise self.refuse("budget_tokens", _budget_exhausted(key, "budget_tokens", now))
        if key.budget_usd is not None and used_usd + held[1] >= key.budget_usd:
            raise self.refuse("budget_usd", _budget_exhausted(key, "budget_usd", now))
        self.hold(key.id, tokens, usd)
        return Hold(self, key.id, tokens, usd)

    def hold(self, key_id: str, tokens: float, usd: float) -> None:
        held = self._held.setdefault(key_id, [0, 0.0])
        held[0] += tokens
        held[1] += usd

    def written(self, spent: dict[str, Spent]) -> None:
        """Records just written: what they spent is in the keys' totals now."""
        for key_id, now in spent.items():
            held = self._held.get(key_id)
            if held is not None:
                held[0] -= now.tokens
                held[1] -= now.cost
                if held[0] <= 0 and held[1] <= 1e-12:
                    del self._held[key_id]

    def refuse(self, limit: str, error: GatewayError) -> GatewayError:
        self.refused[limit] = self.refused.get(limit, 0) + 1
        return error

    async def _admit(self, key: Holder) -> str | None:
        now = self._clock.time()
        if key.tpm is not None:
            minute, used = self._minute_tokens.get(key.id, (0, 0))
            if minute == int(now // WINDOW) and used >= key.tpm:
                what = f"limit of {key.tpm} tokens per minute"
                raise self.refuse("tpm", _limited(key, what, WINDOW - now % WINDOW))
        if key.rpm is not None:
            times = self._requests.setdefault(key.id, deque())
            while times and times[0] <= now - WINDOW:
                times.popleft()
            if len(times) >= key.rpm:
                what = f"limit of {key.rpm} requests per minute"
                raise self.refuse("rpm", _limited(key, what, times[0] + WINDOW - now))
            times.append(now)
            return repr(now)
        return None

    async def add_tokens(self, spent: dict[str, Spent]) -> None:
        """What each key spent in a batch just written, with its new running totals."""
        minute = int(self._clock.time() // WINDOW)
        for key_id, (tokens, *_) in spent.items():
            then, total = self._minute_tokens.get(key_id, (minute, 0))
            self._minute_tokens[key_id] = (minute, (total if then == minute else 0) + tokens)

    async def close(self) -> None:
        return None


# One round trip decides a request: the budgets (the running totals any process last
# wrote), tokens this minute, then the sliding request log.
_ADMIT = """
local now = tonumber(ARGV[1])
if ARGV[5] ~= ''
  and tonumber(redis.call('ZSCORE', KEYS[3], ARGV[6]) or '0') >= tonumber(ARGV[5]) then
  return {'budget_tokens', 0}
end
if ARGV[7] ~= ''
  and tonumber(redis.call('ZSCORE', KEYS[4], ARGV[6]) or '0') >= tonumber(ARGV[7]) then
  return {'budget_usd', 0}
end
if ARGV[3] ~= '' and tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then
  return {'tpm', 60000 - now % 60000}
end
if ARGV[2] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'rpm', tonumber(oldest[2]) + 60000 - now}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], 61000)
end
return {'ok', 0}
"""


# What the requests in flight of every process hold of a key's budget, checked against
# its total and added to in one step: each process keeps its holds in a hash of its
# own that expires when the process stops refreshing it (it died: its holds go).
_RESERVE = """
local held_tokens, held_usd = 0, 0
for _, holder in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local name = ARGV[6] .. 'held:' .. holder
  if redis.call('EXISTS', name) == 0 then
    redis.call('SREM', KEYS[3], holder)
  else
    held_tokens = held_tokens + tonumber(redis.call('HGET', name, 't:' .. ARGV[1]) or '0')
    held_usd = held_usd + tonumber(redis.call('HGET', name, 'u:' .. ARGV[1]) or '0')
  end
end
local used_tokens = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[11]) or '0')
used_tokens = math.max(used_tokens, tonumber(ARGV[9]))
local used_usd = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[11]) or '0')
used_usd = math.max(used_usd, tonumber(ARGV[10]))
if ARGV[2] ~= '' and used_tokens + held_tokens >= tonumber(ARGV[2]) then
  return 'budget_tokens'
end
if ARGV[3] ~= '' and used_usd + held_usd >= tonumber(ARGV[3]) then
  return 'budget_usd'
end
redis.call('HINCRBYFLOAT', KEYS[4], 't:' .. ARGV[1], ARGV[4])
redis.call('HINCRBYFLOAT', KEYS[4], 'u:' .. ARGV[1], ARGV[5])
redis.call('PEXPIRE', KEYS[4], ARGV[7])
redis.call('SADD', KEYS[3], ARGV[8])
return 'ok'
"""
_HELD_TTL_MS = 120_000  # a live process refreshes its holds with every change


class RedisLimiter(LocalLimiter):
    """Counters in Redis: one limit for every gateway process that shares it. While
    Redis does not answer, each process counts on its own (``fail_open``), or refuses
    the requests of keys with limits."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        clock: Clock = SYSTEM,
        fail_open: bool = True,
    ) -> None:
        from redis.exceptions import RedisError

        super().__init__(clock)
        self.redis = client
        self.backend = Dependency("redis", clock)
        self._fail_open = fail_open
        self._errors = (RedisError, OSError, TimeoutError)
        self.prefix = prefix
        self._script = client.register_script(_ADMIT)
        self._reserve = client.register_script(_RESERVE)
        self._holder = uuid.uuid4().hex
        self._holds = f"{prefix}held:{self._holder}"  # this process's holds
        self._pushes: set[asyncio.Task[None]] = set()
        self._totals = f"{prefix}used_tokens"  # sorted set: key id -> running total
        self._costs = f"{prefix}used_usd"  # the same, in money

    async def ping(self) -> bool:
        try:
            await self.redis.ping()
        except self._errors as error:
            self.backend.failed(error)
            return False
        self.backend.answered()
        return True

    def _unshared(self, error: BaseException | None) -> None:
        """Redis did not answer (``error``), or failed just before: go on alone, or refuse."""
        if error is not None:
            self.backend.failed(error, "key limits")
        if not self._fail_open:
            raise self.refuse(
                "unavailable",
                GatewayError(
                    "unavailable",
                    "key limits cannot be checked (Redis is unreachable); try again shortly",
                    code="limits_unavailable",
                    retry_after=5,
                ),
            )

    async def _admit(self, key: Holder) -> str | None:
        if (key.rpm, key.tpm, key.budget_tokens, key.budget_usd) == (None, None, None, None):
            return None
        if not self.backend.worth_trying():
            self._unshared(None)
            return await super()._admit(key)
        entry = unique_hex()  # its member in the key's rpm window
        try:
            verdict, wait_ms = await self._call_admit(key, entry)
        except self._errors as error:
            self._unshared(error)
            return await super()._admit(key)
        self.backend.answered()
        verdict = verdict.decode()
        if verdict in ("budget_tokens", "budget_usd"):
            raise self.refuse(verdict, _budget_exhausted(key, verdict, self._clock.time()))
        if verdict == "rpm":
            what = f"limit of {key.rpm} requests per minute"
            raise self.refuse("rpm", _limited(key, what, int(wait_ms) / 1000))
        if verdict == "tpm":
            what = f"limit of {key.tpm} tokens per minute"
            raise self.refuse("tpm", _limited(key, what, int(wait_ms) / 1000))
        return "redis:" + entry if key.rpm is not None else None

    async def unadmit(self, key: Holder, entry: str | None) -> None:
        if entry is None or not entry.startswith("redis:"):
            return await super().unadmit(key, entry)  # admitted here while Redis was down
        try:
            await self.redis.zrem(f"{self.prefix}rpm:{key.id}", entry.removeprefix("redis:"))
        except self._errors as error:  # the entry leaves the window within the minute
            self._unshared(error)
        return None

    async def _call_admit(self, key: Holder, entry: str) -> Any:
        now_ms = int(self._clock.time() * 1000)
        return await self._script(
            keys=[
                f"{self.prefix}rpm:{key.id}",
                self._tpm_key(key.id, now_ms / 1000),
                self._totals,
                self._costs,
            ],
            args=[
                now_ms,
                key.rpm or "",
                key.tpm or "",
                entry,
                key.budget_tokens if key.budget_tokens is not None else "",
                totals_member(key, now_ms / 1000),
                key.budget_usd if key.budget_usd is not None else "",
            ],
        )

    async def reserve(self, key: Holder, tokens: int, usd: float) -> Hold:
        if not self.backend.worth_trying():
            self._unshared(None)
            return await super().reserve(key, tokens, usd)
        try:
            verdict = await self._call_reserve(key, tokens, usd)
        except self._errors as error:
            self._unshared(error)
            return await super().reserve(key, tokens, usd)
        self.backend.answered()
        verdict = verdict.decode()
        if verdict in ("budget_tokens", "budget_usd"):
            raise self.refuse(verdict, _budget_exhausted(key, verdict, self._clock.time()))
        LocalLimiter.hold(self, key.id, tokens, usd)  # in Redis already
        return Hold(self, key.id, tokens, usd)

    async def _call_reserve(self, key: Holder, tokens: int, usd: float) -> Any:
        now = self._clock.time()
        used_tokens, used_usd = key.current(now)
        return await self._reserve(
            keys=[self._totals, self._costs, f"{self.prefix}holders", self._holds],
            args=[
                key.id,
                key.budget_tokens if key.budget_tokens is not None else "",
                key.budget_usd if key.budget_usd is not None else "",
                tokens,
                usd,
                self.prefix,
                _HELD_TTL_MS,
                self._holder,
                used_tokens,
                used_usd,
                totals_member(key, now),
            ],
        )

    def hold(self, key_id: str, tokens: float, usd: float) -> None:
        super().hold(key_id, tokens, usd)
        self._push(key_id, tokens, usd)

    def written(self, spent: dict[str, Spent]) -> None:
        mine = {key_id: now for key_id, now in spent.items() if key_id in self._held}
        super().written(spent)
        for key_id, now in mine.items():
            self._push(key_id, -now.tokens, -now.cost)

    def _push(self, key_id: str, tokens: float, usd: float) -> None:
        task = asyncio.get_running_loop().create_task(self._add_held(key_id, tokens, usd))
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    async def _add_held(self, key_id: str, tokens: float, usd: float) -> None:
        if not self.backend.worth_trying():
            return  # the holds this process had in Redis expire with their hash
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hincrbyfloat(self._holds, f"t:{key_id}", tokens)
                pipe.hincrbyfloat(self._holds, f"u:{key_id}", usd)
                pipe.pexpire(self._holds, _HELD_TTL_MS)
                await pipe.execute()
        except self._errors as error:
            self.backend.failed(error, "budget holds")
        else:
            self.backend.answered()

    async def add_tokens(self, spent: dict[str, Spent]) -> None:
        await super().add_tokens(spent)  # counted here too, for while Redis is away
        if not self.backend.worth_trying():
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_id, now in spent.items():
                    name = self._tpm_key(key_id, self._clock.time())
                    pipe.incrby(name, now.tokens)
                    pipe.expire(name, 120)
                    # Totals only grow in a period; batches may arrive out of order (GT).
                    member = f"{key_id}@{int(now.period_start)}" if now.period_start else key_id
                    pipe.zadd(self._totals, {member: now.total_tokens}, gt=True)
                    if now.cost:
                        pipe.zadd(self._costs, {member: now.total_cost}, gt=True)
                await pipe.execute()
        except self._errors as error:
            self.backend.failed(error, "token counts")
        else:
            self.backend.answered()

    def _tpm_key(self, key_id: str, now: float) -> str:
        return f"{self.prefix}tpm:{key_id}:{int(now // WINDOW)}"

    async def close(self) -> None:
        if self._pushes:
            await asyncio.gather(*self._pushes, return_exceptions=True)
        try:
            if self.backend.up:
                await self.redis.delete(self._holds)  # this process holds nothing any more
        except self._errors as error:  # Redis away: the hash expires on its own
            log.warning("could not release budget holds in Redis: %s", error)
        await self.redis.aclose()


class CooldownBus:
    """Shares the router's circuit breakers: a deployment that opens its circuit in
    one process is skipped by every process, for as long. Published on a Redis
    channel (no cost on the request path), and kept as an expiring key so that a
    process starting later learns of it too."""

    def __init__(
        self, client: aioredis.Redis, listener: aioredis.Redis, prefix: str, catalog: Catalog
    ) -> None:
        self.redis = client
        self.listener = listener  # without the command timeout: it waits for messages
        self.channel = f"{prefix}cooldown"
        self.prefix = prefix
        self.origin = uuid.uuid4().hex
        self.catalog = catalog
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        deployments = [d for entry in self.catalog.entries for d in entry.deployments]
        names = [f"{self.prefix}open:{d.key}" for d in deployments]
        try:
            ttls = await self._ttls(names)
        except Exception as error:  # Redis down: each process has its own breakers
            log.warning("could not read shared cooldowns from Redis: %s", error)
            ttls = [0] * len(names)
        for deployment, ttl in zip(deployments, ttls, strict=True):
            if ttl > 0:
                deployment.health.open_for(ttl / 1000)
        self._listener = asyncio.create_task(self._listen())

    async def _ttls(self, names: list[str]) -> list[int]:
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.pttl(name)
            return [int(ttl) for ttl in await pipe.execute()]

    def opened(self, deployment: Deployment) -> None:
        """Called by the router when a deployment's circuit opens here."""
        seconds = deployment.health.cooldown_seconds
        task = asyncio.ensure_future(self._publish(deployment.key, seconds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, key: str, seconds: float) -> None:
        message = orjson.dumps({"key": key, "seconds": seconds, "origin": self.origin})
        try:
            await self.redis.set(f"{self.prefix}open:{key}", 1, px=int(seconds * 1000))
            await self.redis.publish(self.channel, message)
        except Exception as error:  # Redis down: each process still has its own breaker
            log.warning("could not share a cooldown through Redis: %s", error)

    async def _listen(self) -> None:
        pubsub = self.listener.pubsub()
        lost = False
        while True:
            try:
                await pubsub.subscribe(self.channel)
                if lost:
                    log.warning("cooldown channel of Redis subscribed again")
                    lost = False
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = orjson.loads(message["data"])
                    deployment = self.catalog.deployment(str(data.get("key")))
                    if deployment is not None and data.get("origin") != self.origin:
                        deployment.health.open_for(float(data["seconds"]))
            except asyncio.CancelledError:
                await pubsub.aclose()
                await self.listener.aclose()
                raise
            except Exception as error:
                if not lost:
                    log.warning("cooldown channel of Redis lost (%s); reconnecting", error)
                    lost = True
                await asyncio.sleep(1)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
