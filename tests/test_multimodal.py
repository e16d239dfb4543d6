"""Images: the reference's PNG through both SDKs to each upstream kind, validation, capability routing."""

from __future__ import annotations

import base64
from typing import Any

import anthropic
import openai
import pytest

from tests.support.fakes.upstream import FakeUpstream, Script, anthropic_message
from tests.support.gateway import RunningGateway, upstream_config
from tests.support.images import DATA_URL, PNG, PNG_B64


def openai_image(url: str = DATA_URL) -> list[Any]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "图片是啥"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


def anthropic_image(data: str = PNG_B64, media_type: str = "image/png") -> list[Any]:
    source = {"type": "base64", "media_type": media_type, "data": data}
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "图片是啥"}, {"type": "image", "source": source}],
        }
    ]


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream) -> RunningGateway:
    config = upstream_config(upstream)
    config["server"]["max_body_mb"] = 4
    config["media"] = {"max_images": 3, "max_image_mb": 1}
    config["providers"]["lm"] = {"type": "lmv2", "base_url": upstream.url}
    config["models"] += [
        {"id": "vision", "support": "image", "provider": "up", "model": "up-vision"},
        {"id": "lm-vision", "support": "image", "provider": "lm", "model": "lm-vl"},
        {
            "id": "text-with-fallback",
            "provider": "up",
            "model": "up-text",
            "vision_fallback": "vision",
        },
    ]
    config["routing"]["auto"] = ["chat-model", "vision"]
    return start_gateway(config)  # type: ignore[no-any-return]


EXPECTED_OPENAI_PART = {"type": "image_url", "image_url": {"url": DATA_URL}}


@pytest.mark.parametrize("stream", [False, True])
def test_reference_png_to_each_upstream_kind(
    gw: RunningGateway, upstream: FakeUpstream, stream: bool
) -> None:
    def ask_openai(model: str) -> None:
        result = gw.client().chat.completions.create(
            model=model, messages=openai_image(), stream=stream
        )
        if stream:
            list(result)  # type: ignore[call-overload]

    def ask_anthropic(model: str) -> None:
        claude = gw.anthropic()
        if stream:
            with claude.messages.stream(
                model=model, max_tokens=50, messages=anthropic_image()
            ) as s:
                s.get_final_message()
        else:
            claude.messages.create(model=model, max_tokens=50, messages=anthropic_image())

    for ask in (ask_openai, ask_anthropic):
        ask("vision")  # OpenAI-compatible upstream
        assert upstream.last.body["messages"][0]["content"] == [
            {"type": "text", "text": "图片是啥"},
            EXPECTED_OPENAI_PART,
        ]
        ask("lm-vision")  # LM v2 upstream
        assert upstream.last.path == "/lm/v2/chat/completions"
        assert upstream.last.body["messages"][0]["content"][1] == EXPECTED_OPENAI_PART
        if stream:
            from tests.support.fakes.upstream import anthropic_text_stream

            upstream.push(anthropic_text_stream(["a cat"]))
        else:
            upstream.push(Script(json=anthropic_message()))
        ask("claude-model")  # Anthropic upstream: always a base64 block
        assert upstream.last.body["messages"][0]["content"][1] == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
        }


def test_declared_type_is_checked_against_the_bytes(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    gw.anthropic().messages.create(
        model="vision", max_tokens=5, messages=anthropic_image(media_type="image/jpeg")
    )
    assert upstream.last.body["messages"][0]["content"][1] == EXPECTED_OPENAI_PART  # sniffed: a PNG


@pytest.mark.parametrize(
    ("url", "where", "words"),
    [
        (
            "data:image/png;base64,@@@@",
            "messages[0].content[1].image_url.url",
            "base64 data is not valid",
        ),
        (
            "data:image/png,rawbytes",
            "messages[0].content[1].image_url.url",
            "data URL must look like",
        ),
        (
            "data:image/png;base64," + base64.b64encode(b"hello, not an image").decode(),
            "messages[0].content[1]",
            "unsupported image type",
        ),
        ("ftp://example.com/a.png", "messages[0].content[1]", "data:, http: or https:"),
        (
            "data:image/png;base64," + base64.b64encode(PNG + b"\0" * (1024 * 1024)).decode(),
            "messages[0].content[1]",
            "media.max_image_mb",
        ),
    ],
)
def test_bad_images_get_400_naming_the_part(
    gw: RunningGateway, upstream: FakeUpstream, url: str, where: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(model="vision", messages=openai_image(url))
    assert caught.value.body["param"] == where  # type: ignore[index]
    assert words in caught.value.message and where in caught.value.message
    assert upstream.requests == []


def test_bad_images_in_anthropic_shape(gw: RunningGateway, upstream: FakeUpstream) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        gw.anthropic().messages.create(
            model="vision",
            max_tokens=5,
            messages=anthropic_image(base64.b64encode(b"GIF00 nope").decode()),
        )
    assert "messages.0.content.1: unsupported image type" in caught.value.message
    assert upstream.requests == []


def test_too_many_images(gw: RunningGateway, upstream: FakeUpstream) -> None:
    part = {"type": "image_url", "image_url": {"url": DATA_URL}}
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(
            model="vision", messages=[{"role": "user", "content": [part] * 4}]
        )
    assert "4 images; at most 3" in caught.value.message


def test_text_only_model_refuses_images(gw: RunningGateway, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(model="chat-model", messages=openai_image())
    assert "model chat-model does not accept images" in caught.value.message
    with pytest.raises(anthropic.BadRequestError):
        gw.anthropic().messages.create(model="chat-model", max_tokens=5, messages=anthropic_image())
    assert upstream.requests == []


def test_auto_picks_the_first_capable_candidate(gw: RunningGateway, upstream: FakeUpstream) -> None:
    text = gw.client().chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert text.model == "chat-model" and upstream.last.body["model"] == "up-model"
    seen = gw.client().chat.completions.create(model="auto", messages=openai_image())
    assert seen.model == "vision" and upstream.last.body["model"] == "up-vision"


def test_auto_with_no_capable_candidate(start_gateway: Any, upstream: FakeUpstream) -> None:
    config = upstream_config(upstream)
    config["routing"]["auto"] = ["chat-model"]
    with pytest.raises(openai.BadRequestError) as caught:
        start_gateway(config).client().chat.completions.create(
            model="auto", messages=openai_image()
        )
    assert "no model in routing.auto accepts images" in caught.value.message


def test_vision_fallback(gw: RunningGateway, upstream: FakeUpstream) -> None:
    reply = gw.client().chat.completions.create(model="text-with-fallback", messages=openai_image())
    assert reply.model == "vision" and upstream.last.body["model"] == "up-vision"
    with gw.anthropic().messages.stream(
        model="text-with-fallback", max_tokens=5, messages=anthropic_image()
    ) as s:
        assert s.get_final_message().model == "vision"
    plain = gw.client().chat.completions.create(
        model="text-with-fallback", messages=[{"role": "user", "content": "hi"}]
    )
    assert plain.model == "text-with-fallback" and upstream.last.body["model"] == "up-text"
