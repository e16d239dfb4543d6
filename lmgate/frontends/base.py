"""The frontend contract: what a client-protocol module provides (its wire format, its
routes), what the HTTP layer lends its handlers, the one loop that streams every
protocol's events, and what every reply shares whichever its protocol: the request
id, the headers that say what served it, and errors in the client's own shape (each
logged with its reason).

A frontend module declares ``PROTOCOL``, the functions of ``Frontend`` and ``ROUTES``;
``lmgate/frontends/__init__.py`` lists the modules the HTTP layer mounts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from lmgate.canonical import Batch, ChatRequest, Event, Reply, Start
from lmgate.errors import GatewayError, from_exception
from lmgate.ids import unique_hex

if TYPE_CHECKING:
    from lmgate.accounts.conversations import Conversations
    from lmgate.accounts.keys import Caller
    from lmgate.config import Config
    from lmgate.frontends.sealing import Sealer
    from lmgate.routing.catalog import Catalog

log = logging.getLogger("lmgate")

# A reply as the HTTP layer sends it: a Starlette Response, or lmgate's event stream.
Answer = Callable[[Any, Any, Any], Awaitable[None]]


class StreamEncoder(Protocol):
    """One streamed reply's wire format: pure functions of the events, so a test can
    call them without a server. ``stream`` runs them."""

    async def begin(self) -> bytes:
        """What is sent before the first event (may await, once)."""
        ...

    def event(self, event: Event) -> bytes:
        """The frames of one event (``b""``: none)."""
        ...

    async def end(self) -> bytes:
        """What is sent after the last event (may await, once: a stored response)."""
        ...

    def fail(self, error: GatewayError) -> bytes:
        """The protocol's error frames once the headers are gone."""
        ...


class Frontend(Protocol):
    """What a client-protocol module provides (see lmgate/frontends/).

    Optional: ``async parse_async(body, headers, key_id)`` in place of
    ``parse_request`` for a protocol that reads stored state, and
    ``async finish(request, body)`` called with a whole non-stream reply."""

    PROTOCOL: str  # as usage records and metrics name it

    def parse_request(self, body: bytes, headers: Mapping[str, str]) -> ChatRequest: ...
    def reply_body(self, reply: Reply, request: ChatRequest) -> bytes: ...
    def stream_encoder(self, start: Start, request: ChatRequest) -> StreamEncoder: ...
    def error_status(self, error: GatewayError) -> int: ...
    def error_body(self, error: GatewayError) -> bytes: ...
    def reply_headers(self, request: ChatRequest) -> dict[str, str]: ...


async def stream(
    encoder: StreamEncoder, events: AsyncGenerator[Event, None]
) -> AsyncGenerator[bytes, None]:
    """The one stream loop of every protocol: ``events`` (after ``Start``) as frames.
    A failure after the headers left is the protocol's error frame, never a cut.

    The frames of a ``Batch`` of events go as one: an upstream's chunks mostly arrive
    several at a time, and each frame sent alone is an ASGI message."""
    if head := await encoder.begin():
        yield head
    held: list[bytes] | None = None  # within a batch: its frames so far
    try:
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Batch):
                    if held:
                        yield b"".join(held)
                    held = [] if event.begins else None
                elif frame := encoder.event(event):
                    if held is None:
                        yield frame
                    else:
                        held.append(frame)
    except Exception as error:
        yield b"".join([*(held or ()), encoder.fail(from_exception(error))])
        return
    tail = await encoder.end()
    if held or tail:
        yield b"".join([*(held or ()), tail])


class Services(Protocol):
    """What the HTTP layer lends a frontend's route handlers (``lmgate.web.pipeline``)."""

    config: Config
    catalog: Catalog
    conversations: Conversations
    sealer: Callable[[], Sealer]
    sockets_opened: int

    async def authenticate(self, request: Request) -> Caller: ...
    async def read_body(self, request: Request) -> bytes:
        """The request's JSON body, bounded by ``server.max_body_mb``."""
        ...

    async def chat(self, request: Request, frontend: Frontend, body: bytes | None = None) -> Answer:
        """The whole chat pipeline: auth, limits, routing, usage, the reply."""
        ...

    async def count_tokens(
        self,
        request: Request,
        errors: Frontend | ErrorShape,
        parse: Callable[[bytes, Mapping[str, str]], ChatRequest],
        field: str,
    ) -> Answer:
        """A request's prompt tokens, counted offline, as ``{field: n}``."""
        ...


Handler = Callable[[Services, Request], Awaitable[Answer]]


async def CHAT(services: Services, request: Request) -> Answer:
    """In ``ROUTES``: the chat pipeline, with the declaring module as the frontend
    (the HTTP layer binds it)."""
    raise NotImplementedError  # never called: mounting replaces it


