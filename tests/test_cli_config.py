"""The command line and config files, run as a user runs them: in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from lmgate.config import ConfigError, default_config_dict, parse_config
from tests.support.cli import run_cli
from tests.support.gateway import free_port, refusing_url

# The config of the issue, exactly as written.
ISSUE_CONFIG = """\
server:
  port: 7860
  api_keys: ["${LMGATE_KEY}"]
providers:
  deepseek:
    type: openai
    base_url: https://api.deepseek.com
    api_key: ${DEEPSEEK_API_KEY}
models:
  - id: deepseek-chat
    name: DeepSeek V3.1
    owned_by: deepseek
    description: Suitable for reasoning and writing
    support: text
    tip: DeepSeek V3.1
    deployments:
      - provider: deepseek
        model: deepseek-chat
routing:
  auto: [deepseek-chat]
"""


def test_default_serves_the_reference_curls_offline(serve: Any) -> None:
    env = {"DEEPSEEK_API_KEY": "", "LMGATE_CONFIG": ""}
    served = serve(env=env)
    status, body = served.request("GET", "/api/v1/models")
    assert status == 200
    models = orjson.loads(body)
    assert [m["id"] for m in models["data"]] == ["echo", "echo-embed"]
    assert models["data"][1]["kind"] == "embedding" and "kind" not in models["data"][0]
    # Embeddings offline too: the same text, the same unit vector.
    texts = {"model": "echo-embed", "input": ["a cat sat", "a cat sat", "stock prices"]}
    status, body = served.request("POST", "/api/v1/embeddings", texts)
    assert status == 200, body
    vectors = [item["embedding"] for item in orjson.loads(body)["data"]]
    assert len(vectors) == 3 and len(vectors[0]) == 256 and vectors[0] == vectors[1]
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-9 and vectors[2] != vectors[0]
    ask = {"model": "auto", "messages": [{"role": "user", "content": "你是什么模型?"}]}
    status, body = served.request(
        "POST",
        "/api/v1/chat/completions",
        {**ask, "stream": False},
        {"Authorization": "Bearer YOUR_API_KEY"},
    )
    assert status == 200
    reply = orjson.loads(body)
    assert reply["object"] == "chat.completion" and reply["model"] == "echo"
    assert reply["choices"][0]["message"]["content"] == "Echo: 你是什么模型?"
    assert reply["usage"]["prompt_tokens"] > 0
    status, body = served.request("POST", "/api/v1/chat/completions", {**ask, "stream": True})
    frames = [f for f in body.decode().split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    chunks = [orjson.loads(f[6:]) for f in frames[:-1]]
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        == "Echo: 你是什么模型?"
    )
    # the OpenAI SDK against the same process
    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{served.port}/api/v1", api_key="unused", max_retries=0
    ) as sdk:
        reply = sdk.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hey"}]
        )
        assert reply.model == "echo"
    with anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{served.port}/api", api_key="unused", max_retries=0
    ) as claude:
        message = claude.messages.create(
            model="auto", max_tokens=50, messages=[{"role": "user", "content": "你是什么模型?"}]
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == "Echo: 你是什么模型?"
        assert message.usage.input_tokens > 0


def test_issue_config_file_as_written(serve: Any, tmp_path: Path) -> None:
    path = tmp_path / "lmgate.yaml"
    path.write_text(ISSUE_CONFIG)
    env = {"LMGATE_KEY": "team-key", "DEEPSEEK_API_KEY": "sk-deepseek-test"}
    check = run_cli("check", "--config", str(path), env=env)
    assert check.returncode == 0, check.stderr
    served = serve("--config", str(path), env=env)
    assert served.request("GET", "/api/v1/models")[0] == 401
    status, body = served.request(
        "GET", "/api/v1/models", headers={"Authorization": "Bearer team-key"}
    )
    assert status == 200
    [entry] = orjson.loads(body)["data"]
    assert entry["id"] == "deepseek-chat" and entry["name"] == "DeepSeek V3.1"
    assert b"sk-deepseek-test" not in body


def test_config_from_environment_variable(serve: Any, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "providers: {e: {type: echo}}\nmodels: [{id: only-echo, provider: e}]\nrouting: {auto: [only-echo]}\n"
    )
    served = serve(env={"LMGATE_CONFIG": str(path)})
    status, body = served.request("GET", "/v1/models")
    assert status == 200
    assert [m["id"] for m in orjson.loads(body)["data"]] == ["only-echo"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server: {port: seventy}", "server.port"),
        ("server: {bogus: 1}", "server.bogus"),
        (
            "providers: {p: {type: warp}}\nmodels: [{id: m, provider: p}]",
            "providers.p.type: unknown provider type 'warp'",
        ),
        ("providers: {p: {type: openai}}\nmodels: [{id: m, provider: p}]", "providers.p.base_url"),
        (
            "providers: {p: {type: openai, base_url: 'http://x', timeouts: {idle: -1}}}\nmodels: [{id: m, provider: p}]",
            "providers.p.timeouts.idle",
        ),
        (
            "providers: {p: {type: echo}}\nmodels: [{id: m, provider: q}]",
            "models.0.provider: unknown provider 'q'",
        ),
        (
            "providers: {p: {type: echo}}\nmodels: [{id: m, provider: p}, {id: m, provider: p}]",
            "models.1.id",
        ),
        ("providers: {p: {type: echo}}\nmodels: [{id: m}]", "models.0.deployments"),
        (
            "providers: {p: {type: echo}}\nmodels: [{id: m, provider: p, support: video}]",
            "models.0.support",
        ),
        (
            "providers: {p: {type: echo}}\nmodels: [{id: m, provider: p}]\nrouting: {auto: [x]}",
            "routing.auto.0: unknown model 'x'",
        ),
        (
            "server: {api_keys: ['${LMGATE_TEST_UNSET_VAR}']}",
            "server.api_keys.0: environment variable LMGATE_TEST_UNSET_VAR is not set",
        ),
        (
            "providers: {p: {type: openai, base_url: 'https://u:pw@x/v1', api_key: k}}\n"
            "models: [{id: m, provider: p}]",
            "providers.p.base_url: credentials in the URL (user:password@) cannot be sent",
        ),
        (
            "providers: {p: {type: openai, base_url: 'ftp://x'}}\nmodels: [{id: m, provider: p}]",
            "providers.p.base_url: must be an http:// or https:// URL with a host",
        ),
        (
            "providers: {p: {type: openai, base_url: 'http://x:99999'}}\n"
            "models: [{id: m, provider: p}]",
            "providers.p.base_url: Port out of range",
        ),
        ("server: [1, 2", "not valid YAML"),
        ("- a list", "must be a mapping"),
    ],
)
def test_bad_config_names_the_key_and_exits_non_zero(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for command in ("check", "serve"):
        result = run_cli(command, "--config", str(path))
        assert result.returncode == 2
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("check", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot read the config file" in result.stderr


def test_models_command_prints_a_table(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(ISSUE_CONFIG)
    result = run_cli(
        "models", "--config", str(path), env={"LMGATE_KEY": "k", "DEEPSEEK_API_KEY": "sk-x"}
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.split() == ["ID", "NAME", "SUPPORT", "OWNED", "BY", "DEPLOYMENTS"]
    assert row.split()[0] == "deepseek-chat" and row.endswith("deepseek/deepseek-chat")


def test_env_interpolation_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMGATE_TEST_PORT", "9999")
    monkeypatch.delenv("LMGATE_TEST_MISSING", raising=False)
    config = parse_config(
        {
            "server": {
                "port": "${LMGATE_TEST_PORT}",
                "api_keys": ["${LMGATE_TEST_MISSING:-}", "k-${LMGATE_TEST_PORT}"],
            },
        }
    )
    assert config.server.port == 9999
    assert config.server.api_keys == ["k-9999"]  # an empty key never becomes valid


def test_default_catalog_adds_deepseek_when_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    assert [m["id"] for m in default_config_dict()["models"]] == ["echo", "echo-embed"]
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-abc")
    config = parse_config(default_config_dict())
    ids = [m.id for m in config.models]
    assert ids == ["deepseek-chat", "deepseek-reasoner", "echo", "echo-embed"]
    assert config.providers["deepseek"]["api_key"] == "sk-abc"
    assert config.routing.auto[0] == "deepseek-chat"


def test_unique_ids_are_enforced() -> None:
    with pytest.raises(ConfigError, match="already the id"):
        parse_config(
            {"providers": {"e": {"type": "echo"}}, "models": [{"id": "a", "provider": "e"}] * 2}
        )


def test_serve_warns_when_open_on_a_public_host(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lmgate", "serve", "--host", "0.0.0.0", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "api_keys is empty" in line or "Application startup complete" in line:
                break
        assert any("api_keys is empty" in line for line in lines), lines
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


def test_workers_option_serves_from_several_processes(serve: Any) -> None:
    served = serve("--workers", "2", env={"DEEPSEEK_API_KEY": "", "LMGATE_CONFIG": ""})
    for _ in range(4):
        status, _ = served.request(
            "POST",
            "/v1/chat/completions",
            {"model": "echo", "messages": [{"role": "user", "content": "x"}]},
        )
        assert status == 200


def test_the_docs_config_examples_are_valid(tmp_path: Path) -> None:
    root = Path(__file__).parent.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    examples = []
    for page in pages:
        blocks = [b.split("```", 1)[0] for b in page.read_text().split("```yaml\n")[1:]]
        examples += [block for block in blocks if "providers:" in block]
    assert len(examples) >= 8  # the README, configuration, routing, the clouds, cost
    env = {"LMGATE_KEY": "k", "DEEPSEEK_API_KEY": "sk-x", "DS_KEY_A": "a", "DS_KEY_B": "b",
           "AZURE_OPENAI_API_KEY": "az", "LMGATE_OIDC_SECRET": "s", "PROXY_PASSWORD": "p"}  # fmt: skip
    for number, example in enumerate(examples):
        path = tmp_path / f"readme{number}.yaml"
        path.write_text(example)
        result = run_cli("check", "--config", str(path), env={"ANTHROPIC_API_KEY": "c", **env})
        assert result.returncode == 0, (example, result.stderr)


@pytest.mark.parametrize(
    ("routing", "error"),
    [
        ({"fallbacks": {"nope": ["e"]}}, "routing.fallbacks.nope: unknown model 'nope'"),
        ({"fallbacks": {"e": ["e"]}}, "routing.fallbacks.e.0: 'e' is not another model"),
        ({"retries": -1}, "routing.retries: Input should be greater than or equal to 0"),
        ({"cooldown": {"failures": 0}}, "routing.cooldown.failures: Input should be greater"),
    ],
)
def test_routing_config_errors(routing: dict[str, Any], error: str) -> None:
    models = [{"id": "e", "provider": "e"}]
    with pytest.raises(ConfigError, match=re.escape(error)):
        parse_config({"providers": {"e": {"type": "echo"}}, "models": models, "routing": routing})


def test_vision_fallback_must_accept_images() -> None:
    models = [{"id": "t", "provider": "e", "vision_fallback": "u"}, {"id": "u", "provider": "e"}]
    with pytest.raises(
        ConfigError, match=r"models\.0\.vision_fallback: 'u' is not a model with support 'image'"
    ):
        parse_config({"providers": {"e": {"type": "echo"}}, "models": models})
    models[1]["support"] = "image"
    assert (
        parse_config({"providers": {"e": {"type": "echo"}}, "models": models})
        .models[0]
        .vision_fallback
        == "u"
    )


def test_a_table_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    env = {**os.environ, "LMGATE_CONFIG": "", "LMGATE_PRESET": "", "LMGATE_DATA_DIR": str(tmp_path)}
    models = subprocess.Popen(
        [sys.executable, "-m", "lmgate", "models"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert models.stdout is not None and models.stderr is not None
    models.stdout.close()  # like `| head -0`: the reader is gone before the table comes
    assert models.wait(30) in (0, 1)
    errors = models.stderr.read()
    models.stderr.close()
    assert b"Traceback" not in errors and b"BrokenPipeError" not in errors


def test_the_access_log_writes_its_lines_with_keys_redacted(serve: Any, tmp_path: Path) -> None:
    """`lmgate serve --access-log`: a line per request (the redaction used to break
    uvicorn's formatter: a "--- Logging error ---" block instead of each line)."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "server: {api_keys: [sk-team-key-0123456789]}\n"
        "providers: {e: {type: echo}}\nmodels: [{id: echo, provider: e}]\n"
    )
    served = serve("--config", str(path), "--access-log")
    assert served.request("GET", "/v1beta/models?key=sk-team-key-0123456789")[0] == 200
    assert served.request("GET", "/v1/models?%6Bey=sk-not-a-key-9876543210")[0] == 401
    served.process.terminate()
    out = served.process.communicate(timeout=15)[0]
    assert "Logging error" not in out and "Traceback" not in out, out[-3000:]
    assert '"GET /v1beta/models?key=[redacted] HTTP/1.1" 200' in out, out[-3000:]
    assert '"GET /v1/models?%6Bey=[redacted] HTTP/1.1" 401' in out, out[-3000:]
    assert "sk-team-key" not in out and "sk-not-a-key" not in out


