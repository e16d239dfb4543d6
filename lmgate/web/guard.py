"""What a web page may not do with the gateway. API clients send no ``Origin``; a
browser does, and a page on another site must not drive a gateway (an open one
especially) through its visitor's browser:

- ``Host`` must be one of ``server.allowed_hosts``; unset, a gateway listening on a
  loopback address answers loopback names only. A page on ``attacker.example`` whose
  name was rebound to 127.0.0.1 (DNS rebinding) sends ``Host: attacker.example``.
- A request with an ``Origin`` must come from the gateway's own origin (the
  dashboard) or one of ``server.cors.allow_origins``; those get CORS answers
  (preflights included), any other a 403.
- (A JSON body must say so in ``Content-Type``: frontends.validate.require_json. A
  ``text/plain`` POST is a "simple" request, which browsers send without asking.)
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from lmgate.config import ServerConfig
from lmgate.errors import GatewayError
from lmgate.frontends import openai_chat
from lmgate.frontends.base import error_reply
from lmgate.ids import unique_hex

# How a screened request is answered: (scope, receive, send, the app) -> None.
Screened = Callable[[Any, Any, Any, Any], Awaitable[None]]
_LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})
_LOOPBACK_NAMES = frozenset({b"localhost", b"127.0.0.1", b"[::1]"})
_UNGUARDED = frozenset({"/health", "/ready"})  # probes: no data, no effect
_EXPOSED = b"x-request-id, x-lmgate-deployment, x-lmgate-attempts, retry-after"


class Guard:
    __slots__ = ("_any_origin", "_hosts", "_max_age", "_origins")

    def __init__(self, server: ServerConfig) -> None:
        hosts = server.allowed_hosts
        self._hosts = None if hosts is None else frozenset(h.lower().encode() for h in hosts)
        origins = server.cors.allow_origins
        self._any_origin = "*" in origins
        self._origins = frozenset(origin.rstrip("/").lower().encode() for origin in origins)
        self._max_age = str(server.cors.max_age).encode()

    def screen(self, scope: Any) -> Screened | None:
        """None: serve the request as it is (nearly always: no ``Origin``). Otherwise
        what answers it: a refusal, a preflight, or the app with CORS headers."""
        refused, origin = self.refusal(scope)
        if refused is not None:
            return _refusal(refused)
        if origin is None:
            return None
        if scope["method"] == "OPTIONS":
            return functools.partial(self._preflight, origin=origin)
        return functools.partial(_with_cors, origin=origin)

    def refusal(self, scope: Any) -> tuple[str | None, bytes | None]:
        """Why a request (or a WebSocket upgrade: browsers open those to any site
        without asking) is refused, if it is; and its foreign but allowed ``Origin``."""
        host = origin = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
        if (
            host is not None
            and not self._host_allowed(scope, host)
            and scope["path"] not in _UNGUARDED
        ):
            shown = host.decode("latin-1")
            return f"Host {shown!r} is not allowed (server.allowed_hosts)", None
        if origin is None or (host is not None and same_origin(origin, host)):
            return None, None
        if not (self._any_origin or origin.rstrip(b"/").lower() in self._origins):
            shown = origin.decode("latin-1")
            return f"Origin {shown!r} is not allowed (server.cors.allow_origins)", None
        return None, origin

    def _host_allowed(self, scope: Any, host: bytes) -> bool:
        name = _hostname(host)
        if self._hosts is not None:
            return name in self._hosts or b"*" in self._hosts
        server = scope.get("server")
        if server is None or server[0] not in _LOOPBACK_ADDRESSES:
            return True  # listening beyond loopback: whatever name reaches it
        return name in _LOOPBACK_NAMES

    async def _preflight(
        self, scope: Any, receive: Any, send: Any, app: Any, *, origin: bytes
    ) -> None:
        asked = b""
        for name, value in scope["headers"]:
            if name == b"access-control-request-headers":
                asked = value
        headers = [
            *_cors(origin),
            (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
            (b"access-control-max-age", self._max_age),
        ]
        if asked:
            headers.append((b"access-control-allow-headers", asked))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _cors(origin: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]


def _hostname(host: bytes) -> bytes:
    """``Host`` without its port, in lower case (``[::1]:7860`` → ``[::1]``)."""
    if host.startswith(b"["):
        return host.partition(b"]")[0].lower() + b"]"
    return host.partition(b":")[0].lower()


def same_origin(origin: bytes, host: bytes) -> bool:
    """The page comes from the gateway itself (the dashboard): its origin names the
    host the request went to."""
    return origin.partition(b"://")[2].lower() == host.lower()


def _refusal(message: str) -> Screened:
    async def refuse(scope: Any, receive: Any, send: Any, app: Any) -> None:
        error = GatewayError("permission", message, code="origin_not_allowed")
        await error_reply(openai_chat, error, unique_hex())(scope, receive, send)

    return refuse


async def _with_cors(scope: Any, receive: Any, send: Any, app: Any, *, origin: bytes) -> None:
    async def send_with_cors(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = message["headers"] = list(message.get("headers", ()))
            headers += [*_cors(origin), (b"access-control-expose-headers", _EXPOSED)]
        await send(message)

    await app(scope, receive, send_with_cors)
