"""Every client protocol, through its official SDK, stream and not, to a model on each
cloud (Bedrock's Converse, Vertex's Gemini and Claude publishers, Azure OpenAI), with a
tool the model calls: the call arrives whole, by name and arguments, in each. One fake
upstream plays the three clouds, each refusing bad credentials as the real one does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from google import genai
from google.genai import types

from tests.support.fakes import bedrock, gemini
from tests.support.fakes.azure import API_KEY as AZURE_KEY
from tests.support.fakes.azure import FakeAzure
from tests.support.fakes.bedrock import ACCESS_KEY, REGION, SECRET_KEY
from tests.support.fakes.upstream import (
    FakeUpstream,
    Recorded,
    Script,
    anthropic_message,
    completion,
)
from tests.support.fakes.vertex import LOCATION, PROJECT, FakeVertex
from tests.support.gateway import API_KEY, RunningGateway

ARGS = {"city": "Paris"}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
MODELS = ["bedrock", "vertex-gemini", "vertex-claude", "azure"]


def calling(recorded: Recorded) -> Script:
    """Each cloud's reply calling get_weather (as JSON even to a stream request, which
    the gateway must still stream to its client)."""
    if recorded.path.startswith("/model/"):
        use = {"toolUseId": "tooluse_1", "name": "get_weather", "input": ARGS}
        return bedrock.reply([{"toolUse": use}], stop="tool_use")
    if "/publishers/anthropic/" in recorded.path:
        block = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": ARGS}
        return Script(json=anthropic_message([block], stop_reason="tool_use"))
    if "/publishers/google/" in recorded.path:
        return Script(
            json=gemini.response([{"functionCall": {"name": "get_weather", "args": ARGS}}])
        )
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": orjson.dumps(ARGS).decode()}}  # fmt: skip
    return Script(json=completion(None, finish_reason="tool_calls", tool_calls=[call]))


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream, tmp_path: Path) -> RunningGateway:
    vertex = FakeVertex(upstream.url, calling)
    azure = FakeAzure({"gpt-prod"}, calling)

    def route(recorded: Recorded) -> Script:
        if recorded.path.startswith("/openai/"):
            return azure(recorded)
        return vertex(recorded) if recorded.path.startswith(("/v1/projects/", "/token")) else (
            bedrock.refusal(recorded) or calling(recorded))  # fmt: skip

    upstream.route = route
    base = {"base_url": upstream.url, "timeouts": {"connect": 2, "first_byte": 5, "idle": 5}}
    return start_gateway({  # type: ignore[no-any-return]
        "server": {"api_keys": [API_KEY]},
        "providers": {
            "aws": {"type": "bedrock", "region": REGION, "access_key_id": ACCESS_KEY,
                    "secret_access_key": SECRET_KEY, **base},
            "gcp": {"type": "vertex", "project": PROJECT, "location": LOCATION,
                    "credentials_file": str(vertex.key_file(tmp_path)), **base},
            "az": {"type": "azure", "api_key": AZURE_KEY, **base},
        },
        "models": [
            {"id": "bedrock", "provider": "aws", "model": "us.anthropic.claude-sonnet-4-20250514-v1:0"},
            {"id": "vertex-gemini", "provider": "gcp", "model": "gemini-2.5-flash"},
            {"id": "vertex-claude", "provider": "gcp", "model": "claude-sonnet-4@20250514"},
            {"id": "azure", "provider": "az", "model": "gpt-prod"},
        ],
        "routing": {"retries": 0},
    })  # fmt: skip


def _chat(gw: RunningGateway, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
    tool: Any = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
    messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
    client = gw.client()
    if not stream:
        call = client.chat.completions.create(model=model, messages=messages, tools=[tool])
        function = call.choices[0].message.tool_calls[0].function  # type: ignore[index,union-attr]
        return function.name, orjson.loads(function.arguments)
    name, arguments = "", ""
    for chunk in client.chat.completions.create(
        model=model, messages=messages, tools=[tool], stream=True
    ):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name += (delta.function and delta.function.name) or ""
            arguments += (delta.function and delta.function.arguments) or ""
    return name, orjson.loads(arguments)


def _responses(gw: RunningGateway, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
    tool: Any = {"type": "function", "name": "get_weather", "parameters": SCHEMA}
    client = gw.client()
    if stream:
        events = client.responses.create(model=model, input="Weather?", tools=[tool], stream=True)
        output = next(e for e in events if e.type == "response.completed").response.output
    else:
        output = client.responses.create(model=model, input="Weather?", tools=[tool]).output
    call: Any = next(item for item in output if item.type == "function_call")
    return call.name, orjson.loads(call.arguments)


def _messages(gw: RunningGateway, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
    tool: Any = {"name": "get_weather", "input_schema": SCHEMA}
    client = gw.anthropic()
    messages: Any = [{"role": "user", "content": "Weather?"}]
    if stream:
        with client.messages.stream(
            model=model, max_tokens=200, messages=messages, tools=[tool]
        ) as events:
            content = events.get_final_message().content
    else:
        content = client.messages.create(
            model=model, max_tokens=200, messages=messages, tools=[tool]
        ).content
    use: Any = next(block for block in content if block.type == "tool_use")
    return use.name, use.input


def _gemini(gw: RunningGateway, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
    google = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=gw.url))
    tool = types.Tool(function_declarations=[
        types.FunctionDeclaration(name="get_weather", parameters_json_schema=SCHEMA)])  # fmt: skip
    config = types.GenerateContentConfig(tools=[tool])
    if stream:
        chunks = google.models.generate_content_stream(
            model=model, contents="Weather?", config=config
        )
        calls = [call for chunk in chunks for call in chunk.function_calls or []]
    else:
        reply = google.models.generate_content(model=model, contents="Weather?", config=config)
        calls = reply.function_calls or []
    return str(calls[0].name), dict(calls[0].args or {})


PROTOCOLS = {"chat": _chat, "responses": _responses, "messages": _messages, "gemini": _gemini}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("model", MODELS)
def test_each_protocol_gets_the_tool_call(
    gw: RunningGateway, upstream: FakeUpstream, model: str, protocol: str, stream: bool
) -> None:
    assert PROTOCOLS[protocol](gw, model, stream) == ("get_weather", ARGS)
    sent = [r for r in upstream.requests if r.path not in ("/token",)][-1]
    assert "get_weather" in orjson.dumps(sent.body).decode()  # the tool reached the cloud