def run_and_read(serve: Any, path: Path, *flags: str, key: str = "sk-team-key-0123456789") -> str:
    """Serve ``path``, send a chat that falls back from a dead upstream to echo, and
    return everything the process wrote."""
    served = serve("--config", str(path), *flags)
    ask = {"model": "flaky", "messages": [{"role": "user", "content": "hi there"}]}
    headers = {"Authorization": f"Bearer {key}", "x-request-id": "req-logged-1"}
    assert served.request("POST", "/v1/chat/completions", ask, headers)[0] == 200
    served.process.terminate()
    return str(served.process.communicate(timeout=15)[0])


def logged_config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        "server: {api_keys: [sk-team-key-0123456789]}\n"
        f"providers: {{dead: {{type: openai, base_url: '{refusing_url()}'}}, e: {{type: echo}}}}\n"
        "models: [{id: flaky, provider: dead, model: gone}, {id: echo, provider: e}]\n"
        "routing: {retries: 0, fallbacks: {flaky: [echo]}}\n"
    )
    return path


def test_a_request_line_per_request_and_warnings_for_failures(serve: Any, tmp_path: Path) -> None:
    out = run_and_read(serve, logged_config(tmp_path))
    lines = [line for line in out.splitlines() if "request req-logged-1 " in line]
    assert len(lines) == 1, out[-3000:]
    line = lines[0]
    assert " INFO lmgate: " in line and "flaky -> echo e/echo status=200" in line, line
    assert "tokens=" in line and "ttfb=" in line
    assert "deployment dead/gone failed (retryable): upstream: cannot reach" in out, out[-3000:]
    assert "model flaky did not answer: falling back to echo" in out
    assert "sk-team-key" not in out


