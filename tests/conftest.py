from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from lmgate.clock import SYSTEM, Clock
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import (
    RunningGateway,
    Served,
    free_port,
    release_refusing_ports,
    upstream_config,
)
from tests.support.servers import (  # noqa: F401
    own_postgres,
    own_redis,
    postgres_cluster,
    postgres_server,
    postgres_url,
    redis_server,
    redis_url,
)

# Usage databases of the gateways the tests start go to a throwaway directory.
os.environ.setdefault("LMGATE_DATA_DIR", tempfile.mkdtemp(prefix="lmgate-tests-"))


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream_server.reset()
    yield upstream_server
    upstream_server.reset()


@pytest.fixture(scope="session")
def session_gateway(upstream_server: FakeUpstream) -> Iterator[RunningGateway]:
    gateway = RunningGateway(upstream_config(upstream_server))
    yield gateway
    gateway.stop()


@pytest.fixture
def gateway(session_gateway: RunningGateway, upstream: FakeUpstream) -> Iterator[RunningGateway]:
    yield session_gateway
    session_gateway.close_clients()


@pytest.fixture
def client(gateway: RunningGateway) -> openai.OpenAI:
    return gateway.client()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A new SQLite store for one test."""
    return f"sqlite:///{tmp_path / 'lmgate.db'}"


@pytest.fixture
def start_gateway() -> Iterator[Any]:
    """Start a gateway with a config of the test's own; stopped after the test."""
    started: list[RunningGateway] = []

    def start(
        config: dict[str, Any],
        clock: Clock = SYSTEM,
        path: Path | None = None,
        sock: socket.socket | None = None,
    ) -> RunningGateway:
        gateway = RunningGateway(config, clock, path, sock)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


# ---- lmgate serve in a subprocess, as a user runs it -----------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    release_refusing_ports()


@pytest.fixture
def serve() -> Iterator[Any]:
    processes: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Served:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "lmgate", "serve", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        processes.append(process)
        served = Served(process, port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"serve exited: {process.stdout.read() if process.stdout else ''}"
                )
            try:
                if served.request("GET", "/ready")[0] == 200:
                    return served
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("serve did not become ready")

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout:
            process.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """The system's Chromium, headless, driven by Playwright (its sync API holds this
    thread's event loop while it is open: asyncio.run fails in a test that uses it)."""
    from playwright import sync_api as playwright_api

    from tests.support.oidc import CHROMIUM

    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is not installed (apt-get install chromium; scripts/test.sh does)")
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()