@dataclass(frozen=True, slots=True)
class Route:
    """One route of a client protocol, mounted under each ``server.route_prefixes``.
    POSTs whose path is exact, or ends in a ``{name:path}`` parameter, are also found
    ahead of Starlette's router (``lmgate.web.server.HotRoutes``)."""

    method: str
    path: str  # a Starlette path template
    handler: Handler
    # On a path other protocols share (``GET /v1/models``): whether a request is this
    # protocol's. The route without one serves what no other claims.
    claims: Callable[[Request], bool] | None = None


def from_google(request: Request) -> bool:
    """A request from Google's clients (they share some paths with OpenAI's)."""
    headers = request.headers
    return "x-goog-api-key" in headers or "x-goog-api-client" in headers


def request_id(request: Request) -> str:
    for name, value in request.headers.raw:  # no KeyError raised when it is absent
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if given and len(given) <= 128 and given.isprintable():
                return given
            break
    return unique_hex()


def ids(
    request_id: str, deployment: str = "", attempts: int = 0, dropped: tuple[str, ...] = ()
) -> dict[str, str]:
    """``x-request-id``, and once the router ran, what served the request, how many
    upstream requests it took, and the server tools its upstream did not get."""
    headers = {"x-request-id": request_id}
    if deployment:
        headers["x-lmgate-deployment"] = deployment
    if attempts:
        headers["x-lmgate-attempts"] = str(attempts)
    if dropped:
        headers.update(dropped_tools_header(dropped))
    return headers


def dropped_tools_header(names: Iterable[str]) -> dict[str, str]:
    """``x-lmgate-dropped-tools``: the client's tools its upstream never got."""
    # The names are the client's: printable ASCII only in a header (no line breaks).
    value = "".join(c if " " <= c <= "~" else "?" for c in ", ".join(names))
    return {"x-lmgate-dropped-tools": value[:1000]} if value else {}


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """A protocol's error replies, for its handlers beyond chat."""

    error_status: Callable[[GatewayError], int]
    error_body: Callable[[GatewayError], bytes]


class JsonReply(Response):
    """A JSON body and its headers, encoded in one pass (Starlette's constructor
    lowercases, scans and re-encodes them in several): the reply of every request."""

    def __init__(self, body: bytes, headers: Mapping[str, str], status_code: int = 200) -> None:
        self.status_code, self.body, self.background = status_code, body, None
        self.raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            *[(name.lower().encode("latin-1"), value.encode("latin-1"))
              for name, value in headers.items()],
        ]  # fmt: skip


def json_reply(body: bytes, request_id: str) -> Response:
    return JsonReply(body, ids(request_id))


async def json_answer(
    request: Request, errors: ErrorShape, work: Callable[[], Awaitable[bytes]]
) -> Response:
    """``work``'s JSON as the reply, or its error in the protocol's shape."""
    rid = request_id(request)
    try:
        body = await work()
    except GatewayError as error:
        return error_reply(errors, error, rid)
    return json_reply(body, rid)


async def visible_catalog(services: Services, request: Request) -> Catalog:
    """The caller's catalog: only the models its key may use."""
    caller = await services.authenticate(request)
    return services.catalog.for_key(caller.key.models if caller.key is not None else None)


def model_list(render: Callable[[Catalog], bytes], errors: ErrorShape) -> Handler:
    """The handler of ``GET …/models`` in a protocol's shape: for key holders only."""

    async def handle(services: Services, request: Request) -> Answer:
        async def body() -> bytes:
            return render(await visible_catalog(services, request))

        return await json_answer(request, errors, body)

    return handle


def error_reply(shape: Frontend | ErrorShape, error: GatewayError, request_id: str) -> Response:
    """The error reply in the client's protocol; every one is logged with its reason."""
    status = shape.error_status(error)
    where = f" (at {error.param})" if error.param else ""
    message = error.message if len(error.message) <= 1000 else error.message[:1000] + "…"
    log.warning("request %s: %d %s: %s%s", request_id, status, error.kind, message, where)
    headers = ids(request_id, attempts=error.attempts)
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    elif status == 429 and not error.retryable:
        # A spent budget or a full store: no wait makes it pass. The SDKs retry a 429
        # (three requests for one call) unless told not to.
        headers["x-should-retry"] = "false"
    return JsonReply(shape.error_body(error), headers, status)


# The headers of a WebSocket upgrade, which a request made from it does not carry.
_UPGRADE_HEADERS = frozenset({
    b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version",
    b"sec-websocket-extensions", b"sec-websocket-protocol", b"content-length",
    b"content-type", b"transfer-encoding",
})  # fmt: skip


def json_request(scope: Any, body: bytes, then: Callable[[], Awaitable[Any]]) -> Request:
    """A POST of ``body`` (JSON) with the headers of ``scope`` (a request's or a
    WebSocket's: its key, its session), for the chat pipeline to serve. Its receive
    gives the body once, then what ``then`` says (the client's disconnect)."""
    headers = [(name, value) for name, value in scope["headers"] if name not in _UPGRADE_HEADERS]
    headers += [(b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]  # fmt: skip
    made = {**scope, "type": "http", "method": "POST", "headers": headers, "http_version": "1.1"}
    pending = [body]

    async def receive() -> Any:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await then()

    return Request(made, receive)
