"""Real PostgreSQL and Redis servers for the tests: private instances on loopback
ports, in temporary directories, started once per session.

``scripts/test.sh`` installs the servers when they are missing and sets
``LMGATE_REQUIRE_SERVERS=1``: then a missing server fails the run. A bare
``pytest`` without them skips those tests, loudly.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _missing(what: str) -> None:
    message = f"{what} is not installed; scripts/test.sh installs it (apt-get)"
    if os.environ.get("LMGATE_REQUIRE_SERVERS") or os.environ.get("CI"):
        pytest.fail(message)
    print(f"\n*** SKIPPING: {message} ***")
    pytest.skip(message)


def _wait(check: object, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """``postgresql://lmgate@127.0.0.1:PORT``: a private, throwaway cluster."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    bindir = Path(candidates[-1]) if candidates else None
    if bindir is None or not (bindir / "initdb").exists():
        _missing("PostgreSQL")
    assert bindir is not None
    # Not under pytest's tmp_path: that is private to root, and PostgreSQL refuses to
    # run as root, so it runs as the postgres user the package made.
    data = Path(tempfile.mkdtemp(prefix="lmgate-postgres-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "lmgate", "-A", "trust",
         "--no-sync", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = _free_port()
    process = subprocess.Popen(
        [*prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "max_connections=300"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"postgresql://lmgate@127.0.0.1:{port}"

    async def ping() -> bool:
        connection = await asyncpg.connect(url + "/postgres")
        await connection.close()
        return True

    try:
        _wait(lambda: asyncio.run(ping()), "PostgreSQL", process)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database for one test."""
    name = "t_" + uuid.uuid4().hex[:12]

    async def create() -> None:
        connection = await asyncpg.connect(postgres_server + "/postgres")
        await connection.execute(f"CREATE DATABASE {name}")
        await connection.close()

    asyncio.run(create())
    return f"{postgres_server}/{name}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("Redis")
    assert binary is not None
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait(lambda: redis.Redis.from_url(url).ping(), "Redis", process)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    redis.Redis.from_url(redis_server).flushall()
    return redis_server
