"""The clock, passed in wherever time decides something (circuit cooldowns, rate-limit
windows, token lifetimes), so that a test moves time on instead of sleeping it out."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (windows that other processes share)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back (cooldowns within this process)."""
        ...


SYSTEM: Clock = time  # the time module is such a clock
