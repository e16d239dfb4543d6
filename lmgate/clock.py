"""The clock, passed in wherever time decides something (circuit cooldowns, rate-limit
windows, token lifetimes), so that a test moves time on instead of sleeping it out;
and ``Alarm``, the cheap deadline of connections."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncio


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (windows that other processes share)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back (cooldowns within this process)."""
        ...


SYSTEM: Clock = time  # the time module is such a clock


class Alarm:
    """One deadline at a time, cheap to move: ``set`` and ``clear`` only note it, and a
    single loop timer, moved on when it fires early, calls ``expired`` once it passes.

    A timer of the loop costs microseconds to make and to cancel (uvloop's, each a
    libuv timer), and a request made four (its head's and body's deadlines, the
    keep-alive, the upstream's first byte): a tenth of the gateway's CPU. On a
    kept-alive connection an alarm's timer is made about once per deadline's length.
    """

    __slots__ = ("_at", "_deadline", "_expired", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, expired: Callable[[], object]) -> None:
        self._loop, self._expired = loop, expired
        self._deadline: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the handle fires

    @property
    def pending(self) -> bool:
        return self._deadline is not None

    def set(self, seconds: float) -> None:
        """Expire ``seconds`` from now (in place of any deadline before)."""
        deadline = self._deadline = self._loop.time() + seconds
        if self._handle is None or deadline < self._at:
            if self._handle is not None:
                self._handle.cancel()
            self._at = deadline
            self._handle = self._loop.call_at(deadline, self._fire)

    def clear(self) -> None:
        self._deadline = None  # the timer, if it fires, finds nothing to do

    def close(self) -> None:
        self._deadline = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None:
            return
        if self._loop.time() < deadline - TIMER_SLACK:  # moved on since: the rest
            self._at = deadline
            self._handle = self._loop.call_at(deadline, self._fire)
            return
        self._deadline = None
        self._expired()


# A loop's timer fires to within its millisecond: a deadline this close is due.
TIMER_SLACK = 0.002
