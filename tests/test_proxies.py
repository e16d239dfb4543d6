"""Upstream connections through an HTTP proxy, as corporate networks require: https
upstreams by a CONNECT tunnel (TLS verified end to end), http ones by absolute-form
requests; a provider's ``proxy`` (with credentials, never shown) or the environment's
``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``; a proxy that refuses; ``direct``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakes import bedrock
from tests.support.fakes.bedrock import ACCESS_KEY, REGION, SECRET_KEY
from tests.support.fakes.proxy import FakeProxy, certificate_authority
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import API_KEY, RunningGateway

HELLO = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
CREDENTIALS = "corp-user:proxy-pass-0123456789"


@pytest.fixture
def proxy() -> Iterator[FakeProxy]:
    server = FakeProxy(CREDENTIALS).start()
    yield server
    server.stop()


@pytest.fixture
def tls_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    """An https fake upstream whose certificate the gateway trusts (SSL_CERT_FILE)."""
    ca_file, context = certificate_authority(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server = FakeUpstream(tls=context).start()
    yield server
    server.stop()


def config(url: str, **provider: Any) -> dict[str, Any]:
    return {
        "server": {"api_keys": [API_KEY], "admin_key": "admin-key-0123456789"},
        "providers": {"up": {"type": "openai", "base_url": url + "/v1", "api_key": "sk-up",
                             "timeouts": {"connect": 3, "first_byte": 5}, **provider}},
        "models": [{"id": "m", "provider": "up", "model": "up-model"}],
        "routing": {"retries": 0},
    }  # fmt: skip


# start_gateway last: its gateways stop before the servers they hold connections to.
def test_https_through_a_providers_proxy_by_connect(
    proxy: FakeProxy, tls_upstream: FakeUpstream, start_gateway: Any
) -> None:
    gw: RunningGateway = start_gateway(config(tls_upstream.url, proxy=proxy.url(CREDENTIALS)))
    for _ in range(2):
        answer = gw.request("POST", "/v1/chat/completions", HELLO)
        assert answer.status == 200, answer.body
    host = tls_upstream.url.removeprefix("https://")
    assert [(p.method, p.target) for p in proxy.passed] == [("CONNECT", host)]  # kept alive
    assert proxy.passed[0].authorization is not None
    assert "Proxy-Authorization" not in tls_upstream.last.headers  # only the proxy saw it
    assert tls_upstream.last.headers["Authorization"] == "Bearer sk-up"
    config_shown = gw.request("GET", "/admin/config", api_key="admin-key-0123456789")
    assert config_shown.status == 200 and b"127.0.0.1:%d" % proxy.port in config_shown.body
    assert b"proxy-pass" not in config_shown.body


def test_a_signed_bedrock_request_through_the_tunnel(
    proxy: FakeProxy, tls_upstream: FakeUpstream, start_gateway: Any
) -> None:
    tls_upstream.route = bedrock.checking(lambda r: bedrock.reply())
    gw = start_gateway({
        "server": {"api_keys": [API_KEY]},
        "providers": {"aws": {"type": "bedrock", "region": REGION, "base_url": tls_upstream.url,
                              "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                              "proxy": proxy.url(CREDENTIALS)}},
        "models": [{"id": "m", "provider": "aws", "model": "amazon.nova-pro-v1:0"}],
    })  # fmt: skip
    answer = gw.request("POST", "/v1/chat/completions", HELLO)
    assert answer.status == 200, answer.body
    assert proxy.passed[0].method == "CONNECT"


def test_http_through_the_environments_proxy_and_no_proxy(
    proxy: FakeProxy, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, start_gateway: Any
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url(CREDENTIALS))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    gw = start_gateway(config(upstream.url))
    assert gw.request("POST", "/v1/chat/completions", HELLO).status == 200
    assert [(p.method, p.target) for p in proxy.passed] == [
        ("POST", upstream.url + "/v1/chat/completions")]  # fmt: skip
    assert upstream.last.path == "/v1/chat/completions"
    assert "Proxy-Authorization" not in upstream.last.headers
    gw.stop()
    # NO_PROXY names the upstream's host: straight there.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    gw = start_gateway(config(upstream.url))
    assert gw.request("POST", "/v1/chat/completions", HELLO).status == 200
    assert len(proxy.passed) == 1
    gw.stop()
    # A provider's "direct" ignores the environment.
    monkeypatch.delenv("NO_PROXY")
    gw = start_gateway(config(upstream.url, proxy="direct"))
    assert gw.request("POST", "/v1/chat/completions", HELLO).status == 200
    assert len(proxy.passed) == 1


def test_a_proxy_that_refuses_is_a_clear_error_without_its_password(
    proxy: FakeProxy, tls_upstream: FakeUpstream, upstream: FakeUpstream, start_gateway: Any
) -> None:
    wrong = "corp-user:wrong-password-999"
    gw = start_gateway(config(tls_upstream.url, proxy=proxy.url(wrong)))
    answer = gw.request("POST", "/v1/chat/completions", HELLO)
    assert answer.status == 502
    message = answer.json()["error"]["message"]
    assert "refused the tunnel" in message and "407" in message
    assert "wrong-password" not in message and proxy.refused == 1
    gw.stop()
    gw = start_gateway(config(upstream.url, proxy=proxy.url(wrong)))  # http: the 407 itself
    answer = gw.request("POST", "/v1/chat/completions", HELLO)
    assert answer.status == 502 and "wrong-password" not in answer.body.decode()


def test_a_proxy_that_is_not_http_is_refused_by_the_config(upstream: FakeUpstream) -> None:
    from lmgate.config import ConfigError, parse_config
    from lmgate.providers import provider_problems

    with pytest.raises(ConfigError) as caught:
        parse_config(config(upstream.url, proxy="socks5://127.0.0.1:1080"),
                     checks=[provider_problems])  # fmt: skip
    assert "providers.up.proxy" in str(caught.value)
