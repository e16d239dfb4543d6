"""OpenAI Chat Completions through the gateway, with the official SDK as the client."""

from __future__ import annotations

import json

import openai
import pytest

from tests.support.fakes.upstream import (
    FakeUpstream,
    Script,
    anthropic_message,
    anthropic_text_stream,
    chunk,
    completion,
    text_stream,
)
from tests.support.gateway import UPSTREAM_KEY, RunningGateway, wait_until

DEEPSEEK_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 28,
    "total_tokens": 40,
    "prompt_cache_hit_tokens": 4,
    "prompt_cache_miss_tokens": 8,
}


def test_non_stream_reply_and_what_upstream_received(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.push(Script(json=completion("我是一个人工智能助手", DEEPSEEK_USAGE)))
    reply = client.chat.completions.create(
        model="chat-model",
        messages=[
            {"role": "system", "content": "You are a helpful assistant"},
            {"role": "user", "content": "你叫什么？"},
        ],
    )
    assert reply.choices[0].message.content == "我是一个人工智能助手"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "chat-model"
    assert reply.object == "chat.completion"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
        12,
        28,
        40,
    )
    extra = reply.usage.model_extra or {}
    assert extra["prompt_cache_hit_tokens"] == 4
    assert extra["prompt_cache_miss_tokens"] == 8
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 4

    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.body["model"] == "up-model"
    assert sent.body["stream"] is False
    assert sent.body["messages"] == [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "你叫什么？"},
    ]


