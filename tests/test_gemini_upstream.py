"""The ``gemini`` provider: a fake Gemini upstream (which refuses what the real API
refuses) reached from the OpenAI, Anthropic and Responses frontends, stream and
non-stream, with tools and thinking signatures over turns; Claude Code's real tool
definitions made acceptable to it; and the schema normaliser's edge cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate.providers.schemas import for_gemini
from tests.support.fakes import gemini
from tests.support.fakes.upstream import FakeUpstream, Script
from tests.support.gateway import API_KEY, RunningGateway

USAGE = {
    "promptTokenCount": 20,
    "candidatesTokenCount": 5,
    "thoughtsTokenCount": 3,
    "cachedContentTokenCount": 4,
    "totalTokenCount": 28,
}
FIXTURE = Path(__file__).parent / "data" / "claude_code_request.json"


def config(upstream: FakeUpstream) -> dict[str, Any]:
    return {
        "server": {"api_keys": [API_KEY]},
        "providers": {
            "goog": {
                "type": "gemini",
                "base_url": upstream.url + "/v1beta",
                "api_key": "gemini-upstream-key",
            },
            "compat": {"type": "openai", "base_url": upstream.url + "/v1", "tool_schema": "gemini"},
        },
        "models": [
            {"id": "gem", "provider": "goog", "model": "gemini-up", "thinking": True},
            {"id": "compat-gem", "provider": "compat", "model": "gemini-up"},
        ],
        "routing": {"retries": 0},
    }


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream) -> RunningGateway:
    return start_gateway(config(upstream))  # type: ignore[no-any-return]


def test_openai_clients_stream_and_not(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.route = gemini.enforcing(
        lambda r: (
            Script(json=gemini.response([{"text": "Hi!"}], usage=USAGE))
            if r.path.endswith(":generateContent")
            else gemini.stream(
                gemini.response([{"text": "He"}], finish=None),
                gemini.response([{"text": "llo"}], usage=USAGE),
            )
        )
    )
    client = gw.client()
    ask: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    reply = client.chat.completions.create(
        model="gem", messages=ask, temperature=0.3, max_tokens=50, stop=["END"]
    )
    assert reply.choices[0].message.content == "Hi!"
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (20, 8)  # thoughts are output
    assert usage.prompt_tokens_details.cached_tokens == 4
    sent = upstream.last
    assert sent.path == "/v1beta/models/gemini-up:generateContent"
    assert sent.headers["x-goog-api-key"] == "gemini-upstream-key"
    assert sent.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent.body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    assert sent.body["generationConfig"] == {
        "temperature": 0.3,
        "maxOutputTokens": 50,
        "stopSequences": ["END"],
    }
    chunks = list(
        client.chat.completions.create(
            model="gem", messages=ask, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].usage.completion_tokens == 8
    assert upstream.last.path == "/v1beta/models/gemini-up:streamGenerateContent"


def test_anthropic_clients_tools_and_thinking_signatures_over_turns(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    first = gemini.stream(
        gemini.response([{"text": "I should look it up.", "thought": True}], finish=None),
        gemini.response(
            [
                {
                    "functionCall": {"name": "weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "c2lnbmF0dXJlLTE=",
                }
            ],
            usage=USAGE,
        ),
    )
    second = Script(json=gemini.response([{"text": "Sunny."}], usage=USAGE))
    answers = iter([first, second])
    upstream.route = gemini.enforcing(lambda r: next(answers))
    client = gw.anthropic()
    tools: Any = [
        {
            "name": "weather",
            "description": "Weather in a city",
            "input_schema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        }
    ]
    asked: Any = {"role": "user", "content": "Weather in Paris?"}
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    with client.messages.stream(
        model="gem", max_tokens=4096, messages=[asked], tools=tools, thinking=thinking
    ) as events:
        message = events.get_final_message()
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "tool_use"], kinds
    thought, call = message.content
    assert thought.thinking == "I should look it up." and thought.signature
    assert (call.name, call.input) == ("weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    sent = upstream.last.body
    assert sent["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": True,
        "thinkingBudget": 2048,
    }
    assert sent["tools"][0]["functionDeclarations"][0]["parameters"] == {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    result: Any = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": '{"sky": "sunny"}'}],
    }
    reply = client.messages.create(
        model="gem",
        max_tokens=4096,
        messages=[asked, {"role": "assistant", "content": message.content}, result],
        tools=tools,
        thinking=thinking,
    )
    assert reply.content[0].text == "Sunny."
    contents = upstream.last.body["contents"]
    model_turn = contents[1]
    assert model_turn["role"] == "model"
    call_part = next(p for p in model_turn["parts"] if "functionCall" in p)
    assert call_part["thoughtSignature"] == "c2lnbmF0dXJlLTE="  # handed back with its call
    assert call_part["functionCall"] == {"name": "weather", "args": {"city": "Paris"}}  # no id
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "weather", "response": {"sky": "sunny"}}}
    ]


def test_claude_codes_real_tools_pass_the_gemini_rules(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    recorded = orjson.loads(FIXTURE.read_bytes())["body"]
    tools = recorded["tools"]
    raw = {
        "tools": [
            {
                "functionDeclarations": [
                    {"name": t["name"], "parameters": t["input_schema"]} for t in tools
                ]
            }
        ]
    }
    assert gemini.refusal(raw)  # as Claude Code sends them, Gemini refuses them
    upstream.route = gemini.enforcing(
        lambda r: Script(json=gemini.response([{"text": "ok"}], usage=USAGE))
    )
    reply = gw.request(
        "POST",
        "/v1/messages",
        {
            "model": "gem",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": tools,
        },
        headers={"anthropic-version": "2023-06-01"},
    )
    assert reply.status == 200, reply.body
    declarations = upstream.last.body["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in declarations] == [t["name"] for t in tools]
    # The same through an OpenAI-compatible endpoint set to tool_schema: gemini.
    upstream.route = gemini.enforcing(lambda r: Script(json={
        "id": "x", "object": "chat.completion", "created": 1, "model": "gemini-up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    }))  # fmt: skip
    openai_tools = [
        {"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"]}}
        for t in tools
    ]
    reply = gw.request(
        "POST",
        "/v1/chat/completions",
        {
            "model": "compat-gem",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": openai_tools,
        },
    )
    assert reply.status == 200, reply.body
    for tool in upstream.last.body["tools"]:
        assert gemini._schema(tool["function"]["parameters"], tool["function"]["name"]) is None


def test_the_responses_frontend_and_an_upstream_error(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(json=gemini.response([{"text": "From Gemini"}], usage=USAGE)))
    reply = gw.client().responses.create(model="gem", input="hi", store=False)
    assert reply.output_text == "From Gemini"
    assert reply.usage.output_tokens_details.reasoning_tokens == 3
    upstream.push(
        Script(
            status=400,
            json={"error": {"code": 400, "message": "bad field", "status": "INVALID_ARGUMENT"}},
        )
    )
    failed = gw.request(
        "POST",
        "/v1/chat/completions",
        {"model": "gem", "messages": [{"role": "user", "content": "x"}]},
    )
    assert failed.status == 400 and b"bad field" in failed.body
    upstream.push(gemini.stream(gemini.response([{"text": "cut"}], finish=None)))  # no finishReason
    cut = gw.request(
        "POST",
        "/v1/chat/completions",
        {"model": "gem", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    )
    assert cut.status == 200 and b'"error"' in cut.body  # ended with an error, not hung


def test_schema_edge_cases() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}}},
        "properties": {
            "mode": {"const": "fast"},
            "count": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
            "ratio": {"type": "number", "exclusiveMinimum": 0.5},
            "note": {
                "anyOf": [{"type": "string", "maxLength": 9}, {"type": "null"}],
                "description": "d",
            },
            "tags": {"type": ["array", "null"], "items": {"type": "string", "format": "uri"}},
            "where": {"$ref": "#/$defs/Point"},
            "level": {"type": "integer", "enum": [1, 2]},
            "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "map": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "propertyNames": {"pattern": "^a"},
            },
            "loop": {"$ref": "#"},
        },
        "required": ["mode", "missing"],
        "additionalProperties": False,
    }
    out = for_gemini(schema)
    properties = out["properties"]
    assert properties["mode"] == {"enum": ["fast"], "type": "string", "format": "enum"}
    assert (properties["count"]["minimum"], properties["count"]["maximum"]) == (1, 9)
    assert properties["ratio"]["minimum"] == 0.5
    assert properties["note"] == {
        "type": "string",
        "maxLength": 9,
        "description": "d",
        "nullable": True,
    }
    assert properties["tags"] == {"type": "array", "items": {"type": "string"}, "nullable": True}
    assert properties["where"] == {"type": "object", "properties": {"x": {"type": "number"}}}
    assert properties["level"] == {"type": "string", "format": "enum", "enum": ["1", "2"]}
    assert properties["either"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert properties["map"] == {"type": "object", "properties": {}}
    assert out["required"] == ["mode"]
    assert gemini._schema(out, "edge") is None
    assert for_gemini(None) == {"type": "object", "properties": {}}
    assert for_gemini({"type": "string"})["properties"]["value"] == {"type": "string"}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
    | st.sampled_from(["object", "string", "integer", "null", "#/$defs/a", "#"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from([
            "type", "properties", "items", "anyOf", "oneOf", "allOf", "$ref", "$defs", "const",
            "enum", "required", "nullable", "format", "additionalProperties", "minimum",
            "exclusiveMinimum", "description", "a", "definitions",
        ]),
        inner,
        max_size=5,
    ),
    max_leaves=40,
)  # fmt: skip


@settings(max_examples=1500, derandomize=True, deadline=None, database=None)
@given(JSON)
def test_any_schema_becomes_one_gemini_takes(schema: Any) -> None:
    out = for_gemini(schema)
    problem = gemini._schema(out, "fuzzed")
    assert problem is None, (schema, out, problem)


def test_a_gemini_client_keeps_its_thought_signatures_through_the_gateway(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    from google import genai
    from google.genai import types

    signed = {
        "functionCall": {"name": "weather", "args": {"city": "Oslo"}},
        "thoughtSignature": "c2lnLTI=",
    }
    answers = iter(
        [
            gemini.stream(gemini.response([], finish=None), gemini.response([signed], usage=USAGE)),
            Script(json=gemini.response([{"text": "Cold."}], usage=USAGE)),
        ]
    )
    upstream.route = gemini.enforcing(lambda r: next(answers))
    client = genai.Client(
        api_key=API_KEY,
        http_options=types.HttpOptions(
            base_url=gw.url, retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )
    weather = types.FunctionDeclaration(
        name="weather",
        parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
    )
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[weather])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    asked = types.Content(role="user", parts=[types.Part(text="Weather in Oslo?")])
    chunks = list(
        client.models.generate_content_stream(model="gem", contents=[asked], config=config)
    )
    part = next(p for c in chunks for p in c.candidates[0].content.parts if p.function_call)
    assert part.thought_signature == b"sig-2" and part.function_call.name == "weather"
    answer = types.Part.from_function_response(name="weather", response={"temp": -5})
    reply = client.models.generate_content(
        model="gem",
        contents=[
            asked,
            types.Content(role="model", parts=[part]),
            types.Content(role="user", parts=[answer]),
        ],
        config=config,
    )
    assert reply.text == "Cold."
    model_turn = upstream.last.body["contents"][1]
    assert model_turn["parts"] == [
        {
            "functionCall": {"name": "weather", "args": {"city": "Oslo"}},
            "thoughtSignature": "c2lnLTI=",
        }
    ]
