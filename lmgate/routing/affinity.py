"""Session affinity: the turns of one agent session go to the deployment that served
it last, while that deployment is usable, because that is where its prompt cache is
warm (cached input costs a tenth). A session that deployment fails moves, and stays
where it moved.

Bounded: at most ``max_sessions`` sessions, least recently used first out, each kept
``ttl`` seconds after its last turn. With Redis, processes share what they learn: a
session's first turn on a process asks Redis, and every answered turn tells it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from lmgate.clock import SYSTEM, Clock

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from lmgate.observe.dependencies import Dependency

log = logging.getLogger("lmgate")


class Affinity:
    def __init__(self, max_sessions: int = 100_000, ttl: float = 3600, clock: Clock = SYSTEM):
        self.max_sessions, self.ttl, self._clock = max_sessions, ttl, clock
        # (model id, session digest) -> (deployment key, monotonic expiry)
        self._seen: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self.shared: SharedAffinity | None = None
        self.hits = self.misses = 0  # lookups that found a deployment, and did not

    async def deployment(self, model: str, session: str) -> str | None:
        """The key of the deployment that served ``session`` of ``model`` last."""
        name = (model, _digest(session))
        found = self._seen.get(name)
        now = self._clock.monotonic()
        if found is not None and found[1] > now:
            self._seen.move_to_end(name)
            self.hits += 1
            return found[0]
        if self.shared is not None and (key := await self.shared.get(name)) is not None:
            self._keep(name, key, now)
            self.hits += 1
            return key
        self.misses += 1
        return None

    def served(self, model: str, session: str, deployment: str) -> None:
        """``deployment`` answered a turn of ``session``: its next turns go there."""
        name = (model, _digest(session))
        before = self._seen.get(name)
        self._keep(name, deployment, self._clock.monotonic())
        if self.shared is not None and (before is None or before[0] != deployment):
            self.shared.put(name, deployment, self.ttl)

    def _keep(self, name: tuple[str, str], deployment: str, now: float) -> None:
        self._seen[name] = (deployment, now + self.ttl)
        self._seen.move_to_end(name)
        while len(self._seen) > self.max_sessions:
            self._seen.popitem(last=False)


class SharedAffinity:
    """Sessions' deployments in Redis, for every process (a key per session, expiring)."""

    def __init__(self, client: aioredis.Redis, prefix: str, backend: Dependency) -> None:
        self.redis, self.prefix, self.backend = client, prefix, backend
        self._tasks: set[asyncio.Task[Any]] = set()

    def _name(self, name: tuple[str, str]) -> str:
        return f"{self.prefix}affinity:{name[0]}:{name[1]}"

    async def get(self, name: tuple[str, str]) -> str | None:
        if not self.backend.worth_trying():
            return None  # Redis away: this process decides alone
        try:
            value = await self.redis.get(self._name(name))
        except Exception as error:
            self.backend.failed(error, "session affinity")
            return None
        return value.decode() if isinstance(value, bytes) else value

    def put(self, name: tuple[str, str], deployment: str, ttl: float) -> None:
        if not self.backend.worth_trying():
            return
        task = asyncio.get_running_loop().create_task(self._put(name, deployment, ttl))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, name: tuple[str, str], deployment: str, ttl: float) -> None:
        try:
            await self.redis.set(self._name(name), deployment, ex=max(1, int(ttl)))
        except Exception as error:
            self.backend.failed(error, "session affinity")


def _digest(session: str) -> str:
    # Bounded in size whatever the client sent, and not the id itself in Redis.
    return hashlib.sha256(session.encode()).hexdigest()[:24]
