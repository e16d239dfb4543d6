"""Soak: 100 concurrent clients (OpenAI and Anthropic SDKs, streamed and not) for a
bounded time against an upstream that misbehaves at random, joined in the later
phases by hostile clients: some never read their (fast, long) streams, some hang
up after the first bytes, some send their request head a byte at a time. Every
request must end in a valid reply or a valid protocol error, nothing may hang,
and afterwards no slot, task, connection or descriptor may be left behind, memory
must be flat, and every request that reached the gateway has its usage record, up
to a shutdown with hostile streams still in flight."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.support.fakes.upstream import (
    FakeUpstream,
    Recorded,
    Script,
    chunk,
    completion,
    text_stream,
)
from tests.support.gateway import API_KEY, RunningGateway, wait_until
from tests.support.streams import big_stream, request_bytes

CONCURRENCY = 100
PHASE_SECONDS = int(
    os.environ.get("SOAK_SECONDS", 8)
)  # three phases: the third must not grow memory
PER_REQUEST_LIMIT = 15  # seconds; longer is a hang

FAULTS: list[tuple[int, Script]] = [  # (weight, script)
    (30, Script(json=completion("fine"))),
    (30, Script(chunks=text_stream(["fi", "ne"]))),
    (5, Script(chunks=text_stream(["slow", "ly"]), chunk_delay=0.05)),
    (5, Script(status=500, json={"error": {"message": "boom"}})),
    (5, Script(status=429, json={"error": {"message": "slow down"}}, headers={"Retry-After": "0"})),
    (5, Script(status=529, json={"error": {"message": "overloaded"}})),
    (3, Script(json=completion("late"), delay=1.0)),  # past the first-byte timeout
    (3, Script(chunks=text_stream(["a", "b", "c"]), stall_after=1)),  # past the idle timeout
    (3, Script(chunks=text_stream(["a", "b", "c"]), disconnect_after=2)),
    (3, Script(raw=b"{not json", content_type="application/json")),
    (3, Script(raw=b"<html>", content_type="text/html")),
    (3, Script(chunks=[chunk(delta={"content": "x"}), b"data: {broken\n\n"])),
]
OPENAI_ERRORS = {429, 502, 503, 504}
ANTHROPIC_ERRORS = {429, 502, 504, 529}


# A request sent on a kept-alive connection as the gateway closes it for idleness
# (server.timeouts.keep_alive) meets a closed connection: HTTP allows that race, and
# SDKs retry it (not here: max_retries 0). It must stay rare.
CONNECTION_ERRORS = 5

HOSTILE = 10  # of each kind, at once
BIG = request_bytes("big", API_KEY)  # a long reply, sent fast


def gateway_config(upstream: FakeUpstream, store: Path) -> dict[str, Any]:
    return {
        "server": {"api_keys": [API_KEY], "timeouts": {"head": 3, "body": 3, "write": 1}},
        "store": {"url": f"sqlite:///{store}", "flush_interval": 0.1},
        "providers": {
            "up": {
                "type": "openai",
                "base_url": upstream.url + "/v1",
                "timeouts": {"connect": 1, "first_byte": 0.5, "idle": 0.5},
            },
            "long": {"type": "openai", "base_url": upstream.url + "/v1"},  # fast, long replies
        },
        "models": [
            {
                "id": "m",
                "deployments": [
                    {"provider": "up", "model": "one"},
                    {"provider": "up", "model": "two", "max_in_flight": 40, "max_queued": 20},
                ],
            },
            {"id": "big", "provider": "long", "model": "big"},
        ],
        "routing": {
            "retries": 1,
            "backoff": 0.01,
            "max_backoff": 0.05,
            "queue_timeout": 2,
            "cooldown": {"failures": 8, "seconds": 0.3},
        },
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


async def one_request(
    rng: random.Random, oa: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> str:
    """One request with a random protocol and mode; returns how it ended."""
    messages: Any = [{"role": "user", "content": "hi"}]
    stream = rng.random() < 0.5
    if rng.random() < 0.5:
        try:
            if stream:
                text, finish = "", None
                async for item in await oa.chat.completions.create(
                    model="m", messages=messages, stream=True
                ):
                    if item.choices:
                        text += item.choices[0].delta.content or ""
                        finish = item.choices[0].finish_reason or finish
                assert finish == "stop" and text, (text, finish)
            else:
                reply = await oa.chat.completions.create(model="m", messages=messages)
                assert reply.choices[0].message.content
            return "ok"
        except openai.APIStatusError as error:
            assert error.status_code in OPENAI_ERRORS, error
            assert isinstance(error.body, dict) and error.body["message"], error.body
            return f"openai {error.status_code}"
        except openai.APIConnectionError:  # see CONNECTION_ERRORS
            return "openai connection error"
        except openai.APIError as error:  # an error event inside a started stream
            assert stream and error.message, error
            return "openai stream error"
    try:
        if stream:
            async with claude.messages.stream(model="m", max_tokens=50, messages=messages) as s:
                final = await s.get_final_message()
        else:
            final = await claude.messages.create(model="m", max_tokens=50, messages=messages)
        assert final.stop_reason == "end_turn" and final.content, final
        return "ok"
    except anthropic.APIStatusError as error:
        if stream and error.status_code == 200:  # how the SDK reports an error event
            assert isinstance(error.body, dict) and error.body["error"]["message"], error.body
            return "anthropic stream error"
        assert error.status_code in ANTHROPIC_ERRORS, error
        assert isinstance(error.body, dict) and error.body["error"]["message"], error.body
        return f"anthropic {error.status_code}"
    except anthropic.APIConnectionError:
        return "anthropic connection error"
    except anthropic.APIError as error:
        assert stream and error.message, error
        return "anthropic stream error"


async def soak(gw: RunningGateway, seconds: float, seed: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    limits = {"timeout": 30, "max_retries": 0}
    oa = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=API_KEY, **limits)  # type: ignore[arg-type]
    claude = anthropic.AsyncAnthropic(base_url=gw.url, api_key=API_KEY, **limits)  # type: ignore[arg-type]
    deadline = time.monotonic() + seconds

    async def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        while time.monotonic() < deadline:
            outcome = await asyncio.wait_for(one_request(rng, oa, claude), PER_REQUEST_LIMIT)
            outcomes[outcome] += 1

    try:
        await asyncio.gather(*(client(n) for n in range(CONCURRENCY)))
    finally:
        await oa.close()
        await claude.close()
    return outcomes


async def hostile(gw: RunningGateway, seconds: float) -> Counter[str]:
    """Clients that hold what they can, each kind ``HOSTILE`` at once, for ``seconds``;
    counts the requests that reached the gateway (they must leave a record)."""
    done: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
        return await asyncio.open_connection(sock=sock)

    async def holds(port: int) -> bool:
        async def look() -> bool:
            return any(c.client[1] == port for c in gw.server.server_state.connections)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(look(), gw.loop))

    async def never_reads() -> None:
        reader, writer = await connect()
        writer.write(BIG)
        await reader.read(1)  # the reply's first byte, then nothing (past what the
        # transport buffers): the write timeout must cut the connection. The client
        # cannot see that without reading: ask the gateway.
        port = writer.get_extra_info("sockname")[1]
        while await holds(port):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        writer.transport.abort()
        done["never read"] += 1

    async def hangs_up() -> None:
        reader, writer = await connect()
        writer.write(BIG)
        got = b""
        while len(got) < 50_000:
            piece = await reader.read(65536)
            assert piece, got[:300]  # the gateway must not end the stream first
            got += piece
        writer.transport.abort()
        done["hung up"] += 1

    async def slowloris() -> None:
        reader, writer = await connect()
        for byte in BIG[:40]:
            if reader.at_eof() or writer.is_closing():
                break
            writer.write(bytes([byte]))
            try:
                async with asyncio.timeout(0.2):
                    reply = await reader.read(200)
            except TimeoutError:
                continue
            assert reply.startswith(b"HTTP/1.1 408 ") or not reply, reply
            break
        else:
            raise AssertionError("a head sent a byte at a time was never cut off")
        writer.close()
        done["slowloris"] += 1

    async def repeat(actor: Any) -> None:
        while time.monotonic() < deadline:
            await asyncio.wait_for(actor(), PER_REQUEST_LIMIT)

    await asyncio.gather(
        *(repeat(actor) for actor in (never_reads, hangs_up, slowloris) for _ in range(HOSTILE))
    )
    return done


async def soak_under_attack(gw: RunningGateway, seconds: float, seed: int) -> Counter[str]:
    results = await asyncio.gather(soak(gw, seconds, seed), hostile(gw, seconds))
    return results[0] + results[1]


def gateway_state(gw: RunningGateway) -> dict[str, Any]:
    """What must be back to idle after the soak, read on the gateway's own loop."""
    gateway = gw.app.state.gateway

    async def read() -> dict[str, Any]:
        deployments = [d for e in ("m", "big") for d in gateway.catalog.get(e).deployments]
        pools = [gateway.providers[name]._pool for name in ("up", "long")]
        return {
            "tasks": len(asyncio.all_tasks()) - 1,
            "in_flight": [d.health.in_flight for d in deployments],
            "queued": [len(d.health._waiters) for d in deployments],
            "upstream_connections_in_use": [pool.in_use for pool in pools],
            "client_connections": len(gw.server.server_state.connections),
        }

    return asyncio.run_coroutine_threadsafe(read(), gw.loop).result(5)


