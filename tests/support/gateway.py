"""The real app on a loopback port (in a thread, or ``lmgate serve`` in its own
process), the catalog in front of the fake upstream, and waiting on state."""

from __future__ import annotations

import asyncio
import http.client
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import uvicorn
import uvloop

from lmgate.clock import SYSTEM, Clock
from lmgate.config import load_config, parse_config
from lmgate.web.app import build_app
from lmgate.web.server import GuardedProtocol
from tests.support.fakes.upstream import FakeUpstream

API_KEY = "sk-test-client-key"
UPSTREAM_KEY = "sk-upstream-secret-0123456789"
ANTHROPIC_UPSTREAM_KEY = "sk-ant-upstream-secret-0123456789"


class RunningGateway:
    """The real app, served by uvicorn on a loopback port in a background thread."""

    def __init__(
        self,
        config: dict[str, Any],
        clock: Clock = SYSTEM,
        path: Path | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """``path``: write the config there and load it from the file (it may be reloaded).
        ``sock``: a socket bound already (its port had to be known before the config)."""
        self.clients: list[openai.OpenAI | anthropic.Anthropic] = []
        if path is not None:
            path.write_bytes(orjson.dumps(config))
        loaded = load_config(path) if path is not None else parse_config(config)
        self.app = build_app(loaded, clock)
        if sock is None:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                loop="uvloop",
                http=GuardedProtocol,
                ws="websockets-sansio",
                log_level="warning",
                lifespan="on",
            )
        )
        self.loop = uvloop.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.serve(sockets=[sock]))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)

    def close_clients(self) -> None:
        for sdk_client in self.clients:
            sdk_client.close()
        self.clients.clear()

    def stop(self) -> None:
        self.close_clients()
        self.server.should_exit = True
        self.thread.join(15)

    def anthropic(self, api_key: str = API_KEY, prefix: str = "") -> anthropic.Anthropic:
        sdk_client = anthropic.Anthropic(
            base_url=self.url + prefix, api_key=api_key, max_retries=0, timeout=20
        )
        self.clients.append(sdk_client)
        return sdk_client

    def client(self, api_key: str = API_KEY, prefix: str = "/v1") -> openai.OpenAI:
        sdk_client = openai.OpenAI(
            base_url=self.url + prefix, api_key=api_key, max_retries=0, timeout=20
        )
        self.clients.append(sdk_client)
        return sdk_client

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        api_key: str | None = API_KEY,
    ) -> Raw:
        """A raw HTTP exchange, for what an SDK would hide (status, headers, exact bytes)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        all_headers = {"Content-Type": "application/json"}
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        all_headers.update(headers or {})
        data = orjson.dumps(body) if isinstance(body, dict) else body
        try:
            connection.request(method, path, body=data, headers=all_headers)
            response = connection.getresponse()
            return Raw(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )
        finally:
            connection.close()


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def upstream_config(upstream: FakeUpstream, **provider: Any) -> dict[str, Any]:
    """A catalog in front of the fake upstream, plus the echo model."""
    return {
        "server": {"api_keys": [API_KEY], "max_body_mb": 1},
        "providers": {
            "up": {
                "type": "openai",
                "base_url": upstream.url + "/v1",
                "api_key": UPSTREAM_KEY,
                "timeouts": {"connect": 2, "first_byte": 2, "idle": 1},
                **provider,
            },
            "echo": {"type": "echo"},
            "claude": {
                "type": "anthropic",
                "base_url": upstream.url,
                "api_key": ANTHROPIC_UPSTREAM_KEY,
                "timeouts": {"connect": 2, "first_byte": 2, "idle": 1},
            },
        },
        "models": [
            {
                "id": "chat-model",
                "name": "Chat Model (Fake)",
                "owned_by": "fake",
                "description": "the fake upstream's chat model",
                "support": "text",
                "tip": "Chat tip",
                "created": 1755952008000,
                "deployments": [{"provider": "up", "model": "up-model"}],
            },
            {"id": "reasoner", "name": "Reasoner", "provider": "up", "model": "up-reasoner"},
            {
                "id": "capped",
                "provider": "up",
                "model": "up-capped",
                "max_output_tokens": 8192,
            },
            {
                "id": "claude-model",
                "name": "Claude (Fake)",
                "provider": "claude",
                "model": "claude-up",
                "support": "image",
            },
            {"id": "echo", "name": "Echo", "provider": "echo", "support": "image"},
        ],
        # One attempt and no circuit breaker: protocol tests see each upstream answer
        # as it is. test_routing.py covers retries and cooldown.
        "routing": {
            "auto": ["chat-model", "echo"],
            "retries": 0,
            "cooldown": {"failures": 1_000_000},
        },
    }


def wait_until(condition: Any, timeout: float = 10) -> None:
    """Poll instead of sleeping a guessed time: CI machines are slow and noisy."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


_HELD: list[socket.socket] = []  # bound for the whole session, never listening


def refusing_url(path: str = "/v1") -> str:
    """An address that refuses connections and that nothing else in the suite can take:
    its port is bound (and kept) by a socket that never listens. A port closed again
    after a probe could be handed to the next fake server, which would answer."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}{path}"


def release_refusing_ports() -> None:
    """At the end of the session: the ports ``refusing_url`` held can go now."""
    for sock in _HELD:
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process, self.port = process, port

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            data = orjson.dumps(body) if body is not None else None
            connection.request(
                method,
                path,
                body=data,
                headers={"Content-Type": "application/json", **(headers or {})},
            )
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()
