"""Who may call, how much, and what they used: keys, per-key limits and usage
records, wired to the store and (when configured) to Redis."""

from __future__ import annotations

import asyncio
import logging
import time

from lmgate.accounts.keys import Caller, KeyRing
from lmgate.accounts.limits import CooldownBus, LocalLimiter, RedisLimiter, reserve_all
from lmgate.accounts.people import Account, Holder
from lmgate.accounts.store import Spent, Store
from lmgate.accounts.usage import Meter, RowSink, UsageRecorder
from lmgate.canonical import ChatRequest
from lmgate.clock import SYSTEM, Clock
from lmgate.config import Config
from lmgate.errors import GatewayError
from lmgate.observe import tokens
from lmgate.observe.dependencies import describe
from lmgate.routing.affinity import SharedAffinity
from lmgate.routing.catalog import Catalog, ModelEntry
from lmgate.routing.router import Router

log = logging.getLogger("lmgate")


class Accounts:
    def __init__(
        self, config: Config, catalog: Catalog, router: Router, clock: Clock = SYSTEM
    ) -> None:
        self._lines = config.logging.request_lines
        url = config.store.resolved_url(config.path)
        self.store = Store(url, config.store.timeout, clock) if url else None
        self.keys = KeyRing(config.server.api_keys, self.store, config.store.key_cache_seconds)
        self.limiter: LocalLimiter = LocalLimiter(clock)
        self.bus: CooldownBus | None = None
        if config.redis.url:
            import redis.asyncio as aioredis  # only a config with Redis loads it
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            timeout = config.redis.timeout
            client = aioredis.Redis.from_url(
                config.redis.url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),  # once: a connection Redis closed meanwhile
            )
            fail_open = config.limits.on_backend_error == "open"
            self.limiter = RedisLimiter(client, config.redis.prefix, clock, fail_open)
            listener = aioredis.Redis.from_url(config.redis.url, socket_connect_timeout=timeout)
            self.bus = CooldownBus(client, listener, config.redis.prefix, catalog)
            router.on_cooldown = self.bus.opened
            if router.affinity is not None:  # sessions' deployments, for every process
                backend = self.limiter.backend
                router.affinity.shared = SharedAffinity(client, config.redis.prefix, backend)
        self.recorder: UsageRecorder | None = None
        # Where finished requests' rows go: the recorder, and the metrics when on (set
        # by the gateway). None: no request needs a meter.
        self.sink: RowSink | None = None
        if self.store is not None:
            self.recorder = UsageRecorder(
                self.store,
                config.store.queue_size,
                config.store.batch_size,
                config.store.flush_interval,
                on_tokens=self._tokens_written,
            )
            self.sink = self.recorder
        self.store_ready = False
        self._opening: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the store: at once, or (a database server that is not up yet) in the
        background, retrying with backoff; until then ``store_ready`` is False, the
        requests of managed keys get 503s and usage records wait in their queue."""
        if self.bus is not None:
            await self.bus.start()
        if self.store is None:
            await self.keys.start()
            self.store_ready = True
        elif self.store.url.startswith("sqlite"):
            await self._open_store()  # a local file: a failure is no outage, but a fault
        else:
            try:
                await self._open_store()
            except Exception as error:
                self._opening = asyncio.create_task(self._open_store_when_up(self.store, error))

    async def _open_store(self) -> None:
        assert self.store is not None
        version = await self.store.migrate()
        log.info("store %s at schema version %d", shown_url(self.store.url), version)
        await self.keys.start()
        if self.recorder is not None:
            await self.recorder.start()
        self.store_ready = True

    async def _open_store_when_up(self, store: Store, error: Exception) -> None:
        delay = 0.5
        while True:
            log.warning(
                "store %s unreachable at start (%s); trying again in %gs",
                shown_url(store.url),
                describe(error),
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15)
            try:
                await self._open_store()
            except Exception as next_error:
                error = next_error
            else:
                return

    async def stop(self) -> None:
        """After the last request: write every queued record, then let go."""
        if self._opening is not None:
            self._opening.cancel()
            await asyncio.gather(self._opening, return_exceptions=True)
        if self.bus is not None:
            await self.bus.close()
        if self.recorder is not None:
            await self.recorder.stop()
        await self.limiter.close()
        if self.store is not None:
            await self.store.close()

    async def identify(self, secret: str) -> Caller:
        return await self.keys.identify(secret)

    async def admit(
        self, caller: Caller, chain: list[ModelEntry], chat: ChatRequest, meter: Meter | None
    ) -> list[ModelEntry]:
        """The models of ``chain`` this caller may use, after its limits allowed the
        request; 403 when it may use none of them, 429 when over a limit. A key with a
        budget holds the request's estimate of it (settled by ``meter`` at the end)."""
        key = caller.key
        if key is None:
            return chain
        # The key's limits, then its user's and their team's: every one must pass.
        holders: list[Holder] = [key]
        if key.user_id is not None or key.team_id is not None:
            holders += await self.keys.owners(key)
            if meter is not None:
                meter.owners(key.user_id, _team_of(holders))
        for holder in holders:
            if holder.models is not None:
                allowed = [entry for entry in chain if entry.id in holder.models]
                if not allowed:
                    raise self.limiter.refuse(
                        "models",
                        GatewayError(
                            "permission",
                            f"{holder.label} may not use model {chain[0].id}",
                            param="model",
                            code="model_not_allowed",
                        ),
                    )
                chain = allowed
        admitted: list[tuple[Holder, str | None]] = []
        try:
            for holder in holders:
                admitted.append((holder, await self.limiter.admit(holder)))
            budgeted = [
                h for h in holders if h.budget_tokens is not None or h.budget_usd is not None
            ]
            if budgeted:
                tokens, usd = await _estimate(chat, chain)
                held = await reserve_all(self.limiter, budgeted, tokens, usd)
                if meter is not None:
                    meter.hold = held
                else:
                    held.settle(0, 0.0)
        except GatewayError:
            for holder, entry in admitted:  # refused by a later limit: spends no one's rpm
                await self.limiter.unadmit(holder, entry)
            raise
        return chain

    def meter(self, request_id: str, protocol: str) -> Meter | None:
        sink = self.sink
        return Meter(sink, request_id, protocol, self._lines) if sink is not None else None

    async def _tokens_written(self, spent: dict[str, Spent]) -> None:
        self.keys.spent(spent)
        self.limiter.written(spent)
        await self.limiter.add_tokens(spent)


