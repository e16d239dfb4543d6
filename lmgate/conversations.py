"""Stored responses of the Responses API (``store: true``, its default): what
``previous_response_id`` continues from, and what ``GET /v1/responses/{id}`` and its
``input_items`` show. Each belongs to the key that made it (another key gets 404),
and is kept ``responses.retention_days``. A follow-up's conversation is the stored
input items and the stored output; so each row holds the whole conversation so far.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from lmgate.errors import GatewayError, invalid
from lmgate.ids import unique_hex
from lmgate.store import Store

log = logging.getLogger("lmgate")
_PURGE_EVERY = 3600.0  # seconds between deletions of expired responses


class Conversations:
    def __init__(self, store: Store | None, retention_days: float) -> None:
        self.store = store
        self.retention = retention_days * 86_400
        self._next_purge = 0.0
        self._purging: asyncio.Task[None] | None = None

    async def history(self, response_id: str, key_id: str | None) -> list[Any]:
        """The items a follow-up to ``response_id`` continues from."""
        input_items, response = await self._load(response_id, key_id, "previous_response_id")
        output = orjson.loads(response).get("output") or []
        return [*orjson.loads(input_items), *output]

    def saver(
        self, response_id: str, key_id: str | None, items: list[Any]
    ) -> Callable[[bytes], Awaitable[None]] | None:
        """What stores the response once it is whole (None: no store)."""
        store = self.store
        if store is None:
            return None

        async def save(body: bytes) -> None:
            expires = time.time() + self.retention
            await store.save_response(response_id, key_id, expires, _with_ids(items), body)
            self._maybe_purge(store)

        return save

    async def get(self, response_id: str, key_id: str | None) -> bytes:
        return (await self._load(response_id, key_id))[1].encode()

    async def delete(self, response_id: str, key_id: str | None) -> None:
        if self.store is None or not await self.store.delete_response(response_id, key_id):
            raise _not_found(response_id)

    async def input_items(
        self, response_id: str, key_id: str | None, limit: int, order: str, after: str | None
    ) -> dict[str, Any]:
        """One page of a stored response's input items, as the API lists them."""
        items = orjson.loads((await self._load(response_id, key_id))[0])
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise invalid(f"after: no input item {after!r} in this response", "after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }

    async def _load(
        self, response_id: str, key_id: str | None, param: str | None = None
    ) -> tuple[str, str]:
        if self.store is None:
            raise invalid(
                "this gateway keeps no responses (store.url is none): send the whole "
                "conversation in input, with store: false",
                param,
            )
        found = await self.store.load_response(response_id, key_id)
        if found is None:
            raise _not_found(response_id, param)
        return found

    def _maybe_purge(self, store: Store) -> None:
        now = time.monotonic()
        if now < self._next_purge or (self._purging is not None and not self._purging.done()):
            return
        self._next_purge = now + _PURGE_EVERY

        async def purge() -> None:
            try:
                removed = await store.purge_responses()
                if removed:
                    log.info("deleted %d expired stored responses", removed)
            except Exception as error:
                log.warning("could not delete expired stored responses: %s", error)

        self._purging = asyncio.create_task(purge())


def _not_found(response_id: str, param: str | None = None) -> GatewayError:
    shown = response_id if len(response_id) <= 100 else response_id[:100] + "…"
    return GatewayError(
        "not_found", f"No response with id {shown!r} was found.", param=param, status=404
    )


def _with_ids(items: list[Any]) -> bytes:
    """The items as stored: each with an id (the API lists them by id)."""
    out = []
    for item in items:
        if isinstance(item, dict) and not item.get("id"):
            prefix = "msg" if item.get("type", "message") == "message" else "item"
            item = {"id": f"{prefix}_{unique_hex()}", **item}
        out.append(item)
    return orjson.dumps(out)