def test_every_deepseek_field_and_unknown_fields_reach_upstream(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    client.chat.completions.create(
        model="chat-model",
        messages=[{"role": "user", "content": "hi"}],
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        max_tokens=2048,
        response_format={"type": "json_object"},
        stop=["END"],
        temperature=0.7,
        top_p=0.9,
        tools=tools,
        tool_choice="none",
        logprobs=True,
        top_logprobs=3,
        seed=42,
        extra_body={"top_k": 5, "enable_thinking": False, "custom": {"a": [1, 2]}},
    )
    body = upstream.last.body
    assert body["frequency_penalty"] == 0.5
    assert body["presence_penalty"] == -0.5
    assert body["max_tokens"] == 2048
    assert body["response_format"] == {"type": "json_object"}
    assert body["stop"] == ["END"]
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.9
    assert body["tools"] == tools
    assert body["tool_choice"] == "none"
    assert body["logprobs"] is True
    assert body["top_logprobs"] == 3
    assert body["seed"] == 42
    assert body["top_k"] == 5
    assert body["enable_thinking"] is False
    assert body["custom"] == {"a": [1, 2]}


def test_stream_with_usage(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(Script(chunks=text_stream(["我", "是一个", "助手"], usage=DEEPSEEK_USAGE)))
    stream = client.chat.completions.create(
        model="chat-model",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "我是一个助手"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert all(c.model == "chat-model" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.total_tokens == 40
    assert (last.usage.model_extra or {})["prompt_cache_hit_tokens"] == 4
    assert upstream.last.body["stream"] is True


def test_stream_without_include_usage_has_no_usage_chunk_but_upstream_is_asked(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello!"
    # The gateway always asks for usage so that its own records are real.
    assert upstream.last.body["stream_options"] == {"include_usage": True}


def test_stream_usage_counted_offline_when_upstream_sends_none(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.push(Script(chunks=text_stream(["Hello", " world"])))
    chunks = list(
        client.chat.completions.create(
            model="chat-model",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 2  # "Hello world" in cl100k
    assert usage.prompt_tokens > 7


def test_auto_resolves_to_first_candidate_and_reply_names_it(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    reply = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.model == "chat-model"
    assert upstream.last.body["model"] == "up-model"
    chunks = list(
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert {c.model for c in chunks} == {"chat-model"}


def test_model_by_display_name(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    reply = client.chat.completions.create(
        model="Chat Model (Fake)", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.model == "chat-model"


def test_tool_calls_non_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    upstream.push(Script(json=completion(None, tool_calls=[call], finish_reason="tool_calls")))
    reply = client.chat.completions.create(
        model="chat-model",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    [got] = message.tool_calls
    assert (got.id, got.function.name, json.loads(got.function.arguments)) == (
        "call_1",
        "get_weather",
        {"city": "Paris"},
    )


def test_tool_calls_stream_and_tool_results_sent_back(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    def call_chunk(**call: object) -> dict[str, object]:
        return chunk(delta={"tool_calls": [call]})

    upstream.push(
        Script(
            chunks=[
                chunk(delta={"role": "assistant", "content": None}),
                call_chunk(
                    index=0, id="call_a", type="function", function={"name": "add", "arguments": ""}
                ),
                call_chunk(index=0, function={"arguments": '{"a": 1,'}),
                call_chunk(index=0, function={"arguments": ' "b": 2}'}),
                call_chunk(
                    index=1,
                    id="call_b",
                    type="function",
                    function={"name": "mul", "arguments": "{}"},
                ),
                chunk(finish_reason="tool_calls"),
            ]
        )
    )
    chunks = list(
        client.chat.completions.create(
            model="chat-model",
            messages=[{"role": "user", "content": "1+2?"}],
            tools=[{"type": "function", "function": {"name": "add"}}],
            stream=True,
        )
    )
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for tc in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += tc.id or ""
            entry["name"] += (tc.function and tc.function.name) or ""
            entry["arguments"] += (tc.function and tc.function.arguments) or ""
    assert calls == {
        0: {"id": "call_a", "name": "add", "arguments": '{"a": 1, "b": 2}'},
        1: {"id": "call_b", "name": "mul", "arguments": "{}"},
    }
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # The next turn hands the calls and their results back.
    client.chat.completions.create(
        model="chat-model",
        messages=[
            {"role": "user", "content": "1+2?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "3"},
        ],
    )
    assert upstream.last.body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "3"},
    ]


def test_reasoning_content_stream_and_non_stream(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.push(
        Script(
            json=completion(
                "9.11 < 9.8",
                reasoning_content="Compare the decimals.",
                usage={
                    "prompt_tokens": 10,
                    "completion_tokens": 20,
                    "total_tokens": 30,
                    "completion_tokens_details": {"reasoning_tokens": 12},
                },
            )
        )
    )
    reply = client.chat.completions.create(
        model="reasoner", messages=[{"role": "user", "content": "?"}]
    )
    message = reply.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == "Compare the decimals."
    assert message.content == "9.11 < 9.8"
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 12
    assert upstream.last.body["model"] == "up-reasoner"

    upstream.push(
        Script(
            chunks=[
                chunk(delta={"role": "assistant", "content": None, "reasoning_content": ""}),
                chunk(delta={"reasoning_content": "Compare "}),
                chunk(delta={"reasoning_content": "the decimals."}),
                chunk(delta={"content": "9.11 < 9.8"}),
                chunk(finish_reason="stop"),
            ]
        )
    )
    chunks = list(
        client.chat.completions.create(
            model="reasoner", messages=[{"role": "user", "content": "?"}], stream=True
        )
    )
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "") for c in chunks
    )
    assert reasoning == "Compare the decimals."
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "9.11 < 9.8"


def test_reasoning_in_history_is_not_sent_back(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    client.chat.completions.create(
        model="reasoner",
        messages=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "reasoning_content": "thinking"},  # type: ignore[misc]
            {"role": "user", "content": "c"},
        ],
    )
    assert upstream.last.body["messages"][1] == {"role": "assistant", "content": "b"}


def test_text_part_arrays_are_flattened(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    client.chat.completions.create(
        model="chat-model",
        messages=[{"role": "user", "content": [{"type": "text", "text": "你是什么模型？"}]}],
    )
    assert upstream.last.body["messages"] == [{"role": "user", "content": "你是什么模型？"}]


def test_logprobs_come_back(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    token = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
    body = completion("Hi")
    body["choices"][0]["logprobs"] = {"content": [token]}
    upstream.push(Script(json=body))
    reply = client.chat.completions.create(
        model="chat-model", messages=[{"role": "user", "content": "hi"}], logprobs=True
    )
    assert reply.choices[0].logprobs is not None
    assert reply.choices[0].logprobs.content is not None
    assert reply.choices[0].logprobs.content[0].token == "Hi"


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
def test_models_list_in_reference_shape(gateway: RunningGateway, prefix: str) -> None:
    body = gateway.request("GET", prefix + "/models").json()
    assert body["object"] == "list"
    assert set(body) == {
        "object",
        "data",
        "version",
        "provider",
        "name",
        "default_locale",
        "status",
        "time",
    }
    assert body["status"] is True
    assert isinstance(body["time"], int) and len(str(body["time"])) == 8
    assert body["data"][0] == {
        "id": "chat-model",
        "object": "model",
        "model": "chat-model",
        "created": 1755952008000,
        "owned_by": "fake",
        "name": "Chat Model (Fake)",
        "description": "the fake upstream's chat model",
        "support": "text",
        "tip": "Chat tip",
    }
    ids = [entry["id"] for entry in body["data"]]
    assert ids == ["chat-model", "reasoner", "capped", "claude-model", "echo"]


def test_models_through_sdk(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [
        "chat-model",
        "reasoner",
        "capped",
        "claude-model",
        "echo",
    ]
    assert client.models.retrieve("echo").id == "echo"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_echo_model_streams_word_by_word_with_real_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    words = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert words == ["Echo: ", "one ", "two ", "three"]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 5 and usage.prompt_tokens > 3


def test_echo_honours_max_tokens_and_stop(client: openai.OpenAI) -> None:
    long = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "a b c d e f g"}], max_tokens=3
    )
    assert long.choices[0].finish_reason == "length"
    assert long.usage is not None and long.usage.completion_tokens == 3
    stopped = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "a b STOP c"}], stop=["STOP"]
    )
    assert stopped.choices[0].message.content == "Echo: a b "
    assert stopped.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["chat-model", "claude-model"])
def test_upstream_connections_are_pooled(
    client: openai.OpenAI, upstream: FakeUpstream, model: str
) -> None:
    # Each stream's body ends a moment after its last event, as it may over a real
    # network: the gateway stops reading at the last event, yet must not drop the
    # connection that is about to become reusable.
    if model == "chat-model":
        streamed = Script(chunks=text_stream(["a"]), end_delay=0.05)
        whole = Script(json=completion("a"))
    else:
        streamed = anthropic_text_stream(["a"])
        streamed.end_delay = 0.05
        whole = Script(json=anthropic_message([{"type": "text", "text": "a"}]))
    for sent, stream in enumerate((False, True, False, True, False), 1):
        upstream.push(streamed if stream else whole)
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], stream=stream
        )
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in reply if c.choices) == "a"
        wait_until(lambda sent=sent: upstream.completed == sent)
    assert len({request.peer for request in upstream.requests}) == 1


def test_a_stream_body_left_open_after_its_last_event_is_dropped(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.push(Script(chunks=text_stream(["a", "b"]), end_delay=60))
    stream = client.chat.completions.create(
        model="chat-model", messages=[{"role": "user", "content": "x"}], stream=True
    )
    # The client's reply ends at the upstream's last event, not at the body's end.
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "ab"
    wait_until(lambda: upstream.cancelled == 1)
    assert upstream.completed == 0