def pooled_connections(gw: RunningGateway) -> int:
    providers = gw.app.state.gateway.providers

    async def count() -> int:
        return sum(providers[name]._pool.idle for name in ("up", "long"))

    return asyncio.run_coroutine_threadsafe(count(), gw.loop).result(5)


def count_requests(gw: RunningGateway) -> Counter[str]:
    """Counts, by path, the requests that reach the gateway's handlers (what must
    leave a record), whatever the clients saw of them."""
    seen: Counter[str] = Counter()
    routes = gw.app.routes

    def counted(path: str, handler: Any) -> Any:
        async def handle(request: Any) -> Any:
            seen[path] += 1
            return await handler(request)

        return handle

    for path, handler in list(routes.items()):
        routes[path] = counted(path, handler)  # type: ignore[index]
    return seen


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def records(store: Path) -> int:
    with sqlite3.connect(store) as db:
        return int(db.execute("SELECT count(*) FROM lmgate_usage").fetchone()[0])


@pytest.mark.timeout(240)
def test_soak_with_random_faults_and_hostile_clients(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    rng = random.Random(7)
    scripts = [s for _, s in FAULTS]
    weights = [w for w, _ in FAULTS]

    def route(request: Recorded) -> Script:
        if request.body.get("model") == "big":
            return big_stream(5_000)
        return rng.choices(scripts, weights=weights)[0]

    upstream.route = route
    store = tmp_path / "usage.db"
    gw = start_gateway(gateway_config(upstream, store))
    seen = count_requests(gw)
    idle, fds = gateway_state(gw), descriptors()

    first = asyncio.run(soak(gw, PHASE_SECONDS, seed=1))
    second = asyncio.run(soak_under_attack(gw, PHASE_SECONDS, seed=2))
    after_second = rss_mb()
    third = asyncio.run(soak_under_attack(gw, PHASE_SECONDS, seed=3))
    after_third = rss_mb()

    total = first + second + third
    print(dict(total), f"RSS {after_second:.0f} -> {after_third:.0f} MB")
    assert total["ok"] > 500, total
    assert sum(n for k, n in total.items() if k.startswith(("openai ", "anthropic "))) > 50, total
    assert min(total["never read"], total["hung up"], total["slowloris"]) >= HOSTILE, total
    deadline = time.monotonic() + 10
    while (state := gateway_state(gw)) != idle and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state == idle, (state, idle)
    # Descriptors: back to the start but for the upstream pools' idle connections
    # (two each here: the fake upstream's end is in this process too).
    pooled = 2 * pooled_connections(gw)
    assert descriptors() - pooled - fds < 10, (fds, descriptors(), pooled)
    assert after_third - after_second < 25, (after_second, after_third)

    # Every request that reached the gateway has its record (slowloris never did).
    lost = sum(n for k, n in total.items() if k.endswith("connection error"))
    assert lost <= CONNECTION_ERRORS, total
    reached = sum(seen.values())
    assert sum(total.values()) - total["slowloris"] - lost <= reached, (reached, total)
    recorder = gw.app.state.gateway.accounts.recorder
    try:
        wait_until(lambda: recorder.written >= reached)
    finally:
        print("reached", reached, "written", recorder.written)
    assert (recorder.written, recorder.dropped, recorder.bad) == (reached, 0, 0), seen

    # A shutdown with streams blocked on clients that do not read: their records too.
    socks = []
    for _ in range(HOSTILE):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(BIG)
        socks.append(sock)
    wait_until(lambda: recorder.written + sum(gateway_state(gw)["in_flight"]) >= reached + HOSTILE)
    gw.stop()
    for sock in socks:
        sock.close()
    assert records(store) == reached + HOSTILE
