"""Ids for requests and replies: unique without a system call each.

``uuid4`` reads the kernel's random source on every call (about 2 µs, twice per
request); these ids need to be unique, not unpredictable.
"""

from __future__ import annotations

import itertools
import os

_prefix: str
_counter: itertools.count[int]


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count()


_reseed()
# A forked worker would otherwise repeat its parent's ids.
os.register_at_fork(after_in_child=_reseed)


def unique_hex() -> str:
    """32 hex digits: a random prefix per process, then a counter."""
    return f"{_prefix}{next(_counter):016x}"
