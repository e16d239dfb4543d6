"""SQLAlchemy Core, awaited: the few calls the store makes, each run in a greenlet as
``sqlalchemy.ext.asyncio`` runs them. That package imports SQLAlchemy's ORM (sessions,
mappers, loaders), which lmgate never uses: 85 ms more at every start, on top of the
Core's 260 ms (measured on the 2-core VM). Results are the drivers' buffered ones,
read without awaiting, as there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.util import greenlet_spawn

T = TypeVar("T")
Rows = CursorResult[*tuple[Any, ...]]  # rows of any shape


def create_engine(url: str, **options: Any) -> AsyncEngine:
    """An engine on an asyncio driver (``sqlite+aiosqlite``, ``postgresql+asyncpg``)."""
    return AsyncEngine(sa.create_engine(url, _is_async=True, **options))


class AsyncEngine:
    __slots__ = ("sync_engine",)

    def __init__(self, sync_engine: Engine) -> None:
        self.sync_engine = sync_engine

    @property
    def dialect(self) -> sa.Dialect:
        return self.sync_engine.dialect

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        connection = AsyncConnection(await greenlet_spawn(self.sync_engine.connect))
        try:
            yield connection
        finally:
            # Back to the pool even when the caller is cancelled meanwhile, or the
            # connection would be left checked out.
            await _to_completion(greenlet_spawn(connection.sync_connection.close))

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.connect() as connection, connection.begin():
            yield connection

    async def dispose(self) -> None:
        await greenlet_spawn(self.sync_engine.dispose)


class AsyncConnection:
    __slots__ = ("sync_connection",)

    def __init__(self, sync_connection: SyncConnection) -> None:
        self.sync_connection = sync_connection

    @property
    def dialect(self) -> sa.Dialect:
        return self.sync_connection.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Rows:
        return await greenlet_spawn(self.sync_connection.execute, statement, parameters)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Rows:
        return await greenlet_spawn(self.sync_connection.exec_driver_sql, statement, parameters)

    async def execution_options(self, **options: Any) -> AsyncConnection:
        await greenlet_spawn(self.sync_connection.execution_options, **options)
        return self

    async def run_sync(self, function: Callable[[SyncConnection], T]) -> T:
        return await greenlet_spawn(function, self.sync_connection)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction: committed at the end, rolled back on an exception."""
        transaction = await greenlet_spawn(self.sync_connection.begin)
        try:
            yield self
        except BaseException:
            await _to_completion(greenlet_spawn(transaction.rollback))
            raise
        await greenlet_spawn(transaction.commit)


async def _to_completion(work: Coroutine[Any, Any, T]) -> T:
    """``await work`` in a task of its own that a cancellation does not stop; the
    cancellation is raised once it is done."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError as error:
            if task.done():
                raise
            cancelled = error
    if cancelled is not None:
        raise cancelled
    return result
