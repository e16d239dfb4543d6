"""The OpenAI Agents SDK (its Chat Completions model and its default, Responses one),
LangChain (ChatOpenAI on either API, ChatAnthropic) and the LiteLLM SDK, each running
its tool loop through lmgate, stream and not."""

from __future__ import annotations

import sys

import orjson
import pytest

from tests.support.fakes.agent import FINAL
from tests.support.gateway import API_KEY
from tests.support.programs import HERE, Task

CLIENTS = [
    ("agents", "deepseek-chat"),
    ("agents-responses", "deepseek-chat"),
    ("langchain-openai", "deepseek-chat"),
    ("langchain-responses", "deepseek-chat"),
    ("langchain-anthropic", "big-model"),
    ("litellm-openai", "deepseek-chat"),
    ("litellm-anthropic", "big-model"),
]


@pytest.mark.parametrize("mode", ["invoke", "stream"])
@pytest.mark.parametrize(("client", "model"), CLIENTS)
def test_python_client_tool_loop(task: Task, client: str, model: str, mode: str) -> None:
    env = task.env(LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONWARNINGS="ignore")
    done = task.run(
        [sys.executable, str(HERE / "py_clients.py"), client, mode, model, task.gateway.url,
         API_KEY, str(task.target)],
        env,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0
    assert orjson.loads(done.stdout.strip().splitlines()[-1])["text"] == FINAL
    task.assert_done()
    tooled = [b for b in task.bodies() if b.get("tools")]
    assert len(tooled) == 2 and all(b["stream"] is (mode == "stream") for b in tooled)
