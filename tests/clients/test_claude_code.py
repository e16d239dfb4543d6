"""Claude Code (npm @anthropic-ai/claude-code), headless, through lmgate to every kind of upstream."""

from __future__ import annotations

import orjson
import pytest

from tests.support.fakes.agent import SIGNATURE, THOUGHT
from tests.support.gateway import API_KEY
from tests.support.programs import Task, npm_bin


def run_claude(task: Task, model: str) -> list[dict]:
    env = task.env(
        ANTHROPIC_BASE_URL=task.gateway.url,
        ANTHROPIC_AUTH_TOKEN=API_KEY,
        ANTHROPIC_MODEL=model,
        ANTHROPIC_SMALL_FAST_MODEL=model,
        DISABLE_TELEMETRY="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_ERROR_REPORTING="1",
    )
    prompt = f"Write the file {task.target} with the text: hello from lmgate"
    done = task.run(
        [npm_bin("claude"), "-p", prompt, "--model", model, "--output-format", "stream-json",
         "--verbose", "--permission-mode", "acceptEdits"],
        env,
    )  # fmt: skip
    assert done.returncode == 0
    events = [orjson.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = events[-1]
    assert result["type"] == "result" and result["is_error"] is False, result
    return events


@pytest.mark.parametrize(
    "model",
    ["deepseek-chat", "deepseek-thinker", "qwen-think", "big-model", "gem-model",
     "claude-bedrock", "claude-vertex"],
)  # fmt: skip
def test_claude_code_writes_the_file(task: Task, model: str) -> None:
    events = run_claude(task, model)
    task.assert_done()
    assert events[-1]["result"].endswith("Done: the file is written.")
    bodies = [b for b in task.bodies() if b.get("tools") or "toolConfig" in b]
    first, last = bodies[0], bodies[-1]
    if model == "big-model":
        # Anthropic upstream: the client's own fields and beta header arrive as they came.
        request = next(r for r in task.upstream.requests if r.body is first)
        betas = request.headers["anthropic-beta"].split(",")
        assert "claude-code-20250219" in betas
        assert "output_config" in first and "context_management" in first
        assert any(m["role"] == "system" for m in first["messages"][1:])
        names = [tool["name"] for tool in first["tools"]]
        assert "Write" in names
        # The signed thinking block goes back with the tool call.
        turn = next(m for m in last["messages"] if m["role"] == "assistant")
        assert turn["content"][0] == {
            "type": "thinking",
            "thinking": THOUGHT,
            "signature": SIGNATURE,
        }
        return
    if model == "claude-bedrock":
        # Bedrock's Converse: its tools, no Anthropic-only field, no client beta.
        names = [
            tool["toolSpec"]["name"] for tool in first["toolConfig"]["tools"] if "toolSpec" in tool
        ]
        assert "Write" in names
        assert "anthropic_beta" not in first.get("additionalModelRequestFields", {})
        assert first["system"][0]["text"]
        return
    if model == "claude-vertex":
        # Vertex's rawPredict: Anthropic's body without its model, Vertex's version.
        assert first["anthropic_version"] == "vertex-2023-10-16" and "model" not in first
        request = next(r for r in task.upstream.requests if r.body is first)
        assert (
            request.path.endswith(":streamRawPredict") and "anthropic-beta" not in request.headers
        )
        turn = next(m for m in last["messages"] if m["role"] == "assistant")
        assert turn["content"][0]["type"] == "thinking"
        return
    if model == "gem-model":
        # Gemini upstream: Claude Code's schemas in Gemini's subset (the fake refused
        # anything else with a 400), and the call went back without an id.
        names = [d["name"] for d in first["tools"][0]["functionDeclarations"]]
        assert "Write" in names and len(names) >= 10
        model_turn = next(c for c in last["contents"] if c["role"] == "model")
        call = next(p["functionCall"] for p in model_turn["parts"] if "functionCall" in p)
        assert "id" not in call
        return
    names = [tool["function"]["name"] for tool in first["tools"]]
    assert "Write" in names and len(names) >= 10
    # Claude Code's mid-conversation system turn stands where it was sent.
    roles = [m["role"] for m in first["messages"]]
    assert roles[0] == "system" and "system" in roles[1:], roles
    for field in ("output_config", "context_management", "metadata"):
        assert field not in first  # Anthropic-only fields never reach an OpenAI server
    tool_turns = [m for m in last["messages"] if m["role"] == "tool"]
    assert tool_turns and tool_turns[0]["tool_call_id"] == "call_fake_1"
    if model == "deepseek-chat":
        assert first["max_tokens"] == 8192  # capped to the catalog's max_output_tokens
        assert "reasoning_effort" not in first and "thinking" not in first
    if model == "deepseek-thinker":
        assert first["thinking"] == {"type": "enabled"}
        assert first["reasoning_effort"] == "high"  # output_config.effort
        turn = next(m for m in last["messages"] if m["role"] == "assistant")
        assert turn["reasoning_content"] == THOUGHT
