"""The frontends' ``ROUTES`` mounted: one table per client protocol, read both by
Starlette's router and by the fast path (``HotRoutes``), under each route prefix."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import ModuleType
from typing import cast

from starlette.requests import Request
from starlette.routing import BaseRoute, Route, WebSocketRoute

from lmgate.frontends.base import CHAT, Answer, Frontend, Services

Endpoint = Callable[[Request], Awaitable[Answer]]


class Mounted:
    """The routes of every frontend: Starlette's, and the POSTs of the fast path
    (``exact`` paths, and ``targets``: a path prefix, the name of the parameter that is
    the rest of the path, and the endpoint)."""

    def __init__(
        self, frontends: Iterable[ModuleType], services: Services, prefixes: Sequence[str]
    ) -> None:
        self.routes: list[BaseRoute] = []
        self.exact: dict[str, Endpoint] = {}
        self.targets: list[tuple[str, str, Endpoint]] = []
        # path template -> method -> (claims, endpoint), in the order declared
        table: dict[str, dict[str, list[tuple[Callable[[Request], bool] | None, Endpoint]]]] = {}
        for module in frontends:
            for route in module.ROUTES:
                endpoint: Endpoint
                if route.handler is CHAT:
                    endpoint = functools.partial(services.chat, frontend=cast(Frontend, module))
                else:
                    endpoint = functools.partial(route.handler, services)
                by_method = table.setdefault(route.path, {})
                by_method.setdefault(route.method, []).append((route.claims, endpoint))
        for module in frontends:  # WebSocket endpoints (the Responses API's)
            for path, handler in getattr(module, "SOCKETS", ()):
                for prefix in prefixes:
                    socket = functools.partial(handler, services)
                    self.routes.append(WebSocketRoute(prefix + path, socket))
        for prefix in prefixes:
            for path, by_method in table.items():
                endpoint = _dispatch(by_method)
                full = prefix + path
                self.routes.append(Route(full, endpoint, methods=list(by_method)))
                if "POST" not in by_method:
                    continue
                post = _dispatch({"POST": by_method["POST"]})
                head, brace, rest = full.partition("{")
                if not brace:
                    self.exact[full] = post
                elif rest.endswith(":path}") and "{" not in rest:
                    self.targets.append((head, rest.removesuffix(":path}"), post))


def _dispatch(
    by_method: dict[str, list[tuple[Callable[[Request], bool] | None, Endpoint]]],
) -> Endpoint:
    """The endpoint of one path: by method, then by which protocol claims the request
    (the route that claims nothing serves the rest)."""
    if len(by_method) == 1:
        (choices,) = by_method.values()
        if len(choices) == 1:
            return choices[0][1]  # nearly every path: the handler itself
    ordered = {
        method: sorted(choices, key=lambda choice: choice[0] is None)
        for method, choices in by_method.items()
    }

    async def endpoint(request: Request) -> Answer:
        method = request.method
        choices = ordered.get(method) or ordered["GET"]  # HEAD is answered as GET
        for claims, handler in choices:
            if claims is None or claims(request):
                return await handler(request)
        return await choices[-1][1](request)

    return endpoint
