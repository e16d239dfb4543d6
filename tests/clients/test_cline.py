"""Cline CLI (npm ``cline``), headless (``cline --json``), through lmgate: as an
OpenAI-compatible provider and with its Anthropic provider, which puts Anthropic's
server tool ``web_search_20250305`` first in ``tools``."""

from __future__ import annotations

import orjson
import pytest

from tests.support.fakes.agent import FINAL
from tests.support.gateway import API_KEY
from tests.support.programs import Task, npm_bin


def _configure(task: Task, provider: str, model: str) -> None:
    """What ``cline auth`` writes. For its Anthropic provider ``cline auth`` refuses a
    base URL, so the file is written whole (the base URL ends in /v1 for both)."""
    settings = task.home / ".cline" / "data" / "settings"
    settings.mkdir(parents=True)
    entry = {"provider": provider, "apiKey": API_KEY, "model": model,
             "baseUrl": task.gateway.url + "/v1"}  # fmt: skip
    config = {
        "version": 1,
        "lastUsedProvider": provider,
        "modes": {},
        "providers": {  # without updatedAt Cline resets the entry (key and URL gone)
            provider: {
                "settings": entry,
                "updatedAt": "2026-01-01T00:00:00.000Z",
                "tokenSource": "manual",
            }
        },
    }
    (settings / "providers.json").write_bytes(orjson.dumps(config))


@pytest.mark.parametrize(
    ("model", "provider"), [("deepseek-chat", "openai-compatible"), ("big-model", "anthropic")]
)
def test_cline_writes_the_file(task: Task, model: str, provider: str) -> None:
    _configure(task, provider, model)
    # In process: by default Cline runs sessions in a hub daemon on a fixed port, shared
    # by every Cline on the machine (and outliving this test) with its own settings.
    env = task.env(CLINE_SESSION_BACKEND_MODE="local", CLINE_NO_AUTO_UPDATE="1")
    prompt = f"Write the file {task.target} with the text: hello from lmgate"
    argv = [npm_bin("cline"), "--json", "-c", str(task.work), "-P", provider, "-m", model, prompt]
    done = task.run(argv, env, timeout=120)
    assert done.returncode == 0
    assert FINAL in done.stdout
    task.assert_done()
    first = next(body for body in task.bodies() if body.get("tools"))
    if provider == "anthropic":  # the server tool reached the Anthropic upstream unchanged
        assert first["tools"][0]["type"].startswith("web_search_"), first["tools"][0]
