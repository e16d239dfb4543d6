"""The ``bedrock`` provider against a fake Bedrock runtime that checks every request's
SigV4 signature with botocore and streams real event-stream frames: each client
protocol through its SDK, stream and not, with tools, thinking and cache points; the
credential chain (given keys, environment, a profile, a Bedrock API key); and what
AWS refuses (a wrong secret, an old signature, another region, throttling)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.support.fakes import bedrock
from tests.support.fakes.bedrock import ACCESS_KEY, REGION, SECRET_KEY, event
from tests.support.fakes.upstream import FakeUpstream, Recorded, Script, completion
from tests.support.gateway import API_KEY, RunningGateway

CLAUDE = "us.anthropic.claude-sonnet-4-20250514-v1:0"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def config(upstream: FakeUpstream, chain: bool = False, **aws: Any) -> dict[str, Any]:
    """``chain``: no keys in the config (the AWS credential chain finds them)."""
    keys = {} if chain else {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}
    return {
        "server": {"api_keys": [API_KEY]},
        "providers": {
            "aws": {
                "type": "bedrock",
                "region": REGION,
                "base_url": upstream.url,
                "timeouts": {"connect": 2, "first_byte": 5, "idle": 5},
                **keys,
                **aws,
            },
            "compat": {"type": "openai", "base_url": upstream.url + "/v1", "api_key": "sk-up"},
        },
        "models": [
            {"id": "claude", "provider": "aws", "model": CLAUDE, "thinking": True},
            {"id": "nova", "provider": "aws", "model": "amazon.nova-pro-v1:0", "support": "image"},
            {"id": "failover", "provider": "aws", "model": "meta.llama3-70b-instruct-v1:0"},
            {"id": "other", "provider": "compat", "model": "up-model"},
        ],
        "routing": {"retries": 0, "fallbacks": {"failover": ["other"]},
                    "cooldown": {"failures": 1_000_000}},
    }  # fmt: skip


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream) -> RunningGateway:
    return start_gateway(config(upstream))  # type: ignore[no-any-return]


def converse(recorded: Recorded) -> Script:
    """Text, or a tool call when the request has tools and no result yet."""
    body = recorded.body
    results = [
        block
        for message in body["messages"]
        for block in message["content"]
        if "toolResult" in block
    ]
    streamed = recorded.path.endswith("/converse-stream")
    if "toolConfig" in body and not results:
        use = {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}
        if not streamed:
            return bedrock.reply([{"text": "Let me look."}, {"toolUse": use}], stop="tool_use")
        start = {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}
        return bedrock.stream(
            event("messageStart", {"role": "assistant"}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me look."}}),
            event("contentBlockStop", {"contentBlockIndex": 0}),
            event("contentBlockStart", {"contentBlockIndex": 1, "start": start}),
            event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city": '}}}),
            event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Paris"}'}}}),
            event("contentBlockStop", {"contentBlockIndex": 1}),
            event("messageStop", {"stopReason": "tool_use"}),
            event("metadata", {"usage": {"inputTokens": 30, "outputTokens": 9, "totalTokens": 39}}),
        )  # fmt: skip
    if streamed:
        return bedrock.text_stream(["Sunny ", "in Paris."])
    return bedrock.reply([{"text": "Sunny in Paris."}])


def test_openai_chat_with_tools_stream_and_not(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.route = bedrock.checking(converse)
    client = gw.client()
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    first = client.chat.completions.create(
        model="nova", messages=messages, tools=[TOOL], max_tokens=300, temperature=0.2
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, orjson.loads(call.function.arguments)) == (
        "tooluse_1", "get_weather", {"city": "Paris"})  # fmt: skip
    sent = upstream.last
    assert sent.path == "/model/amazon.nova-pro-v1:0/converse"
    assert sent.target == "/model/amazon.nova-pro-v1%3A0/converse"  # the id percent-encoded
    assert sent.body["system"] == [{"text": "Be brief."}]
    assert sent.body["inferenceConfig"] == {"maxTokens": 300, "temperature": 0.2}
    assert sent.body["toolConfig"]["tools"][0]["toolSpec"] == {
        "name": "get_weather",
        "description": "Weather of a city",
        "inputSchema": {"json": TOOL["function"]["parameters"]},  # type: ignore[index]
    }
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "tooluse_1", "content": "18C, sunny"}]  # fmt: skip
    stream = client.chat.completions.create(
        model="nova", messages=messages, tools=[TOOL], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Sunny in Paris."
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 11
    turns = upstream.last.body["messages"]
    assert turns[1]["role"] == "assistant" and turns[1]["content"][-1] == {
        "toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}
    }
    assert turns[2] == {"role": "user", "content": [{"toolResult": {
        "toolUseId": "tooluse_1", "content": [{"text": "18C, sunny"}]}}]}  # fmt: skip


def test_a_streamed_tool_call_arrives_in_pieces(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.route = bedrock.checking(converse)
    stream = gw.client().chat.completions.create(
        model="nova", messages=[{"role": "user", "content": "Weather?"}], tools=[TOOL], stream=True
    )
    pieces = [
        call.function.arguments
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta.tool_calls
        for call in chunk.choices[0].delta.tool_calls
        if call.function and call.function.arguments
    ]
    assert pieces == ['{"city": ', '"Paris"}']


def test_anthropic_clients_thinking_signed_and_sent_back(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    """Claude's reasoning on Bedrock comes with a signature that only Bedrock takes back;
    cache_control becomes cache points, and cache tokens are reported."""
    usage = {"inputTokens": 5, "outputTokens": 7, "totalTokens": 112,
             "cacheReadInputTokens": 80, "cacheWriteInputTokens": 20}  # fmt: skip
    thought = {"reasoningText": {"text": "Think.", "signature": "bedrock-sig-1"}}
    upstream.route = bedrock.checking(
        lambda r: bedrock.stream(
            event("messageStart", {"role": "assistant"}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Think."}}}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "bedrock-sig-1"}}}),
            event("contentBlockStop", {"contentBlockIndex": 0}),
            event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Hi."}}),
            event("contentBlockStop", {"contentBlockIndex": 1}),
            event("messageStop", {"stopReason": "end_turn"}),
            event("metadata", {"usage": usage}),
        ) if r.body.get("messages") and len(r.body["messages"]) == 1
        else bedrock.reply([{"reasoningContent": thought}, {"text": "Again."}], usage=usage)
    )  # fmt: skip
    client = gw.anthropic()
    system: Any = [{"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}]
    with client.messages.stream(
        model="claude", max_tokens=1000, system=system,
        thinking={"type": "enabled", "budget_tokens": 2000},
        messages=[{"role": "user", "content": "Hi"}],
    ) as stream:  # fmt: skip
        message = stream.get_final_message()
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Think."
    assert text.type == "text" and text.text == "Hi."
    assert message.usage.cache_read_input_tokens == 80
    assert message.usage.cache_creation_input_tokens == 20
    sent = upstream.last.body
    assert sent["system"] == [{"text": "Long rules."}, {"cachePoint": {"type": "default"}}]
    assert sent["additionalModelRequestFields"]["thinking"] == {
        "type": "enabled", "budget_tokens": 2000}  # fmt: skip
    assert (
        sent["inferenceConfig"]["maxTokens"] >= 2000
        and "temperature" not in sent["inferenceConfig"]
    )
    again = client.messages.create(
        model="claude", max_tokens=1000, thinking={"type": "enabled", "budget_tokens": 2000},
        messages=[{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": [c.model_dump() for c in message.content]},
                  {"role": "user", "content": "Again"}],
    )  # fmt: skip
    assert again.content[-1].text == "Again."  # type: ignore[union-attr]
    turn = upstream.last.body["messages"][1]
    assert turn["content"][0] == {"reasoningContent": thought}


def test_responses_and_gemini_clients(gw: RunningGateway, upstream: FakeUpstream) -> None:
    from google import genai
    from google.genai import types

    upstream.route = bedrock.checking(converse)
    response = gw.client().responses.create(model="nova", input="Weather?", tools=[{
        "type": "function", "name": "get_weather", "parameters": TOOL["function"]["parameters"]}])  # type: ignore[index]  # fmt: skip
    call = next(item for item in response.output if item.type == "function_call")
    assert call.name == "get_weather" and call.call_id == "tooluse_1"  # type: ignore[union-attr]
    streamed = gw.client().responses.create(model="nova", input="Weather?", stream=True)
    done = next(e for e in streamed if e.type == "response.completed")
    assert done.response.output_text == "Sunny in Paris."
    google = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=gw.url))
    answer = google.models.generate_content(model="nova", contents="Weather?")
    assert answer.text == "Sunny in Paris."
    chunks = list(google.models.generate_content_stream(model="nova", contents="Weather?"))
    assert "".join(c.text or "" for c in chunks) == "Sunny in Paris."


def test_structured_output_and_images(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.route = bedrock.checking(converse)
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    gw.client().chat.completions.create(
        model="nova",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is it?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}],
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}},
    )  # fmt: skip
    sent = upstream.last.body
    assert sent["messages"][0]["content"][1] == {
        "image": {"format": "png", "source": {"bytes": png}}
    }
    structure = sent["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert orjson.loads(structure["schema"]) == schema and structure["name"] == "thing"


@pytest.mark.parametrize(
    ("aws", "expected", "refused"),
    [
        ({"secret_access_key": "not-the-secret-key-00000000000000000000"}, {}, "does not match"),
        ({}, {"region": "eu-west-1"}, "scoped to a valid region"),
        ({}, {"now": datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10)},
         "Signature expired"),
    ],
)  # fmt: skip
def test_what_aws_refuses(
    start_gateway: Any, upstream: FakeUpstream, aws: dict[str, Any], expected: dict[str, Any],
    refused: str,
) -> None:  # fmt: skip
    gw = start_gateway(config(upstream, **aws))
    upstream.route = bedrock.checking(converse, **expected)
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(
            model="nova", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == 502
    assert (
        "refused the gateway's credentials" in caught.value.message
        and refused in caught.value.message
    )
    assert SECRET_KEY not in caught.value.message


def test_the_credential_chain_environment_profile_and_api_key(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (tmp_path / "credentials").write_text(
        f"[team]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    hello = [{"role": "user", "content": "Hi"}]
    upstream.route = bedrock.checking(converse)
    # A profile of the shared credentials file.
    gw = start_gateway(config(upstream, chain=True, profile="team"))
    assert gw.client().chat.completions.create(model="nova", messages=hello).choices
    gw.stop()
    # The environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    gw = start_gateway(config(upstream, chain=True))
    assert gw.client().chat.completions.create(model="nova", messages=hello).choices
    assert upstream.last.headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"
    )
    gw.stop()
    # A Bedrock API key (bearer), from AWS_BEARER_TOKEN_BEDROCK.
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-0123456789")
    upstream.route = bedrock.checking(converse, bearer="bedrock-api-key-0123456789")
    gw = start_gateway(config(upstream, chain=True))
    assert gw.client().chat.completions.create(model="nova", messages=hello).choices
    assert upstream.last.headers["Authorization"] == "Bearer bedrock-api-key-0123456789"


def test_no_credentials_anywhere_is_a_clear_error(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_BEARER_TOKEN_BEDROCK", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    gw = start_gateway(config(upstream, chain=True))
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(
            model="nova", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == 502 and "no AWS credentials found" in caught.value.message
    assert upstream.requests == []


def test_throttling_fails_over_and_stream_errors_reach_the_client(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.route = bedrock.checking(
        lambda r: bedrock.error(429, "ThrottlingException", "Too many requests, please wait")
        if r.path.startswith("/model/") else Script(json=completion("From the other one."))
    )  # fmt: skip
    answer = gw.client().chat.completions.create(
        model="failover", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.choices[0].message.content == "From the other one."
    assert [r.path for r in upstream.requests] == [
        "/model/meta.llama3-70b-instruct-v1:0/converse", "/v1/chat/completions"]  # fmt: skip
    # Mid-stream, AWS sends an exception frame: the client gets an error event.
    upstream.route = bedrock.checking(lambda r: bedrock.stream(
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Par"}}),
        bedrock.exception("throttlingException", "Too many tokens, please wait"),
    ))  # fmt: skip
    with (
        gw.anthropic().messages.stream(
            model="claude", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
        pytest.raises(anthropic.APIStatusError) as caught,
    ):
        stream.get_final_message()
    assert "Too many tokens" in str(caught.value)


def test_a_frame_with_a_bad_crc_is_an_upstream_error(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    good = event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}})
    broken = good[:-1] + bytes([good[-1] ^ 0xFF])
    upstream.route = bedrock.checking(
        lambda r: bedrock.stream(event("messageStart", {"role": "assistant"}), broken)
    )
    stream = gw.client().chat.completions.create(
        model="nova", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert "event-stream" in str(caught.value)


def test_a_missing_region_is_said_in_one_line(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lmgate.config import ConfigError, parse_config
    from lmgate.providers import provider_problems

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    raw = config(upstream)
    del raw["providers"]["aws"]["region"], raw["providers"]["aws"]["base_url"]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, checks=[provider_problems])
    assert "providers.aws" in str(caught.value) and "region" in str(caught.value)


def test_tool_turns_without_tools_become_text_and_empty_results_are_not_blank(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    """Converse refuses tool blocks when the request declares no tools, and blank text."""
    upstream.route = bedrock.checking(converse)
    history: list[Any] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""},
    ]  # fmt: skip
    gw.client().chat.completions.create(model="nova", messages=history)
    turns = upstream.last.body["messages"]
    assert "toolConfig" not in upstream.last.body
    assert turns[1]["content"] == [{"text": "[called tool get_weather (t1) with {}]"}]
    assert turns[2]["content"] == [{"text": "[result of tool call t1: (no output)]"}]
    gw.client().chat.completions.create(model="nova", messages=history, tools=[TOOL])
    result = upstream.last.body["messages"][2]["content"][0]["toolResult"]
    assert result == {"toolUseId": "t1", "content": [{"text": "(no output)"}]}


def test_check_connect_asks_each_provider_for_one_token(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """``lmgate check --connect``: a line per provider, signed and all; a refusal is a
    failure with its reason (no secret in it) and a non-zero exit."""
    from tests.support.cli import run_cli

    upstream.route = bedrock.checking(
        lambda r: Script(status=401, json={"error": {"message": "Incorrect API key"}})
        if r.path.startswith("/v1/") else converse(r)
    )  # fmt: skip
    raw = config(upstream)
    raw["store"] = {"url": "none"}
    raw["models"] = [*raw["models"][1:], {"id": "c", "provider": "compat", "model": "up-model"}]
    path = tmp_path / "lmgate.yaml"
    path.write_bytes(orjson.dumps(raw))
    done = run_cli("check", "--config", str(path), "--connect")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("aws: ok (amazon.nova-pro-v1:0, ")
    assert lines[2].startswith("compat: failed (up-model): upstream compat refused the gateway")
    assert "sk-up" not in done.stdout and SECRET_KEY not in done.stdout
    sent = next(r for r in upstream.requests if r.path.startswith("/model/"))
    assert sent.body["inferenceConfig"] == {"maxTokens": 1}


def test_claude_by_invoke_model_with_anthropics_own_body(
    start_gateway: Any, upstream: FakeUpstream
) -> None:
    """``anthropic_api: invoke``: Anthropic's body (an Anthropic client's own fields as
    sent), streamed back as Anthropic's events inside ``chunk`` frames."""
    import base64

    from tests.support.fakes.upstream import anthropic_message

    def chunk(data: dict[str, Any]) -> bytes:
        return event("chunk", {"bytes": base64.b64encode(orjson.dumps(data)).decode()})

    def invoke(recorded: Recorded) -> Script:
        if "/converse" in recorded.path:
            return converse(recorded)
        if recorded.path.endswith("/invoke"):
            return Script(json=anthropic_message([{"type": "text", "text": "Whole."}]))
        start = {**anthropic_message([]), "stop_reason": None}
        return bedrock.stream(
            chunk({"type": "message_start", "message": start}),
            chunk({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Streamed."}}),
            chunk({"type": "content_block_stop", "index": 0}),
            chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
            chunk({"type": "message_stop"}),
        )  # fmt: skip

    upstream.route = bedrock.checking(invoke)
    gw = start_gateway(config(upstream, anthropic_api="invoke", beta=["context-1m-2025-08-07"]))
    client = gw.anthropic()
    hello: Any = [{"role": "user", "content": "Hi"}]
    whole = client.messages.create(
        model="claude", max_tokens=50, messages=hello, metadata={"user_id": "u-1"}
    )
    assert whole.content[0].text == "Whole."  # type: ignore[union-attr]
    sent = upstream.last
    assert sent.target == "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke"
    assert sent.body["anthropic_version"] == "bedrock-2023-05-31"
    assert sent.body["anthropic_beta"] == ["context-1m-2025-08-07"]
    assert "model" not in sent.body and "stream" not in sent.body
    assert sent.body["metadata"] == {"user_id": "u-1"}  # Anthropic's own field, as sent
    with client.messages.stream(model="claude", max_tokens=50, messages=hello) as stream:
        assert stream.get_final_message().content[0].text == "Streamed."  # type: ignore[union-attr]
    assert upstream.last.path.endswith("/invoke-with-response-stream")
    # Other families stay on Converse.
    gw.client().chat.completions.create(model="nova", messages=[{"role": "user", "content": "Hi"}])
    assert upstream.last.path.endswith("/converse")
