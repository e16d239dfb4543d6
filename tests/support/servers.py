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


class PostgresCluster:
    """A private, throwaway PostgreSQL cluster on a loopback port, that a test may
    stop and start again (on the same port) to play an outage."""

    def __init__(self) -> None:
        candidates = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4])
        )
        bindir = Path(candidates[-1]) if candidates else None
        if bindir is None or not (bindir / "initdb").exists():
            _missing("PostgreSQL")
        assert bindir is not None
        self.bindir = bindir
        # Not under pytest's tmp_path: that is private to root, and PostgreSQL refuses to
        # run as root, so it runs as the postgres user the package made.
        self.data = Path(tempfile.mkdtemp(prefix="lmgate-postgres-"))
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*self.prefix, str(bindir / "initdb"), "-D", str(self.data), "-U", "lmgate",
             "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        self.port = _free_port()
        self.url = f"postgresql://lmgate@127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*self.prefix, str(self.bindir / "postgres"), "-D", str(self.data),
             "-p", str(self.port), "-k", str(self.data), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = self.url

        async def ping() -> bool:
            connection = await asyncpg.connect(url + "/postgres")
            await connection.close()
            return True

        _wait(lambda: asyncio.run(ping()), "PostgreSQL", self.process)

    def stop(self) -> None:
        """A fast shutdown: connections are cut, as when the server goes away."""
        if self.process is not None:
            subprocess.run(
                [*self.prefix, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data),
                 "-m", "fast", "-w"],
                check=True,
                capture_output=True,
            )  # fmt: skip
            self.process.wait(30)
            self.process = None

    def database(self) -> str:
        """A fresh, empty database: its URL."""
        name = "t_" + uuid.uuid4().hex[:12]

        async def create() -> None:
            connection = await asyncpg.connect(self.url + "/postgres")
            await connection.execute(f"CREATE DATABASE {name}")
            await connection.close()

        asyncio.run(create())
        return f"{self.url}/{name}"

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def postgres_server(postgres_cluster: PostgresCluster) -> str:
    """``postgresql://lmgate@127.0.0.1:PORT``: a private, throwaway cluster."""
    return postgres_cluster.url


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database for one test."""
    return postgres_cluster.database()


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A cluster of the test's own, to stop and start (not started yet)."""
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


class RedisServer:
    """A private Redis on a loopback port, that a test may stop, freeze and start."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("Redis")
        assert binary is not None
        self.binary, self.directory = binary, directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(lambda: redis.Redis.from_url(self.url).ping(), "Redis", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, started, to stop and start again."""
    server = RedisServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()
