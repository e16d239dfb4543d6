"""Everything a running gateway holds (providers, catalog, router, accounts, metrics),
built from the config; its start, and its graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
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
from lmgate.config import Config, ConfigError, data_dir, load_config
from lmgate.errors import Redactor
from lmgate.frontends.sealing import Sealer
from lmgate.media.fetch import ImageFetcher
from lmgate.observe import tokens
from lmgate.observe.dependencies import Dependency
from lmgate.observe.metrics import MeterSink, Metrics
from lmgate.providers import build_provider, provider_problems
from lmgate.providers.base import Provider
from lmgate.routing.catalog import Catalog, Deployment
from lmgate.routing.discovery import ModelDiscovery
from lmgate.routing.router import Router
from lmgate.web.admin import Admin
from lmgate.web.pipeline import Pipeline
from lmgate.web.reload import applicable, redacted
from lmgate.web.signin import SignIn

if TYPE_CHECKING:
    from lmgate.observe.tracing import Tracing

log = logging.getLogger("lmgate")

# Every line these write loses the config's secrets (and keys sent in a query string).
_REDACTED_LOGGERS = ("lmgate", "uvicorn.access", "uvicorn.error")
CHECKS = (provider_problems,)  # what a config must pass beyond its schema
# Set in worker processes (``lmgate serve --workers N``): how many there are.
WORKERS = "LMGATE_WORKERS"


class Gateway:
    """Everything a running gateway holds: providers, catalog, router, client keys."""

    def __init__(self, config: Config, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.loaded_at = time.time()
        self._clock = clock
        self._reloading = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
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
        if config.oidc is not None and self.accounts.store is None:
            raise ConfigError("oidc needs a store for its users and sessions (store.url is none)")
        self.signin = SignIn(config.oidc, self.accounts, clock)
        self.admin = Admin(
            config.server.admin_key,
            self.accounts,
            self.catalog,
            self.router,
            control=self,
            signin=self.signin,
        )
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
        if self.metrics is not None:
            pipeline = self.pipeline
            self.metrics.sockets = lambda: pipeline.sockets_opened
            self.metrics.sign_ins = self.signin.outcomes
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
        if self.config.oidc is not None and self.config.oidc.client_secret:
            keys.append(self.config.oidc.client_secret)
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
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for name in _REDACTED_LOGGERS:
            logging.getLogger(name).removeFilter(self.redactor.filter)
        self.ready = False
        if self._cut is not None:
            self._cut.cancel()
        await self.discovery.stop()
        for provider in self.providers.values():
            await provider.close()
        await self.fetcher.close()
        await self.signin.close()
        await self.conversations.stop()
        if self.request_log is not None:
            await self.request_log.stop()
        await self.accounts.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.stop)

    # ---- reload -------------------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Read the config file again and apply it to new requests (see reload.py); a
        ``ConfigError`` with every problem when it is broken, and nothing changes."""
        async with self._reloading:
            path = self.config.path
            if path is None:
                raise ConfigError(
                    "this gateway runs on the built-in default or a preset, not a config "
                    "file: there is nothing to read again"
                )
            loaded = await asyncio.to_thread(load_config, path, None, CHECKS)
            if not loaded.models:  # an empty file (one being written, say): surely no intent
                raise ConfigError(f"{path}: no models in the file; not applied")
            new, waiting = applicable(self.config, loaded)
            providers = dict(self.providers)
            built = []
            try:
                for name, raw in new.providers.items():
                    if self.config.providers.get(name) != raw or name not in providers:
                        providers[name] = build_provider(name, raw, self._clock)
                        built.append(providers[name])
                for name in set(providers) - set(new.providers):
                    del providers[name]
                catalog = Catalog.from_config(new, providers, self._clock)
                for provider in built:
                    await provider.start()
            except BaseException:
                for provider in built:
                    await provider.close()
                raise
            self._switch(new, providers, catalog)
            await self.discovery.stop()
            self.discovery = ModelDiscovery(catalog, providers)
            await self.discovery.start()
        log.warning(
            "config reloaded from %s: %d providers, %d models%s",
            path,
            len(providers),
            len(catalog.entries),
            f"; needs a restart to apply: {', '.join(waiting)}" if waiting else "",
        )
        return {
            "loaded_at": self.loaded_at,
            "providers": sorted(providers),
            "models": [entry.id for entry in catalog.entries],
            "restart_needed": waiting,
        }

    async def reload_everywhere(self) -> dict[str, Any]:
        """Reload this process, or, as one of ``--workers N``, check the file and have
        the parent tell every worker (each reloads itself on SIGHUP)."""
        workers = int(os.environ.get(WORKERS, "1"))
        if workers == 1:
            return await self.reload()
        path = self.config.path
        assert path is not None  # the parent runs workers from a config file
        await asyncio.to_thread(load_config, path, None, CHECKS)  # broken: raises, no change
        os.kill(os.getppid(), signal.SIGHUP)
        return {"status": "reloading", "workers": workers}

    def _switch(self, config: Config, providers: dict[str, Provider], catalog: Catalog) -> None:
        """New requests see the new config from here on; requests in flight keep the
        deployments (and so the providers) they hold. Deployments that did not change
        keep their state (in-flight slots, circuit breaker)."""
        before = {d.key: d for entry in self.catalog.entries for d in entry.deployments}
        for entry in catalog.entries:
            for deployment in entry.deployments:
                old = before.get(deployment.key)
                if old is not None and _same(old, deployment):
                    deployment.health = old.health
        retired = [p for name, p in self.providers.items() if providers.get(name) is not p]
        old_catalog = self.catalog
        self.config, self.providers, self.catalog = config, providers, catalog
        self.loaded_at = time.time()
        self.pipeline.config, self.pipeline.catalog = config, catalog
        self.router.routing = config.routing
        self.admin.catalog = catalog
        self.accounts.keys.set_config_keys(config.server.api_keys)
        if self.accounts.bus is not None:
            self.accounts.bus.catalog = catalog
        if self.metrics is not None:
            self.metrics.catalog = catalog
        if retired:
            task = asyncio.create_task(self._retire(retired, old_catalog))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, providers: list[Provider], catalog: Catalog) -> None:
        """Close providers a reload replaced, once no request uses them any more."""
        used = [
            d for entry in catalog.entries for d in entry.deployments if d.provider in providers
        ]
        # Polled (twice a second, only while a retired provider still serves): the
        # counts live in each deployment's Health, which has no event to wait on.
        try:
            while any(deployment.health.in_flight for deployment in used):  # noqa: ASYNC110
                await asyncio.sleep(0.5)
        finally:  # at shutdown too: by then nothing is in flight
            for provider in providers:
                await provider.close()

    async def config_shown(self) -> dict[str, Any]:
        return {"loaded_at": self.loaded_at, "config": redacted(self.config, self.redactor)}

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
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.drain)
                previous(signum, frame)

            signal.signal(sig, handler)

    def _reload_on_signal(self) -> None:
        async def reload() -> None:
            try:
                await self.reload()
            except ConfigError as error:
                log.error("config reload refused (the running config stays):\n%s", error)
            except Exception:
                log.exception("config reload failed (the running config stays)")

        task = asyncio.create_task(reload())
        self._retiring.add(task)  # cancelled at shutdown, like the other background work
        task.add_done_callback(self._retiring.discard)

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


def _same(old: Deployment, new: Deployment) -> bool:
    """Whether a reload left a deployment as it was (its state may carry over)."""
    a, b = old.health, new.health
    return (
        old.provider is new.provider
        and old.target == new.target
        and (a.max_in_flight, a.max_queued, a.cooldown_failures, a.cooldown_seconds)
        == (b.max_in_flight, b.max_queued, b.cooldown_failures, b.cooldown_seconds)
    )
