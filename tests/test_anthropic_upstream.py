"""Claude models behind lmgate: the anthropic provider, driven by the openai and anthropic SDKs."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from tests.support.fakes.upstream import (
    FakeUpstream,
    Script,
    anthropic_events,
    anthropic_message,
    anthropic_text_stream,
)
from tests.support.gateway import ANTHROPIC_UPSTREAM_KEY, RunningGateway

HI = [{"role": "user", "content": "hi"}]


def test_text_non_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    usage = {
        "input_tokens": 20,
        "output_tokens": 4,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 5,
    }
    upstream.push(
        Script(json=anthropic_message([{"type": "text", "text": "Hello from Claude"}], usage=usage))
    )
    reply = client.chat.completions.create(
        model="claude-model",
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}],
        temperature=1.5,
        stop=["END"],
        user="u-1",
        extra_body={"frequency_penalty_x": 1},  # an OpenAI-dialect extra never reaches Anthropic
    )
    assert reply.model == "claude-model"
    assert reply.choices[0].message.content == "Hello from Claude"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (
        reply.usage.prompt_tokens == 125
    )  # Anthropic's input excludes cached tokens; OpenAI's includes them
    assert reply.usage.completion_tokens == 4
    assert (
        reply.usage.prompt_tokens_details is not None
        and reply.usage.prompt_tokens_details.cached_tokens == 100
    )
    sent = upstream.last
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_UPSTREAM_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent.headers
    assert sent.body == {
        "model": "claude-up",
        "system": [{"type": "text", "text": "Be kind."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stop_sequences": ["END"],
        "temperature": 1.0,  # OpenAI allows up to 2, Anthropic up to 1
        "max_tokens": 4096,  # required by Anthropic; the provider's default_max_tokens
        "metadata": {"user_id": "u-1"},
        "stream": False,
    }


def test_text_stream_with_usage(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(
        anthropic_text_stream(["Hel", "lo"], usage={"output_tokens": 2, "input_tokens": 11})
    )
    chunks = list(
        client.chat.completions.create(
            model="claude-model", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["stop"]
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 2)
    assert upstream.last.body["stream"] is True


def test_tools_both_ways(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Adds",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}}},
        },
    }
    upstream.push(
        Script(
            json=anthropic_message(
                [
                    {"type": "text", "text": "Adding."},
                    {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 1}},
                ],
                stop_reason="tool_use",
            )
        )
    )
    reply = client.chat.completions.create(
        model="claude-model",
        messages=[{"role": "user", "content": "1+?"}],
        tools=[tool],
        tool_choice="required",  # type: ignore[list-item]
        parallel_tool_calls=False,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Adding."
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_1",
        "add",
        {"a": 1},
    )
    sent = upstream.last.body
    assert sent["tools"] == [
        {"name": "add", "description": "Adds", "input_schema": tool["function"]["parameters"]}
    ]  # type: ignore[index]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    # The results go back as one user turn of tool_result blocks (turns must alternate).
    client.chat.completions.create(
        model="claude-model",
        messages=[
            {"role": "user", "content": "1+?"},
            {"role": "assistant", "content": "Adding.", "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "toolu_1", "content": "2"},
            {"role": "user", "content": "thanks"},
        ],
        tools=[tool],  # type: ignore[list-item]
    )
    assert upstream.last.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "1+?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Adding."},
                {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 1}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "2"}],
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


def tool_and_thinking_stream() -> Script:
    start = anthropic_message(
        [], usage={"input_tokens": 30, "output_tokens": 1, "cache_read_input_tokens": 8}
    )
    start["stop_reason"] = None
    return Script(
        done=False,
        chunks=anthropic_events(
            {"type": "message_start", "message": start},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Let me "},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "add."},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "sig"},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_9", "name": "add", "input": {}},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"a"'},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ": 5}"},
            },
            {"type": "content_block_stop", "index": 1},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
            {"type": "message_stop"},
        ),
    )


def test_streamed_thinking_and_tool_call(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(tool_and_thinking_stream())
    chunks = list(
        client.chat.completions.create(
            model="claude-model",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
            reasoning_effort="low",
            max_tokens=1000,
        )
    )
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
        for c in chunks
        if c.choices
    )
    assert reasoning == "Let me add."
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert (
        calls[0].id == "toolu_9"
        and calls[0].function is not None
        and calls[0].function.name == "add"
    )
    assert "".join((tc.function.arguments or "") for tc in calls if tc.function) == '{"a": 5}'
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["tool_calls"]
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (38, 15)
    sent = upstream.last.body
    # reasoning_effort "low" turns thinking on; the budget must fit under max_tokens
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["max_tokens"] == 3048
    assert "temperature" not in sent


def test_non_stream_thinking(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(
        Script(
            json=anthropic_message(
                [
                    {"type": "thinking", "thinking": "Hmm.", "signature": "s"},
                    {"type": "text", "text": "Yes."},
                ]
            )
        )
    )
    reply = client.chat.completions.create(model="claude-model", messages=HI)
    assert (reply.choices[0].message.model_extra or {})["reasoning_content"] == "Hmm."
    assert reply.choices[0].message.content == "Yes."


def test_anthropic_client_to_anthropic_upstream_keeps_cache_control_and_thinking(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(tool_and_thinking_stream())
    claude = gateway.anthropic()
    with claude.messages.stream(
        model="claude-model",
        max_tokens=4000,
        system=[{"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}],
        thinking={"type": "enabled", "budget_tokens": 2000},
        messages=[
            {"role": "user", "content": "add"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Earlier.", "signature": "sig-1"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "ok"},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "again", "cache_control": {"type": "ephemeral"}}
                ],
            },
        ],
        extra_body={"service_tier": "auto"},
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "tool_use"]
    assert final.content[0].signature == "sig"  # type: ignore[union-attr]
    assert final.content[1].input == {"a": 5}  # type: ignore[union-attr]
    assert final.usage.input_tokens == 30 and final.usage.cache_read_input_tokens == 8
    sent = upstream.last.body
    assert sent["system"] == [
        {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}
    ]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert sent["service_tier"] == "auto"  # an Anthropic-dialect extra reaches Anthropic
    assert sent["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Earlier.", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "ok"},
    ]
    assert sent["messages"][2]["content"] == [
        {"type": "text", "text": "again", "cache_control": {"type": "ephemeral"}}
    ]


def test_image_reaches_anthropic_as_base64(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    client.chat.completions.create(
        model="claude-model",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                ],
            }
        ],
    )
    assert upstream.last.body["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }


@pytest.mark.parametrize(
    ("status", "error", "openai_status", "anthropic_class"),
    [
        (529, "overloaded_error", 503, anthropic.OverloadedError),
        (429, "rate_limit_error", 429, anthropic.RateLimitError),
        (400, "invalid_request_error", 400, anthropic.BadRequestError),
        (500, "api_error", 502, anthropic.APIStatusError),
    ],
)
def test_upstream_errors_are_mapped(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    status: int,
    error: str,
    openai_status: int,
    anthropic_class: Any,
) -> None:
    body = {"type": "error", "error": {"type": error, "message": f"upstream says {error}"}}
    upstream.push(Script(status=status, json=body))
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().chat.completions.create(model="claude-model", messages=HI)
    assert caught.value.status_code == openai_status
    assert f"upstream says {error}" in caught.value.message
    upstream.push(Script(status=status, json=body))
    with pytest.raises(anthropic_class) as raised:
        gateway.anthropic().messages.create(model="claude-model", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert f"upstream says {error}" in raised.value.message


def test_error_event_mid_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    start = anthropic_message([])
    upstream.push(
        Script(
            done=False,
            chunks=anthropic_events(
                {"type": "message_start", "message": start},
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Hi"},
                },
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            ),
        )
    )
    with pytest.raises(openai.APIError) as caught:
        list(client.chat.completions.create(model="claude-model", messages=HI, stream=True))
    assert "Overloaded" in str(caught.value)


def test_stream_cut_before_message_delta_is_an_error(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    script = anthropic_text_stream(["a", "b"])
    assert script.chunks is not None
    script.chunks = script.chunks[:4]
    upstream.push(script)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="claude-model", messages=HI, stream=True))
