"""The audit log: every change made through the admin API (keys, users, teams,
reloads), with who made it, when, what it changed and how (before and after, never a
secret: keys are shown as the admin API shows them, without theirs)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from lmgate.accounts.schema import audit
from lmgate.accounts.store import Store


async def record(
    store: Store,
    actor: str,
    action: str,
    target: str | None,
    before: Any = None,
    after: Any = None,
) -> None:
    row = {
        "at": time.time(),
        "actor": actor,
        "action": action,
        "target": target,
        "before": _json(before),
        "after": _json(after),
    }
    async with store.engine.begin() as connection:
        await connection.execute(audit.insert().values(**row))


async def entries(store: Store, limit: int, before_id: int | None = None) -> list[dict[str, Any]]:
    """The latest entries, newest first (``before_id``: older than that one)."""
    query = audit.select().order_by(audit.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(audit.c.id < before_id)
    async with store.engine.connect() as connection:
        # str(): the names of "before" and "after" (SQL words) come as quoted names.
        rows = [
            {str(name): value for name, value in row._mapping.items()}
            for row in await connection.execute(query)
        ]
    for row in rows:
        for side in ("before", "after"):
            row[side] = orjson.loads(row[side]) if row[side] else None
    return rows


def _json(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = {name: item for name, item in value.items() if name not in ("key", "hash")}
    return orjson.dumps(value).decode()
