"""The real client programs, run headless against a real lmgate in front of the
scripted fake agent (``tests/fakes/agent.py``).

The npm programs are pinned in ``package.json`` / ``package-lock.json`` and installed by
``scripts/test.sh`` (``npm ci``); the Python clients are pinned in the ``clients`` extra.
A client that is not installed fails its test: it is never skipped. Nothing reaches the
internet: every proxy variable points at a closed loopback port, and telemetry and
update checks are off.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ANTHROPIC_UPSTREAM_KEY, API_KEY, UPSTREAM_KEY, RunningGateway
from tests.fakes.agent import Agent
from tests.fakes.upstream import FakeUpstream

HERE = Path(__file__).parent
BIN = HERE / "node_modules" / ".bin"
CLOSED = "http://127.0.0.1:9"  # nothing listens: a client that tries the internet fails

_TIMEOUTS = {"connect": 5, "first_byte": 20, "idle": 20}


def client_config(upstream: FakeUpstream) -> dict[str, Any]:
    """The catalog the clients see: OpenAI-compatible models of three reasoning styles
    and an Anthropic one, all played by the fake agent. No id looks like a Claude id."""
    return {
        "server": {"api_keys": [API_KEY]},
        "store": {"url": "none"},
        "providers": {
            "compat": {
                "type": "openai",
                "base_url": upstream.url + "/v1",
                "api_key": UPSTREAM_KEY,
                "timeouts": _TIMEOUTS,
            },
            "deepseek": {
                "type": "openai",
                "base_url": upstream.url + "/v1",
                "api_key": UPSTREAM_KEY,
                "send_reasoning": "always",  # the fake's host is 127.0.0.1, not deepseek
                "timeouts": _TIMEOUTS,
            },
            "claude": {
                "type": "anthropic",
                "base_url": upstream.url,
                "api_key": ANTHROPIC_UPSTREAM_KEY,
                "timeouts": _TIMEOUTS,
            },
            "google": {
                "type": "gemini",
                "base_url": upstream.url + "/v1beta",
                "api_key": UPSTREAM_KEY,
                "timeouts": _TIMEOUTS,
            },
        },
        "models": [
            {"id": "deepseek-chat", "provider": "compat", "model": "up-chat",
             "max_output_tokens": 8192},
            {"id": "deepseek-thinker", "provider": "deepseek", "model": "up-thinker",
             "thinking": True},
            {"id": "qwen-think", "provider": "compat", "model": "up-qwen",
             "reasoning": "think_tags"},
            {"id": "big-model", "provider": "claude", "model": "claude-up", "support": "image"},
            {"id": "gem-model", "provider": "google", "model": "gemini-up"},
        ],
        "routing": {"retries": 0, "auto": ["deepseek-chat"]},
    }  # fmt: skip


# Which reasoning style the fake agent plays for each catalog model.
STYLES = {
    "deepseek-chat": None,
    "deepseek-thinker": "deepseek",
    "qwen-think": "think_tags",
    "big-model": "anthropic",
    "gem-model": None,
}


@pytest.fixture(scope="module")
def client_gateway(upstream_server: FakeUpstream) -> Iterator[RunningGateway]:
    gateway = RunningGateway(client_config(upstream_server))
    yield gateway
    gateway.stop()


@dataclass
class Task:
    """One run of a client: its work directory, the agent, and what it must write."""

    work: Path
    home: Path
    agent: Agent
    gateway: RunningGateway
    upstream: FakeUpstream

    @property
    def target(self) -> Path:
        return Path(self.agent.path)

    def env(self, **extra: str) -> dict[str, str]:
        home = str(self.home)
        return {
            "PATH": os.environ["PATH"],
            "HOME": home,
            "XDG_CONFIG_HOME": f"{home}/.config",
            "XDG_DATA_HOME": f"{home}/.local/share",
            "XDG_CACHE_HOME": f"{home}/.cache",
            "XDG_STATE_HOME": f"{home}/.local/state",
            "PWD": str(self.work),
            "TMPDIR": str(self.home),
            **{
                name: CLOSED
                for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")
            },
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "NO_COLOR": "1",
            **extra,
        }

    def run(
        self, argv: list[str], env: dict[str, str], timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv, cwd=self.work, env=env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            print("stdout:", done.stdout[-4000:], "\nstderr:", done.stderr[-4000:], sep="\n")
        return done

    def bodies(self, path_end: str = "") -> list[dict[str, Any]]:
        """What the upstream received (for requests whose path ends with ``path_end``)."""
        return [
            r.body
            for r in self.upstream.requests
            if r.path.endswith(path_end) and isinstance(r.body, dict)
        ]

    def assert_done(self) -> None:
        """The file is written, and the upstream saw the whole loop: the call's result
        came back with the call's id, and no turn lost its reasoning."""
        assert self.target.read_text() == self.agent.content
        assert self.agent.calls >= 1 and self.agent.finals >= 1
        assert self.agent.refused == []
        last = [body for body in self.bodies() if body.get("tools")][-1]
        if "contents" in last:  # a Gemini upstream: results go back by the call's name
            responses = [
                part["functionResponse"]["name"]
                for content in last["contents"]
                for part in content["parts"]
                if "functionResponse" in part
            ]
            assert responses, last["contents"]
            return
        results = [
            block.get("tool_use_id") or block.get("tool_call_id")
            for message in last["messages"]
            for block in (message["content"] if isinstance(message["content"], list) else [message])
            if isinstance(block, dict)
            and (block.get("type") == "tool_result" or block.get("role") == "tool")
        ]
        assert results and set(results) <= {"call_fake_1", "toolu_fake_1"}, results


@pytest.fixture
def task(
    tmp_path: Path,
    client_gateway: RunningGateway,
    upstream: FakeUpstream,
    request: pytest.FixtureRequest,
) -> Task:
    """A fresh task; the test's ``model`` parameter (when it has one) picks the style."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    model = (
        getattr(request, "param", None) or request.node.callspec.params.get("model")
        if hasattr(request.node, "callspec")
        else None
    )
    agent = Agent(str(work / "hello.txt"), reasoning=STYLES.get(model or ""))
    upstream.route = agent
    return Task(work, home, agent, client_gateway, upstream)


def npm_bin(name: str) -> str:
    path = BIN / name
    assert path.exists(), (
        f"{path} is missing: scripts/test.sh installs the client programs (npm ci)"
    )
    return str(path)
