"""Who is calling: the keys of ``server.api_keys``, and keys lmgate manages in its
store (looked up by hash, cached for ``store.key_cache_seconds`` so the request
path rarely touches the database)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass

from lmgate.accounts.people import Account, Kind, People
from lmgate.accounts.store import KEY_PREFIX, KeyInfo, Spent, Store, hash_key
from lmgate.errors import GatewayError


@dataclass(slots=True)
class Caller:
    key_id: str | None  # None: an open gateway and no key of lmgate's
    key: KeyInfo | None = None  # a managed key, with its limits


ANONYMOUS = Caller(None)


_KEY_HEADERS = {b"authorization": 0, b"x-api-key": 1, b"x-goog-api-key": 2}


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The key a request presents: ``Authorization: Bearer KEY``, else ``x-api-key``,
    else Google's ``x-goog-api-key``. ``headers``: the raw ones (ASGI's), read in one
    pass: Starlette's ``get`` raises and catches a KeyError for each header that is
    absent, and two of these three always are."""
    found = ["", "", ""]
    for name, value in headers:
        rank = _KEY_HEADERS.get(name)
        if rank is not None and not found[rank]:
            found[rank] = value.decode("latin-1")
    header = found[0]
    key = header[7:].strip() if header[:7].lower() == "bearer " else ""
    return key or found[1] or found[2]


def config_key_id(key: str) -> str:
    """The id of a ``server.api_keys`` key in records, metrics and stored responses:
    derived from the key itself, so that removing or reordering keys never hands one
    key's records or responses to another."""
    return "config:" + hashlib.sha256(b"lmgate config key\0" + key.encode()).hexdigest()[:16]


class KeyRing:
    def __init__(self, config_keys: list[str], store: Store | None, cache_seconds: float) -> None:
        self.set_config_keys(config_keys)
        self._store = store
        self._ttl = cache_seconds
        self._cache: dict[str, tuple[KeyInfo | None, float]] = {}  # hash -> (key, until)
        # The users and teams of keys, cached alike: id -> (account, until).
        self._owners: dict[str, tuple[Account | None, float]] = {}
        self._people = People(store) if store is not None else None
        self._managed_exist = False
        self._known = False  # whether _managed_exist was ever read from the store
        self._checked_at = 0.0

    def set_config_keys(self, config_keys: list[str]) -> None:
        """The keys of ``server.api_keys`` (again, on a reload)."""
        self._config_keys = [key.encode() for key in config_keys]
        self._config_ids = [config_key_id(key) for key in config_keys]

    async def start(self) -> None:
        await self._check_managed()

    async def identify(self, secret: str) -> Caller:
        """The caller with this key, or a 401 ``GatewayError``."""
        if not secret:
            if await self.is_open():
                return ANONYMOUS
            raise GatewayError(
                "authentication",
                "missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
                code="missing_api_key",
            )
        given = secret.encode()
        found = -1
        for index, known in enumerate(self._config_keys):  # no early exit: timing says nothing
            if hmac.compare_digest(given, known):
                found = index
        if found >= 0:
            return Caller(self._config_ids[found])
        key = await self._lookup(secret) if secret.startswith(KEY_PREFIX) else None
        if key is None:
            if await self.is_open():
                return ANONYMOUS
            raise GatewayError("authentication", "invalid API key", code="invalid_api_key")
        if key.revoked_at is not None:
            raise GatewayError("authentication", "this API key was revoked", code="key_revoked")
        if key.expires_at is not None and key.expires_at <= time.time():
            raise GatewayError("authentication", "this API key has expired", code="key_expired")
        return Caller(key.id, key)

    async def is_open(self) -> bool:
        """No key anywhere: the gateway lets everyone in (``server.api_keys`` empty
        and no managed key in the store)."""
        if self._config_keys:
            return False
        if not self._managed_exist and time.monotonic() - self._checked_at > self._ttl:
            try:
                await self._check_managed()
            except GatewayError:
                if not self._known:
                    raise  # the store never answered: open or not is unknown
        return not self._managed_exist

    async def _check_managed(self) -> None:
        self._checked_at = time.monotonic()
        if self._store is not None:
            self._managed_exist = await self._store.bounded(self._store.any_key)
        self._known = True

    async def _lookup(self, secret: str) -> KeyInfo | None:
        if self._store is None:
            return None
        digest = hash_key(secret)
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        store = self._store
        try:
            key = await store.bounded(lambda: store.find_key(secret))
        except GatewayError:
            if cached is not None:
                return cached[0]  # seen before the store went away: as it was then
            raise
        if len(self._cache) > 100_000:  # unknown keys are cached too: bound the memory
            self._cache.clear()
        self._cache[digest] = (key, time.monotonic() + self._ttl)
        return key

    async def owners(self, key: KeyInfo) -> list[Account]:
        """The key's user and team (its own team, else its user's): their limits and
        budgets apply to the key's requests too."""
        found: list[Account] = []
        user = await self._owner("user", key.user_id) if key.user_id else None
        if user is not None:
            found.append(user)
        team_id = key.team_id or (user.team_id if user is not None else None)
        team = await self._owner("team", team_id) if team_id else None
        if team is not None:
            found.append(team)
        return found

    async def _owner(self, kind: Kind, account_id: str) -> Account | None:
        cached = self._owners.get(account_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        people = self._people
        assert people is not None  # keys with owners live in the store
        try:
            account = await people.store.bounded(lambda: people.get(kind, account_id))
        except GatewayError:
            if cached is not None:
                return cached[0]  # as it was when the store last answered
            raise
        if len(self._owners) > 100_000:
            self._owners.clear()
        self._owners[account_id] = (account, time.monotonic() + self._ttl)
        return account

    def spent(self, spent: dict[str, Spent]) -> None:
        """Keys', users' and teams' running totals, as this process just wrote them to
        the store (other processes' usage included): count them at once."""
        holders: list[KeyInfo | Account | None] = [key for key, _ in self._cache.values()]
        holders += [account for account, _ in self._owners.values()]
        for key in holders:
            if key is not None and (now := spent.get(key.id)) is not None:
                if now.period_start > key.period_start:  # a new period's totals
                    key.period_start = now.period_start
                    key.used_tokens, key.used_usd = now.total_tokens, now.total_cost
                elif now.period_start == key.period_start:
                    key.used_tokens = max(key.used_tokens, now.total_tokens)
                    key.used_usd = max(key.used_usd, now.total_cost)

    def changed(self) -> None:
        """A key was created or revoked here: look again on the next request."""
        self._cache.clear()
        self._owners.clear()
        self._checked_at = 0.0
        self._managed_exist = False
        self._known = False
