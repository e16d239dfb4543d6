"""The degpt provider against a fake degpt.ai: one sign-in for many chats, renewal
before expiry and on 401, streams folded for non-stream clients, reasoning kept
apart, images, model discovery, and the preset."""

from __future__ import annotations

import base64
import logging
import os
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from lmgate.providers.degpt import jwt_expiry, parse_config, stored_device_id
from tests.support.clock import FakeClock
from tests.support.fakes.degpt import FakeDegpt, Script, make_jwt, thinking_stream
from tests.support.fakes.upstream import text_stream
from tests.support.gateway import API_KEY, RunningGateway, wait_until

DEVICE = "device-0123456789abcdef"
HI = [{"role": "user", "content": "Hi"}]
PNG = (Path(__file__).parent / "data" / "reference.png").read_bytes()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeDegpt]:
    server = FakeDegpt().start()
    yield server
    server.stop()


@pytest.fixture
def fake(fake_server: FakeDegpt) -> Iterator[FakeDegpt]:
    fake_server.reset()
    fake_server.config = {"default_models": "", "version": "0.1.125", "provider": "DeGPT"}
    yield fake_server
    fake_server.reset()


def degpt_config(fake: FakeDegpt, **provider: Any) -> dict[str, Any]:
    return {
        "server": {"api_keys": [API_KEY]},
        "providers": {
            "degpt": {
                "type": "degpt",
                "base_url": fake.url + "/api",
                "device_id": DEVICE,
                "timeouts": {"first_byte": 5, "idle": 5},
                **provider,
            }
        },
        "models": [
            {"id": "deepseek-chat", "name": "DeepSeek V3.1", "provider": "degpt",
             "vision_fallback": "qwen3"},
            {"id": "qwen3", "provider": "degpt", "model": "qwen3-235b-a22b", "support": "image"},
            {"id": "qwen3-thinking", "provider": "degpt", "model": "qwen3-235b-a22b",
             "params": {"enable_thinking": True}, "support": "image"},
        ],
        "routing": {"retries": 0},
    }  # fmt: skip


@pytest.fixture
def gw(fake: FakeDegpt, start_gateway: Any) -> RunningGateway:
    gateway: RunningGateway = start_gateway(degpt_config(fake))
    return gateway


# ---- tokens ---------------------------------------------------------------------------


def test_one_sign_in_serves_many_chats_through_both_sdks(
    gw: RunningGateway, fake: FakeDegpt
) -> None:
    reply = gw.client().chat.completions.create(model="deepseek-chat", messages=HI)
    assert reply.choices[0].message.content == "Hello!"
    with gw.client().chat.completions.create(
        model="deepseek-chat", messages=HI, stream=True
    ) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello!"
    message = gw.anthropic().messages.create(model="qwen3", max_tokens=50, messages=HI)
    assert message.content[0].text == "Hello!"  # type: ignore[union-attr]
    with gw.anthropic().messages.stream(model="qwen3", max_tokens=50, messages=HI) as events:
        assert events.get_final_message().content[0].text == "Hello!"  # type: ignore[union-attr]

    assert fake.sign_ins == [{"id": DEVICE, "channel": ""}]
    chats = fake.chats()
    assert len(chats) == 4
    tokens = {chat.headers["Authorization"] for chat in chats}
    assert len(tokens) == 1 and tokens.pop().startswith("Bearer ey")
    for chat in chats:
        # Always a stream upstream, whatever the client asked; no stream_options.
        assert chat.body["stream"] is True and "stream_options" not in chat.body
        assert chat.body["project"] == "DecentralGPT" and chat.body["enable_thinking"] is False
        assert chat.headers["User-Agent"].startswith("lmgate/")
    assert [chat.body["model"] for chat in chats] == ["deepseek-chat"] * 2 + ["qwen3-235b-a22b"] * 2


def test_the_token_is_renewed_shortly_before_it_expires(
    fake: FakeDegpt, start_gateway: Any
) -> None:
    clock = FakeClock()
    gw = start_gateway(degpt_config(fake), clock)
    fake.lifetime = 60  # renewed a tenth of its life ahead: after 54 s
    gw.client().chat.completions.create(model="deepseek-chat", messages=HI)
    clock.advance(53)
    gw.client().chat.completions.create(model="deepseek-chat", messages=HI)
    assert len(fake.sign_ins) == 1
    clock.advance(1.5)
    gw.client().chat.completions.create(model="deepseek-chat", messages=HI)
    assert len(fake.sign_ins) == 2
    assert fake.refused == 0  # renewed before the service had to refuse it


