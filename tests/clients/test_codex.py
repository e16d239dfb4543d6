"""Codex CLI (npm @openai/codex), headless (``codex exec``), through lmgate's Responses
API: it speaks nothing else (``wire_api = "responses"``). The fake agent answers as an
OpenAI-compatible model or as Anthropic; Codex writes the file with its shell tool."""

from __future__ import annotations

import subprocess

import orjson
import pytest

from lmgate.frontends.openai_responses import SUMMARY_INTRO
from lmgate.frontends.responses_create import PROMPT
from tests.support.fakes.agent import FINAL, THOUGHT
from tests.support.gateway import API_KEY
from tests.support.programs import Task, npm_bin

CONFIG = """\
model = "{model}"
model_provider = "lmgate"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.lmgate]
name = "lmgate"
base_url = "{url}/v1"
env_key = "LMGATE_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-thinker", "big-model"])
def test_codex_writes_the_file(task: Task, model: str) -> None:
    codex_home = task.home / "codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(CONFIG.format(model=model, url=task.gateway.url))
    env = task.env(CODEX_HOME=str(codex_home), LMGATE_KEY=API_KEY)
    prompt = f"Write the file {task.target} with the text: hello from lmgate"
    argv = [npm_bin("codex"), "exec", "--skip-git-repo-check", "-s", "workspace-write", prompt]
    done = task.run(argv, env)
    assert done.returncode == 0
    assert FINAL in done.stdout
    task.assert_done()
    last = [b for b in task.bodies() if b.get("tools")][-1]
    names = {(tool.get("function") or tool)["name"] for tool in last["tools"]}
    # Codex's function tools arrive; its web_search and namespace group do not.
    assert "exec_command" in names and "web_search" not in names
    assert not any("multi_agent" in name or "close_agent" in name for name in names)
    if model == "deepseek-thinker":  # Codex sends the reasoning back; DeepSeek needs it
        turn = next(m for m in last["messages"] if m["role"] == "assistant")
        assert turn["reasoning_content"] == THOUGHT


# The documented way: the built-in OpenAI provider at another base URL. Codex then
# opens the Responses WebSocket first, and stays on it when it works.
BUILT_IN = """\
model = "{model}"
openai_base_url = "{url}/v1"
check_for_update_on_startup = false

[analytics]
enabled = false
"""


def test_codex_over_the_responses_websocket(task: Task) -> None:
    """The task, then a second turn of the session, over the socket."""
    codex_home = task.home / "codex"
    codex_home.mkdir()
    config = codex_home / "config.toml"
    settings = BUILT_IN.format(model="deepseek-chat", url=task.gateway.url)
    config.write_text(settings)
    env = task.env(CODEX_HOME=str(codex_home))
    login = [npm_bin("codex"), "login", "--with-api-key"]  # the README's way: the key kept
    logged = subprocess.run(login, env=env, input=API_KEY, capture_output=True, text=True)
    assert logged.returncode == 0, logged.stderr
    prompt = f"Write the file {task.target} with the text: hello from lmgate"
    argv = [npm_bin("codex"), "exec", "--skip-git-repo-check", "-s", "workspace-write", prompt]
    done = task.run(argv, env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert FINAL in done.stdout
    assert "failed to connect" not in output.lower(), output  # no fallback to HTTP
    assert task.target.read_text() == task.agent.content
    assert task.gateway.app.state.gateway.pipeline.sockets_opened >= 1
    task.assert_done()
    # A second turn of the same session.
    resume = [npm_bin("codex"), "exec", "--skip-git-repo-check", "resume", "--last", "Thanks."]
    again = task.run(resume, env, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert FINAL in again.stdout
    assert "failed to connect" not in (again.stdout + again.stderr).lower()


def test_codex_compacts_its_session_through_lmgate(task: Task) -> None:
    """A tiny auto-compaction limit makes Codex compact in the middle of the task: lmgate
    has the model write the summary, seals it, and the turns after it (the rest of this
    task, then a resumed one) go on from the summary alone."""
    codex_home = task.home / "codex"
    codex_home.mkdir()
    settings = BUILT_IN.format(model="deepseek-chat", url=task.gateway.url)
    (codex_home / "config.toml").write_text("model_auto_compact_token_limit = 60\n" + settings)
    env = task.env(CODEX_HOME=str(codex_home), CODEX_API_KEY=API_KEY)
    prompt = f"Write the file {task.target} with the text: hello from lmgate"
    argv = [npm_bin("codex"), "exec", "--skip-git-repo-check", "-s", "workspace-write", prompt]
    done = task.run(argv, env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "context compacted" in output and FINAL in done.stdout
    assert task.target.read_text() == task.agent.content
    texts = [orjson.dumps(body.get("messages")).decode() for body in task.bodies()]
    summarised = next(i for i, text in enumerate(texts) if PROMPT in text)
    after = texts[summarised + 1]  # the task goes on from the summary, not the history
    assert SUMMARY_INTRO.strip() in after and "call_fake_1" not in after
    resume = [npm_bin("codex"), "exec", "--skip-git-repo-check", "resume", "--last", "Thanks."]
    again = task.run(resume, env, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert FINAL in again.stdout
    assert SUMMARY_INTRO.strip() in orjson.dumps(task.bodies()[-1]["messages"]).decode()
