"""The LM v2 upstream: the reference's replies replayed by a fake server, through both SDKs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from lmgate.canonical import ChatRequest, ImagePart, Message, TextPart, ToolCallPart, ToolResultPart
from lmgate.providers.lmv2 import CONTINUE, OPENING, normalise
from tests.support.fakes.upstream import FakeUpstream, Script
from tests.support.gateway import API_KEY, RunningGateway, upstream_config

HI = [{"role": "user", "content": "今天星期几?"}]

# reference/upstream-lmv2-api.md: a DeepSeek-like thinking model, not streamed (finish_reason null,
# tags escaped as \u003c…\u003e in the JSON)
REFERENCE_REPLY = (
    b'{"id":"gd-v6xmd1zq17","object":"chat.completion","created":1761555198,'
    b'"model":"deepseek-r1-distill-qwen-32b","choices":[{"message":{"role":"assistant",'
    b'"content":"\\u003cthink\\u003e\\n \\u4eca\\u5929\\u662f\\u661f\\u671f\\u4e00\\u3002\\n\\u003c/think\\u003e\\n \\u4eca\\u5929\\u662f\\u661f\\u671f\\u4e00\\u3002"}'
    b'],"finish_reason":null,"index":0}],"usage":{"prompt_tokens":12,"completion_tokens":230,"total_tokens":242}}'
)


def frame(
    content: str | None, finish: str | None = None, *, outside: bool = True, space: bool = True
) -> bytes:
    """One chunk the way the reference's stream writes them: finish_reason beside choices, a
    stray closing bracket after the object."""
    delta = {"role": "assistant", "content": content} if content is not None else {}
    choice: dict[str, Any] = {"index": 0, "delta": delta}
    body: dict[str, Any] = {
        "id": "gd-vpxbsqulid",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "r1",
    }
    if outside:
        body["choices"] = [choice]
        body["finish_reason"] = finish
    else:
        choice["finish_reason"] = finish
        body["choices"] = [choice]
    return (b"data: " if space else b"data:") + orjson.dumps(body) + b"]\r\n\r\n"


def reference_stream(done: bool = True, finish: str | None = "normal") -> list[bytes]:
    pieces = [
        frame(""),
        frame("<think>"),
        frame("\n"),
        b": keep-alive\r\n\r\n",
        frame("今天"),
        frame(None),  # an empty delta
        frame("是星期一。\n</th"),
        frame("ink>"),
        frame("\n\n", space=False),
        frame("今天"),
        frame("是星期一。", finish, outside=False),
    ]
    raw = b"".join(pieces) + (b"data: [DONE]\r\n\r\n" if done else b"")
    # Cut the bytes into reads of 7: JSON and even UTF-8 characters split across reads.
    return [raw[i : i + 7] for i in range(0, len(raw), 7)]


@pytest.fixture
def lm(start_gateway: Any, upstream: FakeUpstream) -> Iterator[RunningGateway]:
    config = upstream_config(upstream)
    config["providers"]["lm"] = {"type": "lmv2", "base_url": upstream.url, "api_key": "lm-key"}
    config["models"] += [
        {
            "id": "r1-distill",
            "name": "R1 Distill",
            "provider": "lm",
            "model": "deepseek-r1-distill-qwen-32b",
            "reasoning": "think_tags",
        },
        {
            "id": "qwen3-235b-a22b",
            "name": "Qwen3 (Ali Cloud)",
            "support": "image",
            "provider": "lm",
            "model": "qwen3-235b-a22b",
            "params": {"enable_thinking": False},
        },
        {
            "id": "qwen3-235b-a22b-thinking",
            "name": "Qwen3 Thinking (Ali Cloud)",
            "support": "image",
            "deployments": [
                {
                    "provider": "lm",
                    "model": "qwen3-235b-a22b",
                    "params": {"enable_thinking": True},
                    "reasoning": "think_tags",
                }
            ],
        },
    ]
    yield start_gateway(config)


def test_reference_non_stream_reply_through_both_sdks(
    lm: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(raw=REFERENCE_REPLY))
    reply = lm.client().chat.completions.create(model="r1-distill", messages=HI)
    message = reply.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == "今天是星期一。\n"
    assert message.content == "今天是星期一。"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 230
    sent = upstream.last
    assert sent.path == "/lm/v2/chat/completions"
    assert sent.headers["Authorization"] == "Bearer lm-key"

    upstream.push(Script(raw=REFERENCE_REPLY))
    claude = lm.anthropic()
    thought = claude.messages.create(
        model="r1-distill",
        max_tokens=500,
        messages=HI,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert [
        (b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in thought.content
    ] == [
        ("thinking", "今天是星期一。\n"),
        ("text", "今天是星期一。"),
    ]
    upstream.push(Script(raw=REFERENCE_REPLY))
    plain = claude.messages.create(model="r1-distill", max_tokens=500, messages=HI)
    assert [(b.type, getattr(b, "text", None)) for b in plain.content] == [
        ("text", "今天是星期一。")
    ]


def test_reference_stream_through_openai(lm: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.push(Script(chunks=reference_stream(), done=False))  # type: ignore[arg-type]
    chunks = list(lm.client().chat.completions.create(model="r1-distill", messages=HI, stream=True))
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "") for c in chunks
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert reasoning == "今天是星期一。\n"
    assert content == "今天是星期一。"
    assert "<" not in content + reasoning
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


def test_reference_stream_through_anthropic(lm: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.push(
        Script(chunks=reference_stream(done=False), done=False)
    )  # no [DONE]: finish suffices
    raw = lm.request(
        "POST",
        "/v1/messages",
        {
            "model": "r1-distill",
            "max_tokens": 500,
            "stream": True,
            "messages": HI,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    )
    events = [
        (frame.split("\n")[0][7:], orjson.loads(frame.split("\n")[1][6:]))
        for frame in raw.body.decode().split("\n\n")
        if frame
    ]
    blocks = [
        (d["index"], d["content_block"]["type"])
        for name, d in events
        if name == "content_block_start"
    ]
    assert blocks == [(0, "thinking"), (1, "text")]
    thinking = "".join(
        d["delta"].get("thinking", "") for name, d in events if name == "content_block_delta"
    )
    text = "".join(
        d["delta"].get("text", "") for name, d in events if name == "content_block_delta"
    )
    assert (thinking, text) == ("今天是星期一。\n", "今天是星期一。")
    assert events[-1][0] == "message_stop"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    # without thinking asked for: only the answer, still separated
    upstream.push(Script(chunks=reference_stream(), done=False))
    with lm.anthropic().messages.stream(model="r1-distill", max_tokens=500, messages=HI) as stream:
        assert stream.get_final_text() == "今天是星期一。"


@pytest.mark.parametrize(("finish", "done"), [(None, True), ("normal", False), ("length", True)])
def test_finish_reasons(
    lm: RunningGateway, upstream: FakeUpstream, finish: str | None, done: bool
) -> None:
    upstream.push(Script(chunks=reference_stream(done=done, finish=finish), done=False))  # type: ignore[arg-type]
    chunks = list(lm.client().chat.completions.create(model="r1-distill", messages=HI, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
        "length" if finish == "length" else "stop"
    ]


def test_reply_breaking_off_is_an_error_not_a_hang(
    lm: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(chunks=reference_stream(done=False, finish=None), done=False))  # type: ignore[arg-type]
    with pytest.raises(openai.APIError):
        list(lm.client().chat.completions.create(model="r1-distill", messages=HI, stream=True))
    upstream.push(Script(chunks=reference_stream(done=False, finish=None), done=False))  # type: ignore[arg-type]
    with (
        pytest.raises(anthropic.APIError),
        lm.anthropic().messages.stream(model="r1-distill", max_tokens=9, messages=HI) as stream,
    ):
        stream.get_final_message()


def test_parameters_are_mapped_into_lm_v2_ranges(
    lm: RunningGateway, upstream: FakeUpstream
) -> None:
    lm.client().chat.completions.create(
        model="r1-distill",
        messages=[{"role": "system", "content": "Be brief."}, *HI],
        max_tokens=10,
        temperature=0,
        top_p=0.5,
        frequency_penalty=-1.5,
        extra_body={"penalty_score": 3},
        stream=False,
    )
    body = upstream.last.body
    assert body["max_completion_tokens"] == 10 and "max_tokens" not in body
    assert body["temperature"] == 0.01
    assert body["top_p"] == 0.5 and body["frequency_penalty"] == -1.5
    assert body["penalty_score"] == 2.0
    assert body["messages"] == [{"role": "user", "content": "Be brief.\n\n今天星期几?"}]
    lm.client().chat.completions.create(
        model="r1-distill", messages=HI, temperature=1.7, stream=True
    ).close()
    assert upstream.last.body["temperature"] == 1.0
    assert upstream.last.body["stream_options"] == {"include_usage": True}
    lm.anthropic().messages.create(
        model="r1-distill", max_tokens=10, messages=HI, extra_body={"top_k": 4}
    )  # type: ignore[arg-type]
    assert upstream.last.body["top_k"] == 4


def test_images_need_a_vision_model(lm: RunningGateway, upstream: FakeUpstream) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]
    with pytest.raises(openai.BadRequestError) as refused:
        lm.client().chat.completions.create(model="r1-distill", messages=messages)  # type: ignore[arg-type]
    assert "does not accept images" in refused.value.message
    block = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    with pytest.raises(anthropic.BadRequestError):
        lm.anthropic().messages.create(
            model="r1-distill", max_tokens=10, messages=[{"role": "user", "content": [block]}]
        )  # type: ignore[list-item]
    assert upstream.requests == []
    lm.client().chat.completions.create(model="qwen3-235b-a22b", messages=messages)  # type: ignore[arg-type]
    assert upstream.last.body["messages"][0]["content"] == [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]


def test_thinking_variants_share_the_upstream_model(
    lm: RunningGateway, upstream: FakeUpstream
) -> None:
    listed = {m["id"]: m["name"] for m in lm.request("GET", "/api/v1/models").json()["data"]}
    assert listed["qwen3-235b-a22b"] == "Qwen3 (Ali Cloud)"
    assert listed["qwen3-235b-a22b-thinking"] == "Qwen3 Thinking (Ali Cloud)"
    upstream.push(Script(raw=REFERENCE_REPLY))
    reply = lm.client().chat.completions.create(model="Qwen3 Thinking (Ali Cloud)", messages=HI)
    assert reply.model == "qwen3-235b-a22b-thinking"
    assert (reply.choices[0].message.model_extra or {})["reasoning_content"] == "今天是星期一。\n"
    assert (
        upstream.last.body["model"] == "qwen3-235b-a22b"
        and upstream.last.body["enable_thinking"] is True
    )
    lm.client().chat.completions.create(model="qwen3-235b-a22b", messages=HI)
    assert (
        upstream.last.body["model"] == "qwen3-235b-a22b"
        and upstream.last.body["enable_thinking"] is False
    )


def test_openai_compatible_upstream_can_split_tags_too(
    start_gateway: Any, upstream: FakeUpstream
) -> None:
    config = upstream_config(upstream)
    config["models"][0]["reasoning"] = "think_tags"  # chat-model on the OpenAI-compatible provider
    gateway = start_gateway(config)
    upstream.push(Script(raw=REFERENCE_REPLY))
    reply = gateway.client().chat.completions.create(model="chat-model", messages=HI)
    assert reply.choices[0].message.content == "今天是星期一。"
    assert API_KEY  # the same client key works for every provider


# ---- conversation normalisation ------------------------------------------------


def user(text: str) -> Message:
    return Message("user", [TextPart(text)])


def assistant(text: str, *calls: ToolCallPart) -> Message:
    return Message("assistant", [TextPart(text), *calls] if text else list(calls))


def result(call_id: str, text: str) -> Message:
    return Message("tool", [ToolResultPart(call_id, [TextPart(text)])])


CALL = ToolCallPart("c1", "weather", '{"city":"Paris"}')
CALL2 = ToolCallPart("c2", "time", "{}")
CALL_OUT = {
    "id": "c1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
}


@pytest.mark.parametrize(
    ("system", "messages", "expected"),
    [
        ([], [user("hi")], [("user", "hi")]),
        (["Be brief."], [user("hi")], [("user", "Be brief.\n\nhi")]),
        ([], [user("a"), user("b")], [("user", "a\n\nb")]),
        (
            [],
            [user("a"), assistant("b"), assistant("c"), user("d")],
            [("user", "a"), ("assistant", "b\n\nc"), ("user", "d")],
        ),
        (
            [],
            [assistant("hello"), user("hi")],
            [("user", OPENING), ("assistant", "hello"), ("user", "hi")],
        ),
        (
            ["Rules."],
            [assistant("hello"), user("hi")],
            [("user", "Rules."), ("assistant", "hello"), ("user", "hi")],
        ),
        ([], [user("a"), assistant("b")], [("user", "a"), ("assistant", "b"), ("user", CONTINUE)]),
        (
            [],
            [user("a"), Message("system", [TextPart("Now French.")]), user("b")],
            [("user", "a\n\nNow French.\n\nb")],
        ),
        (
            [],
            [user("weather?"), assistant("", CALL), result("c1", "sunny")],
            [("user", "weather?"), ("assistant", ""), ("function", "sunny")],
        ),
        (
            [],
            [
                user("both?"),
                assistant("", CALL, CALL2),
                result("c1", "sunny"),
                result("c2", "noon"),
            ],
            [
                ("user", "both?"),
                ("assistant", ""),
                ("function", "[result of weather]\n\nsunny\n\n[result of time]\n\nnoon"),
            ],
        ),
        (
            [],
            [user("weather?"), assistant("", CALL), result("c1", "sunny"), user("thanks")],
            [
                ("user", "weather?"),
                ("assistant", ""),
                ("user", "[result of weather]\n\nsunny\n\nthanks"),
            ],
        ),
        ([], [result("c9", "orphan"), user("x")], [("user", "[result of c9]\n\norphan\n\nx")]),
    ],
)
def test_normalisation(
    system: list[str], messages: list[Message], expected: list[tuple[str, str]]
) -> None:
    request = ChatRequest(model="m", messages=messages, system=[TextPart(s) for s in system])
    turns = normalise(request)
    assert [(t["role"], t["content"]) for t in turns] == expected
    roles = [t["role"] for t in turns]
    assert len(turns) % 2 == 1 and roles[0] == "user" and roles[-1] != "assistant"
    assert all((r == "assistant") == (i % 2 == 1) for i, r in enumerate(roles))


def test_normalised_tool_turns_keep_calls_and_names() -> None:
    request = ChatRequest(
        model="m", messages=[user("weather?"), assistant("", CALL), result("c1", "sunny")]
    )
    turns = normalise(request)
    assert turns[1]["tool_calls"] == [CALL_OUT]
    assert turns[2]["name"] == "weather"


def test_normalised_images_stay_parts() -> None:
    request = ChatRequest(
        model="m", messages=[Message("user", [TextPart("see"), ImagePart(url="https://x/y.png")])]
    )
    assert normalise(request)[0]["content"] == [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
    ]
