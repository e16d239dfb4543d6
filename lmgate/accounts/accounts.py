"""Who may call, how much, and what they used: keys, per-key limits and usage
records, wired to the store and (when configured) to Redis."""

from __future__ import annotations

import logging
import time

from lmgate.accounts.keys import Caller, KeyRing
from lmgate.accounts.limits import CooldownBus, LocalLimiter, RedisLimiter
from lmgate.accounts.store import Spent, Store
from lmgate.accounts.usage import Meter, RowSink, UsageRecorder
from lmgate.clock import SYSTEM, Clock
from lmgate.config import Config
from lmgate.errors import GatewayError
from lmgate.routing.catalog import Catalog, ModelEntry
from lmgate.routing.router import Router

log = logging.getLogger("lmgate")


class Accounts:
    def __init__(
        self, config: Config, catalog: Catalog, router: Router, clock: Clock = SYSTEM
    ) -> None:
        url = config.store.resolved_url(config.path)
        self.store = Store(url) if url else None
        self.keys = KeyRing(config.server.api_keys, self.store, config.store.key_cache_seconds)
        self.limiter: LocalLimiter = LocalLimiter(clock)
        self.bus: CooldownBus | None = None
        if config.redis.url:
            import redis.asyncio as aioredis  # only a config with Redis loads it

            client = aioredis.Redis.from_url(config.redis.url)
            self.limiter = RedisLimiter(client, config.redis.prefix, clock)
            self.bus = CooldownBus(client, config.redis.prefix, catalog)
            router.on_cooldown = self.bus.opened
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

    async def start(self) -> None:
        if self.store is not None:
            version = await self.store.migrate()
            log.info("store %s at schema version %d", _shown(self.store.url), version)
        await self.keys.start()
        if self.recorder is not None:
            await self.recorder.start()
        if self.bus is not None:
            await self.bus.start()

    async def stop(self) -> None:
        """After the last request: write every queued record, then let go."""
        if self.bus is not None:
            await self.bus.close()
        if self.recorder is not None:
            await self.recorder.stop()
        await self.limiter.close()
        if self.store is not None:
            await self.store.close()

    async def identify(self, secret: str) -> Caller:
        return await self.keys.identify(secret)

    async def admit(self, caller: Caller, chain: list[ModelEntry]) -> list[ModelEntry]:
        """The models of ``chain`` this caller may use, after its limits allowed the
        request; 403 when it may use none of them, 429 when over a limit."""
        key = caller.key
        if key is None:
            return chain
        if key.models is not None:
            allowed = [entry for entry in chain if entry.id in key.models]
            if not allowed:
                raise self.limiter.refuse(
                    "models",
                    GatewayError(
                        "permission",
                        f"API key {key.name!r} may not use model {chain[0].id}",
                        param="model",
                        code="model_not_allowed",
                    ),
                )
            chain = allowed
        await self.limiter.admit(key)
        return chain

    def meter(self, request_id: str, protocol: str) -> Meter | None:
        sink = self.sink
        return Meter(sink, request_id, protocol) if sink is not None else None

    async def _tokens_written(self, spent: dict[str, Spent]) -> None:
        self.keys.spent(spent)
        await self.limiter.add_tokens(spent)


def _shown(url: str) -> str:
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