def test_a_401_renews_the_token_once_and_the_request_is_sent_again(
    gw: RunningGateway, fake: FakeDegpt
) -> None:
    gw.client().chat.completions.create(model="deepseek-chat", messages=HI)
    first = fake.chats()[0].headers["Authorization"].removeprefix("Bearer ")
    fake.revoked.add(first)  # e.g. the service restarted and forgot it

    def ask(_: int) -> str | None:
        reply = gw.client().chat.completions.create(model="deepseek-chat", messages=HI)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(ask, range(6))) == ["Hello!"] * 6
    assert len(fake.sign_ins) == 2  # six requests saw the 401; one renewed the token
    assert 1 <= fake.refused <= 6
    assert len(fake.chats()) == 1 + 6 + fake.refused


def test_a_token_refused_twice_is_an_upstream_error_without_secrets(
    start_gateway: Any, fake: FakeDegpt, caplog: pytest.LogCaptureFixture
) -> None:
    config = degpt_config(fake)
    del config["routing"]  # the router's retries would not help: none happen
    gw = start_gateway(config)
    fake.lifetime = -60  # every token it issues is already expired
    caplog.set_level(logging.DEBUG, logger="lmgate")
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(model="deepseek-chat", messages=HI)
    assert caught.value.status_code == 502
    assert "refused the gateway's credentials" in caught.value.message
    assert len(fake.sign_ins) == 2 and fake.refused == 2  # one renewal, no loop
    body = caught.value.response.text
    for secret in (DEVICE, "eyJ"):
        assert secret not in body and secret not in caplog.text


def test_a_failed_sign_in_is_a_clear_502(start_gateway: Any, fake: FakeDegpt) -> None:
    config = degpt_config(fake, base_url=fake.url + "/nowhere")
    gw = start_gateway(config)
    with pytest.raises(anthropic.APIStatusError) as caught:
        gw.anthropic().messages.create(model="deepseek-chat", max_tokens=20, messages=HI)
    assert caught.value.status_code == 502
    assert "sign-in failed" in caught.value.message and DEVICE not in caught.value.message


def test_requests_waiting_for_a_sign_in_share_its_failure(
    start_gateway: Any, fake: FakeDegpt
) -> None:
    config = degpt_config(fake, sign_in_timeout=1)
    config["routing"]["cooldown"] = {"failures": 100}  # the breaker is not under test
    gw = start_gateway(config)
    fake.sign_in_delay = 3  # longer than the timeout

    def ask(_: int) -> int:
        raw = gw.request("POST", "/v1/chat/completions", {"model": "qwen3", "messages": HI})
        return raw.status

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, range(4))) == [502] * 4
    assert time.monotonic() - started < 2.5  # one timeout for all, not one after another
    assert len(fake.sign_ins) <= 2  # usually one; a latecomer may start the next
    fake.sign_in_delay = 0
    assert ask(0) == 200  # the next request signs in afresh


# ---- chat ---------------------------------------------------------------------------


def test_a_non_stream_reply_is_folded_from_the_stream_and_usage_counted(
    gw: RunningGateway, fake: FakeDegpt
) -> None:
    fake.push(Script(chunks=text_stream(["The answer", " is ", "42."])))
    reply = gw.client().chat.completions.create(
        model="deepseek-chat", messages=HI, temperature=0.3, top_p=0.9, max_tokens=64, stop=["\n"]
    )
    assert reply.choices[0].message.content == "The answer is 42."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None  # the service reports none: lmgate counts
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens == 6
    body = fake.chats()[-1].body
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"]) == (
        0.3,
        0.9,
        64,
        ["\n"],
    )


def test_reasoning_is_kept_apart_in_both_protocols(gw: RunningGateway, fake: FakeDegpt) -> None:
    fake.push(Script(chunks=thinking_stream(["Let me ", "think."], ["Four", "."])))
    reply = gw.client().chat.completions.create(model="qwen3-thinking", messages=HI)
    message = reply.choices[0].message
    assert message.content == "Four."
    assert (message.model_extra or {})["reasoning_content"] == "Let me think."
    assert fake.chats()[-1].body["enable_thinking"] is True

    fake.push(Script(chunks=thinking_stream(["Hmm."], ["Four."])))
    with gw.anthropic().messages.stream(
        model="qwen3-thinking",
        max_tokens=2000,
        messages=HI,
        thinking={"type": "enabled", "budget_tokens": 1024},  # else no thinking blocks
    ) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Hmm." and final.content[1].text == "Four."  # type: ignore[union-attr]


