"""The HTTP layer: routes, client auth, body limits, and turning errors into responses.

With admin.py, the only module that knows Starlette; frontends, router and providers do not.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from lmgate.accounts.accounts import Accounts
from lmgate.accounts.conversations import Conversations
from lmgate.accounts.keys import ANONYMOUS, Caller, presented_key
from lmgate.accounts.request_log import RequestLog
from lmgate.accounts.usage import CLIENT_LEFT
from lmgate.canonical import ChatRequest, Reply, Start, accumulate
from lmgate.config import Config, ConfigError, data_dir, load_config
from lmgate.errors import ErrorKind, GatewayError, Redactor
from lmgate.frontends import anthropic_messages, gemini, openai_chat, openai_responses
from lmgate.frontends import base as replies
from lmgate.frontends.sealing import Sealer
from lmgate.media import check as media
from lmgate.media.fetch import ImageFetcher
from lmgate.observe import tokens
from lmgate.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lmgate.observe.metrics import MeterSink, Metrics
from lmgate.providers import build_provider
from lmgate.routing.catalog import Catalog
from lmgate.routing.discovery import ModelDiscovery
from lmgate.routing.router import Router
from lmgate.web.admin import Admin
from lmgate.web.endpoints import Endpoints
from lmgate.web.server import ClientLimits, EventStream, HotRoutes, connection_cap

if TYPE_CHECKING:
    from lmgate.observe.tracing import Tracing

log = logging.getLogger("lmgate")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# Every line these write loses the config's secrets (and keys sent in a query string).
_REDACTED_LOGGERS = ("lmgate", "uvicorn.access", "uvicorn.error")


class Gateway:
    """Everything a running gateway holds: providers, catalog, router, client keys."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.providers = {name: build_provider(name, raw) for name, raw in config.providers.items()}
        self.catalog = Catalog.from_config(config, self.providers)
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
        self.router = Router(config.routing, self.fetcher, redactor=self.redactor)
        self.accounts = Accounts(config, self.catalog, self.router)
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
        self.conversations = Conversations(self.accounts.store, config.responses.retention_days)
        self.responses_frontend = openai_responses.ResponsesFrontend(
            self.conversations,
            refuse_unsupported=config.responses.unsupported_tools == "refuse",
            sealer=functools.cache(self._sealer),  # made when first needed
        )
        self.endpoints = Endpoints(self)
        self.max_body = int(config.server.max_body_mb * 1024 * 1024)
        self.ready = False
        self.draining = False
        self._cut: asyncio.TimerHandle | None = None

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

    async def authenticate(self, request: Request) -> Caller:
        # Google's clients may send the key as ?key= (logs redact it).
        key = presented_key(request.headers) or request.query_params.get("key", "")
        return await self.accounts.identify(key)

    async def read_body(self, request: Request) -> bytes:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def check_media(self, chat: ChatRequest) -> bool:
        """Validate the request's images against ``media``; whether it has any."""
        limits = self.config.media
        return media.check(chat, limits.max_images, int(limits.max_image_mb * 2**20))

    def _too_large(self) -> GatewayError:
        limit = self.config.server.max_body_mb
        return GatewayError(
            "request_too_large",
            f"the request body is larger than server.max_body_mb ({limit:g} MB)",
            code="request_too_large",
        )

    # ---- handlers --------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response | EventStream:
        return await self._chat(request, openai_chat)

    async def messages(self, request: Request) -> Response | EventStream:
        return await self._chat(request, anthropic_messages)

    async def responses(self, request: Request) -> Response | EventStream:
        return await self._chat(request, self.responses_frontend)

    async def _chat(self, request: Request, frontend: replies.Frontend) -> Response | EventStream:
        """One handler for every client protocol; ``frontend`` does the wire format."""
        request_id = replies.request_id(request)
        meter = self.accounts.meter(request_id, frontend.PROTOCOL)
        if self.tracing is not None and meter is not None:
            meter.span = self.tracing.start(request.headers, frontend.PROTOCOL)
        logged = self.request_log
        caller = ANONYMOUS
        body = b""  # as read; logged with the reply when request_log is on
        try:
            caller = await self.authenticate(request)
            body = await self.read_body(request)
            parse_async = getattr(frontend, "parse_async", None)  # one with stored state
            if parse_async is not None:
                chat = await parse_async(body, request.headers, caller.key_id)
            else:
                chat = frontend.parse_request(body, request.headers)
            if meter is not None:
                meter.request(chat, caller.key_id)
            chain = self.catalog.candidates(chat.model, self.check_media(chat), bool(chat.tools))
            chain = await self.accounts.admit(caller, chain)
            events = self.router.stream(chat, chain, meter)
            if not chat.stream:
                reply = Reply()
                if meter is not None:
                    meter.reply = reply  # read when the meter finishes: no per-event work
                await _unless_client_leaves(request, accumulate(events, reply))
                answer = frontend.reply_body(reply, chat)
                if (finish := getattr(frontend, "finish", None)) is not None:
                    await finish(chat, answer)
                headers = replies.ids(request_id, reply.deployment, reply.attempts)
                headers.update(frontend.reply_headers(chat))
                if meter is not None:
                    headers.update(meter.reply_headers(reply.usage))
                    meter.finish(200)
                if logged is not None:
                    logged.add(request_id, caller.key_id, body, answer)
                return Response(answer, media_type="application/json", headers=headers)
            if meter is not None:
                events = meter.watch(events)
            # Wait for the upstream to accept before sending 200, so that an early
            # failure still gets its real status.
            try:
                start = await anext(events)
                assert isinstance(start, Start)
                frames = frontend.stream_frames(start, events, chat)
                if logged is not None:
                    frames = logged.tee(frames, request_id, caller.key_id, body)
                headers = {
                    **_SSE_HEADERS,
                    **replies.ids(request_id, start.deployment, start.attempts),
                }
                headers.update(frontend.reply_headers(chat))
                if meter is not None:
                    headers.update(meter.reply_headers(None))
            except BaseException:
                await events.aclose()
                raise
            return EventStream(frames, headers, events)
        except GatewayError as error:
            response, kind = replies.error_reply(frontend, error, request_id), str(error.kind)
            message: str | None = error.message
        except ClientDisconnect:  # the client left while sending its body, or waiting
            response, kind = Response(status_code=CLIENT_LEFT), "client_disconnected"
            message = "the client closed the connection"
        except Exception:
            log.exception("request %s failed", request_id)
            internal = GatewayError("internal", "internal error")
            response, kind = replies.error_reply(frontend, internal, request_id), "internal"
            message = internal.message
        if meter is not None:
            meter.finish(response.status_code, kind, message)
        if logged is not None and body:
            logged.add(request_id, caller.key_id, body, bytes(response.body))
        return response

    async def gemini_call(self, request: Request) -> Response | EventStream:
        """POST models/{model}:generateContent, :streamGenerateContent, :countTokens."""
        try:
            model, action = gemini.split_target(request.path_params["target"])
        except GatewayError as error:
            unknown = gemini.GeminiCall("", False, False)
            return replies.error_reply(unknown, error, replies.request_id(request))
        sse = request.query_params.get("alt") == "sse"
        call = gemini.GeminiCall(model, action == "streamGenerateContent", sse)
        if action == "countTokens":
            return await self.endpoints.gemini_count_tokens(request, call)
        return await self._chat(request, call)

    async def metrics_page(self, request: Request) -> Response:
        assert self.metrics is not None
        admin_key = self.config.server.admin_key
        if self.config.metrics.require_admin_key and (
            admin_key is None
            or not hmac.compare_digest(presented_key(request.headers).encode(), admin_key.encode())
        ):
            error = GatewayError("authentication", "GET /metrics needs the admin key")
            return replies.error_reply(openai_chat, error, replies.request_id(request))
        return Response(self.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    async def health(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def ready_check(self, request: Request) -> Response:
        if self.ready:
            return Response(b'{"status":"ready"}', media_type="application/json")
        return Response(b'{"status":"starting"}', status_code=503, media_type="application/json")

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready_check, methods=["GET"]),
            *self.admin.routes(),
        ]
        if self.config.ui.enabled:
            from lmgate.web import ui

            routes += ui.routes()
        if self.metrics is not None:
            routes.append(Route("/metrics", self.metrics_page, methods=["GET"]))
        for prefix in ["", *self.config.server.route_prefixes]:
            # Also behind lmgate.server.HotRoutes, which answers their POSTs first:
            # here they answer the other methods (a 405).
            routes += [
                Route(f"{prefix}/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route(f"{prefix}/v1/messages", self.messages, methods=["POST"]),
                Route(f"{prefix}/v1/responses", self.responses, methods=["POST"]),
                *self.endpoints.routes(prefix),
                # Google's SDKs use v1beta, and v1 for some calls.
                *(
                    Route(
                        f"{prefix}/{v}/models/{{target:path}}", self.gemini_call, methods=["POST"]
                    )
                    for v in ("v1beta", "v1")
                ),
            ]
        return routes


T = TypeVar("T")
_LEFT = "lmgate: the client left"
# A non-stream reply that takes longer than this gets a watcher, which cancels it
# (and so the upstream request) when the client leaves; quicker replies finish
# before a watcher would be worth its task.
_WATCH_AFTER = 0.5


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``await work``, or ``ClientDisconnect`` once the client has gone (nothing
    else notices during a non-stream reply: no byte is sent until it is whole)."""
    task = asyncio.current_task()
    assert task is not None
    watchers: list[asyncio.Task[None]] = []
    timer = asyncio.get_running_loop().call_later(
        _WATCH_AFTER, lambda: watchers.append(asyncio.create_task(_on_disconnect(request, task)))
    )
    try:
        return await work
    except asyncio.CancelledError as cancel:
        if cancel.args != (_LEFT,):
            raise
        task.uncancel()
        raise ClientDisconnect() from None
    finally:
        timer.cancel()
        for watcher in watchers:
            watcher.cancel()


async def _on_disconnect(request: Request, task: asyncio.Task[Any]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    task.cancel(_LEFT)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind: ErrorKind = "not_found" if exc.status_code == 404 else "invalid_request"
    message = (
        f"no route {request.method} {request.url.path}"
        if exc.status_code in (404, 405)
        else str(exc.detail)
    )
    error = GatewayError(kind, message, status=exc.status_code)
    return replies.error_reply(openai_chat, error, replies.request_id(request))


def build_app(config: Config) -> HotRoutes:
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await gateway.startup()
        try:
            # Read by lmgate.server.GuardedProtocol, for every connection.
            yield {"client_limits": ClientLimits(config.server, connection_cap(config.server))}
        finally:
            await gateway.shutdown()

    app = Starlette(
        routes=gateway.routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.gateway = gateway
    hot = {
        f"{prefix}{path}": handler
        for prefix in ["", *config.server.route_prefixes]
        for path, handler in (
            ("/v1/chat/completions", gateway.chat_completions),
            ("/v1/messages", gateway.messages),
            ("/v1/responses", gateway.responses),
        )
    }
    targets = {
        f"{prefix}/{version}/models/": gateway.gemini_call
        for prefix in ["", *config.server.route_prefixes]
        for version in ("v1beta", "v1")
    }
    return HotRoutes(app, hot, targets)


def app_from_env() -> HotRoutes:
    """uvicorn factory: the config file in ``LMGATE_CONFIG``, or the preset in
    ``LMGATE_PRESET``, or the built-in default."""
    path, preset = os.environ.get("LMGATE_CONFIG"), os.environ.get("LMGATE_PRESET")
    return build_app(load_config(path or None, preset))
