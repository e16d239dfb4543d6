"""No secret of the config reaches a client or a log line: every secret is set to a
marker (shaped like no known key, so only the config-aware redaction can catch it),
and the upstream echoes all of them in every error form it has — before the first
byte and mid-stream, in both upstream protocols, to both client protocols, stream
and not — with logging at debug and the access log on."""

from __future__ import annotations

import base64
import logging
from typing import Any

import openai
import pytest

from tests.support.fakes.upstream import FakeUpstream, Script, anthropic_events, chunk
from tests.support.gateway import RunningGateway, upstream_config

CLIENT, ADMIN = "MARKERclient7f3a", "MARKERadmin22b1"
UPSTREAM, HEADER, ANTHROPIC = "MARKERupstream91c2", "MARKERheader5d0e", "MARKERanthropicaa11"
MARKERS = (CLIENT, ADMIN, UPSTREAM, HEADER, ANTHROPIC)
ECHO = "rejected: " + " ".join(MARKERS) + " Bearer sk-generic-secret-123456"


def error_forms(anthropic: bool) -> list[Script]:
    """Every way an upstream can carry text back, each echoing every secret."""
    if anthropic:
        error = {"type": "error", "error": {"type": "api_error", "message": ECHO}}
        start = {
            "type": "message_start",
            "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                        "model": "claude-up", "usage": {"input_tokens": 1, "output_tokens": 0}},
        }  # fmt: skip
        mid = anthropic_events(
            start,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "a"},
            },
            error,
        )
        return [
            Script(status=400, json=error),
            Script(status=401, json=error),
            Script(status=500, raw=ECHO.encode(), content_type="text/plain"),
            Script(chunks=mid, done=False),
        ]
    error = {"error": {"message": ECHO, "type": "invalid_request_error"}}
    return [
        Script(status=400, json=error),
        Script(status=403, json=error),
        Script(status=502, raw=ECHO.encode(), content_type="text/html"),
        Script(chunks=[chunk(delta={"content": "a"}), error], done=False),
    ]


@pytest.fixture
def secret_gateway(start_gateway: Any, upstream: FakeUpstream) -> RunningGateway:
    config = upstream_config(upstream, api_key=UPSTREAM, headers={"X-Team-Token": HEADER})
    config["server"].update(api_keys=[CLIENT], admin_key=ADMIN)
    config["providers"]["claude"].update(api_key=ANTHROPIC, headers={"X-Team-Token": HEADER})
    return start_gateway(config)


@pytest.mark.parametrize("upstream_kind", ["openai", "anthropic"])
@pytest.mark.parametrize("client_kind", ["openai", "anthropic"])
def test_no_secret_in_any_response_or_log_line(
    secret_gateway: RunningGateway,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
    client_kind: str,
    upstream_kind: str,
) -> None:
    request_finalizer = request.addfinalizer
    caplog.set_level(logging.DEBUG)
    access = logging.getLogger("uvicorn.access")  # it does not propagate to caplog's handler
    access.setLevel(logging.DEBUG)
    access.addHandler(caplog.handler)
    request_finalizer(lambda: access.removeHandler(caplog.handler))
    model = "claude-model" if upstream_kind == "anthropic" else "chat-model"
    path = "/v1/messages" if client_kind == "anthropic" else "/v1/chat/completions"
    seen = []
    for stream in (False, True):
        for script in error_forms(upstream_kind == "anthropic"):
            if script.chunks is not None and not stream:
                continue  # a mid-stream error needs a stream
            upstream.push(script)
            body = {"model": model, "max_tokens": 20, "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            raw = secret_gateway.request(
                "POST", f"{path}?key={CLIENT}", body, headers={"Authorization": f"Bearer {CLIENT}"}
            )
            seen.append(raw)
            text = raw.body.decode()
            assert "rejected" in text  # the upstream's message does reach the client…
            for marker in MARKERS:  # …without a secret
                assert marker not in text and marker not in str(raw.headers)
            assert "sk-generic-secret" not in text
    assert len(seen) == 7
    assert upstream.requests and upstream.last.headers["X-Team-Token"] == HEADER
    logged = caplog.text
    assert "rejected" in logged and f"{path}?key=[redacted]" in logged
    for marker in MARKERS:
        assert marker not in logged


def test_credentials_in_an_upstream_url_are_sent_and_never_shown(
    start_gateway: Any, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    # Sent as Basic auth; the password (as written in the URL, decoded) and the Basic
    # token are all secrets, even when the upstream echoes them back.
    password = "MARKER%2Fpw9e1"
    token = base64.b64encode(b"lm:MARKER/pw9e1").decode()
    base_url = upstream.url.replace("http://", f"http://lm:{password}@") + "/v1"
    gateway = start_gateway(upstream_config(upstream, base_url=base_url, api_key=None))
    echoed = f"rejected: {password} MARKER/pw9e1 Basic {token}"
    upstream.push(Script(status=400, json={"error": {"message": echoed}}))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.client().chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert upstream.last.headers["Authorization"] == f"Basic {token}"
    shown = str(raised.value.body) + caplog.text
    assert "rejected" in shown
    for secret in (password, "MARKER/pw9e1", token):
        assert secret not in shown


@pytest.mark.parametrize("name", ["key", "%6Bey", "%6b%65%79", "api%5Fkey"])
def test_a_query_key_is_redacted_however_its_name_is_encoded(
    secret_gateway: RunningGateway,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
    name: str,
) -> None:
    """The server decodes the name (``%6Bey`` is ``key``), so the log must too."""
    caplog.set_level(logging.DEBUG)
    access = logging.getLogger("uvicorn.access")
    access.setLevel(logging.DEBUG)
    access.addHandler(caplog.handler)
    request.addfinalizer(lambda: access.removeHandler(caplog.handler))
    stranger = "not-a-configured-key-0123456789"  # redacted by shape, not by the config
    raw = secret_gateway.request("GET", f"/v1beta/models?{name}={stranger}", api_key=None)
    assert raw.status == 401
    assert f"?{name}=[redacted]" in caplog.text and stranger not in caplog.text