def test_an_upstream_failure_mid_stream_ends_the_stream_with_an_error(
    gw: RunningGateway, fake: FakeDegpt
) -> None:
    fake.push(Script(chunks=text_stream(["a", "b", "c", "d"]), disconnect_after=2))
    with (
        pytest.raises(openai.APIError),
        gw.client().chat.completions.create(
            model="deepseek-chat", messages=HI, stream=True
        ) as stream,
    ):
        for _ in stream:
            pass


def test_images_go_to_the_service_and_text_models_hand_them_over(
    gw: RunningGateway, fake: FakeDegpt
) -> None:
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": DATA_URL}}]  # fmt: skip
    gw.client().chat.completions.create(
        model="qwen3", messages=[{"role": "user", "content": content}]
    )
    sent = fake.chats()[-1].body["messages"][0]["content"]
    assert sent[1] == {"type": "image_url", "image_url": {"url": DATA_URL}}
    # deepseek-chat sees no images: its vision_fallback answers.
    raw = gw.request("POST", "/v1/chat/completions",
                     {"model": "deepseek-chat", "messages": [{"role": "user", "content": content}]})  # fmt: skip
    assert raw.status == 200 and raw.headers["x-lmgate-deployment"] == "degpt/qwen3-235b-a22b"
    assert fake.chats()[-1].body["model"] == "qwen3-235b-a22b"


# ---- discovery ----------------------------------------------------------------------

SITE_CONFIG = {
    "default_models": "deepseek-chat,new-model,plain",
    "version": "9.9.9",
    "provider": "DeGPT",
    "models": [
        {"name": "Site DeepSeek", "model": "deepseek-chat", "desc": "site text", "support": "text"},
        {"name": "New Model", "model": "new-model", "desc": "Fresh", "support": "image",
         "tip": "New!"},
    ],
}  # fmt: skip


def listed(gw: RunningGateway) -> dict[str, Any]:
    return {item["id"]: item for item in gw.request("GET", "/v1/models").json()["data"]}


def test_discovered_models_join_the_catalog_and_the_config_wins(
    start_gateway: Any, fake: FakeDegpt
) -> None:
    fake.config = SITE_CONFIG
    gw = start_gateway(degpt_config(fake, discover_models=True, discovery_interval=0.3))
    models = gw.request("GET", "/v1/models").json()
    assert models["version"] == "9.9.9" and models["provider"] == "DeGPT"
    by_id = {item["id"]: item for item in models["data"]}
    assert list(by_id) == ["deepseek-chat", "qwen3", "qwen3-thinking", "new-model", "plain"]
    assert by_id["deepseek-chat"]["name"] == "DeepSeek V3.1"  # the config's entry, not the site's
    assert {k: by_id["new-model"][k] for k in ("name", "description", "support", "tip")} == {
        "name": "New Model",
        "description": "Fresh",
        "support": "image",
        "tip": "New!",
    }
    assert (by_id["plain"]["owned_by"], by_id["new-model"]["owned_by"]) == ("unknown", "new")
    reply = gw.client().chat.completions.create(model="new-model", messages=HI)
    assert reply.choices[0].message.content == "Hello!"
    assert fake.chats()[-1].body["model"] == "new-model"

    # A failing refresh keeps the last good list.
    fake.config_status = 500
    asked = fake.config_requests
    wait_until(lambda: fake.config_requests >= asked + 2)
    assert "new-model" in listed(gw)
    # A good one replaces it.
    fake.config_status = 200
    fake.config = {"default_models": "newer", "version": "9.9.10"}
    wait_until(lambda: "newer" in listed(gw))
    assert "new-model" not in listed(gw) and "qwen3" in listed(gw)
    assert gw.request("GET", "/v1/models").json()["version"] == "9.9.10"


def test_discovery_down_at_start_blocks_nothing(start_gateway: Any, fake: FakeDegpt) -> None:
    fake.config_status = 503
    gw = start_gateway(degpt_config(fake, discover_models=True))
    assert list(listed(gw)) == ["deepseek-chat", "qwen3", "qwen3-thinking"]
    reply = gw.client().chat.completions.create(model="deepseek-chat", messages=HI)
    assert reply.choices[0].message.content == "Hello!"


def test_parse_config_reads_the_site_shapes() -> None:
    found = parse_config({"code": 0, "data": {"default_models": ["a", " b ", ""], "version": 3}})
    assert [m.id for m in found.models] == ["a", "b"] and found.version == "3"
    for bad in ([], {"default_models": ""}, {"version": "1"}, "text"):
        with pytest.raises(ValueError):
            parse_config(bad)