def _team_of(holders: list[Holder]) -> str | None:
    return next((h.id for h in holders if isinstance(h, Account) and h.kind == "team"), None)


# The output a request is held at when it sets no cap (max_tokens) and its model has none.
DEFAULT_OUTPUT_HOLD = 4096


async def _estimate(chat: ChatRequest, chain: list[ModelEntry]) -> tuple[int, float]:
    """The most a request may spend: its prompt, and its output cap (the request's, else
    the model's, else ``DEFAULT_OUTPUT_HOLD``; none for embeddings), at the dearest of its
    deployments."""
    prompt = await tokens.count_request_async(chat)
    caps = [entry.max_output_tokens for entry in chain if entry.max_output_tokens]
    output = chat.max_tokens or (max(caps) if caps else DEFAULT_OUTPUT_HOLD)
    if chat.embed is not None:
        output = 0  # embeddings produce no tokens
    prices = [d.price for entry in chain for d in entry.deployments if d.price is not None]
    usd = max((price.cost(prompt, output, 0, 0) for price in prices), default=0.0)
    return prompt + output, usd


def shown_url(url: str) -> str:
    """A store URL without its password."""
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}://{rest}"


def parse_since(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``7d`` → the unix time that long ago."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return time.time() - float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"{text!r}: expected a duration such as 30m, 1h or 7d") from None
