"""Everything a running gateway holds (providers, catalog, router, accounts, metrics),
built from the config; its start, and its graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from lmgate.accounts.accounts import Accounts
from lmgate.accounts.conversations import Conversations
from lmgate.accounts.limits import RedisLimiter
from lmgate.accounts.request_log import RequestLog
from lmgate.clock import SYSTEM, Clock
from lmgate.config import Config, ConfigError, data_dir
from lmgate.errors import Redactor
from lmgate.frontends.sealing import Sealer
from lmgate.media.fetch import ImageFetcher
from lmgate.observe import tokens
from lmgate.observe.dependencies import Dependency
from lmgate.observe.metrics import MeterSink, Metrics
from lmgate.providers import build_provider
from lmgate.routing.catalog import Catalog
from lmgate.routing.discovery import ModelDiscovery
from lmgate.routing.router import Router
from lmgate.web.admin import Admin
from lmgate.web.pipeline import Pipeline

if TYPE_CHECKING:
    from lmgate.observe.tracing import Tracing

log = logging.getLogger("lmgate")

# Every line these write loses the config's secrets (and keys sent in a query string).
_REDACTED_LOGGERS = ("lmgate", "uvicorn.access", "uvicorn.error")


class Gateway:
    """Everything a running gateway holds: providers, catalog, router, client keys."""

    def __init__(self, config: Config, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.providers = {
            name: build_provider(name, raw, clock) for name, raw in config.providers.items()
        }
        self.catalog = Catalog.from_config(config, self.providers, clock)
        self.discovery = ModelDiscovery(self.catalog, self.providers)
        limits = config.media
        self.fetcher = ImageFetcher(
            int(limits.max_image_mb * 2**20),
            limits.fetch_timeout,
            limits.allow_private_urls,
            int(limits.max_request_mb * 2**20),
            int(limits.max_fetching_mb * 2**20),
        )
        self.redactor = Redactor(self._secrets)
        self.router = Router(config.routing, self.fetcher, redactor=self.redactor, clock=clock)
        self.accounts = Accounts(config, self.catalog, self.router, clock)
        self.admin = Admin(config.server.admin_key, self.accounts, self.catalog, self.router)
        self.metrics: Metrics | None = None
        if config.metrics.enabled:
            self.metrics = Metrics(
                self.catalog,
                self.accounts.recorder,
                self.router,
                self.accounts.limiter,
                self.fetcher,
                config.metrics.per_key_labels,
                self._dependencies(),
            )
            self.accounts.sink = MeterSink(self.metrics, self.accounts.recorder)
        self.tracing: Tracing | None = None
        if config.otel.enabled:
            from lmgate.observe.tracing import Tracing

            self.tracing = Tracing(config.otel)
            if self.accounts.sink is None:  # a meter drives each request's span
                self.accounts.sink = MeterSink(None, None)
        self.request_log: RequestLog | None = None
        if config.request_log.enabled:
            if self.accounts.store is None:
                raise ConfigError("request_log.enabled needs a store (store.url is none)")
            self.request_log = RequestLog(self.accounts.store, config.request_log, self.redactor)
        responses = config.responses
        self.conversations = Conversations(
            self.accounts.store,
            responses.retention_days,
            max_stored_mb_per_key=responses.max_stored_mb_per_key,
        )
        self.pipeline = Pipeline(
            config,
            self.catalog,
            self.router,
            self.accounts,
            self.conversations,
            functools.cache(self._sealer),  # made when first needed
            self.request_log,
            self.tracing,
        )
        self.ready = False
        self.draining = False
        self._cut: asyncio.TimerHandle | None = None
        self._probe: asyncio.Future[dict[str, str]] | None = None
        self._probed_at = 0.0

    def _dependencies(self) -> list[Dependency]:
        accounts = self.accounts
        found = [accounts.store.health] if accounts.store is not None else []
        if isinstance(accounts.limiter, RedisLimiter):
            found.append(accounts.limiter.backend)
        return found

    def _sealer(self) -> Sealer:
        path = self.config.path
        directory = path.resolve().parent if path is not None else data_dir()
        return Sealer.from_config(self.config.responses.secret, directory)

    def _secrets(self) -> list[str]:
        server = self.config.server
        keys = [*server.api_keys, *([server.admin_key] if server.admin_key else [])]
        if self.config.responses.secret:
            keys.append(self.config.responses.secret)
        return [*keys, *(s for provider in self.providers.values() for s in provider.secrets())]

    async def startup(self) -> None:
        for name in _REDACTED_LOGGERS:
            logging.getLogger(name).addFilter(self.redactor.filter)
        for provider in self.providers.values():
            await provider.start()
        await self.discovery.start()
        if unpriced := self.catalog.unpriced():
            log.warning(
                "no price for %s: their requests' cost is not counted (set 'price' in the config)",
                ", ".join(unpriced),
            )
        await self.accounts.start()
        await self.conversations.start()
        if self.request_log is not None:
            await self.request_log.start()
        if self.metrics is not None:
            await self.metrics.start()
        if any(provider.counts_tokens for provider in self.providers.values()):
            tokens.preload()
        # Everything alive now lives as long as the process: keep it out of the
        # collector's full passes, which otherwise lengthen tail latency.
        gc.collect()
        gc.freeze()
        # Requests leave no cyclic garbage (none found under load with DEBUG_SAVEALL),
        # so each young pass only re-scans live in-flight objects: at the default
        # threshold (700 allocations) that took some 8% of the CPU under load. At
        # 10,000 the passes are 14 times rarer and still short (only live objects).
        gc.set_threshold(10_000, 10, 10)
        self._watch_exit_signals()
        self.ready = True

    async def shutdown(self) -> None:
        for name in _REDACTED_LOGGERS:
            logging.getLogger(name).removeFilter(self.redactor.filter)
        self.ready = False
        if self._cut is not None:
            self._cut.cancel()
        await self.discovery.stop()
        for provider in self.providers.values():
            await provider.close()
        await self.fetcher.close()
        await self.conversations.stop()
        if self.request_log is not None:
            await self.request_log.stop()
        await self.accounts.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.stop)

    # ---- readiness ----------------------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this instance should get traffic, and why: its state and each
        dependency's ("up", "down", "starting"; Redis down is ready while limits
        fail open). Dependencies are asked at most once a second, however often a
        load balancer (or anyone) asks."""
        if self.draining:
            return False, {"status": "draining"}
        now = time.monotonic()
        if self._probe is None or now - self._probed_at >= 1.0:
            self._probed_at = now
            self._probe = asyncio.ensure_future(self._probe_dependencies())
        dependencies = await asyncio.shield(self._probe)
        usable = {"up", "degraded"}
        ok = self.ready and all(state in usable for state in dependencies.values())
        status = "ready" if ok else "starting" if not self.ready else "unavailable"
        return ok, {"status": status, "dependencies": dependencies}

    async def _probe_dependencies(self) -> dict[str, str]:
        states: dict[str, str] = {}
        accounts = self.accounts
        if accounts.store is not None:
            if not accounts.store_ready:
                states["store"] = "starting"
            else:
                states["store"] = "up" if await accounts.store.reachable() else "down"
        if isinstance(accounts.limiter, RedisLimiter):
            up = await accounts.limiter.ping()
            open_ = self.config.limits.on_backend_error == "open"
            states["redis"] = "up" if up else "degraded" if open_ else "down"
        return states

    # ---- graceful shutdown ------------------------------------------------------------

    def _watch_exit_signals(self) -> None:
        """Learn when uvicorn starts shutting down. It stops accepting and waits for
        in-flight requests, but tells the app nothing until they are done; so wrap
        its SIGTERM/SIGINT handlers (it restores the originals itself on exit)."""
        if threading.current_thread() is not threading.main_thread():
            return  # embedded in a thread (tests): whoever runs the loop stops it
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.drain)
                previous(signum, frame)

            signal.signal(sig, handler)

    def drain(self) -> None:
        """Shutdown has begun: not ready any more; in-flight requests get
        ``server.shutdown_grace`` seconds, then each ends with a protocol-correct error
        (rather than a connection cut by the server's own deadline)."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        grace = self.config.server.shutdown_grace
        log.info("shutting down: in-flight requests have %gs to finish", grace)
        self._cut = asyncio.get_running_loop().call_later(grace, self.router.cut)
