"""The Vercel AI SDK (npm ai + @ai-sdk/openai / @ai-sdk/anthropic): generateText and
streamText with a tool, the SDK's own tool loop, through lmgate; @ai-sdk/openai both
on Chat Completions (``openai.chat(id)``) and on its default, Responses (``openai(id)``)."""

from __future__ import annotations

import shutil

import orjson
import pytest

from tests.support.fakes.agent import FINAL
from tests.support.gateway import API_KEY
from tests.support.programs import HERE, Task


@pytest.mark.parametrize("mode", ["generate", "stream"])
@pytest.mark.parametrize(
    ("model", "sdk"),
    [("deepseek-chat", "openai"), ("deepseek-chat", "responses"), ("big-model", "anthropic")],
)
def test_ai_sdk_tool_loop(task: Task, model: str, sdk: str, mode: str) -> None:
    node = shutil.which("node")
    assert node, "node is not installed"
    script = str(HERE / "ai_sdk.mjs")
    done = task.run(
        [node, script, sdk, mode, model, task.gateway.url, API_KEY, str(task.target)],
        {**task.env(), "NODE_PATH": str(HERE / "node_modules")},
        timeout=60,
    )
    assert done.returncode == 0
    result = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert result["text"] == FINAL and result["steps"] == 2
    assert result["usage"]["inputTokens"] == 80  # both steps' real upstream counts
    task.assert_done()
    bodies = task.bodies()
    assert len(bodies) == 2 and all(b["stream"] is (mode == "stream") for b in bodies)
