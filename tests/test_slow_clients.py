"""Clients that hold what they should not: hang up on a fast upstream, never read,
send a request byte by byte, or never send one, or open too many connections.
Against ``lmgate serve`` in its own process, as a user runs it (uvloop, httptools,
and an upstream in another process than the gateway, which is what made a fast
upstream outrun the disconnect)."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from lmgate.clock import Alarm
from lmgate.web.server import EventStream
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import Served, wait_until
from tests.support.streams import big_stream, request_bytes

REQUEST = request_bytes("m")
BODY = REQUEST.split(b"\r\n\r\n", 1)[1]


def start(serve: Any, upstream: FakeUpstream, tmp_path: Path, **server: Any) -> Served:
    config = {
        "server": server,
        "store": {"url": f"sqlite:///{tmp_path}/usage.db", "flush_interval": 0.05},
        "providers": {"up": {"type": "openai", "base_url": upstream.url + "/v1"}},
        "models": [{"id": "m", "provider": "up"}],
    }
    path = tmp_path / "lmgate.yaml"
    path.write_bytes(orjson.dumps(config))
    return serve("--config", str(path))  # type: ignore[no-any-return]


def records(tmp_path: Path, *columns: str) -> list[tuple[Any, ...]]:
    names = ", ".join(("status", "error_type", *columns))
    with sqlite3.connect(tmp_path / "usage.db") as db:
        return db.execute(f"SELECT {names} FROM lmgate_usage ORDER BY id").fetchall()


OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Any:
    yield
    while OPEN:
        OPEN.pop().close()


def connect(served: Served, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    OPEN.append(sock)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", served.port))
    sock.settimeout(20)
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while piece := sock.recv(65536):
        data += piece
    return data


def rss_mb(served: Served) -> float:
    with open(f"/proc/{served.process.pid}/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def test_a_client_that_hangs_up_stops_a_fast_upstream(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    served = start(serve, upstream, tmp_path)
    for number in range(1, 6):
        upstream.push(big_stream())
        sock = connect(served)
        sock.sendall(REQUEST)
        got = 0
        while got < 100_000:
            got += len(sock.recv(65536))
        sock.close()
        # Cut within the stream's first megabytes, not after its 40.
        wait_until(lambda number=number: upstream.cancelled == number)
    assert upstream.completed == 0
    wait_until(lambda: len(records(tmp_path)) == 5)
    rows = records(tmp_path, "input_tokens", "output_tokens")
    assert [row[:2] for row in rows] == [(499, "client_disconnected")] * 5
    # What the upstream produced before the client left is spent (counted offline:
    # the upstream reports usage only at the end); at least what the client read.
    assert all(row[2] > 0 and row[3] >= 10_000 for row in rows), rows  # 125 per KB chunk


def test_clients_that_never_read_are_cut_and_hold_little(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    served = start(serve, upstream, tmp_path, timeouts={"write": 2})
    streams = 40
    upstream.push(*[big_stream(20_000) for _ in range(streams)])
    before = rss_mb(served)
    socks = [connect(served, receive_buffer=4096) for _ in range(streams)]
    for sock in socks:
        sock.sendall(REQUEST)
    wait_until(lambda: len(upstream.requests) == streams)
    held = rss_mb(served) - before  # measured before the write timeout lets them go
    # Each stream holds a bounded buffer, not what the upstream sent meanwhile (that
    # was 3.4 MB a stream: the decoded events of whatever had arrived, and the text).
    assert held < streams * 2, held
    wait_until(lambda: upstream.cancelled == streams, timeout=20)
    for sock in socks:
        sock.close()
    wait_until(lambda: len(records(tmp_path)) == streams)
    assert set(records(tmp_path)) == {(499, "client_disconnected")}
    assert upstream.completed == 0


def test_a_request_head_sent_too_slowly_gets_a_408(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    served = start(serve, upstream, tmp_path, timeouts={"head": 1})
    silent = connect(served)  # sends nothing at all
    slow = connect(served)  # slowloris: the head a few bytes at a time
    started = time.monotonic()
    for piece in (b"POST /v1/chat/com", b"pletions HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n"):
        slow.sendall(piece)
        time.sleep(0.3)
    for sock in (silent, slow):
        reply = read_all(sock)  # the gateway closes the connection after its answer
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        body = orjson.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert "server.timeouts.head" in body["error"]["message"]
    assert time.monotonic() - started < 5
    assert served.request("GET", "/health")[0] == 200


def test_a_body_sent_too_slowly_gets_a_408(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    served = start(serve, upstream, tmp_path, timeouts={"body": 1})
    sock = connect(served)
    sock.sendall(REQUEST[: -len(BODY)] + BODY[:10])  # a tenth of the declared body
    started = time.monotonic()
    reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert b"server.timeouts.body" in reply
    assert 0.8 < time.monotonic() - started < 5
    wait_until(lambda: records(tmp_path) == [(499, "client_disconnected")])
    assert upstream.requests == []


def test_an_idle_keep_alive_connection_is_closed(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    served = start(serve, upstream, tmp_path, timeouts={"keep_alive": 0.5})
    sock = connect(served)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    started = time.monotonic()
    reply = read_all(sock)  # ends when the gateway closes the idle connection
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b'{"status":"ok"}')
    assert 0.4 < time.monotonic() - started < 5


def read_reply(sock: socket.socket) -> bytes:
    """One whole reply with a content-length, on a connection kept open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"<closed>"
        assert not data.endswith(b"<closed>"), data
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_the_deadlines_follow_a_kept_alive_connection(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    # One alarm per connection holds its head, body and keep-alive deadlines in turn:
    # a busy connection outlives many keep-alive periods, and a head begun after an
    # idle spell gets the (shorter) head deadline, not what was left of the keep-alive.
    served = start(serve, upstream, tmp_path, timeouts={"keep_alive": 0.3, "head": 0.5})
    sock = connect(served)
    started = time.monotonic()
    answered = 0
    while time.monotonic() - started < 1.5:  # five keep-alive periods, never idle long
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_reply(sock).startswith(b"HTTP/1.1 200 ")
        answered += 1
        time.sleep(0.1)
    assert answered >= 10
    # A head that stops halfway, sent before the keep-alive ran out: a 408 for the head.
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    began = time.monotonic()
    reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"server.timeouts.head" in reply, reply
    assert 0.4 < time.monotonic() - began < 5
    # And one idle past its keep-alive is closed.
    idle = connect(served)
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert read_reply(idle).startswith(b"HTTP/1.1 200 ")
    began = time.monotonic()
    assert idle.recv(1) == b""
    assert 0.2 < time.monotonic() - began < 5


class _Timer:
    def __init__(self, when: float, callback: Any) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    """What an alarm uses of its event loop, with time moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[_Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> _Timer:
        self.timers.append(timer := _Timer(when, callback))
        return timer

    def run_until(self, moment: float) -> None:
        while due := [t for t in self.timers if not t.cancelled and t.when <= moment]:
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = timer.when
            timer.callback()
        self.now = moment


def test_an_alarm_moves_its_deadline_without_a_timer_each_time() -> None:
    loop = _Loop()
    rang: list[float] = []
    alarm = Alarm(loop, lambda: rang.append(loop.now))  # type: ignore[arg-type]
    alarm.set(10)
    for moment in range(1, 6):  # moved later five times: still the one timer
        loop.run_until(moment)
        alarm.set(10)
    assert len(loop.timers) == 1 and rang == []
    loop.run_until(14.9)  # the timer fired at 10, early: it waits for the rest
    assert rang == [] and alarm.pending
    loop.run_until(15)
    assert rang == [15] and not alarm.pending
    alarm.set(10)  # then sooner than its timer: a new one, at the sooner time
    alarm.set(1)
    loop.run_until(16)
    assert rang == [15, 16]
    alarm.set(1)
    alarm.clear()  # cleared: its timer finds nothing to do
    loop.run_until(30)
    assert rang == [15, 16]
    alarm.set(1)
    alarm.close()  # closed: no timer left
    assert all(timer.cancelled for timer in loop.timers)


def test_connections_beyond_the_cap_get_a_503(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    served = start(serve, upstream, tmp_path, max_connections=5)
    idle = [connect(served) for _ in range(5)]
    extra = connect(served)
    reply = read_all(extra)
    assert reply.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in reply.lower()
    body = orjson.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert "server.max_connections" in body["error"]["message"]
    for sock in idle:
        sock.close()
    wait_until(lambda: _health(served))
    with open(f"/proc/{served.process.pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard  # raised to the hard limit at start


def _health(served: Served) -> bool:
    try:
        return served.request("GET", "/health")[0] == 200
    except OSError:
        return False


def test_shutdown_writes_the_records_of_streams_blocked_on_clients(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    served = start(serve, upstream, tmp_path, shutdown_grace=1, timeouts={"write": 60})
    streams = 10
    upstream.push(*[big_stream(20_000) for _ in range(streams)])
    socks = [connect(served, receive_buffer=4096) for _ in range(streams)]
    for sock in socks:
        sock.sendall(REQUEST)
    wait_until(lambda: len(upstream.requests) == streams)
    time.sleep(0.5)  # let them fill their buffers and block
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(15) in (0, -signal.SIGTERM)
    output = served.process.stdout.read() if served.process.stdout else ""
    assert "Traceback" not in output
    assert "returned without completing response" not in output
    assert len(records(tmp_path)) == streams
    for sock in socks:
        sock.close()


def test_a_stream_cut_while_its_head_waits_still_ends_what_it_reads() -> None:
    # The head of a reply can wait on flow control (a pipelined request behind a
    # reply the client has not taken); a client that leaves then cancels the reply
    # before its frames start, and closing frames that never started does not reach
    # the events they read: the upstream request and the usage record are there.
    async def scenario() -> bool:
        closed = asyncio.Event()

        async def events() -> AsyncIterator[str]:
            try:
                yield "start"
                yield "text"
            finally:
                closed.set()

        source = events()
        await anext(source)  # as the gateway does, before it answers 200

        async def frames() -> AsyncIterator[bytes]:
            async for event in source:
                yield event.encode()

        head_sent = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                head_sent.set()
                await asyncio.Event().wait()  # a transport that never drains

        async def receive() -> dict[str, Any]:
            await head_sent.wait()
            return {"type": "http.disconnect"}

        stream = EventStream(frames(), {}, source)  # type: ignore[arg-type]
        await asyncio.wait_for(stream({}, receive, send), 5)
        return closed.is_set()

    assert asyncio.run(scenario())
