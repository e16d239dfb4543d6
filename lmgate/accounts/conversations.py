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

from lmgate.accounts.store import Store
from lmgate.errors import GatewayError, invalid
from lmgate.ids import unique_hex

log = logging.getLogger("lmgate")
_PURGE_EVERY = 3600.0  # seconds between deletions of expired responses
_RECOUNT = 30.0  # seconds a key's count of stored bytes is trusted


class Conversations:
    """Stored responses are written behind the reply, in batches (one writer: SQLite
    takes one at a time, and concurrent writers waited on its lock for up to a
    second). Until written they are served from memory, so a follow-up sent the
    moment a reply ends finds its predecessor. At most ``max_pending`` wait; beyond
    that a reply waits for the writer (nothing is dropped)."""

    def __init__(
        self,
        store: Store | None,
        retention_days: float,
        max_pending: int = 10_000,
        max_stored_mb_per_key: float = 256,
    ) -> None:
        self.store = store
        self.retention = retention_days * 86_400
        self.max_pending = max_pending
        self.max_stored = int(max_stored_mb_per_key * 2**20)
        # Per key: (when its stored bytes were counted, the count), and what this
        # process stored for it since.
        self._counted: dict[str | None, tuple[float, int]] = {}
        self._added: dict[str | None, int] = {}
        self._pending: dict[str, dict[str, Any]] = {}  # id -> row, not written yet
        self._deleted: set[str] = set()  # taken out of _pending by a deletion
        self._wake = asyncio.Event()
        self._written = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._next_purge = 0.0
        self._purging: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.store is not None:
            self._writer = asyncio.create_task(self._write_loop())

    async def stop(self) -> None:
        """Write what waits (before the store closes)."""
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        if self._pending and self.store is not None:
            try:
                await self._write_pending(self.store)
            except Exception as error:
                log.error(
                    "stored responses not written at shutdown (%d): %s", len(self._pending), error
                )

    async def history(self, response_id: str, key_id: str | None) -> list[Any]:
        """The items a follow-up to ``response_id`` continues from."""
        input_items, response = await self._load(response_id, key_id, "previous_response_id")
        output = orjson.loads(response).get("output") or []
        return [*orjson.loads(input_items), *output]

    async def check_room(self, key_id: str | None) -> None:
        """A 429 when the key's stored responses are over ``max_stored_mb_per_key``
        (counted in the store every ``_RECOUNT`` seconds, and what was stored since)."""
        if self.store is None:
            return
        now = time.monotonic()
        counted = self._counted.get(key_id)
        if counted is None or now - counted[0] > _RECOUNT:
            waiting = sum(
                len(row["input_items"]) + len(row["response"])
                for row in self._pending.values()
                if row["key_id"] == key_id
            )
            store = self.store
            stored = await store.bounded(lambda: store.stored_bytes(key_id))
            counted = self._counted[key_id] = (now, stored + waiting)
            self._added[key_id] = 0
        used = counted[1] + self._added.get(key_id, 0)
        if used > self.max_stored:
            limit = self.max_stored / 2**20
            raise GatewayError(
                "rate_limit",
                f"this key's stored responses hold {used / 2**20:.1f} MB, over "
                f"responses.max_stored_mb_per_key ({limit:g} MB): delete some "
                "(DELETE /v1/responses/{id}) or send store: false",
                code="storage_full",
            )

    def saver(
        self, response_id: str, key_id: str | None, items: list[Any]
    ) -> Callable[[bytes], Awaitable[None]] | None:
        """What stores the response once it is whole (None: no store)."""
        store = self.store
        if store is None:
            return None

        async def save(body: bytes) -> None:
            while len(self._pending) >= self.max_pending:
                self._written.clear()
                self._wake.set()
                try:
                    async with asyncio.timeout(30):
                        await self._written.wait()
                except TimeoutError:
                    raise GatewayError(
                        "overloaded",
                        "the store does not take stored responses now; send store: false",
                        retry_after=5,
                    ) from None
            now = time.time()
            row = self._pending[response_id] = {
                "id": response_id,
                "key_id": key_id,
                "created_at": now,
                "expires_at": now + self.retention,
                "input_items": _with_ids(items).decode(),
                "response": body.decode(),
            }
            size = len(row["input_items"]) + len(row["response"])
            self._added[key_id] = self._added.get(key_id, 0) + size
            self._wake.set()

        return save

    async def _write_loop(self) -> None:
        assert self.store is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._write_pending(self.store)
            except Exception as error:  # kept in memory; tried again on the next save
                if await self.store.reachable():  # else an outage, logged once
                    log.error("could not write %d stored responses: %s", len(self._pending), error)
                await asyncio.sleep(1)
                self._wake.set()
            self._maybe_purge(self.store)

    async def _write_pending(self, store: Store) -> None:
        batch = list(self._pending.values())
        if batch:
            await store.save_responses(batch)
            for row in batch:  # a deletion meanwhile took it out already
                self._pending.pop(row["id"], None)
            # Deleted while this batch was being written: delete what it wrote.
            for row in batch:
                if row["id"] in self._deleted:
                    await store.delete_response(row["id"], row["key_id"])
        self._deleted.clear()
        self._written.set()

    async def get(self, response_id: str, key_id: str | None) -> bytes:
        return (await self._load(response_id, key_id))[1].encode()

    async def delete(self, response_id: str, key_id: str | None) -> None:
        waiting = self._pending.get(response_id)
        if waiting is not None and waiting["key_id"] == key_id:
            del self._pending[response_id]
            self._deleted.add(response_id)  # in case a write of it is under way
            return
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
        waiting = self._pending.get(response_id)
        if waiting is not None and waiting["key_id"] == key_id:
            return waiting["input_items"], waiting["response"]
        store = self.store
        found = await store.bounded(lambda: store.load_response(response_id, key_id))
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
