"""Input that once made a 500 with a traceback: deep JSON that parses but cannot be
written again, non-ASCII base64, integers beyond 64 bits, oversized admin bodies, and
upstream replies of an unexpected shape. Each is a 400 (the client's input) or a 502
(the upstream's) in the client's protocol shape, and nothing logs a traceback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fakes.upstream import FakeUpstream, Script, chunk, completion
from tests.support.gateway import RunningGateway, upstream_config

HI = [{"role": "user", "content": "hi"}]
ADMIN = "admin-key-for-odd-input"


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "object"}
    for _ in range(depth):
        value = {"type": "object", "properties": {"a": value}}
    return value


@pytest.fixture
def gw(
    start_gateway: Any, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> Iterator[RunningGateway]:
    caplog.set_level(logging.INFO)
    config = upstream_config(upstream)
    config["server"]["admin_key"] = ADMIN
    yield start_gateway(config)
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


DEEP = nested(200)  # 400 levels of JSON: orjson reads it, and cannot write it
CHAT = {"model": "chat-model", "messages": HI}
MESSAGES = {"model": "chat-model", "max_tokens": 10, "messages": HI}
ANTHROPIC_TOOL = {"name": "t", "input_schema": DEEP}
CASES = [
    ("/v1/chat/completions", {**CHAT, "x_vendor_field": DEEP}, "the request"),
    (
        "/v1/chat/completions",
        {**CHAT, "tools": [{"type": "function", "function": {"name": "t", "parameters": DEEP}}]},
        "the request",
    ),
    ("/v1/messages", {**MESSAGES, "tools": [ANTHROPIC_TOOL]}, "the request"),
    (
        "/v1/messages",
        {
            **MESSAGES,
            "messages": [
                *HI,
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "c", "name": "t", "input": DEEP}],
                },
            ],
        },
        "messages.1.content.0.input",
    ),
    ("/v1/messages/count_tokens", {**MESSAGES, "tools": [ANTHROPIC_TOOL]}, "tools[0]"),
    (
        "/v1/messages",
        {
            **MESSAGES,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "é"},
                        }
                    ],
                }
            ],
        },
        "not valid base64",
    ),
    (
        "/v1/messages",
        {**MESSAGES, "thinking": {"type": "enabled", "budget_tokens": 18446744073709551615}},
        "budget_tokens",
    ),
    ("/v1/chat/completions", {**CHAT, "seed": 2**64}, "seed"),
]


@pytest.mark.parametrize(("path", "body", "words"), CASES)
def test_odd_input_is_a_400_in_the_clients_shape(
    gw: RunningGateway, path: str, body: dict[str, Any], words: str
) -> None:
    raw = gw.request("POST", path, json.dumps(body).encode())  # orjson cannot write it either
    assert raw.status == 400, raw.body
    error = raw.json()["error"]
    assert words in error["message"]
    if path.startswith("/v1/messages"):
        assert raw.json()["type"] == "error" and error["type"] == "invalid_request_error"


def test_admin_api_refuses_huge_integers_and_bodies(gw: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    raw = gw.request(
        "POST", "/admin/keys", {"name": "x", "rpm": 2**63}, headers=headers, api_key=None
    )
    assert raw.status == 400 and "rpm" in raw.json()["error"]["message"]
    raw = gw.request("POST", "/admin/keys", {"name": "x" * 100_000}, headers=headers, api_key=None)
    assert raw.status == 413 and raw.json()["error"]["type"] == "invalid_request_error"
    raw = gw.request("POST", "/admin/keys", {"name": "x" * 201}, headers=headers, api_key=None)
    assert raw.status == 400 and "name" in raw.json()["error"]["message"]


@pytest.mark.parametrize(
    "reply",
    [
        {"choices": [{"message": "not an object", "finish_reason": "stop"}]},
        {"choices": "none"},
        {"choices": [{"message": {"content": 5}, "finish_reason": []}]},
    ],
)
def test_upstream_reply_of_the_wrong_shape_is_a_502(
    gw: RunningGateway, upstream: FakeUpstream, reply: dict[str, Any]
) -> None:
    upstream.push(Script(json=reply))
    raw = gw.request("POST", "/v1/chat/completions", CHAT)
    assert raw.status == 502, raw.body
    assert "not a chat completion" in raw.json()["error"]["message"]


def test_upstream_counts_of_the_wrong_type_or_size(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    odd = {"prompt_tokens": "12", "completion_tokens": 2**70, "total_tokens": -1}
    upstream.push(Script(raw=json.dumps(completion("Hi", usage=odd)).encode()))
    raw = gw.request("POST", "/v1/chat/completions", CHAT)
    assert raw.status == 200, raw.body
    usage = raw.json()["usage"]
    assert usage["prompt_tokens"] == 12 and usage["completion_tokens"] == 2**63 - 1


def test_stream_chunk_of_the_wrong_shape_ends_with_an_upstream_error(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(chunks=[chunk(delta={"content": "a"}), {"choices": ["x"]}]))
    raw = gw.request("POST", "/v1/chat/completions", {**CHAT, "stream": True})
    assert raw.status == 200
    assert b"wrong shape" in raw.body and b"[DONE]" not in raw.body
