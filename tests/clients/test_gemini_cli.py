"""Gemini CLI (npm @google/gemini-cli), headless (``gemini -p``), through lmgate's
Gemini API frontend, to an OpenAI-compatible upstream and to an Anthropic one played
by the fake agent: it writes the file with its write_file tool. Also the translation
of its recorded first request (tests/data/gemini_cli_request.json)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from lmgate.frontends import gemini
from tests.support.fakes.agent import FINAL
from tests.support.gateway import API_KEY
from tests.support.programs import Task, npm_bin

SETTINGS = {  # without these it asks how to sign in, checks for updates, reports usage
    "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
    "general": {"disableAutoUpdate": True},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
}
RECORDED = Path(__file__).parent.parent / "data" / "gemini_cli_request.json"


@pytest.mark.parametrize("model", ["deepseek-chat", "big-model"])
def test_gemini_cli_writes_the_file(task: Task, model: str) -> None:
    settings = task.home / ".gemini"
    settings.mkdir()
    (settings / "settings.json").write_text(json.dumps(SETTINGS))
    env = task.env(GOOGLE_GEMINI_BASE_URL=task.gateway.url, GEMINI_API_KEY=API_KEY)
    prompt = f"Write the file {task.target} with the text: hello from lmgate"
    done = task.run([npm_bin("gemini"), "-p", prompt, "-m", model, "--yolo"], env)
    assert done.returncode == 0
    assert FINAL in done.stdout
    task.assert_done()
    last = [body for body in task.bodies() if body.get("tools")][-1]
    names = {(tool.get("function") or tool)["name"] for tool in last["tools"]}
    assert "write_file" in names and "run_shell_command" in names


def test_its_recorded_request_translates() -> None:
    recorded = orjson.loads(RECORDED.read_bytes())
    chat = gemini.parse_request(orjson.dumps(recorded["body"]), "deepseek-chat", stream=True)
    assert chat.stream and chat.system and chat.messages[0].role == "user"
    tools = {tool.name: tool for tool in chat.tools or []}
    assert tools["write_file"].parameters["required"] == ["file_path", "content"]
    # It asks to see thoughts, with no budget: thinking on, the model's own budget.
    assert (chat.thinking, chat.thinking_budget, chat.reply_state) == (True, None, True)
    assert (chat.temperature, chat.top_p, chat.top_k) == (1, 0.95, 64)
