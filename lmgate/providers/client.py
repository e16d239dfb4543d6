"""The HTTP/1.1 client that providers reach their upstreams with.

Pooled keep-alive connections as asyncio protocols, responses parsed by httptools
(llhttp, the parser uvicorn serves the gateway's clients with), bodies buffered with
backpressure. aiohttp did the same with a third of a non-stream request's CPU (py-spy,
in front of bench/upstream.py); this does what the providers need and no more: no
redirects, no cookies, no content codings (it asks for ``identity``). Through an HTTP
proxy (``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``, or a provider's ``proxy``), https
upstreams are reached by a CONNECT tunnel and http ones by absolute-form requests.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from base64 import b64encode
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import (  # type: ignore[attr-defined]  # typeshed lacks the second
    getproxies_environment,
    proxy_bypass_environment,
)

import httptools

from lmgate.clock import Alarm

# Body bytes a response buffers before its connection stops reading: a slow client's
# stream holds at most this much of what a fast upstream sent, and one socket read.
_BUFFER_LIMIT = 128 * 1024
# What a response's head may hold. Real upstreams send a few dozen headers; a broken
# or hostile one is cut off here rather than holding the event loop or memory.
_MAX_HEADERS = 256
_MAX_HEAD_BYTES = 64 * 1024
DIRECT = "direct"  # a provider's ``proxy`` that ignores the environment's


class ClientError(Exception):
    """The upstream could not be reached, or broke off the HTTP exchange."""


def basic_credentials(url: str) -> str | None:
    """The Basic credentials of a ``user:password@`` URL, as sent."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return b64encode(pair.encode()).decode()


class Proxy:
    """An HTTP proxy: where it is, what it is shown as (no credentials), and its
    ``Proxy-Authorization`` (Basic, from a ``user:password@`` URL)."""

    __slots__ = ("authorization", "host", "port", "shown")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"a proxy must be an http:// URL with a host, not {parts.scheme}://")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.shown = f"http://{self.host}:{self.port}"
        credentials = basic_credentials(url)
        self.authorization = f"Basic {credentials}" if credentials else None


def proxy_for(url: str, configured: str | None) -> Proxy | None:
    """The proxy a request to ``url`` goes through: the configured one (``direct``:
    none), else the environment's for its scheme unless ``NO_PROXY`` names its host."""
    if configured is not None:
        return None if configured == DIRECT else Proxy(configured)
    parts = urlsplit(url)
    proxies = getproxies_environment()
    chosen = proxies.get(parts.scheme)
    if not chosen or proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return Proxy(chosen)


class _Target:
    """What a URL tells a connection: where to connect (the upstream, or its proxy),
    the request line's target, and the Host (with the Basic credentials of a
    ``user:password@`` URL, and the proxy's)."""

    __slots__ = ("host", "host_line", "key", "line", "port", "proxy", "tls")

    def __init__(self, url: str, proxy: Proxy | None = None) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.key = (self.tls, self.host, self.port)
        self.proxy = proxy
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if default else f"{host}:{self.port}"
        self.line = f" {path} HTTP/1.1\r\n"
        self.host_line = f"Host: {authority}\r\n"
        if (credentials := basic_credentials(url)) is not None:
            self.host_line += f"Authorization: Basic {credentials}\r\n"
        if proxy is not None and not self.tls:  # absolute-form, to the proxy itself
            self.line = f" http://{authority}{path} HTTP/1.1\r\n"
            if proxy.authorization:
                self.host_line += f"Proxy-Authorization: {proxy.authorization}\r\n"


