"""opencode (npm opencode-ai), headless, through lmgate: as an OpenAI-compatible provider
(@ai-sdk/openai-compatible) and as an Anthropic one (@ai-sdk/anthropic)."""

from __future__ import annotations

import orjson
import pytest

from tests.support.fakes.agent import FINAL, THOUGHT
from tests.support.gateway import API_KEY
from tests.support.programs import Task, npm_bin

SDKS = {"openai": "@ai-sdk/openai-compatible", "anthropic": "@ai-sdk/anthropic"}


@pytest.mark.parametrize(
    ("model", "sdk"),
    [("deepseek-chat", "openai"), ("deepseek-thinker", "openai"), ("big-model", "anthropic")],
)
def test_opencode_writes_the_file(task: Task, model: str, sdk: str) -> None:
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "lmgate": {
                "npm": SDKS[sdk],
                "name": "lmgate",
                "options": {"baseURL": task.gateway.url + "/v1", "apiKey": API_KEY},
                "models": {model: {"name": model, "tool_call": True}},
            }
        },
    }
    (task.work / "opencode.json").write_bytes(orjson.dumps(config))
    env = task.env(
        OPENCODE_DISABLE_MODELS_FETCH="1",
        OPENCODE_DISABLE_AUTOUPDATE="1",
        OPENCODE_DISABLE_LSP_DOWNLOAD="1",
        OPENCODE_DISABLE_SHARE="1",
    )
    prompt = f"Write the file {task.target} with the text: hello from lmgate"
    done = task.run(
        [npm_bin("opencode"), "run", "--format", "json", "-m", f"lmgate/{model}", prompt], env
    )
    assert done.returncode == 0
    events = [orjson.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert any(e["type"] == "text" and e["part"]["text"] == FINAL for e in events)
    task.assert_done()
    last = [b for b in task.bodies() if b.get("tools")][-1]
    if sdk == "anthropic":
        results = [
            b for m in last["messages"] for b in m["content"] if isinstance(m["content"], list)
        ]
        assert any(
            b["type"] == "tool_result" and b["tool_use_id"] == "toolu_fake_1" for b in results
        )
        return
    assert any(m["role"] == "tool" and m["tool_call_id"] == "call_fake_1" for m in last["messages"])
    if model == "deepseek-thinker":  # opencode sends reasoning_content back; lmgate keeps it
        turn = next(m for m in last["messages"] if m["role"] == "assistant")
        assert turn["reasoning_content"] == THOUGHT
