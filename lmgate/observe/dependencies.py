"""The services lmgate depends on (its store, Redis): whether each answers, as its
last call found; one WARNING when it stops answering and one line when it is back
(not one per request), and the count of failed calls for the metrics."""

from __future__ import annotations

import logging

from lmgate.clock import SYSTEM, Clock

log = logging.getLogger("lmgate")


class Dependency:
    # After a failed call, calls are not tried for this long (a frozen server would
    # otherwise hold every request for a whole timeout).
    PAUSE = 1.0

    def __init__(self, name: str, clock: Clock = SYSTEM) -> None:
        self.name = name
        self.up = True
        self.errors = 0  # failed calls, ever
        self._clock = clock
        self._down_since = 0.0
        self._retry_at = 0.0

    def failed(self, error: BaseException, what: str = "") -> None:
        self.errors += 1
        now = self._clock.monotonic()
        self._retry_at = now + self.PAUSE
        if self.up:
            self.up = False
            self._down_since = now
            log.warning(
                "%s unreachable%s: %s",
                self.name,
                f" ({what})" if what else "",
                describe(error),
            )

    def answered(self) -> None:
        if not self.up:
            self.up = True
            down_for = self._clock.monotonic() - self._down_since
            log.warning("%s reachable again after %.1fs", self.name, down_for)

    def worth_trying(self) -> bool:
        """Up, or down long enough that the next call should find out again."""
        return self.up or self._clock.monotonic() >= self._retry_at


def describe(error: BaseException) -> str:
    """An error in one line: its type when its text says nothing (timeouts)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
