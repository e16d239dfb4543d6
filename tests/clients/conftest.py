"""The real client programs, run headless against a real lmgate in front of the
scripted fake agent (``tests/support/fakes/agent.py``).

The npm programs are pinned in ``package.json`` / ``package-lock.json`` and installed by
``scripts/test.sh`` (``npm ci``); the Python clients are pinned in the ``clients`` extra.
A client that is not installed fails its test: it is never skipped. Nothing reaches the
internet: every proxy variable points at a closed loopback port, and telemetry and
update checks are off.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakes.agent import Agent
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import ANTHROPIC_UPSTREAM_KEY, API_KEY, UPSTREAM_KEY, RunningGateway
from tests.support.programs import Task

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
            "aws": {
                "type": "bedrock",
                "base_url": upstream.url,
                "region": "us-east-1",
                "access_key_id": "AKIDEXAMPLELMGATE0001",
                "secret_access_key": UPSTREAM_KEY,
                "timeouts": _TIMEOUTS,
            },
            "gcp": {
                "type": "vertex",
                "base_url": upstream.url,
                "project": "lmgate-test",
                "location": "us-east5",
                "access_token": UPSTREAM_KEY,
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
            {"id": "claude-bedrock", "provider": "aws",
             "model": "us.anthropic.claude-sonnet-4-20250514-v1:0"},
            {"id": "claude-vertex", "provider": "gcp", "model": "claude-sonnet-4@20250514"},
            {"id": "embed-small", "kind": "embedding", "provider": "compat", "model": "up-embed"},
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
    "claude-bedrock": None,
    "claude-vertex": "anthropic",  # Vertex's Claude speaks Anthropic's own body: signed thinking
}


@pytest.fixture(scope="module")
def client_gateway(upstream_server: FakeUpstream) -> Iterator[RunningGateway]:
    gateway = RunningGateway(client_config(upstream_server))
    yield gateway
    gateway.stop()


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
