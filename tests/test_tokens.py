from __future__ import annotations

from lmgate import tokens
from lmgate.canonical import ChatRequest, ImagePart, Message, TextPart, Tool


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