def test_json_logs_one_object_per_line(serve: Any, tmp_path: Path) -> None:
    out = run_and_read(serve, logged_config(tmp_path), "--log-format", "json", "--access-log")
    records = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), out[-2000:]
    [request] = [r for r in records if r.get("request_id") == "req-logged-1"]
    assert request["level"] == "INFO" and request["status"] == 200
    assert (request["requested_model"], request["model"]) == ("flaky", "echo")
    assert request["deployment"] == "e/echo" and request["key"].startswith("config:")
    assert request["input_tokens"] > 0 and request["output_tokens"] > 0
    assert request["duration_ms"] > 0 and request["error"] is None
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any('"POST /v1/chat/completions HTTP/1.1" 200' in r["message"] for r in access)
    warnings = [r for r in records if r["level"] == "WARNING"]
    assert any("falling back to echo" in r["message"] for r in warnings)


def test_check_reports_every_problem_at_once_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "three.yaml"
    path.write_text(
        "server:\n"
        "  prot: 8080\n"  # line 2: a typo of port
        "providers:\n"
        "  up: {type: openai, base_url: 'http://127.0.0.1:9', timeouts: {idle: -1}}\n"  # line 4
        "models:\n"
        "  - id: m\n"
        "    provider: upp\n"  # line 7: a typo of up
        "store: {url: 'mysql://u:p@db/lmgate'}\n"  # line 8
    )
    check = run_cli("check", "--config", str(path))
    assert check.returncode == 2
    lines = check.stderr.splitlines()
    assert "Traceback" not in check.stderr
    expected = [
        f"{path}:2: server.prot: unknown key (did you mean 'port'?)",
        f"{path}:7: models.0.provider: unknown provider 'upp' (did you mean 'up'?)",
        f"{path}:4: providers.up.timeouts.idle:",
        f"{path}:8: store.url:",
    ]
    for start in expected:
        assert any(line.strip().startswith(start) for line in lines), (start, check.stderr)
    assert "not 'mysql'" in check.stderr


def test_start_up_failures_are_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    import socket

    unopenable = tmp_path / "a-directory.db"
    unopenable.mkdir()
    path = tmp_path / "lmgate.yaml"
    path.write_text(
        "providers: {e: {type: echo}}\nmodels: [{id: echo, provider: e}]\n"
        f"store: {{url: 'sqlite:///{unopenable}'}}\n"
    )
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        busy = run_cli("serve", "--port", port)  # the built-in default, on a port in use
    assert busy.returncode == 1
    assert f"lmgate: cannot listen on 127.0.0.1:{port}: Address already in use" in busy.stderr
    assert "listening on" not in busy.stderr  # said only once the port is bound
    assert "Traceback" not in busy.stderr
    broken = run_cli("serve", "--config", str(path), "--port", str(free_port()))
    assert broken.returncode == 3
    failures = [line for line in broken.stderr.splitlines() if "cannot start" in line]
    assert len(failures) == 1 and "unable to open database file" in failures[0], broken.stderr
    assert "Traceback" not in broken.stderr
