"""The ``openai_responses`` provider: a fake Responses upstream reached from the Chat
Completions and Anthropic frontends, stream and non-stream, with tools and reasoning
(its encrypted_content round-tripping through an Anthropic client's signature)."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.support.fakes.upstream import FakeUpstream, Script
from tests.support.gateway import API_KEY, RunningGateway

USAGE = {
    "input_tokens": 30,
    "input_tokens_details": {"cached_tokens": 10},
    "output_tokens": 8,
    "output_tokens_details": {"reasoning_tokens": 4},
    "total_tokens": 38,
}
TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def config(upstream: FakeUpstream) -> dict[str, Any]:
    return {
        "server": {"api_keys": [API_KEY]},
        "providers": {
            "oai": {"type": "openai_responses", "base_url": upstream.url + "/v1", "api_key": "k"}
        },
        "models": [
            {"id": "gpt", "provider": "oai", "model": "gpt-up"},
            {"id": "thinker", "provider": "oai", "model": "o-up", "thinking": True},
        ],
    }


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream) -> RunningGateway:
    return start_gateway(config(upstream))  # type: ignore[no-any-return]


def response(output: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_up",
        "object": "response",
        "status": status,
        "model": "gpt-up",
        "output": output,
        "usage": USAGE,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
    }


def message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_up",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def sse(*events: dict[str, Any]) -> Script:
    frames = [
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    ]
    return Script(chunks=frames, done=False)


def test_chat_client_non_stream(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.push(Script(json=response([message("Hello")])))
    reply = gw.client().chat.completions.create(
        model="gpt",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        max_tokens=20,
        tools=[TOOL],  # type: ignore[list-item]
    )
    assert reply.choices[0].message.content == "Hello"
    assert reply.usage is not None and reply.usage.prompt_tokens == 30
    assert reply.usage.prompt_tokens_details.cached_tokens == 10  # type: ignore[union-attr]
    sent = upstream.last
    assert sent.path == "/v1/responses" and sent.headers["Authorization"] == "Bearer k"
    assert sent.body == {
        "model": "gpt-up",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "stream": False,
        "store": False,
        "instructions": "be brief",
        "max_output_tokens": 20,
        "tools": [
            {"type": "function", "name": "weather", "parameters": TOOL["function"]["parameters"]}
        ],  # type: ignore[index]
    }


def test_chat_client_stream_with_reasoning_and_a_tool_call(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "weather"}
    upstream.push(
        sse(
            {"type": "response.created", "response": response([], "in_progress")},
            {"type": "response.output_item.added", "item": {"type": "reasoning", "id": "rs_1"}},
            {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "delta": "Hm"},
            {"type": "response.output_item.added", "item": {**call, "arguments": ""}},
            {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": '{"ci'},
            {
                "type": "response.function_call_arguments.delta",
                "item_id": "fc_1",
                "delta": 'ty":1}',
            },
            {"type": "response.completed", "response": response([])},
        )
    )
    chunks = list(
        gw.client().chat.completions.create(
            model="thinker",
            messages=[{"role": "user", "content": "weather?"}],
            tools=[TOOL],  # type: ignore[list-item]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Hm"
    calls = [t for d in deltas for t in d.tool_calls or []]
    assert calls[0].id == "call_1" and calls[0].function.name == "weather"  # type: ignore[union-attr]
    assert "".join(t.function.arguments or "" for t in calls) == '{"city":1}'  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert upstream.last.body["reasoning"] == {"summary": "auto"}
    assert upstream.last.body["include"] == ["reasoning.encrypted_content"]


def test_encrypted_reasoning_round_trips_through_an_anthropic_client(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    reasoning = {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "Thinking."}],
        "encrypted_content": "enc-blob-123",
    }
    upstream.push(
        Script(json=response([reasoning, message("Yes")])), Script(json=response([message("ok")]))
    )
    claude = anthropic.Anthropic(base_url=gw.url, api_key=API_KEY)
    first = claude.messages.create(
        model="thinker",
        max_tokens=100,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "sure?"}],
    )
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "Thinking."
    assert thinking.signature == "openai-responses:enc-blob-123"
    claude.messages.create(
        model="thinker",
        max_tokens=100,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[
            {"role": "user", "content": "sure?"},
            {"role": "assistant", "content": [c.model_dump() for c in first.content]},  # type: ignore[misc]
            {"role": "user", "content": "really?"},
        ],
    )
    assert upstream.last.body["input"][1] == {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "Thinking."}],
        "encrypted_content": "enc-blob-123",
    }
    assert upstream.last.body["input"][2] == {"role": "assistant", "content": "Yes"}
    claude.close()


def test_incomplete_and_failed(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.push(Script(json=response([message("cut")], "incomplete")))
    reply = gw.client().chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "long"}]
    )
    assert reply.choices[0].finish_reason == "length"
    upstream.push(
        sse(
            {"type": "response.output_text.delta", "item_id": "m", "delta": "par"},
            {
                "type": "response.failed",
                "response": {**response([], "failed"), "error": {"message": "server overloaded"}},
            },
        )
    )
    with pytest.raises(openai.APIError) as caught:
        list(
            gw.client().chat.completions.create(
                model="gpt", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert "server overloaded" in caught.value.message
