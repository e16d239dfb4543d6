"""Plumbing shared by providers that talk HTTP: connection pool, timeouts, error mapping."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import orjson
from pydantic import Field, field_validator

from lmgate.canonical import BATCH_BEGINS, BATCH_ENDS, Event, Heartbeat
from lmgate.config import ConfigError
from lmgate.errors import GatewayError, encodable, redact
from lmgate.providers import lenient_json
from lmgate.providers.base import Provider, ProviderConfig, Timeouts
from lmgate.providers.client import (
    DIRECT,
    ClientError,
    Pool,
    Proxy,
    Response,
    basic_credentials,
)
from lmgate.providers.sse import EventTooLarge, SSEDecoder

_MAX_ERROR_BODY = 64 * 1024
# Seconds a complete stream's body may take to end before its connection is dropped.
_BODY_END_GRACE = 1.0
# At most this much of a stream is read (and decoded) at a time. Reading whatever is
# buffered let one fast upstream hand a slow client's stream megabytes of decoded
# events to hold.
_READ_SIZE = 64 * 1024

# The trace context of the current upstream attempt (W3C traceparent), set by the
# tracing when it is on: every upstream request of this task carries it.
TRACE_HEADERS: ContextVar[dict[str, str] | None] = ContextVar("trace_headers", default=None)


class HttpProviderConfig(ProviderConfig):
    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = {}
    timeouts: Timeouts = Timeouts()
    max_connections: int = 256
    # Seconds of upstream silence mid-reply after which clients get a keep-alive.
    heartbeat: float = Field(15.0, gt=0)
    # The largest reply body (not streamed) and the largest single stream event taken
    # from the upstream; past it the reply is a 502, never unbounded memory.
    max_reply_mb: float = Field(64.0, gt=0)
    # An http:// proxy for this upstream (user:password@ allowed), or "direct"; unset:
    # HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment.
    proxy: str | None = None

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        if value is not None and value != DIRECT:
            Proxy(value)  # raises for what is not an http:// proxy URL
        return value


class HttpProvider(Provider):
    config: HttpProviderConfig
    # Whether requests carry an Authorization header of their own (a sign-in token).
    bearer_per_request: ClassVar[bool] = False
    # Whether each request is signed over its URL and body (``sign``).
    signs_requests: ClassVar[bool] = False

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self._pool: Pool | None = None
        self._check_base_url()
        password = urlsplit(self.config.base_url).password
        in_url: tuple[str | None, ...] = (
            password,
            unquote(password or ""),
            basic_credentials(self.config.base_url),
        )
        if self.config.proxy and self.config.proxy != DIRECT:
            proxy = self.config.proxy
            secret = urlsplit(proxy if "://" in proxy else f"http://{proxy}").password
            in_url += (secret, unquote(secret or ""), basic_credentials(proxy))
        self._secrets = tuple(
            value
            for value in (self.config.api_key, *in_url, *self.config.headers.values())
            if value
        )

    def _check_base_url(self) -> None:
        """What would otherwise fail on every request (so ``lmgate check`` says it)."""
        where = f"providers.{self.name}.base_url"
        parts = urlsplit(self.config.base_url)
        try:
            parts.port  # noqa: B018 (raises for a port that is not a number in range)
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            names = {name.lower() for name in (*self.auth_headers(), *self.config.headers)}
            if "authorization" in names or self.bearer_per_request:
                raise ConfigError(
                    f"{where}: credentials in the URL (user:password@) cannot be sent with "
                    "an Authorization header (from api_key or headers): keep one of them"
                )

    async def start(self) -> None:
        self._pool = Pool(
            self.config.max_connections, self.config.timeouts.connect, proxy=self.config.proxy
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def pool(self) -> Pool:
        if self._pool is None:
            raise GatewayError("internal", f"provider {self.name} is not started")
        return self._pool

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    async def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[Response, float]:
        """POST JSON and wait for a 2xx response's headers; returns it with its deadline.

        Failures before the first byte are retryable ``GatewayError``s.
        """
        pool = self.pool()
        timeouts = self.config.timeouts
        deadline = time.monotonic() + timeouts.total if timeouts.total else float("inf")
        headers = {
            "Content-Type": "application/json",
            **self.auth_headers(),
            **(headers or {}),
            **self.config.headers,
        }
        if (traced := TRACE_HEADERS.get()) is not None:
            headers.update(traced)
        data = encodable(body, "the request")  # a pass-through field too deep: 400
        if self.signs_requests:
            headers.update(await self.sign(url, data, headers))
        within = min(timeouts.first_byte, deadline - time.monotonic())
        try:
            response = await pool.request("POST", url, headers, data, within)
        except TimeoutError:
            raise GatewayError(
                "timeout",
                f"upstream {self.name} did not answer within {timeouts.first_byte:g}s",
                retryable=True,
            ) from None
        except ClientError as error:
            raise GatewayError(
                "upstream",
                f"cannot reach upstream {self.name}: {redact(str(error), self.secrets())}",
                retryable=True,
            ) from None
        if response.status >= 300:
            try:
                raw = await response.read(_MAX_ERROR_BODY, idle=timeouts.idle)
            except (TimeoutError, ClientError):
                raw = b""
            raise self.status_error(response.status, raw, response.headers.get("retry-after"))
        return response, deadline

    async def post_json(
        self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Any:
        """POST JSON, and the whole JSON reply (a reply that is not JSON: retryable)."""
        response, deadline = await self.post(url, body, headers)
        try:
            raw = await self.read_body(response, deadline)
        finally:
            response.discard()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GatewayError(
                "upstream", f"upstream {self.name} sent a reply that is not JSON", retryable=True
            ) from None

    async def sign(self, url: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """The headers that authenticate one request (for ``signs_requests``)."""
        return {}

    async def read_body(self, response: Response, deadline: float) -> bytes:
        idle = self._read_timeout(deadline)
        cap = self._max_reply()
        try:
            if deadline == float("inf"):
                body = await response.read(cap + 1, idle=idle)
            else:
                async with asyncio.timeout(deadline - time.monotonic()):
                    body = await response.read(cap + 1, idle=idle)
        except TimeoutError:
            raise self.stall_error() from None
        except ClientError as error:
            raise self.broken_error(error) from None
        if len(body) > cap:
            raise self.too_large_error("reply")
        return body

    def _max_reply(self) -> int:
        return int(self.config.max_reply_mb * 2**20)

    def too_large_error(self, what: str) -> GatewayError:
        limit = f"providers.{self.name}.max_reply_mb, {self.config.max_reply_mb:g} MB"
        return GatewayError("upstream", f"upstream {self.name} sent a {what} larger than {limit}")

    async def stream_events(
        self,
        response: Response,
        deadline: float,
        feed: Callable[[Any], list[Event]],
        ended: Callable[[], bool],
        decoder: Any = None,
    ) -> AsyncIterator[Event]:
        """The canonical events of an SSE reply: ``feed`` turns each SSE event's data
        into them. Every read is bounded by the idle timeout; a ``Heartbeat`` after each
        ``heartbeat`` seconds of silence. Stops when ``ended()`` turns true after an
        event: the reply is complete. Another framing's ``decoder`` (with ``feed`` and
        ``flush``, as ``SSEDecoder``) hands ``feed`` each of its frames whole."""
        sse = decoder is None
        if decoder is None:
            decoder = SSEDecoder(self._max_reply())
        heartbeat = self.config.heartbeat
        complete = False
        try:
            while True:
                silent_until = time.monotonic() + self._read_timeout(deadline)
                while True:
                    try:
                        wait = min(heartbeat, silent_until - time.monotonic())
                        chunk = await response.read_chunk(_READ_SIZE, wait)
                        break
                    except TimeoutError:
                        if time.monotonic() >= silent_until:
                            raise self.stall_error() from None
                    except ClientError as error:
                        raise self.broken_error(error) from None
                    yield Heartbeat()
                if not chunk:
                    break
                try:
                    events = decoder.feed(chunk)
                except EventTooLarge:
                    raise self.too_large_error("stream event") from None
                # Several events from one read are a batch (their frames leave as one).
                # Each provider yields its Start before these: the router's wait for
                # the reply's first event never ends at a batch.
                if batch := len(events) > 1:
                    yield BATCH_BEGINS
                for frame in events:
                    for event in feed(frame[1] if sse else frame):
                        yield event
                    if ended():
                        complete = True
                        return
                if batch:
                    yield BATCH_ENDS
            for frame in decoder.flush():
                for event in feed(frame[1] if sse else frame):
                    yield event
        finally:
            if complete:
                # The body's end (a chunked terminator) usually follows the last event
                # within microseconds; when it comes, the connection goes back to the
                # pool. Closing now would throw that connection away.
                if not response.release():
                    asyncio.get_running_loop().call_later(_BODY_END_GRACE, response.close)
            else:
                # Closing (not releasing) drops a connection whose reply was cut short,
                # which is also how a client disconnect cancels the upstream request.
                response.close()

    def _read_timeout(self, deadline: float) -> float:
        return min(self.config.timeouts.idle, deadline - time.monotonic())

    def stall_error(self) -> GatewayError:
        return GatewayError(
            "timeout", f"upstream {self.name} stopped sending (idle or total timeout)"
        )

    def broken_error(self, error: Exception) -> GatewayError:
        detail = redact(str(error) or type(error).__name__, self.secrets())
        return GatewayError("upstream", f"upstream {self.name} broke off the reply: {detail}")

    def status_error(self, status: int, raw: bytes, retry_after: str | None) -> GatewayError:
        """Map an upstream error status to what the client should see."""
        detail = redact(_error_message(raw) or f"HTTP {status}", self.secrets())
        message = f"upstream {self.name}: {detail}"
        wait = parse_retry_after(retry_after, self.clock.time())
        if status in (400, 422):
            return GatewayError("invalid_request", message, code="upstream_rejected")
        if status == 413:
            return GatewayError("request_too_large", message)
        if status == 429:
            return GatewayError("rate_limit", message, retryable=True, retry_after=wait)
        if status in (408, 504):
            return GatewayError("timeout", message, retryable=True)
        if status in (503, 529):
            return GatewayError("overloaded", message, retryable=True, retry_after=wait)
        if status in (401, 403):
            # The gateway's upstream credentials failed, not the client's.
            return GatewayError(
                "upstream", f"upstream {self.name} refused the gateway's credentials: {detail}"
            )
        return GatewayError("upstream", message, retryable=status >= 500)


def stream_event(
    provider: str, payload: bytes, handle: Callable[[dict[str, Any]], list[Event]]
) -> list[Event]:
    """The events of one upstream stream event (a JSON object, given to ``handle``); an
    event that is not JSON, or of a shape ``handle`` cannot read, is an upstream error."""
    try:
        data = lenient_json.loads(payload)
    except orjson.JSONDecodeError:
        raise GatewayError(
            "upstream", f"upstream {provider} sent a stream event that is not JSON"
        ) from None
    if not isinstance(data, dict):
        return []
    try:
        return handle(data)
    except (LookupError, TypeError, AttributeError, ValueError):
        raise GatewayError(
            "upstream", f"upstream {provider} sent a stream event of the wrong shape"
        ) from None


def unfinished(provider: str) -> GatewayError:
    return GatewayError(
        "upstream", f"upstream {provider} ended the stream before the reply finished"
    )


def _error_message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace").strip()[:500]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            for key in ("message", "msg", "detail", "error_msg"):
                if isinstance(error.get(key), str):
                    return str(error[key])[:2000]
        if isinstance(error, str):
            return error[:2000]
    return raw.decode("utf-8", "replace")[:500]


# The longest Retry-After taken from an upstream: past it, the header is not believed.
_MAX_RETRY_AFTER = 86_400.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP
    date (``now``: the wall clock), within 0 and a day (``inf`` too); anything else
    (garbage, ``nan``) is ignored."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), _MAX_RETRY_AFTER)
