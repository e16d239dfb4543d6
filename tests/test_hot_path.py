"""The request path's hygiene, checked cheaply (speed itself is measured in bench/):
nothing blocking runs on the event loop while a request is answered, and nothing is
logged per streamed chunk."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fakes.upstream import FakeUpstream, Script, text_stream
from tests.support.gateway import API_KEY, RunningGateway

# Audit events of calls that block the thread that makes them (see the audit events
# table in Python's docs). Made on the event loop's thread, each stalls every request.
BLOCKING = frozenset(
    {
        "open",
        "time.sleep",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "subprocess.Popen",
        "os.system",
        "os.posix_spawn",
        "sqlite3.connect",
        "shutil.copyfile",
    }
)

_watched: dict[str, Any] = {"thread": None, "seen": []}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in BLOCKING and threading.get_ident() == _watched["thread"]:
        _watched["seen"].append((event, args[:1]))


sys.addaudithook(_audit)  # hooks cannot be removed: this one only looks when asked


@pytest.fixture
def watched(gateway: RunningGateway) -> Iterator[list[tuple[str, Any]]]:
    """What the gateway's event loop thread did that blocks, while the test runs."""
    _watched["seen"] = []
    _watched["thread"] = gateway.thread.ident
    try:
        yield _watched["seen"]
    finally:
        _watched["thread"] = None


def test_the_loop_never_blocks_while_answering(
    gateway: RunningGateway, upstream: FakeUpstream, watched: list[tuple[str, Any]]
) -> None:
    client = gateway.client()
    # Warm: what runs once per process (the tokenizer loading, first imports) is not
    # the request path.
    upstream.push(Script(chunks=text_stream(["warm"])))
    hello: Any = [{"role": "user", "content": "hi"}]
    list(client.chat.completions.create(model="chat-model", messages=hello, stream=True))
    watched.clear()
    for stream in (False, True, False, True):
        if stream:
            upstream.push(Script(chunks=text_stream(["a"] * 50)))
            list(client.chat.completions.create(model="chat-model", messages=hello, stream=True))
        else:
            client.chat.completions.create(model="chat-model", messages=hello)
    gateway.anthropic().messages.create(
        model="chat-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert watched == []


def test_requests_on_a_kept_alive_connection_make_no_loop_timer_each(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    # A loop timer costs microseconds to make and cancel; each request's deadlines
    # (its head, its body, the keep-alive, the upstream's first byte and pauses, the
    # watch for a client that leaves) are moved on alarms that outlive it instead.
    # One kept-alive connection (the OpenAI SDK drops its connection after each stream).
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"})
    hello: Any = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]}
    assert http.post("/v1/chat/completions", json=hello).status_code == 200  # connections made
    made: list[str] = []
    loop: Any = gateway.loop
    call_at, call_later = loop.call_at, loop.call_later

    def counted(make: Any) -> Any:
        def timer(*args: Any, **kwargs: Any) -> Any:
            made.append(getattr(args[1], "__qualname__", "?"))
            return make(*args, **kwargs)

        return timer

    loop.call_at, loop.call_later = counted(call_at), counted(call_later)
    try:
        for _ in range(20):
            assert http.post("/v1/chat/completions", json=hello).status_code == 200
            upstream.push(Script(chunks=text_stream(["a"] * 5)))
            streamed = http.post("/v1/chat/completions", json={**hello, "stream": True})
            assert streamed.text.endswith("data: [DONE]\n\n")
    finally:
        del loop.call_at, loop.call_later
        http.close()
    assert len(made) < 10, Counter(made)  # the store's flushes and such; not 4 a request


def test_the_audit_hook_sees_a_blocking_call(
    gateway: RunningGateway, watched: list[tuple[str, Any]]
) -> None:
    # The check above could pass by looking at the wrong thread: make the loop's
    # thread block once, on purpose, and see it noticed.
    done = threading.Event()

    def block() -> None:
        open(__file__).close()  # the blocking call itself
        done.set()

    gateway.loop.call_soon_threadsafe(block)
    assert done.wait(5)
    assert ("open", (__file__,)) in watched


def test_nothing_is_logged_per_chunk(
    gateway: RunningGateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    client = gateway.client()
    lines = []
    for pieces in (5, 200):
        upstream.push(Script(chunks=text_stream(["word "] * pieces)))
        with caplog.at_level(logging.DEBUG):
            caplog.clear()
            got = list(
                client.chat.completions.create(
                    model="chat-model", messages=[{"role": "user", "content": "hi"}], stream=True
                )
            )
            assert len(got) >= pieces
            lines.append(
                len([r for r in caplog.records if r.name.startswith(("lmgate", "uvicorn"))])
            )
    assert lines[1] == lines[0] <= 2  # the same few lines, however long the stream


def test_the_default_config_loads_only_what_it_uses() -> None:
    # The echo model alone needs no HTTP client, no Redis and (until scraped) no
    # Prometheus library, no JWT library (sign-in is off): each costs import time and
    # memory at every start.
    script = (
        "import sys; from lmgate.web.app import build_app; from lmgate.config import load_config;"
        "build_app(load_config(None));"
        "print(' '.join(m for m in ('aiohttp', 'redis', 'prometheus_client', 'asyncpg', 'botocore',"
        " 'jwt')"
        " if m in sys.modules))"
    )
    environment = {k: v for k, v in os.environ.items() if k != "DEEPSEEK_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