class Response:
    """One response: its status and headers at once, its body as it comes."""

    __slots__ = (
        "_chunks",
        "_connection",
        "_done",
        "_error",
        "_framed",
        "_head",
        "_head_bytes",
        "_names",
        "_paused",
        "_pool",
        "_release_at_end",
        "_size",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, connection: _Connection, pool: Pool) -> None:
        self._connection: _Connection | None = connection
        self._pool = pool
        self._head: asyncio.Future[None] = pool.loop.create_future()
        self._names: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: ClientError | None = None
        self._paused = False
        self._framed = True  # the body's end is marked (a length, or chunks), not a close
        self._release_at_end = False
        self.status = 0
        self.headers: dict[str, str] = {}  # names in lower case

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    async def read_chunk(self, limit: int, idle: float | None = None) -> bytes:
        """Up to ``limit`` bytes of the body, as soon as any are there; b"" at its end.
        ``TimeoutError`` if none come within ``idle`` seconds. (A deadline only when
        there is nothing to read yet: under load there mostly is. ``asyncio.timeout``
        around each read was a tenth of a stream's CPU.)"""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            if self._connection is None:  # closed by its reader: nothing more comes
                raise ClientError("the response was closed")
            waiter = self._waiter = self._pool.loop.create_future()
            alarm = None
            if idle is not None:
                alarm = self._connection.alarm
                alarm.set(idle)
            try:
                await waiter
            finally:
                self._waiter = None
                if alarm is not None:
                    alarm.clear()
        chunks = self._chunks
        chunk = chunks.popleft()
        if chunks and len(chunk) < limit:  # all that came in one read: one piece
            pieces = [chunk]
            size = len(chunk)
            while chunks and size + len(chunks[0]) <= limit:
                pieces.append(chunk := chunks.popleft())
                size += len(chunk)
            chunk = b"".join(pieces)
        if len(chunk) > limit:
            chunks.appendleft(chunk[limit:])
            chunk = chunk[:limit]
        self._size -= len(chunk)
        if self._paused and self._size < _BUFFER_LIMIT // 2 and self._connection is not None:
            self._paused = False
            self._connection.transport.resume_reading()
        return chunk

    async def read(self, limit: int | None = None, idle: float | None = None) -> bytes:
        """The body (its first ``limit`` bytes at most); the connection is then given
        back, or dropped if the body was cut at ``limit``. ``TimeoutError`` if it pauses
        for ``idle`` seconds."""
        pieces: list[bytes] = []
        size = 0
        try:
            while limit is None or size < limit:
                room = _BUFFER_LIMIT if limit is None else limit - size
                chunk = await self.read_chunk(room, idle)
                if not chunk:
                    break
                pieces.append(chunk)
                size += len(chunk)
        except BaseException:
            self.close()
            raise
        if self._done and not self._chunks:
            self.release()
        else:
            self.close()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def release(self) -> bool:
        """Give the connection back once the body has ended; whether it is gone now."""
        if self._connection is None:
            return True
        if self._done and self._error is None:
            connection, self._connection = self._connection, None
            self._pool._put(connection)
            return True
        self._release_at_end = True
        return False

    def discard(self) -> None:
        """Whatever happened to the reader (a hang-up, a cancellation, an error): drop
        the connection, unless it was given back or is to be at its body's end."""
        if not self._release_at_end:
            self.close()

    def close(self) -> None:
        """Drop the connection (which cuts the upstream request short), unless it was
        given back already."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.response = None
            connection.transport.close()
            self._pool._free()
        self._chunks.clear()

    # ---- fed by the connection ----------------------------------------------------

    def _headers_complete(self, status: int, framed: bool) -> None:
        self.status = status
        headers = self.headers
        repeated: dict[str, list[str]] | None = None  # merged once, at the end: linear
        for raw_name, raw_value in self._names:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            if name not in headers:
                headers[name] = value
            else:
                repeated = repeated or {}
                repeated.setdefault(name, [headers[name]]).append(value)
        if repeated:
            headers.update((name, ", ".join(values)) for name, values in repeated.items())
        self._names = []
        self._framed = framed
        if not self._head.done():
            self._head.set_result(None)

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _BUFFER_LIMIT and not self._paused and self._connection is not None:
            self._paused = True
            self._connection.transport.pause_reading()
        self._wake()

    def _end(self) -> None:
        self._done = True
        self._wake()
        if self._release_at_end:
            self.release()

    def _fail(self, error: ClientError) -> None:
        if self._done:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _timed_out(self) -> None:
        """What it waits for (its head, or more of its body) took too long."""
        waiting = self._head if not self._head.done() else self._waiter
        if waiting is not None and not waiting.done():
            waiting.set_exception(TimeoutError())


class _Connection(asyncio.Protocol):
    """One kept-alive connection to an upstream; ``response`` is the exchange on it."""

    def __init__(self, pool: Pool, key: tuple[bool, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set at once
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.received = False  # any byte of the current exchange
        self.lost = False
        self.idle_since = 0.0
        # The deadline of the exchange on it (its first byte, or a pause in its body).
        self.alarm = Alarm(pool.loop, self._timed_out)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def _timed_out(self) -> None:
        if self.response is not None:
            self.response._timed_out()

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: this connection is not to be trusted
            self._unsolicited()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if self.response is not None:
                message = f"the upstream sent an invalid HTTP response ({error})"
                self.response._fail(ClientError(message))
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.alarm.close()
        response = self.response
        if response is None:
            self.pool._discard(self)
            return
        self.response = None
        if response._head.done() and not response._framed and exc is None:
            response._end()  # a body that ends with the connection
        else:
            detail = f" ({exc})" if exc else ""
            response._fail(ClientError(f"the upstream closed the connection{detail}"))
        if response._connection is self:
            response._connection = None
            self.pool._free()

    def _unsolicited(self) -> None:
        """The upstream sent a response no request asked for (or more than one for one
        request): its answers may be off by one from now on. Never reuse it."""
        self.lost = True
        self.transport.close()

    # ---- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.response is None or self.response._done:
            self.response = None  # what follows is nobody's
            self._unsolicited()

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is None:
            return
        response._names.append((name, value))
        response._head_bytes += len(name) + len(value)
        if len(response._names) > _MAX_HEADERS or response._head_bytes > _MAX_HEAD_BYTES:
            limit = f"{_MAX_HEADERS} headers or {_MAX_HEAD_BYTES // 1024} KB of them"
            response._fail(ClientError(f"the upstream sent a response head over {limit}"))
            self.response = None
            self._unsolicited()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        response = self.response
        if response is None:
            return
        if status < 200:  # 100 Continue and the like: the real response follows
            response._names = []
            return
        names = {name.lower() for name, _ in response._names}
        response._headers_complete(
            status, b"content-length" in names or b"transfer-encoding" in names
        )

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._body(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or not response._head.done():
            return
        if not self.parser.should_keep_alive():
            self.lost = True  # not to be reused; it closes
        response._end()


class _Tunnel(asyncio.Protocol):
    """A proxy's answer to CONNECT: its status, once its head has come."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._head = b""

    def data_received(self, data: bytes) -> None:
        self._head += data
        if self.answer.done():
            return
        if b"\r\n\r\n" in self._head:
            status = self._head.split(b" ", 2)[1] if self._head.startswith(b"HTTP/") else b""
            self.answer.set_result(int(status) if status.isdigit() else 0)
        elif len(self._head) > _MAX_HEAD_BYTES:
            self.answer.set_exception(ClientError("the proxy sent a head too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ClientError("the proxy closed the connection"))


class Pool:
    """Kept-alive connections to upstreams, at most ``limit`` of them in use at once
    (a request past that waits for one); an idle one is reused for ``keepalive``
    seconds at most."""

    def __init__(
        self,
        limit: int,
        connect_timeout: float,
        keepalive: float = 60.0,
        proxy: str | None = None,
    ) -> None:
        """``proxy``: an http:// proxy URL, ``direct``, or None for the environment's."""
        self.loop = asyncio.get_running_loop()
        self.proxy = proxy
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.in_use = 0
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._targets: dict[str, _Target] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    @property
    def idle(self) -> int:
        return sum(len(connections) for connections in self._idle.values())

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes = b"",
        within: float | None = None,
    ) -> Response:
        """Send a request and wait for its response's head; ``TimeoutError`` when that
        takes over ``within`` seconds (waiting for a free connection and connecting
        included). A kept-alive connection that turns out closed before any byte of
        the answer is retried once on a new one: the upstream closed it for idleness
        as the request went out."""
        target = self._targets.get(url)
        if target is None:
            try:
                proxy = proxy_for(url, self.proxy)
            except ValueError as error:  # the environment's: config checks the provider's
                raise ClientError(f"HTTPS_PROXY/HTTP_PROXY: {error}") from None
            target = self._targets[url] = _Target(url, proxy)
        lines = [method, target.line, target.host_line]
        for name, value in headers.items():
            if "\n" in value or "\r" in value:
                raise ClientError(f"the value of header {name} holds a line break")
            if len(name) == 4 and name.lower() == "host":  # a Host of the config's own
                lines[2] = lines[2].partition("\r\n")[2]
            lines += (name, ": ", value, "\r\n")
        lines.append(f"Accept-Encoding: identity\r\nContent-Length: {len(body)}\r\n\r\n")
        try:
            head = "".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            raise ClientError("a header holds a character HTTP cannot carry") from None
        deadline = None if within is None else self.loop.time() + within
        for attempt in (0, 1):
            connection, reused = await self._acquire(target, deadline)
            response = Response(connection, self)
            connection.response = response
            connection.received = False
            try:
                connection.transport.writelines((head, body))  # no copy of the body
                if deadline is not None:
                    connection.alarm.set(deadline - self.loop.time())
                try:
                    await response._head
                finally:
                    connection.alarm.clear()
            except ClientError:
                response.close()
                if reused and attempt == 0 and not connection.received:
                    continue
                raise
            except BaseException:
                response.close()  # cancelled (a timeout, or the client left): cut it
                raise
            return response
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.transport.close()
        self._idle.clear()

    async def _acquire(self, target: _Target, deadline: float | None) -> tuple[_Connection, bool]:
        """A connection to ``target`` (a kept-alive one if any), once one is free;
        ``TimeoutError`` past ``deadline`` (of the loop's clock)."""
        if self.in_use >= self.limit:
            async with asyncio.timeout_at(deadline):
                await self._slot()
        self.in_use += 1
        try:
            idle = self._idle.get(target.key)
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if not connection.lost and now - connection.idle_since < self.keepalive:
                    return connection, True
                connection.transport.close()
            return await self._connect(target, deadline), False
        except BaseException:
            self.in_use -= 1
            self._wake_one()
            raise

    async def _slot(self) -> None:
        while self.in_use >= self.limit:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass on the slot it was given
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, target: _Target, deadline: float | None) -> _Connection:
        tls = None
        if target.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        proxy = target.proxy
        limit = self.loop.time() + self.connect_timeout
        try:
            async with asyncio.timeout_at(limit if deadline is None else min(limit, deadline)):
                if proxy is None:
                    _, connection = await self.loop.create_connection(
                        lambda: _Connection(self, target.key),
                        target.host,
                        target.port,
                        ssl=tls,
                        server_hostname=target.host if tls else None,
                    )
                elif tls is None:  # plain HTTP: absolute-form requests to the proxy
                    _, connection = await self.loop.create_connection(
                        lambda: _Connection(self, target.key), proxy.host, proxy.port
                    )
                else:
                    connection = await self._tunnel(target, proxy, tls)
        except TimeoutError:
            if deadline is not None and deadline < limit:
                raise  # the request's own deadline
            raise ClientError(f"no connection within {self.connect_timeout:g}s") from None
        except (OSError, ssl.SSLError) as error:
            where = f" (through the proxy {proxy.shown})" if proxy is not None else ""
            raise ClientError((str(error) or type(error).__name__) + where) from None
        return connection

    async def _tunnel(self, target: _Target, proxy: Proxy, tls: ssl.SSLContext) -> _Connection:
        """A CONNECT tunnel through ``proxy``, then TLS with the upstream inside it."""
        transport, tunnel = await self.loop.create_connection(_Tunnel, proxy.host, proxy.port)
        try:
            authority = f"{target.host}:{target.port}"
            head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
            if proxy.authorization:
                head += f"Proxy-Authorization: {proxy.authorization}\r\n"
            transport.write((head + "\r\n").encode("latin-1"))
            status = await tunnel.answer
            if status != 200:
                raise ClientError(
                    f"the proxy {proxy.shown} refused the tunnel to {authority} (HTTP {status})"
                )
            connection = _Connection(self, target.key)
            secured = await self.loop.start_tls(
                transport, connection, tls, server_hostname=target.host
            )
        except BaseException:
            transport.close()
            raise
        assert secured is not None
        connection.connection_made(secured)
        return connection

    def _put(self, connection: _Connection) -> None:
        """A connection whose exchange ended: idle again, or closed."""
        connection.response = None
        self.in_use -= 1
        if connection.lost or self._closed:
            connection.transport.close()
        else:
            connection.idle_since = time.monotonic()
            idle = self._idle.setdefault(connection.key, [])
            idle.append(connection)
            if len(idle) > self.limit:
                idle.pop(0).transport.close()
        self._wake_one()

    def _free(self) -> None:
        """A connection dropped while in use."""
        self.in_use -= 1
        self._wake_one()

    def _discard(self, connection: _Connection) -> None:
        """An idle connection the upstream closed."""
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
