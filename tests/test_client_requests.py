"""What real clients send beyond the documents, translated for every upstream: system
turns inside ``messages``, the client's ``anthropic-beta`` header, structured output,
reasoning effort and thinking, and reasoning handed back to DeepSeek-style upstreams.

The Claude Code request is a fixture recorded from the real program
(``tests/data/claude_code_request.json``); the rest go through the official SDKs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import RunningGateway, upstream_config

CLAUDE_CODE = orjson.loads(
    (Path(__file__).parent / "data" / "claude_code_request.json").read_bytes()
)
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gw(upstream_server: FakeUpstream) -> Iterator[RunningGateway]:
    config = upstream_config(upstream_server)
    providers = config["providers"]
    providers["ds"] = {**providers["up"], "send_reasoning": "always"}
    providers["lm"] = {**providers["up"], "type": "lmv2", "base_url": upstream_server.url}
    providers["claude"]["beta"] = ["provider-beta-1"]
    config["models"] += [
        {"id": "thinker", "provider": "ds", "model": "up-thinker", "thinking": True},
        {"id": "ds-named", "provider": "up", "model": "deepseek-v4"},  # auto: by the name
        {"id": "lm-model", "provider": "lm", "model": "lm-up"},
    ]
    gateway = RunningGateway(config)
    yield gateway
    gateway.stop()


@pytest.fixture
def claude(gw: RunningGateway, upstream: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    yield gw.anthropic()
    gw.close_clients()


@pytest.fixture
def oai(gw: RunningGateway, upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    yield gw.client()
    gw.close_clients()


def replay_claude_code(gw: RunningGateway, model: str, **changes: Any) -> Any:
    body = {**CLAUDE_CODE["body"], "model": model, "stream": False, **changes}
    headers = {k: v for k, v in CLAUDE_CODE["headers"].items() if k.startswith("anthropic")}
    return gw.request("POST", CLAUDE_CODE["path"], body, headers=headers)


# ---- system turns inside messages ------------------------------------------------


def test_claude_code_system_turn_reaches_openai_upstream_in_place(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    raw = replay_claude_code(gw, "chat-model")
    assert raw.status == 200, raw.body
    sent = upstream.last.body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "system"]
    assert sent[2]["content"].startswith("# Environment")
    # Anthropic-only fields never reach an OpenAI-compatible server raw.
    for field in ("output_config", "context_management", "thinking", "metadata"):
        assert field not in upstream.last.body
    assert "reasoning_effort" not in upstream.last.body  # chat-model does not think
    assert upstream.last.body["user"] == CLAUDE_CODE["body"]["metadata"]["user_id"]


def test_claude_code_request_reaches_anthropic_upstream_as_it_came(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    raw = replay_claude_code(gw, "claude-model")
    assert raw.status == 200, raw.body
    body, headers = upstream.last.body, upstream.last.headers
    assert [m["role"] for m in body["messages"]] == ["user", "system"]
    assert body["messages"][1]["content"][0]["cache_control"] == {"type": "ephemeral"}
    for field in ("output_config", "context_management", "thinking"):
        assert body[field] == CLAUDE_CODE["body"][field]
    deferred = next(t for t in body["tools"] if t["name"] == "DeferredToolPlaceholder")
    assert deferred["defer_loading"] is True
    betas = headers["anthropic-beta"].split(",")
    client_betas = CLAUDE_CODE["headers"]["anthropic-beta"].split(",")
    assert betas == ["provider-beta-1", *client_betas]


def test_system_turn_folded_into_the_next_user_turn_for_lmv2(
    claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    claude.messages.create(
        model="lm-model",
        max_tokens=50,
        system="Be brief.",
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "system", "content": "Now answer in French."},  # type: ignore[misc,list-item]
            {"role": "user", "content": "second"},
        ],
    )
    sent = upstream.last.body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "Be brief.\n\nfirst"
    assert sent[2]["content"] == "Now answer in French.\n\nsecond"


def test_openai_client_system_turn_folded_for_anthropic_upstream(
    oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    oai.chat.completions.create(
        model="claude-model",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "system", "content": "Now answer in French."},
        ],
    )
    body = upstream.last.body
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    # At the end, the instruction becomes a user turn of its own, after the assistant's.
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"] == [{"type": "text", "text": "Now answer in French."}]


def test_count_tokens_takes_system_turns(gw: RunningGateway, upstream: FakeUpstream) -> None:
    body = {k: v for k, v in CLAUDE_CODE["body"].items() if k in ("model", "messages", "tools")}
    without = {**body, "messages": body["messages"][:1]}
    counted = gw.request("POST", "/v1/messages/count_tokens", {**body, "model": "chat-model"})
    fewer = gw.request("POST", "/v1/messages/count_tokens", {**without, "model": "chat-model"})
    assert counted.status == 200, counted.body
    assert counted.json()["input_tokens"] > fewer.json()["input_tokens"] + 500


# ---- the client's beta header ----------------------------------------------------


def test_client_betas_merge_with_the_providers(
    claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    claude.messages.create(
        model="claude-model",
        max_tokens=50,
        messages=HI,  # type: ignore[arg-type]
        extra_headers={"anthropic-beta": "provider-beta-1, client-beta-2"},
    )
    assert upstream.last.headers["anthropic-beta"] == "provider-beta-1,client-beta-2"
    claude.messages.create(model="chat-model", max_tokens=50, messages=HI)  # type: ignore[arg-type]
    assert "anthropic-beta" not in {k.lower() for k in upstream.last.headers}


# ---- structured output -----------------------------------------------------------


def test_output_config_format_becomes_response_format(
    claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    claude.messages.create(
        model="chat-model",
        max_tokens=50,
        messages=HI,  # type: ignore[arg-type]
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
    )
    assert upstream.last.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }
    assert "output_config" not in upstream.last.body


def test_response_format_becomes_output_config_format(
    oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    oai.chat.completions.create(
        model="claude-model",
        messages=HI,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}},
    )
    assert upstream.last.body["output_config"] == {
        "format": {"type": "json_schema", "schema": SCHEMA}
    }
    assert "response_format" not in upstream.last.body


def test_bad_output_config_is_a_400_naming_the_field(gw: RunningGateway) -> None:
    body = {"model": "chat-model", "max_tokens": 5, "messages": HI}
    raw = gw.request("POST", "/v1/messages", {**body, "output_config": {"effort": "huge"}})
    assert raw.status == 400 and "output_config.effort" in raw.json()["error"]["message"]
    raw = gw.request("POST", "/v1/messages", {**body, "output_config": {"format": {"type": "xml"}}})
    assert raw.status == 400 and "output_config.format.type" in raw.json()["error"]["message"]


# ---- reasoning effort and thinking -----------------------------------------------


@pytest.mark.parametrize(
    ("thinking", "effort", "expected"),
    [
        ({"type": "enabled", "budget_tokens": 10000}, None, ("high", "enabled")),
        ({"type": "enabled", "budget_tokens": 2000}, None, ("low", "enabled")),
        ({"type": "adaptive"}, "medium", ("medium", "enabled")),
        ({"type": "adaptive"}, None, (None, "enabled")),
        ({"type": "disabled"}, "high", (None, "disabled")),
        (None, "max", ("high", None)),
    ],
)
def test_anthropic_thinking_and_effort_for_a_thinking_model(
    claude: anthropic.Anthropic,
    upstream: FakeUpstream,
    thinking: dict[str, Any] | None,
    effort: str | None,
    expected: tuple[str | None, str | None],
) -> None:
    extra: dict[str, Any] = {"output_config": {"effort": effort}} if effort else {}
    if thinking:
        extra["thinking"] = thinking
    claude.messages.create(
        model="thinker",
        max_tokens=20000,
        messages=HI,  # type: ignore[arg-type]
        extra_body=extra,
    )
    body = upstream.last.body
    assert body.get("reasoning_effort") == expected[0]
    assert (body.get("thinking") or {}).get("type") == expected[1]


def test_reasoning_controls_never_reach_a_model_that_does_not_think(
    claude: anthropic.Anthropic, oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    claude.messages.create(
        model="chat-model",
        max_tokens=20000,
        messages=HI,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 10000},
        extra_body={"output_config": {"effort": "high"}},
    )
    assert "reasoning_effort" not in upstream.last.body and "thinking" not in upstream.last.body
    oai.chat.completions.create(model="chat-model", messages=HI, reasoning_effort="high")  # type: ignore[arg-type]
    assert "reasoning_effort" not in upstream.last.body
    oai.chat.completions.create(model="thinker", messages=HI, reasoning_effort="high")  # type: ignore[arg-type]
    assert upstream.last.body["reasoning_effort"] == "high"
    assert "thinking" not in upstream.last.body  # the OpenAI client did not switch it


# ---- reasoning handed back -------------------------------------------------------

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def _openai_history(reasoning: str | None) -> list[dict[str, Any]]:
    turn: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    if reasoning:
        turn["reasoning_content"] = reasoning
    return [*HI, turn, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]


@pytest.mark.parametrize(
    ("model", "echoed"), [("thinker", True), ("ds-named", True), ("chat-model", False)]
)
def test_reasoning_content_sent_back_where_the_provider_says(
    oai: openai.OpenAI, upstream: FakeUpstream, model: str, echoed: bool
) -> None:
    oai.chat.completions.create(
        model=model, messages=_openai_history("I should call f."), tools=TOOLS
    )  # type: ignore[arg-type]
    turn = upstream.last.body["messages"][1]
    assert turn["tool_calls"][0]["id"] == "call_1"
    assert turn.get("reasoning_content") == ("I should call f." if echoed else None)


def test_anthropic_thinking_blocks_become_reasoning_content(
    claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    claude.messages.create(
        model="thinker",
        max_tokens=100,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[
            *HI,  # type: ignore[list-item]
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Call f.", "signature": ""},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "42"}],
            },
        ],
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
    )
    turn = upstream.last.body["messages"][1]
    assert turn["reasoning_content"] == "Call f." and turn["tool_calls"][0]["id"] == "call_1"


def test_provider_send_reasoning_never(start_gateway: Any, upstream: FakeUpstream) -> None:
    config = upstream_config(upstream, send_reasoning="never")
    config["models"].append({"id": "ds-named", "provider": "up", "model": "deepseek-v4"})
    oai = start_gateway(config).client()
    oai.chat.completions.create(model="ds-named", messages=_openai_history("x"), tools=TOOLS)
    assert "reasoning_content" not in upstream.last.body["messages"][1]


# ---- every error reply is logged with its reason ---------------------------------


def test_a_400_is_logged_with_its_reason_and_request_id(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lmgate")
    raw = gw.request(
        "POST",
        "/v1/messages",
        {"model": "chat-model", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]},
        headers={"x-request-id": "req-log-1"},
    )
    assert raw.status == 400
    line = next(r.getMessage() for r in caplog.records if "req-log-1" in r.getMessage())
    assert "400 invalid_request" in line and "messages.0.role" in line
    assert "sk-" not in caplog.text
