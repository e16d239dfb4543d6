"""Soak: 100 concurrent clients (OpenAI and Anthropic SDKs, streamed and not) for a
bounded time against an upstream that misbehaves at random. Every request must
end in a valid reply or a valid protocol error, nothing may hang, and afterwards
no slot, task or connection may be left behind and memory must be flat."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import anthropic
import openai

from tests.conftest import API_KEY, RunningGateway
from tests.fakes.upstream import FakeUpstream, Script, chunk, completion, text_stream

CONCURRENCY = 100
PHASE_SECONDS = 10  # two phases: the second must not grow memory
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


def gateway_config(upstream: FakeUpstream) -> dict[str, Any]:
    return {
        "server": {"api_keys": [API_KEY]},
        "providers": {
            "up": {
                "type": "openai",
                "base_url": upstream.url + "/v1",
                "timeouts": {"connect": 1, "first_byte": 0.5, "idle": 0.5},
            }
        },
        "models": [
            {
                "id": "m",
                "deployments": [
                    {"provider": "up", "model": "one"},
                    {"provider": "up", "model": "two", "max_in_flight": 40, "max_queued": 20},
                ],
            }
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


def gateway_state(gw: RunningGateway) -> dict[str, Any]:
    """What must be back to idle after the soak, read on the gateway's own loop."""
    gateway = gw.app.state.gateway

    async def read() -> dict[str, Any]:
        deployments = gateway.catalog.get("m").deployments
        connector = gateway.providers["up"]._session.connector
        return {
            "tasks": len(asyncio.all_tasks()) - 1,
            "in_flight": [d.health.in_flight for d in deployments],
            "queued": [len(d.health._waiters) for d in deployments],
            "upstream_connections_in_use": len(connector._acquired),
            "client_connections": len(gw.server.server_state.connections),
        }

    return asyncio.run_coroutine_threadsafe(read(), gw.loop).result(5)


def test_soak_with_random_faults(start_gateway: Any, upstream: FakeUpstream) -> None:
    rng = random.Random(7)
    scripts = rng.choices([s for _, s in FAULTS], weights=[w for w, _ in FAULTS], k=40_000)
    upstream.push(*scripts)
    gw = start_gateway(gateway_config(upstream))
    idle = gateway_state(gw)

    first = asyncio.run(soak(gw, PHASE_SECONDS, seed=1))
    after_first = rss_mb()
    second = asyncio.run(soak(gw, PHASE_SECONDS, seed=2))
    after_second = rss_mb()

    total = first + second
    print(dict(total), f"RSS {after_first:.0f} -> {after_second:.0f} MB")
    assert total["ok"] > 500, total
    assert sum(total.values()) - total["ok"] > 50, total  # the faults were exercised
    deadline = time.monotonic() + 10
    while (state := gateway_state(gw)) != idle and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state == idle, (state, idle)
    assert after_second - after_first < 25, (after_first, after_second)
