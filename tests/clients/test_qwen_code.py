"""Qwen Code (npm @qwen-code/qwen-code, Gemini CLI's fork for OpenAI-compatible APIs),
headless (``qwen -p``), through lmgate's Chat Completions frontend: to an
OpenAI-compatible upstream, to a Qwen-style one that thinks in ``<think>`` tags (split
out by lmgate), and to an Anthropic one, each played by the fake agent; it writes the
file with its write_file tool."""

from __future__ import annotations

import json

import pytest

from tests.support.fakes.agent import FINAL
from tests.support.gateway import API_KEY
from tests.support.programs import Task, npm_bin

SETTINGS = {  # without these it asks how to sign in, checks for updates, reports usage
    "security": {"auth": {"selectedType": "openai"}, "folderTrust": {"enabled": False}},
    "general": {"enableAutoUpdate": False},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
}


@pytest.mark.parametrize("model", ["deepseek-chat", "qwen-think", "big-model"])
def test_qwen_code_writes_the_file(task: Task, model: str) -> None:
    settings = task.home / ".qwen"
    settings.mkdir()
    (settings / "settings.json").write_text(json.dumps(SETTINGS))
    env = task.env(
        OPENAI_BASE_URL=task.gateway.url + "/v1",
        OPENAI_API_KEY=API_KEY,
        OPENAI_MODEL=model,
        QWEN_USAGE_STATISTICS_ENABLED="0",
        QWEN_TELEMETRY_ENABLED="0",
    )
    prompt = f"Write the file {task.target} with the text: hello from lmgate"
    done = task.run([npm_bin("qwen"), "-p", prompt, "--yolo"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert FINAL in done.stdout
    task.assert_done()
    last = [body for body in task.bodies() if body.get("tools")][-1]
    names = {(tool.get("function") or tool)["name"] for tool in last["tools"]}
    assert "write_file" in names