# ---- device id and tokens ---------------------------------------------------------


def test_the_device_id_is_made_once_per_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMGATE_DATA_DIR", str(tmp_path / "one"))
    first = stored_device_id()
    assert len(first) == 32 and int(first, 16) >= 0
    assert stored_device_id() == first
    path = tmp_path / "one" / "degpt-device-id"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path / "one") == ["degpt-device-id"]
    monkeypatch.setenv("LMGATE_DATA_DIR", str(tmp_path / "two"))
    assert stored_device_id() != first  # never one value shared by every installation


def test_without_a_device_id_the_stored_one_signs_in(
    start_gateway: Any, fake: FakeDegpt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMGATE_DATA_DIR", str(tmp_path))
    config = degpt_config(fake)
    del config["providers"]["degpt"]["device_id"]
    gw = start_gateway(config)
    gw.client().chat.completions.create(model="deepseek-chat", messages=HI)
    assert fake.sign_ins == [{"id": stored_device_id(), "channel": ""}]


def test_jwt_expiry() -> None:
    assert jwt_expiry(make_jwt({"exp": 1700000000})) == 1700000000.0
    for token in ("", "abc", "a.b.c", make_jwt({"sub": "x"}), make_jwt({"exp": "soon"})):
        assert jwt_expiry(token) is None


# ---- the preset -----------------------------------------------------------------------


def test_the_preset_serves_the_reference_catalog(
    serve: Any, fake: FakeDegpt, tmp_path: Path
) -> None:
    reference = orjson.loads(
        (Path(__file__).parent / "data" / "reference_models.json").read_bytes()
    )
    fake.config = {
        "default_models": "deepseek-chat,gpt-4o",
        "version": "0.1.125",
        "provider": "DeGPT",
    }
    env = {"DEGPT_BASE_URL": fake.url + "/api", "LMGATE_DATA_DIR": str(tmp_path),
           "LMGATE_API_KEY": "", "LMGATE_CONFIG": ""}  # fmt: skip
    served = serve("--preset", "degpt", env=env)
    status, raw = served.request("GET", "/api/v1/models")
    assert status == 200
    models = orjson.loads(raw)
    for field in ("object", "version", "provider", "name", "default_locale", "status"):
        assert models[field] == reference[field]
    expected = []
    for item in reference["data"]:
        item = dict(item)
        if "Thinking" in item["name"] and item["id"] in (
            "qwen3-235b-a22b",
            "claude-opus-4-20250514",
        ):
            item["id"] = item["model"] = item["id"] + "-thinking"  # the reference repeats ids
        expected.append(item)
    assert models["data"] == expected

    ask = {"model": "auto", "messages": HI}
    assert served.request("POST", "/api/v1/chat/completions", ask)[0] == 200
    assert fake.chats()[-1].body["model"] == "deepseek-chat"
    picture = [{"type": "image_url", "image_url": {"url": DATA_URL}}]
    ask = {"model": "auto", "messages": [{"role": "user", "content": picture}]}
    assert served.request("POST", "/api/v1/chat/completions", ask)[0] == 200
    assert fake.chats()[-1].body["model"] == "doubao-seed-1-6-250615"
    thinking = {"model": "qwen3-235b-a22b-thinking", "messages": HI}
    assert served.request("POST", "/api/v1/chat/completions", thinking)[0] == 200
    assert fake.chats()[-1].body["enable_thinking"] is True
    assert len(fake.sign_ins) == 1


def test_examples_degpt_is_the_preset() -> None:
    root = Path(__file__).parent.parent
    preset = root / "lmgate" / "data" / "presets" / "degpt.yaml"
    assert (root / "examples" / "degpt.yaml").read_bytes() == preset.read_bytes()


def test_preset_on_the_command_line(tmp_path: Path) -> None:
    from tests.support.cli import run_cli

    env = {"LMGATE_CONFIG": "", "LMGATE_PRESET": "", "LMGATE_DATA_DIR": str(tmp_path)}
    listed_models = run_cli("models", "--preset", "degpt", env=env)
    assert listed_models.returncode == 0 and "qwen3-235b-a22b-thinking" in listed_models.stdout
    unknown = run_cli("check", "--preset", "nope", env=env)
    assert unknown.returncode == 2 and "unknown preset 'nope' (known: degpt)" in unknown.stderr
    both = run_cli("check", "--preset", "degpt", "--config", "x.yaml", env=env)
    assert both.returncode == 2 and "not both" in both.stderr
