"""What the router knows about each deployment, shared by every request in a process:
requests in flight (and the concurrency cap with its wait queue), failures in a
row, and when a failing or rate-limited deployment may be used again.

A circuit breaker per deployment: closed while it answers; after ``failures`` in a
row it opens for ``seconds``; then exactly one request probes it (half-open) and
its outcome closes or reopens it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from lmgate.clock import SYSTEM, Clock
from lmgate.errors import GatewayError


class Health:
    __slots__ = (
        "_clock",
        "_waiters",
        "cooldown_failures",
        "cooldown_seconds",
        "failures",
        "in_flight",
        "max_in_flight",
        "max_queued",
        "open_until",
        "probing",
    )

    def __init__(
        self,
        max_in_flight: int | None = None,
        max_queued: int = 0,
        cooldown_failures: int = 3,
        cooldown_seconds: float = 30.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self._clock = clock
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.cooldown_failures = cooldown_failures
        self.cooldown_seconds = cooldown_seconds
        self.in_flight = 0
        self.failures = 0  # retryable failures in a row
        self.open_until = 0.0  # monotonic time before which requests skip it
        self.probing = False  # a request is testing it after a cooldown
        self._waiters: deque[asyncio.Future[None]] = deque()

    # ---- availability -----------------------------------------------------------

    def usable(self, now: float) -> bool:
        """Whether a request may use it now: closed, or half-open with no probe out."""
        if now < self.open_until:
            return False
        if self.failures >= self.cooldown_failures:  # half-open
            return not self.probing
        return True

    def claim(self, now: float) -> bool:
        """Take it for one attempt; after a cooldown the first taker is the probe."""
        if not self.usable(now):
            return False
        if self.failures >= self.cooldown_failures:
            self.probing = True
        return True

    def has_room(self) -> bool:
        return self.max_in_flight is None or self.in_flight < self.max_in_flight

    # ---- outcomes ---------------------------------------------------------------

    def succeeded(self) -> None:
        self.failures = 0
        self.probing = False

    def failed(self) -> bool:
        """Count a failure; whether it opened the circuit."""
        self.failures += 1
        opened = self.probing or self.failures >= self.cooldown_failures
        if opened:
            self.open_until = self._clock.monotonic() + self.cooldown_seconds
        self.probing = False
        return opened

    def open_for(self, seconds: float) -> None:
        """Open the circuit because another process saw this deployment fail."""
        self.failures = max(self.failures, self.cooldown_failures)
        self.open_until = max(self.open_until, self._clock.monotonic() + seconds)

    def abandoned(self) -> None:
        """The attempt ended with no verdict (the client left): let another probe."""
        self.probing = False

    # ---- concurrency ------------------------------------------------------------

    async def acquire(self, max_wait: float, name: str) -> None:
        """A slot for one request, waiting in a bounded FIFO queue when all are taken."""
        if self.has_room() and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.max_queued:
            raise _busy(name, f"all {self.max_in_flight} slots are taken and the queue is full")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max_wait):
                await waiter  # release() hands its slot over: in_flight already counts us
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed to us just as we gave up
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(error, TimeoutError):
                why = f"no slot became free within {max_wait:g}s (routing.queue_timeout)"
                raise _busy(name, why) from None
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; in_flight stays the same
                return
        self.in_flight -= 1


def _busy(name: str, why: str) -> GatewayError:
    return GatewayError(
        "overloaded",
        f"deployment {name} is at its max_in_flight: {why}",
        status=429,
        code="deployment_busy",
        retryable=True,
    )
