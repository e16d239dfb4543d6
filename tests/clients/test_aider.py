"""aider (pip aider-chat, in a venv of its own: it pins its own litellm and openai),
headless (``aider --message``), through lmgate's Chat Completions frontend as an
OpenAI-compatible API: to an OpenAI-compatible upstream and to an Anthropic one,
played by the fake agent. aider edits by its reply's text, not by tools: in its
``whole`` edit format the model answers with the file listed whole."""

from __future__ import annotations

import pytest

from tests.support.fakes.agent import FINAL
from tests.support.gateway import API_KEY
from tests.support.programs import Task, aider_bin


@pytest.mark.parametrize("model", ["deepseek-chat", "big-model"])
def test_aider_writes_the_file(task: Task, model: str) -> None:
    env = task.env(
        OPENAI_API_BASE=task.gateway.url + "/v1",
        OPENAI_API_KEY=API_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # not fetched from GitHub
    )
    argv = [
        aider_bin(), "--model", f"openai/{model}", "--edit-format", "whole",
        "--message", "Write the file with the text: hello from lmgate", str(task.target),
        "--yes-always", "--no-git", "--no-check-update", "--analytics-disable",
        "--no-show-model-warnings", "--no-pretty", "--no-fancy-input", "--map-tokens", "0",
    ]  # fmt: skip
    done = task.run(argv, env)
    assert done.returncode == 0
    assert FINAL in done.stdout
    assert task.target.read_text() == task.agent.content
    assert task.agent.finals >= 1 and task.agent.refused == []
    asked = task.bodies("/chat/completions") + task.bodies("/messages")
    assert asked and all(body["model"] in ("up-chat", "claude-up") for body in asked)
