"""A gateway with a store and an admin key: keys made through the admin API, and the
records and keys as the store holds them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from lmgate.accounts.store import Store
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import RunningGateway, upstream_config

ADMIN = "admin-secret-key"
HI: Any = [{"role": "user", "content": "hi"}]


def accounts_config(upstream: FakeUpstream, store_url: str, **extra: Any) -> dict[str, Any]:
    config = upstream_config(upstream)
    config["server"]["admin_key"] = ADMIN
    config["store"] = {"url": store_url, "flush_interval": 0.05, "key_cache_seconds": 0.5}
    config.update(extra)
    return config


def admin(gw: RunningGateway, method: str, path: str, body: Any = None, key: str = ADMIN) -> Any:
    raw = gw.request(method, path, body, api_key=key)
    return raw.status, orjson.loads(raw.body)


def new_key(gw: RunningGateway, **fields: Any) -> str:
    status, created = admin(gw, "POST", "/admin/keys", {"name": "team", **fields})
    assert status == 201, created
    return str(created["key"])


def stored_key(store_url: str, key_id: str) -> Any:
    """The key as the store has it now (its running totals), or None."""

    async def read() -> Any:
        store = Store(store_url)
        try:
            return await store.get_key(key_id)
        finally:
            await store.close()

    return asyncio.run(read())


def wait_for_records(store_url: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len(rows := records(store_url)) < count:
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    return rows


def records(store_url: str, request_id: str | None = None) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        store = Store(store_url)
        try:
            return await store.usage_rows(0, request_id)
        finally:
            await store.close()

    return asyncio.run(read())


def backend(request: Any, kind: str) -> tuple[str, dict[str, Any]]:
    """A store URL and the config's extra sections for ``sqlite`` or ``postgres+redis``
    (the test's fixtures, started on demand)."""
    if kind == "sqlite":
        return str(request.getfixturevalue("sqlite_url")), {}
    redis = {"url": request.getfixturevalue("redis_url")}
    return str(request.getfixturevalue("postgres_url")), {"redis": redis}
