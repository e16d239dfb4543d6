"""What every reply shares, whichever its protocol: the request id, the headers that
say what served it, and errors in the client's own shape (each logged with its reason)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from lmgate.canonical import ChatRequest, Event, Reply, Start
from lmgate.errors import GatewayError
from lmgate.ids import unique_hex

log = logging.getLogger("lmgate")


def from_google(request: Request) -> bool:
    """A request from Google's clients (they share some paths with OpenAI's)."""
    headers = request.headers
    return "x-goog-api-key" in headers or "x-goog-api-client" in headers


def request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return unique_hex()


def ids(request_id: str, deployment: str = "", attempts: int = 0) -> dict[str, str]:
    """``x-request-id``, and once the router ran, what served the request and how many
    upstream requests it took."""
    headers = {"x-request-id": request_id}
    if deployment:
        headers["x-lmgate-deployment"] = deployment
    if attempts:
        headers["x-lmgate-attempts"] = str(attempts)
    return headers


class Frontend(Protocol):
    """What a client-protocol module provides (see lmgate/frontends/)."""

    PROTOCOL: str

    def parse_request(self, body: bytes, headers: Mapping[str, str]) -> ChatRequest: ...
    def reply_body(self, reply: Reply, request: ChatRequest) -> bytes: ...
    def stream_frames(
        self, start: Start, events: AsyncGenerator[Event, None], request: ChatRequest
    ) -> AsyncGenerator[bytes, None]: ...
    def error_status(self, error: GatewayError) -> int: ...
    def error_body(self, error: GatewayError) -> bytes: ...
    def reply_headers(self, request: ChatRequest) -> dict[str, str]: ...


def error_reply(frontend: Frontend, error: GatewayError, request_id: str) -> Response:
    """The error reply in the client's protocol; every one is logged with its reason."""
    status = frontend.error_status(error)
    where = f" (at {error.param})" if error.param else ""
    message = error.message if len(error.message) <= 1000 else error.message[:1000] + "…"
    log.warning("request %s: %d %s: %s%s", request_id, status, error.kind, message, where)
    headers = ids(request_id, attempts=error.attempts)
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return Response(
        frontend.error_body(error),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
