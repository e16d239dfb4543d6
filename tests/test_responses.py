"""The Responses API frontend (``POST /v1/responses``) through the official openai SDK,
in front of OpenAI-compatible and Anthropic upstreams; and the request Codex CLI
really sends (tests/data/codex_request.json), translated."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from lmgate.frontends import openai_responses
from tests.support.fakes.upstream import (
    FakeUpstream,
    Script,
    anthropic_events,
    anthropic_message,
    chunk,
    completion,
    text_stream,
)
from tests.support.gateway import API_KEY, RunningGateway, upstream_config, wait_until
from tests.support.images import DATA_URL, PNG_B64

CODEX = json.loads((Path(__file__).parent / "data" / "codex_request.json").read_text())
WEATHER: Any = {
    "type": "function",
    "name": "weather",
    "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 7,
    "total_tokens": 27,
    "prompt_tokens_details": {"cached_tokens": 5},
    "completion_tokens_details": {"reasoning_tokens": 3},
}


def call_chunks() -> list[Any]:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather"}}
    return [
        chunk(delta={"role": "assistant", "content": None, "tool_calls": [call]}),
        chunk(delta={"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk(delta={"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(delta={}, finish_reason="tool_calls", usage=USAGE),
    ]


def test_non_stream_text_and_usage(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(Script(json=completion("Bonjour", USAGE)))
    reply = client.responses.create(
        model="chat-model", instructions="be brief", input="hi", max_output_tokens=50
    )
    assert reply.object == "response" and reply.status == "completed"
    assert reply.id.startswith("resp_") and reply.model == "chat-model"
    assert reply.output_text == "Bonjour"
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (20, 7)
    assert reply.usage.input_tokens_details.cached_tokens == 5
    assert reply.usage.output_tokens_details.reasoning_tokens == 3
    sent = upstream.last.body
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert sent["max_tokens"] == 50


def test_stream_event_sequence(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(Script(chunks=text_stream(["Bon", "jour"], usage=USAGE)))
    events = list(client.responses.create(model="chat-model", input="hi", stream=True))
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == "Bonjour" and final.usage.output_tokens == 7


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_call_loop(client: openai.OpenAI, upstream: FakeUpstream, stream: bool) -> None:
    upstream.push(
        Script(chunks=call_chunks()) if stream else Script(json=_call_completion()),
        Script(json=completion("Sunny in Paris")),
    )
    if stream:
        with client.responses.stream(
            model="chat-model", input="weather in Paris?", tools=[WEATHER]
        ) as events:
            deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
            first = events.get_final_response()
        assert "".join(deltas) == '{"city":"Paris"}'
    else:
        first = client.responses.create(
            model="chat-model", input="weather in Paris?", tools=[WEATHER]
        )
    [call] = [item for item in first.output if item.type == "function_call"]
    assert (call.call_id, call.name, call.arguments) == ("call_1", "weather", '{"city":"Paris"}')
    assert upstream.last.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "the weather in a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    second = client.responses.create(
        model="chat-model",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "weather in Paris?"},
            call.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
    )
    assert second.output_text == "Sunny in Paris"
    assert upstream.last.body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


def _call_completion() -> dict[str, Any]:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
    }
    return completion(None, USAGE, "tool_calls", tool_calls=[call])


def test_structured_output(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(Script(json=completion('{"answer": 4}')))
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    reply = client.responses.create(
        model="chat-model",
        input="2+2?",
        text={"format": {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}},
    )
    assert orjson.loads(reply.output_text) == {"answer": 4}
    assert upstream.last.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "sum", "schema": schema, "strict": True},
    }


def test_reasoning_summaries_from_a_deepseek_style_upstream(
    start_gateway: Any, upstream: FakeUpstream
) -> None:
    client = start_gateway(upstream_config(upstream, send_reasoning="always")).client()
    upstream.push(
        Script(
            chunks=[
                chunk(delta={"role": "assistant", "reasoning_content": "Let me "}),
                chunk(delta={"reasoning_content": "think."}),
                chunk(delta={"content": "Four."}),
                chunk(delta={}, finish_reason="stop", usage=USAGE),
            ]
        )
    )
    events = list(
        client.responses.create(
            model="reasoner", input="2+2?", stream=True, reasoning={"summary": "auto"}
        )
    )
    summary = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(summary) == "Let me think."
    final = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == "Let me think."
    assert final.output_text == "Four."
    # The reasoning item sent back is the turn's reasoning again (DeepSeek's echo).
    upstream.push(Script(json=completion("ok")))
    client.responses.create(
        model="reasoner",
        input=[
            {"role": "user", "content": "2+2?"},
            final.output[0].model_dump(exclude_none=True),
            final.output[1].model_dump(exclude_none=True),
            {"role": "user", "content": "and 3+3?"},
        ],  # type: ignore[arg-type]
    )
    assistant = upstream.last.body["messages"][1]
    assert assistant["content"] == "Four." and assistant["reasoning_content"] == "Let me think."


def test_reasoning_from_an_anthropic_upstream(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    start = anthropic_message([], usage={"input_tokens": 9, "output_tokens": 1})
    upstream.push(
        Script(
            chunks=anthropic_events(
                {"type": "message_start", "message": start},
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": ""},
                },
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": "Hmm."},
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
                    "content_block": {"type": "text", "text": ""},
                },
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "text_delta", "text": "Yes."},
                },
                {"type": "content_block_stop", "index": 1},
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 4},
                },
                {"type": "message_stop"},
            ),
            done=False,
        )
    )
    with client.responses.stream(model="claude-model", input="sure?") as events:
        final = events.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == "Hmm."  # type: ignore[union-attr]
    assert final.output_text == "Yes."


def test_a_failure_mid_stream_ends_with_response_failed(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.push(Script(chunks=text_stream(["a", "b", "c"]), disconnect_after=2))
    events = list(client.responses.create(model="chat-model", input="hi", stream=True))
    assert events[-1].type == "response.failed"
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    assert "upstream" in failed.error.message


def test_errors_name_the_field(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": []}, "input"),
        ({"input": [{"type": "martian"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="chat-model", **fields)
        body: Any = caught.value.body
        assert body["param"] == param, body
    assert upstream.requests == []


def test_tools_no_upstream_can_run_are_dropped_and_named(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    raw = gateway.request(
        "POST",
        "/v1/responses",
        {
            "model": "chat-model",
            "input": "hi",
            "tools": [
                WEATHER,
                {"type": "web_search"},
                {"type": "namespace", "name": "agents", "tools": [WEATHER]},
            ],
        },
    )
    assert raw.status == 200, raw.body
    assert raw.headers["x-lmgate-dropped-tools"] == "web_search, namespace:agents"
    assert [tool["function"]["name"] for tool in upstream.last.body["tools"]] == ["weather"]


def test_refusing_unsupported_tools(start_gateway: Any, upstream: FakeUpstream) -> None:
    config = upstream_config(upstream)
    config["responses"] = {"unsupported_tools": "refuse"}
    gw = start_gateway(config)
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().responses.create(model="chat-model", input="hi", tools=[{"type": "web_search"}])
    assert "tools of type web_search cannot be served" in caught.value.message
    assert upstream.requests == []


def test_custom_tools_become_functions_and_come_back_as_custom_calls(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    patch = "*** Begin Patch\n*** End Patch"
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "apply_patch", "arguments": orjson.dumps({"input": patch}).decode()},
    }
    upstream.push(Script(json=completion(None, None, "tool_calls", tool_calls=[call])))
    tool: Any = {"type": "custom", "name": "apply_patch", "description": "edit files"}
    reply = client.responses.create(model="chat-model", input="fix it", tools=[tool])
    [item] = reply.output
    assert item.type == "custom_tool_call" and item.input == patch and item.call_id == "call_9"
    sent = upstream.last.body["tools"][0]["function"]
    assert sent["name"] == "apply_patch" and sent["parameters"]["required"] == ["input"]


def test_the_request_codex_sends() -> None:
    """Recorded from Codex CLI 0.171: developer turns, its function tools, a namespace
    group and web_search, store false, reasoning summaries and encrypted content."""
    chat = openai_responses.parse_request(orjson.dumps(CODEX["body"]), CODEX["headers"])
    assert chat.stream and chat.model == "deepseek-chat"
    assert [tool.name for tool in chat.tools or []][:4] == [
        "exec_command",
        "write_stdin",
        "request_user_input",
        "view_image",
    ]
    extras = openai_responses.extras(chat)
    assert extras.dropped_tools == ["namespace:multi_agent_v1", "web_search"]
    assert len(chat.system) == 2 and chat.system[0].text.startswith("You are a coding agent")
    assert [message.role for message in chat.messages] == ["user", "user"]
    assert chat.parallel_tool_calls is True and chat.tool_choice == "auto"


def _thinking_reply() -> Script:
    return Script(
        json=anthropic_message(
            [
                {"type": "thinking", "thinking": "Hmm.", "signature": "sig-anthropic-1"},
                {"type": "text", "text": "Yes."},
            ]
        )
    )


def test_stateless_reasoning_round_trip_keeps_the_signature(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """Codex's way: store false, include reasoning.encrypted_content. The thinking and
    its Anthropic signature come back sealed, and reach the upstream again intact."""
    upstream.push(_thinking_reply(), Script(json=anthropic_message()))
    first = client.responses.create(
        model="claude-model",
        input="sure?",
        store=False,
        include=["reasoning.encrypted_content"],
    )
    reasoning = first.output[0]
    assert reasoning.type == "reasoning"
    sealed = reasoning.encrypted_content or ""
    assert sealed.startswith("lmg1.") and "sig-anthropic-1" not in sealed and "Hmm" not in sealed
    client.responses.create(
        model="claude-model",
        store=False,
        input=[
            {"role": "user", "content": "sure?"},
            reasoning.model_dump(exclude_none=True),
            first.output[1].model_dump(exclude_none=True),
            {"role": "user", "content": "really?"},
        ],  # type: ignore[arg-type]
    )
    turn = upstream.last.body["messages"][1]
    assert turn["content"][0] == {
        "type": "thinking",
        "thinking": "Hmm.",
        "signature": "sig-anthropic-1",
    }


def test_reasoning_is_sealed_only_when_asked(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(_thinking_reply())
    reply = client.responses.create(model="claude-model", input="sure?")
    assert reply.output[0].encrypted_content is None  # type: ignore[union-attr]


@pytest.mark.parametrize("stream", [False, True])
def test_sealed_reasoning_in_a_stream_and_a_tampered_blob(
    client: openai.OpenAI, upstream: FakeUpstream, stream: bool
) -> None:
    upstream.push(_thinking_reply() if not stream else _thinking_stream())
    options: Any = {"include": ["reasoning.encrypted_content"], "store": False}
    if stream:
        with client.responses.stream(model="claude-model", input="sure?", **options) as events:
            first = events.get_final_response()
    else:
        first = client.responses.create(model="claude-model", input="sure?", **options)
    sealed = first.output[0].encrypted_content  # type: ignore[union-attr]
    assert sealed and sealed.startswith("lmg1.")
    tampered = sealed[:-6] + ("AAAAAA" if not sealed.endswith("AAAAAA") else "BBBBBB")
    item = {"type": "reasoning", "summary": [], "encrypted_content": tampered}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model="claude-model", input=[{"role": "user", "content": "x"}, item], **options
        )
    assert caught.value.body["param"] == "input[1].encrypted_content"  # type: ignore[index]
    foreign = {**item, "encrypted_content": "gAAAAB-openai-blob", "summary": []}
    upstream.push(Script(json=anthropic_message()))
    client.responses.create(  # another API's blob is no use here, and no error either
        model="claude-model",
        input=[{"role": "user", "content": "x"}, foreign, {"role": "user", "content": "y"}],
    )


def _thinking_stream() -> Script:
    start = anthropic_message([], usage={"input_tokens": 9, "output_tokens": 1})
    return Script(
        chunks=anthropic_events(
            {"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Hmm."},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "sig-anthropic-1"},
            },
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text"}},
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "Yes."},
            },
            {"type": "content_block_stop", "index": 1},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}},
            {"type": "message_stop"},
        ),
        done=False,
    )


OTHER_KEY = "sk-another-client-key"


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_stored_conversation_over_three_turns(
    start_gateway: Any,
    upstream: FakeUpstream,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    engine: str,
) -> None:
    config = upstream_config(upstream)
    config["server"]["api_keys"].append(OTHER_KEY)
    url = (
        f"sqlite:///{tmp_path}/lmgate.db"
        if engine == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    config["store"] = {"url": url}
    gw = start_gateway(config)
    client = gw.client()
    upstream.push(
        Script(json=completion("Hi Ann")),
        Script(chunks=text_stream(["You are ", "Ann"])),
        Script(json=completion("Bye Ann")),
    )
    first = client.responses.create(model="chat-model", input="I am Ann", instructions="short")
    with client.responses.stream(
        model="chat-model", input="who am I?", previous_response_id=first.id
    ) as events:
        second = events.get_final_response()
    assert second.previous_response_id == first.id
    third = client.responses.create(model="chat-model", input="bye", previous_response_id=second.id)
    assert third.output_text == "Bye Ann"
    assert upstream.last.body["messages"] == [  # instructions are not carried over
        {"role": "user", "content": "I am Ann"},
        {"role": "assistant", "content": "Hi Ann"},
        {"role": "user", "content": "who am I?"},
        {"role": "assistant", "content": "You are Ann"},
        {"role": "user", "content": "bye"},
    ]
    assert upstream.requests[0].body["messages"][0] == {"role": "system", "content": "short"}

    # Retrieve, list input items (paginated), delete; another key sees nothing.
    assert client.responses.retrieve(second.id).output_text == "You are Ann"
    items = client.responses.input_items.list(third.id, limit=2, order="asc")
    texts = [item.content[0].text for item in items.data]  # type: ignore[union-attr]
    assert texts == ["I am Ann", "Hi Ann"] and items.has_more
    rest = client.responses.input_items.list(third.id, order="asc", after=items.data[-1].id)
    assert len(rest.data) == 3 and not rest.has_more
    other = gw.client(api_key=OTHER_KEY)
    for call in (
        lambda: other.responses.retrieve(first.id),
        lambda: other.responses.delete(first.id),
        lambda: other.responses.create(
            model="chat-model", input="x", previous_response_id=first.id
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    assert client.responses.retrieve(second.id).id == second.id  # the others stay

    # Usage records name the protocol, like the other two frontends'.
    gateway = gw.app.state.gateway
    wait_until(lambda: gateway.accounts.recorder.written >= 3)
    rows = asyncio.run_coroutine_threadsafe(
        gateway.accounts.store.usage_rows(time.time() - 60), gw.loop
    ).result(10)
    ours = [row for row in rows if row["protocol"] == "responses" and row["status"] == 200]
    assert len(ours) >= 3 and all(row["input_tokens"] > 0 for row in ours)

    # Written behind the replies, and all of it by shutdown: a new process finds them.
    gw.stop()
    again = start_gateway(config).client()
    assert again.responses.retrieve(third.id).output_text == "Bye Ann"
    with pytest.raises(openai.NotFoundError):
        again.responses.retrieve(first.id)  # deleted while it may still have waited


def test_images_by_data_url(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(Script(json=anthropic_message()))
    client.responses.create(
        model="claude-model",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is it"},
                    {"type": "input_image", "image_url": DATA_URL},
                ],
            }
        ],
    )
    image = upstream.last.body["messages"][0]["content"][1]
    assert image == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
    }


def test_store_false_keeps_nothing(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(Script(json=completion("x")))
    reply = client.responses.create(model="chat-model", input="hi", store=False)
    assert reply.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="chat-model", input="x", previous_response_id="resp_nope")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_a_removed_key_s_responses_go_to_no_other_key(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Config keys are known by what they are, not where they stand: with the first key
    removed, the key that moves into its place must not read its stored responses."""
    config = upstream_config(upstream)
    config["server"]["api_keys"] = [API_KEY, OTHER_KEY]
    config["store"] = {"url": f"sqlite:///{tmp_path}/lmgate.db"}
    before = start_gateway(config)
    upstream.push(Script(json=completion("mine")))
    stored = before.client().responses.create(model="chat-model", input="hi")
    assert before.client().responses.retrieve(stored.id).id == stored.id
    before.stop()
    config["server"]["api_keys"] = [OTHER_KEY]
    after = start_gateway(config)
    with pytest.raises(openai.NotFoundError):
        after.client(api_key=OTHER_KEY).responses.retrieve(stored.id)


