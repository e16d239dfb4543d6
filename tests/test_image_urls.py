"""http(s) image URLs: passed on, or fetched and inlined behind SSRF protection.

The image host is a real HTTP server on 127.0.0.2. The tests that need a fetch
to succeed declare that one address public; every other loopback, private and
link-local address keeps the gateway's real policy.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from lmgate.media import fetch
from tests.support.fakes.upstream import FakeUpstream, Script, anthropic_message
from tests.support.gateway import RunningGateway, upstream_config, wait_until
from tests.support.images import DATA_URL, PNG, PNG_B64

PUBLIC_FOR_TEST = ipaddress.ip_address("127.0.0.2")


@pytest.fixture(scope="module")
def image_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream(host="127.0.0.2").start()
    yield server
    server.stop()


@pytest.fixture
def images(image_server: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    real = fetch.is_public
    monkeypatch.setattr(fetch, "is_public", lambda ip: ip == PUBLIC_FOR_TEST or real(ip))
    image_server.reset()
    yield image_server
    image_server.reset()


def png(status: int = 200, **headers: str) -> Script:
    return Script(status=status, raw=PNG, content_type="image/png", headers=headers)


def redirect(location: str) -> Script:
    return Script(status=302, raw=b"", content_type="text/plain", headers={"Location": location})


def config(upstream: FakeUpstream, **media: Any) -> dict[str, Any]:
    config = upstream_config(upstream)
    config["media"] = {"max_image_mb": 1, "fetch_timeout": 1, **media}
    config["providers"]["lm"] = {"type": "lmv2", "base_url": upstream.url}
    config["providers"]["claude"]["inline_image_urls"] = True
    config["models"] += [
        {"id": "vision", "support": "image", "provider": "up", "model": "up-vision"},
        {"id": "lm-vision", "support": "image", "provider": "lm", "model": "lm-vl"},
    ]
    return config


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream) -> RunningGateway:
    return start_gateway(config(upstream))  # type: ignore[no-any-return]


def ask(gw: RunningGateway, url: str, model: str = "lm-vision", stream: bool = False) -> None:
    parts = [
        {"type": "text", "text": "what is it"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    reply = gw.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": parts}], stream=stream
    )
    if stream:
        list(reply)  # type: ignore[call-overload]


def refusal(gw: RunningGateway, url: str) -> str:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(gw, url)
    assert caught.value.status_code == 400
    body: Any = caught.value.body
    assert body["param"] == "messages[0].content[1]"
    message: str = body["message"]
    assert message.startswith("messages[0].content[1]: could not fetch the image: ")
    return message


def test_url_passes_through_to_upstreams_that_fetch(
    gw: RunningGateway, upstream: FakeUpstream, images: FakeUpstream
) -> None:
    url = images.url + "/cat.png"
    ask(gw, url, model="vision")
    assert upstream.last.body["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": url},
    }
    assert images.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_lmv2_gets_the_fetched_bytes(
    gw: RunningGateway, upstream: FakeUpstream, images: FakeUpstream, stream: bool
) -> None:
    images.push(png())
    ask(gw, images.url + "/cat.png?sig=abc", stream=stream)
    assert images.last.path == "/cat.png" and images.last.headers["Accept"] == "image/*"
    assert upstream.last.path == "/lm/v2/chat/completions"
    assert upstream.last.body["messages"][0]["content"][1]["image_url"]["url"] == DATA_URL


def test_anthropic_sdk_url_source_to_an_inlining_anthropic_upstream(
    gw: RunningGateway, upstream: FakeUpstream, images: FakeUpstream
) -> None:
    images.push(redirect("/moved.png"), Script(raw=PNG, content_type="application/octet-stream"))
    upstream.push(Script(json=anthropic_message()))
    source = {"type": "url", "url": images.url + "/cat"}
    gw.anthropic().messages.create(
        model="claude-model",
        max_tokens=5,
        messages=[{"role": "user", "content": [{"type": "image", "source": source}]}],
    )
    assert [r.path for r in images.requests] == ["/cat", "/moved.png"]
    assert upstream.last.body["messages"][0]["content"][0] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
    }


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]"],
)
def test_private_addresses_are_refused(
    gw: RunningGateway, upstream: FakeUpstream, host: str
) -> None:
    address = host.strip("[]")
    message = refusal(gw, f"http://{host}:{upstream.port}/cat.png")
    assert f"refused, {ipaddress.ip_address(address)} is not a public address" in message
    assert "media.allow_private_urls" in message
    assert upstream.requests == []  # nothing fetched, nothing sent on


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("localhost", "localhost resolves to 127.0.0.1, which is not a public address"),
        ("2130706433", "InvalidUrlClientError"),  # 127.0.0.1 as a number: not even tried
    ],
)
def test_names_are_checked_after_dns(
    gw: RunningGateway, upstream: FakeUpstream, name: str, expected: str
) -> None:
    assert expected in refusal(gw, f"http://{name}:{upstream.port}/cat.png")
    assert upstream.requests == []


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/x.png", "http://localhost:{port}/"])
def test_redirects_to_private_addresses_are_refused(
    gw: RunningGateway, upstream: FakeUpstream, images: FakeUpstream, target: str
) -> None:
    images.push(redirect(target.format(port=upstream.port)))
    assert "refused" in refusal(gw, images.url + "/cat.png")
    assert len(images.requests) == 1 and upstream.requests == []


def test_private_urls_allowed_by_config(start_gateway: Any, upstream: FakeUpstream) -> None:
    gw = start_gateway(config(upstream, allow_private_urls=True))
    upstream.push(png())
    ask(gw, upstream.url + "/cat.png")
    assert [r.path for r in upstream.requests] == ["/cat.png", "/lm/v2/chat/completions"]
    assert upstream.last.body["messages"][0]["content"][1]["image_url"]["url"] == DATA_URL


BIG = PNG + b"\0" * (1024 * 1024)


@pytest.mark.parametrize(
    ("scripts", "expected"),
    [
        ([png(404)], "127.0.0.2 answered 404"),
        ([Script(raw=b"<html>", content_type="text/html")], "Content-Type text/html, not an image"),
        ([Script(raw=b"plain text", content_type="image/png")], "it is not a png, jpeg, gif"),
        ([Script(raw=BIG, content_type="image/png")], "larger than 1 MB (media.max_image_mb)"),
        (  # no Content-Length: the cap applies while downloading
            [
                Script(
                    chunks=[BIG[i : i + 65536] for i in range(0, len(BIG), 65536)],
                    done=False,
                    headers={"Content-Type": "image/png"},
                )
            ],
            "larger than 1 MB",
        ),
        ([redirect("/a"), redirect("/b"), redirect("/c"), redirect("/d")], "more than 3 redirects"),
        ([redirect("file:///etc/passwd")], "only http and https URLs are fetched, not file:"),
        ([Script(raw=PNG, content_type="image/png", delay=3)], "no complete answer within 1s"),
    ],
)
def test_fetch_failures_are_clear_400s(
    gw: RunningGateway,
    upstream: FakeUpstream,
    images: FakeUpstream,
    scripts: list[Script],
    expected: str,
) -> None:
    images.push(*scripts)
    assert expected in refusal(gw, images.url + "/cat.png")
    assert upstream.requests == []


def test_fetch_errors_do_not_show_the_url(
    gw: RunningGateway, upstream: FakeUpstream, images: FakeUpstream
) -> None:
    images.push(png(403))
    message = refusal(gw, images.url + "/cat.png?token=s3cret")
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("169.254.169.254", False),  # cloud metadata
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("::127.0.0.1", False),  # IPv4-compatible
        ("::8.8.8.8", True),
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2002:808:808::1", True),
        ("fec0::1", False),  # site-local
    ],
)
def test_address_policy(address: str, public: bool) -> None:
    assert fetch.is_public(ipaddress.ip_address(address)) is public


def test_data_urls_are_never_fetched(gw: RunningGateway, upstream: FakeUpstream) -> None:
    ask(gw, "data:image/png;base64," + base64.b64encode(PNG).decode())
    assert upstream.last.body["messages"][0]["content"][1]["image_url"]["url"] == DATA_URL


BIG_PNG = PNG + b"\0" * (600_000 - len(PNG))  # 0.6 MB, a PNG by its signature


def test_the_images_of_one_request_are_capped_together(
    start_gateway: Any, upstream: FakeUpstream, images: FakeUpstream
) -> None:
    """Each image within media.max_image_mb, but together more than max_request_mb."""
    gw = start_gateway(config(upstream, max_request_mb=1.5))
    images.push(*[Script(raw=BIG_PNG, content_type="image/png") for _ in range(3)])
    parts: Any = [
        {"type": "image_url", "image_url": {"url": f"{images.url}/{n}.png"}} for n in range(3)
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(
            model="lm-vision", messages=[{"role": "user", "content": parts}]
        )
    assert "add up to more than 1.5 MB (media.max_request_mb)" in caught.value.message
    assert gw.app.state.gateway.fetcher.held == 0


def test_the_image_bytes_fetched_at_once_are_capped(
    start_gateway: Any, upstream: FakeUpstream, images: FakeUpstream
) -> None:
    """While one request's 0.6 MB image is coming in (it stalls), another's 0.6 MB
    would pass media.max_fetching_mb (1): that one gets a retryable refusal."""
    gw = start_gateway(config(upstream, max_fetching_mb=1, fetch_timeout=3))
    stalling = Script(
        chunks=[BIG_PNG, b"more"], done=False, stall_after=1, headers={"Content-Type": "image/png"}
    )
    images.push(stalling, Script(raw=BIG_PNG, content_type="image/png"))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(ask, gw, images.url + "/slow.png")
        wait_until(lambda: gw.app.state.gateway.fetcher.held >= len(BIG_PNG))
        with pytest.raises(openai.APIStatusError) as caught:
            ask(gw, images.url + "/second.png")
        assert caught.value.status_code == 503
        assert "fetching too many images at once (media.max_fetching_mb)" in caught.value.message
        with pytest.raises(openai.BadRequestError):  # the stalled fetch times out
            first.result()
    assert gw.app.state.gateway.fetcher.held == 0
