"""Dependencies that go away: Redis and PostgreSQL stopped (and frozen) under a running
gateway, and a gateway started before its database. Clients get answers or 503s with
Retry-After in their own protocol's shape, never a bare 500; ``/ready`` tells a load
balancer; the log says it once; no usage record is lost."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.support.accounts import HI, accounts_config, new_key, records, wait_for_records
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import RunningGateway, refusing_url, wait_until
from tests.support.servers import PostgresCluster, RedisServer

ASK = {"model": "echo", "messages": HI}


def chat(gw: RunningGateway, key: str) -> Any:
    return gw.request("POST", "/v1/chat/completions", ASK, api_key=key)


def ready(gw: RunningGateway) -> tuple[int, Any]:
    raw = gw.request("GET", "/ready", api_key=None)
    return raw.status, raw.json()


def warnings_about(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and what in r.getMessage()
    ]


# ---- Redis ----------------------------------------------------------------------------


def test_redis_down_limits_fail_open_with_one_warning(
    start_gateway: Any,
    upstream: FakeUpstream,
    sqlite_url: str,
    own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lmgate")
    gw = start_gateway(accounts_config(upstream, sqlite_url, redis={"url": own_redis.url}))
    key = new_key(gw, rpm=1000)
    assert chat(gw, key).status == 200
    own_redis.stop()
    statuses = [chat(gw, key).status for _ in range(20)]
    assert statuses == [200] * 20
    down = warnings_about(caplog, "redis unreachable")
    assert len(down) == 1, down  # once per outage, not once per request
    status, body = ready(gw)
    assert status == 200 and body["dependencies"]["redis"] == "degraded", body
    metrics = gw.request("GET", "/metrics", api_key=None).body.decode()
    assert 'lmgate_dependency_up{dependency="redis"} 0.0' in metrics
    counted = 'lmgate_dependency_errors_total{dependency="redis"} '
    errors = [line for line in metrics.splitlines() if line.startswith(counted)]
    assert errors and float(errors[0].rsplit(" ", 1)[1]) >= 1, metrics
    own_redis.start()
    wait_until(lambda: ready(gw)[1]["dependencies"]["redis"] == "up")
    assert chat(gw, key).status == 200
    assert warnings_about(caplog, "redis reachable again")


def test_redis_down_limits_fail_closed_with_503_and_retry_after(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str, own_redis: RedisServer
) -> None:
    config = accounts_config(
        upstream, sqlite_url, redis={"url": own_redis.url}, limits={"on_backend_error": "closed"}
    )
    gw = start_gateway(config)
    limited, unlimited = new_key(gw, rpm=1000), new_key(gw)
    assert chat(gw, limited).status == 200
    own_redis.stop()
    refused = chat(gw, limited)
    assert refused.status == 503 and refused.headers["retry-after"] == "5", refused
    assert refused.json()["error"]["code"] == "limits_unavailable"
    assert "Redis" in refused.json()["error"]["message"]
    with pytest.raises(anthropic.InternalServerError) as error:  # Anthropic's own shape
        gw.anthropic(limited).messages.create(model="echo", max_tokens=5, messages=HI)
    assert error.value.status_code == 503
    assert error.value.body["type"] == "error", error.value.body  # type: ignore[index]
    assert chat(gw, unlimited).status == 200  # no limit to check: no need of Redis
    status, body = ready(gw)
    assert status == 503 and body["dependencies"]["redis"] == "down", body


def test_a_frozen_redis_does_not_hold_requests(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str, own_redis: RedisServer
) -> None:
    """Stopped with SIGSTOP, Redis accepts connections and never answers: each call
    gives up after redis.timeout, and later requests skip Redis for a moment."""
    config = accounts_config(upstream, sqlite_url, redis={"url": own_redis.url, "timeout": 0.2})
    gw = start_gateway(config)
    key = new_key(gw, rpm=1000)
    assert chat(gw, key).status == 200
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        client = gw.client(key)
        client.timeout = 5  # a request held on Redis would run into this and fail
        for _ in range(5):
            client.chat.completions.create(model="echo", messages=HI)
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)


# ---- PostgreSQL -----------------------------------------------------------------------


@pytest.fixture
def database(own_postgres: PostgresCluster, caplog: pytest.LogCaptureFixture) -> str:
    """A database on a cluster of the test's own (to stop and start); the log caught."""
    caplog.set_level(logging.INFO, logger="lmgate")
    own_postgres.start()
    return own_postgres.database()


