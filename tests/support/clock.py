"""A clock the test moves: a gateway built with it waits out no cooldown, window or
token lifetime on the real clock."""

from __future__ import annotations

import threading
import time


class FakeClock:
    """Starts at the real time; moves only when told (``advance``). The gateway reads
    it from its own thread: the lock keeps each reading whole."""

    def __init__(self, start: float | None = None) -> None:
        self._lock = threading.Lock()
        self._wall = time.time() if start is None else start
        self._monotonic = 1_000.0

    def time(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._wall += seconds
            self._monotonic += seconds