def test_response_ids_cannot_be_guessed(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    ids = []
    for _ in range(4):
        upstream.push(Script(json=completion()))
        ids.append(client.responses.create(model="chat-model", input="hi", store=False).id)
    for one, two in itertools.pairwise(ids):
        shared = next(i for i, (a, b) in enumerate(zip(one, two, strict=True)) if a != b) - 5
        assert shared < 8, (one, two)  # random, not a counter after a fixed prefix
        assert len(one) - len("resp_") >= 24  # at least 96 bits of hex


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ({f"k{i}": "v" for i in range(17)}, "at most 16 pairs"),
        ({"k" * 65: "v"}, "keys of at most 64"),
        ({"k": "v" * 513}, "at most 512"),
        ({"k": 5}, "a string"),
    ],
)
def test_metadata_is_bounded_as_openai_bounds_it(
    client: openai.OpenAI, metadata: dict[str, Any], words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="chat-model", input="hi", metadata=metadata)
    assert words in caught.value.message


def test_what_is_stored_is_what_was_used(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """A built-in tool lmgate drops reaches no model: it is neither stored nor echoed."""
    upstream.push(Script(json=completion()))
    tools: Any = [
        {"type": "web_search"},
        {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}},
    ]
    reply = client.responses.create(
        model="chat-model", input="hi", tools=tools, metadata={"team": "a"}
    )
    stored = client.responses.retrieve(reply.id)
    assert [tool.type for tool in stored.tools] == ["function"]
    assert stored.metadata == {"team": "a"}


def test_a_key_s_stored_responses_are_capped(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = upstream_config(upstream)
    config["store"] = {"url": f"sqlite:///{tmp_path}/lmgate.db"}
    config["responses"] = {"max_stored_mb_per_key": 0.002}  # about 2 KB
    gw = start_gateway(config)
    client = gw.client()
    upstream.push(Script(json=completion("x" * 3000)))
    client.responses.create(model="chat-model", input="hi")  # stored: now over the cap
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="chat-model", input="hi again")
    assert "responses.max_stored_mb_per_key" in caught.value.message
    upstream.push(Script(json=completion("fine")))
    assert (
        client.responses.create(model="chat-model", input="hi", store=False).output_text == "fine"
    )
    assert len(upstream.requests) == 2  # the refused one never reached the upstream
