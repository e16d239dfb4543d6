"""Model discovery: providers that list their own models (``discover_models``) add
them to the catalog at start and then in the background, every
``discovery_interval``. A failed refresh keeps the last good list and is logged;
no request ever waits for one."""

from __future__ import annotations

import asyncio
import logging

from lmgate.errors import redact
from lmgate.providers.base import Provider
from lmgate.routing.catalog import Catalog

log = logging.getLogger("lmgate")


class ModelDiscovery:
    def __init__(self, catalog: Catalog, providers: dict[str, Provider]) -> None:
        self.catalog = catalog
        self.sources = [p for p in providers.values() if p.discovery_interval is not None]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """The first discovery of each source (bounded by its own timeout), then the
        background refreshes."""
        await asyncio.gather(*(self.refresh(source) for source in self.sources))
        self._tasks = [asyncio.create_task(self._every(source)) for source in self.sources]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def refresh(self, source: Provider) -> bool:
        try:
            found = await source.discover()
        except Exception as error:
            detail = redact(str(error) or type(error).__name__)
            log.warning("model discovery from %s failed (keeping the last list): %s",
                        source.name, detail)  # fmt: skip
            return False
        self.catalog.add_discovered(source, found)
        log.info("model discovery from %s: %d models", source.name, len(found.models))
        return True

    async def _every(self, source: Provider) -> None:
        assert source.discovery_interval is not None
        while True:
            await asyncio.sleep(source.discovery_interval)
            await self.refresh(source)
