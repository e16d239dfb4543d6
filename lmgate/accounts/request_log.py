"""The opt-in request log (``request_log.enabled``): each request's body and the
reply its client got (the JSON, or the stream's bytes), redacted and cut to
``request_log.max_body_kb``, kept ``request_log.retention_days`` for the
dashboard's recent requests. No header is kept. Written behind the reply in
batches; a full queue drops entries (counted and logged), never waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from lmgate.accounts.schema import request_log
from lmgate.accounts.store import Store
from lmgate.config import RequestLogConfig

log = logging.getLogger("lmgate")
_PURGE_EVERY = 3600.0
_QUEUE = 10_000


class RequestLog:
    def __init__(
        self, store: Store, config: RequestLogConfig, redact: Callable[[str], str]
    ) -> None:
        self.store = store
        self.retention = config.retention_days * 86_400
        self.limit = config.max_body_kb * 1024
        self._redact = redact
        self._queue: list[dict[str, Any]] = []
        self.dropped = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_purge = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._write_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self._write()
        except Exception as error:
            log.error(
                "request log: %d entries not written at shutdown: %s", len(self._queue), error
            )

    def add(
        self, request_id: str, at: float, key_id: str | None, body: bytes, reply: bytes
    ) -> None:
        """An entry for the request that arrived at ``at`` (its usage record's time: the
        two are found together by id and time, whatever id the client chose)."""
        if len(self._queue) >= _QUEUE:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("request log queue full: %d entries dropped so far", self.dropped)
            return
        self._queue.append(
            {
                "request_id": request_id,
                "at": at,
                "key_id": key_id,
                "request": self._text(body),
                "reply": self._text(reply),
            }
        )
        self._wake.set()

    async def tee(
        self,
        frames: AsyncGenerator[bytes, None],
        request_id: str,
        at: float,
        key_id: str | None,
        body: bytes,
    ) -> AsyncGenerator[bytes, None]:
        """Pass a stream's frames on, keeping their first ``max_body_kb``."""
        kept: list[bytes] = []
        size = 0
        try:
            async for frame in frames:
                if size < self.limit:
                    kept.append(frame)
                    size += len(frame)
                yield frame
        finally:
            await frames.aclose()
            self.add(request_id, at, key_id, body, b"".join(kept))

    def _text(self, data: bytes) -> str:
        text = data[: self.limit].decode("utf-8", "replace")
        if len(data) > self.limit:
            text += f"\n… (cut at request_log.max_body_kb, {len(data)} bytes in all)"
        return self._redact(text)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(0.2)  # let a batch gather
            self._wake.clear()
            try:
                await self._write()
            except Exception as error:
                if self.store.health.up:  # else an outage, logged once
                    log.error("request log: could not write entries: %s", error)
                await asyncio.sleep(1)
                self._wake.set()
            if time.monotonic() >= self._next_purge:
                self._next_purge = time.monotonic() + _PURGE_EVERY
                try:
                    async with self.store.engine.begin() as connection:
                        await connection.execute(
                            request_log.delete().where(
                                request_log.c.at < time.time() - self.retention
                            )
                        )
                except Exception as error:
                    log.warning("request log: could not purge old entries: %s", error)

    async def _write(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            async with self.store.engine.begin() as connection:
                await connection.execute(request_log.insert(), batch)
        except Exception:
            if await self.store.reachable():  # refused, not an outage: trying again won't help
                self.dropped += len(batch)
            else:
                self._queue[:0] = batch
            raise
