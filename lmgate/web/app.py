"""The HTTP app: the gateway's parts built once, every frontend's routes mounted, and
the lifespan that starts and stops them. Wiring only; a request's work is in
``pipeline.py``, a protocol's in its frontend module."""

from __future__ import annotations

import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from lmgate.accounts.keys import presented_key
from lmgate.clock import SYSTEM, Clock
from lmgate.config import Config, load_config
from lmgate.errors import ErrorKind, GatewayError
from lmgate.frontends import FRONTENDS, openai_chat
from lmgate.frontends.base import error_reply, request_id
from lmgate.observe import logs
from lmgate.observe.dependencies import describe
from lmgate.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lmgate.providers import provider_problems
from lmgate.web.gateway import Gateway
from lmgate.web.guard import Guard
from lmgate.web.routes import Mounted
from lmgate.web.server import ClientLimits, HotRoutes, connection_cap


def build_app(config: Config, clock: Clock = SYSTEM) -> HotRoutes:
    """The app of ``config``; ``clock`` decides cooldowns, rate windows and token lifetimes."""
    gateway = Gateway(config, clock)
    prefixes = ["", *config.server.route_prefixes]
    mounted = Mounted(FRONTENDS, gateway.pipeline, prefixes)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        try:
            await gateway.startup()
        except Exception as error:
            app.state.failure = describe(error)  # the one line an operator is told
            raise
        try:
            # Read by lmgate.web.server.GuardedProtocol, for every connection.
            yield {"client_limits": ClientLimits(config.server, connection_cap(config.server))}
        finally:
            await gateway.shutdown()

    app = Starlette(
        routes=[*_own_routes(gateway), *mounted.routes],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.gateway = gateway
    return HotRoutes(app, mounted.exact, mounted.targets, Guard(config.server))


def _own_routes(gateway: Gateway) -> list[BaseRoute]:
    """The gateway's routes that belong to no client protocol."""

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def ready(request: Request) -> Response:
        ok, state = await gateway.readiness()
        headers = None if ok else {"Retry-After": "5"}
        return Response(orjson.dumps(state), 200 if ok else 503, headers, "application/json")

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        *gateway.admin.routes(),
        *gateway.signin.routes(),
    ]
    if gateway.config.ui.enabled:
        from lmgate.web import ui

        routes += ui.routes()
    if gateway.metrics is not None:
        metrics = gateway.metrics
        config = gateway.config

        async def metrics_page(request: Request) -> Response:
            admin_key = config.server.admin_key
            if config.metrics.require_admin_key and (
                admin_key is None
                or not hmac.compare_digest(
                    presented_key(request.headers.raw).encode(), admin_key.encode()
                )
            ):
                error = GatewayError("authentication", "GET /metrics needs the admin key")
                return error_reply(openai_chat, error, request_id(request))
            return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

        routes.append(Route("/metrics", metrics_page, methods=["GET"]))
    return routes


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind: ErrorKind = "not_found" if exc.status_code == 404 else "invalid_request"
    message = (
        f"no route {request.method} {request.url.path}"
        if exc.status_code in (404, 405)
        else str(exc.detail)
    )
    error = GatewayError(kind, message, status=exc.status_code)
    return error_reply(openai_chat, error, request_id(request))


def app_from_env() -> HotRoutes:
    """uvicorn factory: the config file in ``LMGATE_CONFIG``, or the preset in
    ``LMGATE_PRESET``, or the built-in default."""
    path, preset = os.environ.get("LMGATE_CONFIG"), os.environ.get("LMGATE_PRESET")
    if form := os.environ.get("LMGATE_LOG_FORMAT"):  # a worker process: log as its parent
        logs.setup(os.environ.get("LMGATE_LOG_LEVEL", "info"), form)
    return build_app(load_config(path or None, preset, (provider_problems,)))
