"""Continue CLI (npm ``@continuedev/cli``), headless (``cn -p --auto``), through lmgate
in front of a DeepSeek-style thinking model. Continue does not send
``reasoning_content`` back on its assistant turns, which DeepSeek refuses: lmgate puts
it back from what it saw the model say."""

from __future__ import annotations

import pytest

from tests.support.fakes.agent import FINAL, THOUGHT
from tests.support.gateway import API_KEY
from tests.support.programs import Task, npm_bin

CONFIG = """\
name: lmgate
version: 1.0.0
schema: v1
models:
  - name: {model}
    provider: openai
    model: {model}
    apiBase: {url}/v1
    apiKey: {key}
    roles: [chat, edit, apply]
"""


@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-thinker"])
def test_continue_writes_the_file(task: Task, model: str) -> None:
    config = task.home / "config.yaml"
    config.write_text(CONFIG.format(model=model, url=task.gateway.url, key=API_KEY))
    env = task.env(CONTINUE_CLI_ENABLE_TELEMETRY="0", CONTINUE_METRICS_ENABLED="0")
    keeper = task.gateway.app.state.gateway.router.reasoning
    restored = keeper.restored
    prompt = f"Write the file {task.target} with the text: hello from lmgate"
    done = task.run([npm_bin("cn"), "-p", "--config", str(config), "--auto", prompt], env)
    assert done.returncode == 0
    assert FINAL in done.stdout
    task.assert_done()
    last = [body for body in task.bodies() if body.get("tools")][-1]
    turn = next(m for m in last["messages"] if m["role"] == "assistant")
    assert turn["tool_calls"][0]["function"]["name"] == "Write"
    if model == "deepseek-thinker":  # Continue dropped it; lmgate gave it back
        assert turn["reasoning_content"] == THOUGHT
        assert keeper.restored == restored + 1
