"""Claude Code (npm @anthropic-ai/claude-code), headless, through lmgate to every kind of upstream."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from playwright import sync_api as playwright_api

from tests.clients.conftest import client_config
from tests.support.fakes.agent import SIGNATURE, THOUGHT
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import API_KEY, RunningGateway, wait_until
from tests.support.oidc import CHROMIUM, IdentityProvider, approve_device, quiet_fonts
from tests.support.programs import Task, npm_bin


def run_claude(task: Task, model: str, **auth: str) -> list[dict]:
    """``auth``: how Claude Code gets its key (default: the gateway's key in
    ANTHROPIC_AUTH_TOKEN)."""
    env = task.env(
        ANTHROPIC_BASE_URL=task.gateway.url,
        **(auth or {"ANTHROPIC_AUTH_TOKEN": API_KEY}),
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


def test_claude_code_gets_its_key_from_lmgate_key_after_lmgate_login(
    task: Task, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A developer's setup: ``lmgate login`` once (the device grant, approved in the
    browser), then Claude Code's ``apiKeyHelper`` runs ``lmgate key`` for the key."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    provider = IdentityProvider(f"http://127.0.0.1:{sock.getsockname()[1]}/auth/callback")
    config = client_config(upstream)
    admin_key = config["server"]["admin_key"] = "claude-code-test-admin"
    config["store"] = {"url": f"sqlite:///{tmp_path / 'lmgate.db'}", "flush_interval": 0.05}
    config["oidc"] = provider.config()
    gateway = RunningGateway(config, sock=sock)
    try:
        task.gateway = gateway
        env = task.env()  # the developer's home: the key is kept under it
        login = subprocess.Popen(
            [sys.executable, "-m", "lmgate", "login", "--gateway", gateway.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert login.stderr is not None
        page_url = login.stderr.readline().removeprefix("To sign in, open ").strip()
        with playwright_api.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            context = browser.new_context()
            quiet_fonts(context)
            approve_device(context.new_page(), page_url, "bob")
            browser.close()
        assert login.wait(60) == 0, login.stderr.read()
        login.stderr.close()
        settings = task.home / ".claude" / "settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        # The command the README gives (pip installs it beside this Python).
        lmgate = shutil.which("lmgate", path=os.path.dirname(sys.executable))
        assert lmgate, "lmgate is not installed: pip install -e . (scripts/test.sh does)"
        helper = f"{lmgate} key --gateway {gateway.url}"
        settings.write_text(json.dumps({"apiKeyHelper": helper}))

        run_claude(task, "deepseek-chat", ANTHROPIC_API_KEY="")
        task.assert_done()

        # Every request was bob's: his personal key, his usage (once the records are in).
        def by_user() -> list[dict]:
            found = gateway.request("GET", "/admin/usage?by=user", api_key=admin_key).json()
            return found["data"]  # type: ignore[no-any-return]

        wait_until(lambda: sum(row["requests"] for row in by_user()) >= task.agent.calls + 1)
        users = gateway.request("GET", "/admin/users", api_key=admin_key).json()["data"]
        bob = next(u for u in users if u["email"] == "bob@example.com")
        assert [row["group"] for row in by_user()] == [bob["id"]]
    finally:
        gateway.stop()
        provider.stop()