def test_postgres_down_known_keys_work_new_keys_get_503_and_no_record_is_lost(
    start_gateway: Any,
    upstream: FakeUpstream,
    own_postgres: PostgresCluster,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = database
    store = {"url": url, "flush_interval": 0.05, "key_cache_seconds": 0}
    config = accounts_config(upstream, url, store=store)
    gw = start_gateway(config)
    known, unknown = new_key(gw), new_key(gw)
    assert chat(gw, known).status == 200
    wait_for_records(url, 1)
    own_postgres.stop()
    served = 0
    for _ in range(10):  # a key is looked up each time (no cache), and the lookup fails
        response = chat(gw, known)
        assert response.status == 200, response
        served += 1
    refused = chat(gw, unknown)
    assert refused.status == 503 and refused.headers["retry-after"] == "5", refused
    assert refused.json()["error"]["code"] == "store_unavailable"
    with pytest.raises(openai.InternalServerError) as error:  # what the SDK makes of it
        gw.client(unknown).with_options(max_retries=0).models.list()
    assert error.value.status_code == 503
    status, body = ready(gw)
    assert status == 503 and body == {
        "status": "unavailable",
        "dependencies": {"store": "down"},
    }, body
    assert len(warnings_about(caplog, "store unreachable")) == 1
    own_postgres.start()
    wait_until(lambda: ready(gw)[0] == 200)
    assert chat(gw, unknown).status == 200
    # Each served request's record, those of the outage written after it.
    wait_until(lambda: [row["status"] for row in records(url)].count(200) == 2 + served)
    assert 500 not in [row["status"] for row in records(url)]


def test_the_gateway_starts_before_its_database_and_becomes_ready_when_it_comes(
    start_gateway: Any,
    upstream: FakeUpstream,
    own_postgres: PostgresCluster,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = database
    own_postgres.stop()
    gw = start_gateway(accounts_config(upstream, url))
    status, body = ready(gw)
    assert status == 503 and body["dependencies"] == {"store": "starting"}, body
    assert gw.request("GET", "/health", api_key=None).status == 200
    refused = chat(gw, "lmg-not-a-key-we-know")
    assert refused.status == 503, refused  # which keys exist is not known yet
    wait_until(lambda: warnings_about(caplog, "unreachable at start"))
    own_postgres.start()
    wait_until(lambda: ready(gw)[0] == 200, timeout=30)
    key = new_key(gw)
    assert chat(gw, key).status == 200
    wait_for_records(url, 1)


def test_ready_names_each_dependency(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str, redis_url: str
) -> None:
    gw = start_gateway(accounts_config(upstream, sqlite_url, redis={"url": redis_url}))
    status, body = ready(gw)
    assert status == 200
    assert body == {"status": "ready", "dependencies": {"store": "up", "redis": "up"}}
    assert orjson.loads(gw.request("GET", "/health", api_key=None).body) == {"status": "ok"}


def test_sign_in_with_the_database_down_is_a_503_never_a_500(
    start_gateway: Any, upstream: FakeUpstream, own_postgres: PostgresCluster, database: str
) -> None:
    """The sign-in's state and sessions live in the store: down, every sign-in route
    answers 503 with Retry-After (a page for the browser, JSON for the API)."""
    config = accounts_config(upstream, database)
    config["oidc"] = {"issuer": refusing_url(""), "client_id": "lmgate"}
    gw = start_gateway(config)
    own_postgres.stop()
    session = {"Cookie": "lmgate_session=some-session-secret"}
    me = gw.request("GET", "/auth/me", headers=session, api_key=None)
    assert me.status == 503 and me.headers["retry-after"] == "5", me
    assert me.json()["error"]["code"] == "store_unavailable"
    callback = gw.request("GET", "/auth/callback?state=s&code=c", api_key=None,
                          headers={"Cookie": "lmgate_login=s"})  # fmt: skip
    assert callback.status == 503 and callback.headers["content-type"].startswith("text/html")
    assert callback.headers["retry-after"] == "5"
    keys = gw.request("GET", "/admin/keys", headers=session, api_key=None)
    assert keys.status == 503 and keys.json()["error"]["code"] == "store_unavailable"
    own_postgres.start()
    wait_until(lambda: ready(gw)[0] == 200)
    assert gw.request("GET", "/auth/me", headers=session, api_key=None).json()["signed_in"] is False
