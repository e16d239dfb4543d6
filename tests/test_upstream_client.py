"""lmgate's HTTP/1.1 client for upstreams (lmgate/providers/client.py), against real
servers on loopback scripted byte for byte: the framings a body can have, reuse of
kept-alive connections and the race with an upstream that closes them, the cap on
connections, backpressure, broken answers, and TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lmgate.providers.client import _BUFFER_LIMIT, ClientError, Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """A loopback server whose every connection runs ``handler``; counts connections
    and the requests it read, and how many connections were open at once."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/v1/chat?x=1"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float = 0
    ) -> None:
        """Answer every request on a connection with ``OK`` (after ``delay`` seconds)."""
        while True:
            await self.read_request(reader)
            await asyncio.sleep(delay)
            writer.write(OK)
            await writer.drain()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def test_bodies_of_every_framing_are_read_whole() -> None:
    answers = [
        OK,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",  # ends with the connection
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            await upstream.read_request(reader)
            writer.write(answers.pop(0))
            await writer.drain()

    async def test() -> None:
        pool = Pool(8, connect_timeout=2)
        bodies = []
        for host in (None, None, "api.internal"):
            headers = {"X-A": "1"} if host is None else {"host": host}
            response = await pool.request("POST", upstream.url, headers, b'{"q":1}')
            bodies.append((response.status, await response.read()))
        assert bodies == [(200, b"{}"), (200, b"abcde"), (200, b"until the end")]
        assert upstream.connections == 1  # kept alive until the server said close
        first = upstream.requests[0]
        assert first.startswith(b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"\r\nX-A: 1\r\n" in first and b"Accept-Encoding: identity" in first
        assert first.endswith(b'\r\n\r\n{"q":1}')
        assert (pool.in_use, pool.idle) == (0, 0)
        await pool.close()
        assert upstream.requests[1].count(b"Host: ") == 1  # the default one
        assert b"\r\nhost: api.internal\r\n" in upstream.requests[2]
        assert upstream.requests[2].count(b"Host: ") == 0

    upstream = Upstream(handler)

    async def main() -> None:
        async with upstream:
            await test()

    run(main)


def test_a_kept_alive_connection_the_upstream_closed_is_retried_once_on_a_new_one() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The first connection answers once, then closes the moment the next request
        # arrives, unread (as a server timing out an idle connection does); the
        # second answers normally.
        if upstream.connections > 1:
            return await upstream.answer(reader, writer)
        await upstream.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await reader.read(1)
        writer.transport.abort()

    async def main() -> None:
        async with upstream:
            pool = Pool(8, connect_timeout=2)
            for _ in range(3):
                response = await pool.request("POST", upstream.url, {}, b"{}")
                assert await response.read() == b"{}"
            assert upstream.connections == 2
            assert len(upstream.requests) == 3  # none twice
            await pool.close()

    upstream = Upstream(handler)
    run(main)


def test_a_fresh_connection_that_breaks_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.transport.abort()

    async def main() -> None:
        async with upstream:
            pool = Pool(8, connect_timeout=2)
            with pytest.raises(ClientError, match="closed the connection"):
                await pool.request("POST", upstream.url, {}, b"{}")
            assert len(upstream.requests) == 1
            assert pool.in_use == 0
            await pool.close()

    upstream = Upstream(handler)
    run(main)


def test_at_most_limit_connections_are_in_use_and_the_rest_wait() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.answer(reader, writer, delay=0.05)

    async def main() -> None:
        async with upstream:
            pool = Pool(2, connect_timeout=2)

            async def one() -> bytes:
                response = await pool.request("POST", upstream.url, {}, b"{}")
                return await response.read()

            assert await asyncio.gather(*(one() for _ in range(7))) == [b"{}"] * 7
            assert upstream.most_open == 2 and upstream.connections == 2
            assert (pool.in_use, pool.idle) == (0, 2)
            # One that gives up waiting for a connection takes no slot with it.
            hold = [await pool.request("POST", upstream.url, {}, b"{}") for _ in range(2)]
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await pool.request("POST", upstream.url, {}, b"{}")
            for response in hold:
                await response.read()
            assert await one() == b"{}"
            assert pool.in_use == 0
            await pool.close()

    upstream = Upstream(handler)
    run(main)


def test_a_head_not_in_within_its_time_is_a_timeout_that_frees_its_connection() -> None:
    silent = asyncio.Event()  # set: the upstream reads requests and answers none

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream.read_request(reader)
            if not silent.is_set():
                writer.write(OK)
                await writer.drain()

    async def main() -> None:
        async with upstream:
            pool = Pool(1, connect_timeout=2)
            # A kept-alive connection whose last deadline was long: a shorter one holds.
            first = await pool.request("POST", upstream.url, {}, b"{}", within=30)
            assert await first.read() == b"{}"
            silent.set()
            began = asyncio.get_running_loop().time()
            with pytest.raises(TimeoutError):
                await pool.request("POST", upstream.url, {}, b"{}", within=0.2)
            assert asyncio.get_running_loop().time() - began < 2
            assert (pool.in_use, pool.idle) == (0, 0)  # the connection it waited on: cut
            # Waiting for a free connection counts: the one slot is held.
            silent.clear()
            held = await pool.request("POST", upstream.url, {}, b"{}", within=1)
            began = asyncio.get_running_loop().time()
            with pytest.raises(TimeoutError):
                await pool.request("POST", upstream.url, {}, b"{}", within=0.2)
            assert asyncio.get_running_loop().time() - began < 2
            assert await held.read() == b"{}"
            answered = await pool.request("POST", upstream.url, {}, b"{}", within=1)
            assert await answered.read() == b"{}"
            assert pool.in_use == 0 and upstream.connections == 2
            await pool.close()

    upstream = Upstream(handler)
    run(main)


def test_a_body_nobody_reads_stops_the_upstream_at_a_bounded_buffer() -> None:
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"data: " + b"x" * 4000 + b"\n\n"
        while sent < 20_000_000:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            await writer.drain()

    async def main() -> None:
        async with upstream:
            pool = Pool(2, connect_timeout=2)
            response = await pool.request("POST", upstream.url, {}, b"{}")
            assert response.content_type == "text/event-stream"
            await asyncio.sleep(0.5)  # the upstream writes as fast as it can meanwhile
            # At most one socket read (256 KB in asyncio) past the limit.
            assert response._size <= _BUFFER_LIMIT + 256 * 1024, response._size
            assert sent < 8_000_000, sent  # it was held back, not read into memory
            chunk = await response.read_chunk(65536)
            assert chunk.startswith(b"data: xxx") and len(chunk) <= 65536
            response.close()
            assert pool.in_use == 0
            await pool.close()

    upstream = Upstream(handler)
    run(main)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", "invalid HTTP response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed the connection"),
    ],
)
def test_a_broken_answer_is_a_client_error(answer: bytes, message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.transport.abort()

    async def main() -> None:
        async with upstream:
            pool = Pool(2, connect_timeout=2)
            with pytest.raises(ClientError, match=message):
                response = await pool.request("POST", upstream.url, {}, b"{}")
                await response.read()
            assert pool.in_use == 0
            await pool.close()

    upstream = Upstream(handler)
    run(main)


def test_an_interim_answer_is_skipped_and_a_silent_body_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nContent-Length: 9\r\n\r\nslow")
        await writer.drain()
        await reader.read(1)  # the rest never comes

    async def main() -> None:
        async with upstream:
            pool = Pool(2, connect_timeout=2)
            response = await pool.request("POST", upstream.url, {}, b"{}")
            assert (response.status, response.headers["retry-after"]) == (429, "3")
            with pytest.raises(TimeoutError):
                await response.read(idle=0.2)
            assert pool.in_use == 0
            await pool.close()

    upstream = Upstream(handler)
    run(main)


def test_nothing_listening_and_bad_headers_are_client_errors(refusing_port: int) -> None:
    async def main() -> None:
        pool = Pool(2, connect_timeout=2)
        with pytest.raises(ClientError):
            await pool.request("POST", f"http://127.0.0.1:{refusing_port}/v1", {}, b"{}")
        with pytest.raises(ClientError, match="line break"):
            await pool.request("POST", "http://127.0.0.1:1/v1", {"X": "a\r\nEvil: 1"}, b"")
        with pytest.raises(ClientError, match="cannot carry"):
            await pool.request("POST", "http://127.0.0.1:1/v1", {"X": "\U0001f600"}, b"")
        assert pool.in_use == 0

    run(main)


@pytest.fixture
def refusing_port() -> int:
    from tests.support.gateway import refusing_url

    port = refusing_url("").rsplit(":", 1)[1]
    return int(port)


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lmgate test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_https_verifies_the_upstream_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_file, key_file = self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert_file, key_file)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.answer(reader, writer)

    async def main() -> None:
        async with upstream:
            untrusting = Pool(2, connect_timeout=2)
            with pytest.raises(ClientError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.request("POST", upstream.url, {}, b"{}")
            monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # read by the default context
            trusting = Pool(2, connect_timeout=2)
            response = await trusting.request("POST", upstream.url, {}, b"{}")
            assert await response.read() == b"{}"
            assert upstream.requests[-1].startswith(b"POST /v1/chat?x=1 HTTP/1.1\r\n")
            await untrusting.close()
            await trusting.close()

    upstream = Upstream(handler, tls=server_side)
    run(main)


def test_credentials_in_the_url_are_sent_as_basic_auth() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.answer(reader, writer)

    async def main() -> None:
        async with upstream:
            pool = Pool(2, connect_timeout=2)
            url = upstream.url.replace("http://", "http://us%40er:p%3Ass@")
            for headers in ({}, {"Host": "api.internal"}):
                response = await pool.request("POST", url, headers, b"{}")
                assert await response.read() == b"{}"
            await pool.close()
        basic = b"Authorization: Basic " + base64.b64encode(b"us@er:p:ss") + b"\r\n"
        assert all(basic in request for request in upstream.requests)
        assert b"Host: 127.0.0.1:" not in upstream.requests[1]

    upstream = Upstream(handler)
    run(main)


# ---- what a hostile or broken upstream cannot do ----------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"".join(b"X-Dup: %d\r\n" % i for i in range(100_000)),  # 1.4 MB of one repeated name
        b"X-Big: " + b"v" * 200_000 + b"\r\n",
    ],
    ids=["many", "large"],
)
def test_an_oversized_response_head_is_refused_at_once(head: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read()

    async def test() -> None:
        pool = Pool(1, connect_timeout=2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ClientError, match="response head over 256 headers or 64 KB"):
            await pool.request("POST", upstream.url, {}, b"{}")
        # Bounded work (the 100,000 headers were merged one by one, quadratically, before).
        assert loop.time() - started < 2
        assert pool.in_use == 0 and pool.idle == 0

    upstream = Upstream(handler)

    async def scoped() -> None:
        async with upstream:
            await test()

    run(scoped)


@pytest.mark.parametrize("when", ["same segment", "while idle"])
def test_a_connection_that_answered_twice_is_never_reused(when: str) -> None:
    """An upstream that sends an extra response, with the first or later while the
    connection is idle: the next request gets its own answer on a new connection,
    never the stray one."""
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{stray}"
    first_read = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = 0
        while True:
            await upstream.read_request(reader)
            number += 1
            body = b'{"n":%d}' % number
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            first = upstream.connections == 1
            writer.write(answer + stray if first and when == "same segment" else answer)
            await writer.drain()
            if first and when == "while idle":
                await first_read.wait()
                writer.write(stray)
                await writer.drain()

    async def test() -> None:
        pool = Pool(1, connect_timeout=2)
        first = await (await pool.request("POST", upstream.url, {}, b"{}")).read()
        assert first == b'{"n":1}'
        first_read.set()
        for _ in range(500):  # until the stray answer reached the idle connection: dropped
            if not pool.idle:
                break
            await asyncio.sleep(0.01)
        second = await (await pool.request("POST", upstream.url, {}, b"{}")).read()
        assert second == b'{"n":1}' and upstream.connections == 2  # a new connection's first
        await pool.close()

    upstream = Upstream(handler)

    async def scoped() -> None:
        async with upstream:
            await test()

    run(scoped)
