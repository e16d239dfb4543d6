"""Every upstream connection goes back to its pool, or is closed, whatever the client
does and wherever it does it: a hang-up while its stream's head waits behind flow
control, a close at any point of a stream, a cancellation at any await."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from lmgate.canonical import ChatRequest, Message, Start, TextPart
from lmgate.providers import build_provider
from lmgate.providers.base import Target
from lmgate.providers.http import HttpProvider
from tests.support.accounts import records
from tests.support.fakes.upstream import FakeUpstream, Script, completion, text_stream
from tests.support.gateway import API_KEY, RunningGateway, upstream_config, wait_until
from tests.support.streams import request_bytes


def provider_config(upstream: FakeUpstream) -> dict[str, Any]:
    return {"type": "openai", "base_url": upstream.url + "/v1", "max_connections": 1}


def chat(stream: bool) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message("user", [TextPart("hi")])], stream=stream)


async def test_a_stream_closed_at_its_start_gives_its_connection_back(
    upstream: FakeUpstream,
) -> None:
    provider = build_provider("up", provider_config(upstream))
    assert isinstance(provider, HttpProvider)
    await provider.start()
    try:
        for _ in range(3):  # one connection: a leaked one would block the next for good
            upstream.push(Script(chunks=text_stream(["a", "b"])))
            events = provider.stream(chat(True), Target("up-model"))
            assert isinstance(await anext(events), Start)
            await events.aclose()
            assert provider.pool().in_use == 0
    finally:
        await provider.close()


async def test_cancelled_at_any_await_the_pool_is_whole(upstream: FakeUpstream) -> None:
    """Property-style: requests cancelled after a random number of loop turns, streamed
    or not, fast or paced; afterwards no connection is held and the next one works."""
    provider = build_provider("up", provider_config(upstream))
    assert isinstance(provider, HttpProvider)
    await provider.start()
    rng = random.Random(29)
    paces = random.Random(30)  # read in the upstream's thread

    def answer(recorded: Any) -> Script:
        if recorded.body.get("stream"):
            pieces = ["w"] * paces.randint(1, 30)
            return Script(chunks=text_stream(pieces), chunk_delay=paces.choice([0, 0.001]))
        return Script(json=completion("after"), delay=paces.choice([0, 0.005]))

    upstream.route = answer  # whichever request comes, a late one of a cancelled task too
    try:
        for _ in range(40):
            stream = rng.random() < 0.6

            async def consume(stream: bool = stream) -> None:
                async for _ in provider.stream(chat(stream), Target("up-model")):
                    pass

            task = asyncio.create_task(consume())
            for _ in range(rng.randint(0, 60)):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # A stream that ended at [DONE] before it was cancelled gives its connection
            # back when the body's end comes, or closes it a grace (1 s) later: wait for
            # that state; a leaked connection never comes back.
            for _ in range(300):
                if provider.pool().in_use == 0:
                    break
                await asyncio.sleep(0.01)
            assert provider.pool().in_use == 0
        events = [event async for event in provider.stream(chat(False), Target("up-model"))]
        assert any(getattr(event, "text", "") == "after" for event in events)
    finally:
        await provider.close()


@pytest.fixture
def one_connection(start_gateway: Any, upstream: FakeUpstream, tmp_path: Path) -> RunningGateway:
    config = upstream_config(upstream, max_connections=1)
    config["store"] = {"url": f"sqlite:///{tmp_path / 'pool.db'}", "flush_interval": 0.05}
    gateway: RunningGateway = start_gateway(config)
    return gateway


def in_use(gateway: RunningGateway) -> int:
    return int(gateway.app.state.gateway.providers["up"].pool().in_use)


def test_a_hang_up_while_the_stream_head_waits_leaks_nothing(
    one_connection: RunningGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A client pipelines a GET of a large stored response (which fills the socket's
    buffers, as it reads nothing) and a stream request, then hangs up: the stream's 200
    head was waiting on flow control. The one upstream connection must come back."""
    gw = one_connection
    big = "x" * (8 * 2**20)  # beyond the kernel's send and receive buffers
    upstream.push(Script(json=completion(big, usage={"prompt_tokens": 1, "completion_tokens": 1})))
    stored = gw.request("POST", "/v1/responses", {"model": "chat-model", "input": "hi"})
    assert stored.status == 200
    response_id = stored.json()["id"]
    upstream.push(Script(chunks=text_stream(["a", "b", "c"])))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads slowly
        sock.connect(("127.0.0.1", gw.port))
        get = f"GET /v1/responses/{response_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        sock.sendall(f"{get}Authorization: Bearer {API_KEY}\r\n\r\n".encode())
        sock.sendall(request_bytes("chat-model", API_KEY))
        wait_until(lambda: len(upstream.requests) == 2)  # the stream reached the upstream
    wait_until(lambda: in_use(gw) == 0)
    # Recorded as cut short, with the prompt the upstream was sent (counted offline).
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    wait_until(lambda: any(row["status"] == 499 for row in records(url)))
    left = [row for row in records(url) if row["status"] == 499]
    assert left[0]["input_tokens"] > 0 and left[0]["stream"], str(left)
    upstream.push(Script(json=completion("next")))
    after = gw.request("POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI})
    assert (
        after.status == 200
        and orjson.loads(after.body)["choices"][0]["message"]["content"] == "next"
    )


HI = [{"role": "user", "content": "hi"}]


def test_clients_that_hang_up_anywhere_leave_the_pool_idle(
    one_connection: RunningGateway, upstream: FakeUpstream
) -> None:
    gw = one_connection
    rng = random.Random(7)
    for _ in range(25):
        upstream.reset()
        upstream.push(Script(chunks=text_stream(["w"] * 200), chunk_delay=rng.choice([0, 0.002])))
        with socket.socket() as sock:
            sock.connect(("127.0.0.1", gw.port))
            sock.sendall(request_bytes("chat-model", API_KEY))
            wanted, got = rng.randint(0, 20_000), 0
            while got < wanted:
                data = sock.recv(min(4096, wanted - got))
                if not data:
                    break
                got += len(data)
        wait_until(lambda: in_use(gw) == 0)
    upstream.reset()
    upstream.push(Script(json=completion("still here")))
    assert (
        gw.request("POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI}).status
        == 200
    )
