"""What a web page on another site can do with a gateway through its visitor's browser:
nothing. A "simple" POST (text/plain, no preflight) is refused, a foreign Origin is
refused, a rebound name (DNS rebinding) is refused; the gateway's own pages, and
origins the operator allows, work (with CORS answers)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import RunningGateway

HI = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def open_gateway(**server: Any) -> dict[str, Any]:
    """The default's shape: no keys at all."""
    return {
        "server": {"api_keys": [], **server},
        "providers": {"echo": {"type": "echo"}},
        "models": [{"id": "echo", "provider": "echo"}],
    }


@pytest.fixture
def gw(start_gateway: Any) -> RunningGateway:
    gateway: RunningGateway = start_gateway(open_gateway())
    return gateway


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_a_simple_post_from_a_page_is_refused(gw: RunningGateway, content_type: str) -> None:
    raw = gw.request(
        "POST",
        "/v1/chat/completions",
        orjson.dumps(HI),
        headers={"Content-Type": content_type, "Origin": "http://evil.example"},
        api_key=None,
    )
    assert raw.status == 403  # the Origin first


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x", ""])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_a_json_body_needs_a_json_content_type(
    gw: RunningGateway, content_type: str, path: str
) -> None:
    raw = gw.request("POST", path, orjson.dumps(HI), headers={"Content-Type": content_type})
    assert raw.status == 415
    error = raw.json()["error"]
    assert "Content-Type" in error["message"] and "application/json" in error["message"]


def test_json_content_types_are_taken(gw: RunningGateway) -> None:
    for content_type in (
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/vnd.api+json",
    ):
        raw = gw.request("POST", "/v1/chat/completions", HI, headers={"Content-Type": content_type})
        assert raw.status == 200, content_type


def test_a_foreign_origin_is_refused_and_the_gateway_s_own_is_not(gw: RunningGateway) -> None:
    foreign = gw.request(
        "POST", "/v1/chat/completions", HI, headers={"Origin": "http://evil.example"}
    )
    assert (
        foreign.status == 403 and "server.cors.allow_origins" in foreign.json()["error"]["message"]
    )
    assert "access-control-allow-origin" not in foreign.headers
    null = gw.request("GET", "/v1/models", headers={"Origin": "null"})  # a sandboxed page
    assert null.status == 403
    own = gw.request("POST", "/v1/chat/completions", HI, headers={"Origin": gw.url})
    assert own.status == 200  # the dashboard's requests


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:7860", "10.0.0.5"])
def test_a_rebound_name_is_refused_on_a_loopback_gateway(gw: RunningGateway, host: str) -> None:
    raw = gw.request("POST", "/v1/chat/completions", HI, headers={"Host": host})
    assert raw.status == 403 and "server.allowed_hosts" in raw.json()["error"]["message"]
    assert gw.request("GET", "/health", headers={"Host": host}).status == 200  # probes


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_loopback_names_are_served(gw: RunningGateway, host: str) -> None:
    port = gw.port
    assert (
        gw.request("POST", "/v1/chat/completions", HI, headers={"Host": f"{host}:{port}"}).status
        == 200
    )


def test_allowed_hosts_and_origins_when_the_operator_sets_them(
    start_gateway: Any, upstream: FakeUpstream
) -> None:
    config = open_gateway(
        allowed_hosts=["llm.example.com"], cors={"allow_origins": ["https://app.example.com"]}
    )
    gw: RunningGateway = start_gateway(config)
    named = {"Host": "llm.example.com"}
    assert gw.request("POST", "/v1/chat/completions", HI, headers=named).status == 200
    assert gw.request("POST", "/v1/chat/completions", HI).status == 403  # 127.0.0.1: not listed
    preflight = gw.request(
        "OPTIONS",
        "/v1/chat/completions",
        headers={
            **named,
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    called = gw.request(
        "POST", "/v1/chat/completions", HI, headers={**named, "Origin": "https://app.example.com"}
    )
    assert called.status == 200
    assert called.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-request-id" in called.headers["access-control-expose-headers"]
    other = gw.request(
        "POST", "/v1/chat/completions", HI, headers={**named, "Origin": "https://other.example"}
    )
    assert other.status == 403
