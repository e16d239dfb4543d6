"""The Anthropic Messages API through the gateway, with the official anthropic SDK as the
client and an OpenAI-compatible upstream behind it."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import orjson
import pytest

from tests.support.fakes.upstream import FakeUpstream, Script, chunk, completion, text_stream
from tests.support.gateway import API_KEY, RunningGateway, upstream_config

HI = [{"role": "user", "content": "hi"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
def claude(gateway: RunningGateway) -> anthropic.Anthropic:
    return gateway.anthropic()


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in body.decode().split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines["event"], orjson.loads(lines["data"])))
    return events


def test_create_with_system_stop_and_sampling(
    claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 5,
        "total_tokens": 35,
        "prompt_cache_hit_tokens": 10,
    }
    upstream.push(Script(json=completion("Bonjour", usage)))
    message = claude.messages.create(
        model="chat-model",
        max_tokens=300,
        system="You speak French.",
        messages=[{"role": "user", "content": "Hello"}],
        stop_sequences=["END"],
        metadata={"user_id": "user-7"},
        # Older SDKs and Claude Code send these; the installed SDK only via extra_body.
        extra_body={
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 5,
            "output_config": {"effort": "low"},
        },
    )
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "chat-model"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Bonjour")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == 20
    assert message.usage.cache_read_input_tokens == 10
    assert message.usage.output_tokens == 5
    body = upstream.last.body
    assert body["messages"] == [
        {"role": "system", "content": "You speak French."},
        {"role": "user", "content": "Hello"},
    ]
    assert body["max_tokens"] == 300
    assert body["stop"] == ["END"]
    assert body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["user"] == "user-7"
    assert "metadata" not in body and "stop_sequences" not in body
    # Anthropic-only fields never reach an OpenAI-compatible upstream.
    assert "top_k" not in body and "output_config" not in body


def test_usage_is_counted_when_the_upstream_gives_none(
    claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    upstream.push(Script(chunks=text_stream(["Hi", " there"])))
    with claude.messages.stream(model="chat-model", max_tokens=50, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens == 2


def test_stream_text_and_final_message(claude: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.push(
        Script(
            chunks=text_stream(
                ["我", "是", "助手"],
                usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            )
        )
    )
    with claude.messages.stream(model="chat-model", max_tokens=100, messages=HI) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "我是助手"
    assert final.content[0].type == "text" and final.content[0].text == "我是助手"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 3)
    assert upstream.last.body["stream"] is True


def test_stop_sequence_is_reported(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="echo",
        max_tokens=100,
        messages=[{"role": "user", "content": "a b STOP c"}],
        stop_sequences=["STOP"],
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "STOP"
    assert message.content[0].type == "text" and message.content[0].text == "Echo: a b "


def test_max_tokens_is_reported(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="echo", max_tokens=2, messages=[{"role": "user", "content": "a b c d"}]
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


def _tool_turns(reply_content: list[Any]) -> list[Any]:
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": reply_content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C, sunny"},
                {"type": "text", "text": "And be brief."},
            ],
        },
    ]


def _check_tool_result_sent(upstream: FakeUpstream) -> None:
    assert upstream.last.body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C, sunny"},
        {"role": "user", "content": "And be brief."},
    ]


def test_tool_use_round_trip(claude: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    upstream.push(Script(json=completion(None, tool_calls=[call], finish_reason="tool_calls")))
    message = claude.messages.create(
        model="chat-model",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == ("call_1", "get_weather", {"city": "Paris"})
    sent = upstream.last.body
    assert sent["tool_choice"] == "required"
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    upstream.push(Script(json=completion("Sunny, 18°C.")))
    final = claude.messages.create(
        model="chat-model",
        max_tokens=200,
        messages=_tool_turns([block.model_dump()]),  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert final.content[0].type == "text" and final.content[0].text == "Sunny, 18°C."
    _check_tool_result_sent(upstream)


def tool_stream() -> Script:
    def call(**fields: Any) -> dict[str, Any]:
        return chunk(delta={"tool_calls": [fields]})

    return Script(
        chunks=[
            chunk(delta={"role": "assistant", "content": "Let me check."}),
            call(
                index=0,
                id="call_1",
                type="function",
                function={"name": "get_weather", "arguments": ""},
            ),
            call(index=0, function={"arguments": '{"city"'}),
            call(index=0, function={"arguments": ': "Paris"}'}),
            chunk(finish_reason="tool_calls"),
        ]
    )


def test_tool_use_round_trip_streamed(claude: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.push(tool_stream())
    with claude.messages.stream(
        model="chat-model",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    text, tool = final.content
    assert text.type == "text" and text.text == "Let me check."
    assert tool.type == "tool_use" and tool.input == {"city": "Paris"} and tool.id == "call_1"

    upstream.push(Script(chunks=text_stream(["Sunny."])))
    with claude.messages.stream(
        model="chat-model",
        max_tokens=200,
        messages=_tool_turns([tool.model_dump()]),  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        assert stream.get_final_text() == "Sunny."
    _check_tool_result_sent(upstream)


def test_raw_event_order_with_thinking_text_and_tool(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(
        Script(
            chunks=[
                chunk(delta={"role": "assistant", "reasoning_content": "Need "}),
                chunk(delta={"reasoning_content": "weather."}),
                chunk(delta={"content": "Checking."}),
                chunk(
                    delta={
                        "tool_calls": [
                            {"index": 0, "id": "c1", "function": {"name": "w", "arguments": "{}"}}
                        ]
                    }
                ),
                chunk(
                    finish_reason="tool_calls", usage={"prompt_tokens": 5, "completion_tokens": 7}
                ),
            ]
        )
    )
    request = {
        "model": "chat-model",
        "max_tokens": 2000,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": HI,
        "tools": [{"name": "w", "input_schema": {"type": "object"}}],
    }
    raw = gateway.request(
        "POST", "/api/v1/messages", request, headers={"anthropic-version": "2023-06-01"}
    )
    assert raw.status == 200 and raw.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw.body)
    assert [(name, data["type"]) for name, data in events] == [(name, name) for name, _ in events]
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # fmt: skip
    starts = [data for name, data in events if name == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "thinking"),
        (1, "text"),
        (2, "tool_use"),
    ]
    deltas = [(d["index"], d["delta"]) for name, d in events if name == "content_block_delta"]
    assert deltas == [
        (0, {"type": "thinking_delta", "thinking": "Need "}),
        (0, {"type": "thinking_delta", "thinking": "weather."}),
        (1, {"type": "text_delta", "text": "Checking."}),
        (2, {"type": "input_json_delta", "partial_json": "{}"}),
    ]
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert stops == [0, 1, 2]
    start = events[0][1]["message"]
    assert (
        start["model"] == "chat-model"
        and start["content"] == []
        and start["usage"]["input_tokens"] > 0
    )
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 7 and delta["usage"]["input_tokens"] == 5


def test_reasoning_becomes_thinking_only_when_asked(
    claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    reply = completion("42", reasoning_content="Think hard.")
    upstream.push(Script(json=reply))
    thought = claude.messages.create(
        model="reasoner",
        max_tokens=4000,
        messages=HI,
        thinking={"type": "enabled", "budget_tokens": 2048},
    )
    assert [b.type for b in thought.content] == ["thinking", "text"]
    assert thought.content[0].thinking == "Think hard."  # type: ignore[union-attr]
    upstream.push(Script(json=reply))
    plain = claude.messages.create(model="reasoner", max_tokens=4000, messages=HI)
    assert [(b.type, getattr(b, "text", None)) for b in plain.content] == [("text", "42")]

    upstream.push(
        Script(
            chunks=[
                chunk(delta={"role": "assistant", "reasoning_content": "Think "}),
                chunk(delta={"reasoning_content": "hard."}),
                chunk(delta={"content": "42"}),
                chunk(finish_reason="stop"),
            ]
        )
    )
    with claude.messages.stream(
        model="reasoner",
        max_tokens=4000,
        messages=HI,
        thinking={"type": "enabled", "budget_tokens": 2048},
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Think hard."  # type: ignore[union-attr]
    assert final.content[1].text == "42"  # type: ignore[union-attr]


def test_count_tokens(claude: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    short = claude.messages.count_tokens(model="chat-model", messages=HI)
    longer = claude.messages.count_tokens(
        model="chat-model",
        system="You are a careful assistant.",
        messages=[{"role": "user", "content": "hi " * 50}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert 0 < short.input_tokens < longer.input_tokens
    assert upstream.requests == []
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="nope", messages=HI)


def test_models_list_in_anthropic_shape(claude: anthropic.Anthropic) -> None:
    models = list(claude.models.list())
    assert models[0].id == "chat-model" and models[0].display_name == "Chat Model (Fake)"
    assert models[0].type == "model"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "chat-model", "messages": HI}, "max_tokens: field required"),
        (
            {
                "model": "chat-model",
                "max_tokens": 10,
                "messages": [{"role": "tool", "content": "x"}],
            },
            "messages.0.role",
        ),
        (
            {
                "model": "chat-model",
                "max_tokens": 10,
                "messages": [{"role": "system", "content": "x"}],
            },
            "only system turns",
        ),
        ({"model": "chat-model", "max_tokens": 10, "messages": []}, "non-empty"),
        (
            {
                "model": "chat-model",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [{"type": "video"}]}],
            },
            "messages.0.content.0.type",
        ),
        (
            {
                "model": "chat-model",
                "max_tokens": 10,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "x", "name": "y", "input": {}}],
                    }
                ],
            },
            "not supported in a user message",
        ),
        (
            {
                "model": "chat-model",
                "max_tokens": 10,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "@@@",
                                },
                            }
                        ],
                    }
                ],
            },
            "not valid base64",
        ),
        (
            {"model": "chat-model", "max_tokens": 10, "messages": HI, "tools": [{"name": "t"}]},
            "tools.0.input_schema",
        ),
        (
            {
                "model": "chat-model",
                "max_tokens": 10,
                "messages": HI,
                "tool_choice": {"type": "maybe"},
            },
            "tool_choice.type",
        ),
        (
            {
                "model": "chat-model",
                "max_tokens": 10,
                "messages": HI,
                "thinking": {"type": "enabled"},
            },
            "budget_tokens",
        ),
        (
            {"model": "chat-model", "max_tokens": 10, "messages": HI, "temperature": 1.5},
            "temperature",
        ),
        ({"model": "chat-model", "max_tokens": 10, "messages": HI, "system": 5}, "system"),
        (b"{nope", "not valid JSON"),
    ],
)
def test_bad_requests_get_400_in_anthropic_shape(
    gateway: RunningGateway, upstream: FakeUpstream, body: Any, words: str
) -> None:
    raw = gateway.request("POST", "/v1/messages", body)
    assert raw.status == 400
    error = raw.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"]
    assert upstream.requests == []


def test_typed_sdk_errors(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    claude = gateway.anthropic()
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="nope", max_tokens=10, messages=HI)  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        gateway.anthropic(api_key="wrong").messages.create(
            model="chat-model", max_tokens=10, messages=HI
        )  # type: ignore[arg-type]
    # x-api-key, as the SDK sends it, is accepted
    assert (
        gateway.request("GET", "/v1/models", api_key=None, headers={"x-api-key": API_KEY}).status
        == 200
    )
    for status, error_class, kind in [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (503, anthropic.OverloadedError, "overloaded_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (500, anthropic.APIStatusError, "api_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ]:
        upstream.push(Script(status=status, json={"error": {"message": f"boom {status}"}}))
        with pytest.raises(error_class) as caught:
            claude.messages.create(model="chat-model", max_tokens=10, messages=HI)  # type: ignore[arg-type]
        assert caught.value.body["error"]["type"] == kind  # type: ignore[index]
        assert f"boom {status}" in caught.value.message


def test_body_over_limit_is_413(gateway: RunningGateway) -> None:
    big = {
        "model": "chat-model",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "x" * (1024 * 1024)}],
    }
    raw = gateway.request("POST", "/v1/messages", big)
    assert raw.status == 413 and raw.json()["error"]["type"] == "request_too_large"


def test_failure_mid_stream_ends_with_error_event(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(chunks=text_stream(["a", "b", "c"]), disconnect_after=2))
    raw = gateway.request(
        "POST",
        "/v1/messages",
        {"model": "chat-model", "max_tokens": 10, "messages": HI, "stream": True},
    )
    events = sse_events(raw.body)
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in events]
    upstream.push(Script(chunks=text_stream(["a", "b", "c"]), disconnect_after=2))
    with (
        pytest.raises(anthropic.APIError),
        gateway.anthropic().messages.stream(
            model="chat-model", max_tokens=10, messages=HI
        ) as stream,
    ):
        stream.get_final_message()


def test_pings_while_the_upstream_is_silent(start_gateway: Any, upstream: FakeUpstream) -> None:
    config = upstream_config(upstream, heartbeat=0.1)
    gateway = start_gateway(config)
    upstream.push(Script(chunks=text_stream(["slow", " reply"]), chunk_delay=0.35))
    raw = gateway.request(
        "POST",
        "/v1/messages",
        {"model": "chat-model", "max_tokens": 10, "messages": HI, "stream": True},
    )
    names = [name for name, _ in sse_events(raw.body)]
    assert names.count("ping") >= 4
    assert names[0] == "message_start" and names[-1] == "message_stop"
    # OpenAI clients get SSE comments, which their SDK skips.
    upstream.push(Script(chunks=text_stream(["slow", " reply"]), chunk_delay=0.35))
    raw = gateway.request(
        "POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI, "stream": True}
    )
    assert raw.body.count(b": keep-alive\n\n") >= 4
    upstream.push(Script(chunks=text_stream(["slow", " reply"]), chunk_delay=0.35))
    chunks = list(
        gateway.client().chat.completions.create(model="chat-model", messages=HI, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "slow reply"


def claude_code_tools(count: int) -> list[dict[str, Any]]:
    tools = []
    for n in range(count):
        properties = {
            f"param_{p}": {
                "type": "string",
                "description": f"Parameter {p} of tool {n}: "
                + "a long explanation of the value " * 4,
                "enum": [f"v{e}" for e in range(5)] if p % 3 == 0 else None,
            }
            for p in range(12)
        }
        for prop in properties.values():
            if prop["enum"] is None:
                del prop["enum"]
        tools.append(
            {
                "name": f"Tool{n}",
                "description": f"Tool number {n}. " + "It does a specific thing with care. " * 20,
                "input_schema": {
                    "type": "object",
                    "properties": properties,
                    "required": ["param_0"],
                    "additionalProperties": False,
                    "$schema": "http://json-schema.org/draft-07/schema#",
                },
            }
        )
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    return tools


def test_claude_code_like_request(claude: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    tools = claude_code_tools(24)
    upstream.push(tool_stream())
    with claude.messages.stream(
        model="capped",
        max_tokens=32000,
        system=[
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {
                "type": "text",
                "text": "Follow the project's rules. " * 200,
                "cache_control": {"type": "ephemeral"},
            },
        ],
        thinking={"type": "enabled", "budget_tokens": 10000},
        tools=tools,  # type: ignore[arg-type]
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Fix the bug in main.py"}]},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "Read the file first.",
                        "signature": "sig-abc",
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "Tool1",
                        "input": {"param_0": "main.py"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": [{"type": "text", "text": "def main():\n    return 1/0\n"}],
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
        ],
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and "content_block_delta" in events
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    sent = upstream.last.body
    assert sent["stream"] is True and sent["model"] == "up-capped"
    assert sent["max_tokens"] == 8192  # the catalog's max_output_tokens caps the 32000 asked
    assert len(sent["tools"]) == 24
    assert sent["tools"][3]["function"]["parameters"] == tools[3]["input_schema"]
    assert "cache_control" not in json.dumps(sent)  # an OpenAI upstream never sees it
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert sent["messages"][0]["content"].startswith("You are Claude Code")
    assert sent["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"param_0":"main.py"}'
    assert sent["messages"][3] == {
        "role": "tool",
        "tool_call_id": "toolu_01",
        "content": "def main():\n    return 1/0\n",
    }


# ---- server tools (Cline sends web_search first) ------------------------------------

WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
READ_FILE = {
    "name": "read_file",
    "description": "read a file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
}


def test_server_tools_reach_an_anthropic_upstream_unchanged(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    body = {
        "model": "claude-model",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "what is new today?"}],
        "tools": [WEB_SEARCH, READ_FILE],
    }
    reply = gateway.request("POST", "/v1/messages", body)
    assert reply.status == 200, reply.body
    assert "x-lmgate-dropped-tools" not in reply.headers
    sent = upstream.last.body["tools"]
    assert sent[0] == WEB_SEARCH  # as the client sent it, fields and all
    assert sent[1]["name"] == "read_file" and sent[1]["input_schema"] == READ_FILE["input_schema"]


@pytest.mark.parametrize("stream", [False, True])
def test_server_tools_are_dropped_and_named_for_other_upstreams(
    gateway: RunningGateway, upstream: FakeUpstream, stream: bool
) -> None:
    body = {
        "model": "chat-model",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            WEB_SEARCH,
            {"type": "code_execution_20250522", "name": "code_execution"},
            READ_FILE,
        ],
    }
    reply = gateway.request("POST", "/v1/messages", body)
    assert reply.status == 200, reply.body
    assert reply.headers["x-lmgate-dropped-tools"] == "web_search, code_execution"
    sent = upstream.last.body["tools"]
    assert [tool["function"]["name"] for tool in sent] == ["read_file"]


def test_server_tools_refused_when_configured(start_gateway: Any, upstream: FakeUpstream) -> None:
    config = upstream_config(upstream)
    config["messages"] = {"unsupported_tools": "refuse"}
    gw = start_gateway(config)
    client = gw.anthropic()
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model="chat-model",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEB_SEARCH],  # type: ignore[list-item]
        )
    assert "web_search" in refused.value.message and "unsupported_tools" in refused.value.message
    answer = client.messages.create(  # an Anthropic upstream runs them: no refusal
        model="claude-model",
        max_tokens=10,
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEB_SEARCH],  # type: ignore[list-item]
    )
    assert answer.content
