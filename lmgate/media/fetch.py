"""Fetching http(s) image URLs for upstreams that need the bytes, without becoming
a proxy into the gateway's own network (server-side request forgery).

Every address a URL leads to is checked after DNS resolution, by the resolver the
connection itself uses, so a name that resolves differently on a second lookup
(DNS rebinding) cannot slip through. Literal IPs (which aiohttp never resolves)
are checked before connecting; redirects are followed by hand and each hop is
checked again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lmgate.canonical import ChatRequest, ImagePart, Message, ToolResultPart
from lmgate.errors import GatewayError, invalid
from lmgate.media.check import ACCEPTED, images, sniff

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL

MAX_REDIRECTS = 3
_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def is_public(address: IPAddress) -> bool:
    """Whether an address is on the public internet: not loopback, private,
    link-local (cloud metadata at 169.254.169.254), shared, reserved, site-local or
    multicast. An IPv6 address that carries an IPv4 one (mapped ``::ffff:a.b.c.d``,
    compatible ``::a.b.c.d``, NAT64, 6to4, Teredo) is judged by the IPv4 address,
    which is where a connection to it ends up."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return False
        embedded = _embedded_ipv4(address)
        if embedded:
            return all(is_public(inner) for inner in embedded)
    return address.is_global and not address.is_multicast


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    low = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(low) > 1:  # IPv4-compatible (::1 is loopback)
        return [low]
    if any(address in network for network in _NAT64):
        return [low]
    return []


class _Refused(OSError):
    """An address the policy forbids; raised inside the connector, reported to the client."""


def _guarded_resolver(allow_private: bool) -> aiohttp.abc.AbstractResolver:
    import aiohttp  # with the first fetch: a gateway that never fetches never loads it

    class GuardedResolver(aiohttp.abc.AbstractResolver):
        def __init__(self) -> None:
            self._inner = aiohttp.ThreadedResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[Any]:
            results = await self._inner.resolve(host, port, family)
            if not allow_private:
                for result in results:
                    address = ipaddress.ip_address(result["host"])
                    if not is_public(address):
                        raise _Refused(
                            f"{host} resolves to {address}, which is not a public address"
                        )
            return results

        async def close(self) -> None:
            await self._inner.close()

    return GuardedResolver()


class _Tally:
    """Bytes fetched for one request so far."""

    __slots__ = ("taken",)

    def __init__(self) -> None:
        self.taken = 0


class ImageFetcher:
    def __init__(
        self,
        max_bytes: int,
        timeout: float,
        allow_private: bool = False,
        request_bytes: int | None = None,
        process_bytes: int | None = None,
    ) -> None:
        self.max_bytes = max_bytes  # one image
        self.timeout = timeout
        self.allow_private = allow_private
        # All the images of one request, and all fetches under way in this process:
        # without these, a small request could make the gateway hold gigabytes.
        self.request_bytes = request_bytes or 2**62
        self.process_bytes = process_bytes or 2**62
        self.held = 0  # bytes fetched by inline() calls still under way
        self.refused = 0  # URLs refused by the address guard (for the metrics)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(
                resolver=_guarded_resolver(self.allow_private), limit=64, ttl_dns_cache=60
            )
            # trust_env=False: an HTTP(S)_PROXY would resolve names where we cannot check them.
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def inline(self, request: ChatRequest) -> ChatRequest:
        """The request with every http(s) image replaced by its fetched bytes."""
        pending = [part for part in _url_images(request) if part.data is None]
        if not pending:
            return request
        tally = _Tally()
        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
                tasks = [group.create_task(self._fetch_part(part, tally)) for part in pending]
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None
        finally:
            self.held -= tally.taken
        fetched = {id(part): task.result() for part, task in zip(pending, tasks, strict=True)}

        def swap(part: Any) -> Any:
            if isinstance(part, ImagePart):
                return fetched.get(id(part), part)
            if isinstance(part, ToolResultPart):
                return replace(part, content=[swap(inner) for inner in part.content])
            return part

        messages = [
            Message(message.role, [swap(part) for part in message.parts], message.name)
            for message in request.messages
        ]
        return replace(request, messages=messages)

    async def _fetch_part(self, part: ImagePart, tally: _Tally) -> ImagePart:
        where = part.where or "messages"
        try:
            async with asyncio.timeout(self.timeout):
                data, declared = await self.fetch(part.url or "", tally)
            kind = sniff(data)
            if kind is None:
                raise FetchError(f"it is not a {ACCEPTED} image (Content-Type {declared})")
        except TimeoutError:
            reason = f"no complete answer within {self.timeout:g}s (media.fetch_timeout)"
            raise invalid(f"{where}: could not fetch the image: {reason}", where) from None
        except FetchError as error:
            raise invalid(f"{where}: could not fetch the image: {error}", where) from None
        return replace(part, data=data, media_type=kind)

    async def fetch(self, url: str, tally: _Tally | None = None) -> tuple[bytes, str]:
        """GET an image: (bytes, declared content type). Raises ``FetchError``, or a
        retryable ``GatewayError`` when the process holds too much already."""
        import aiohttp
        from yarl import URL

        session = self._client()
        current = URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            self._check_url(current)
            try:
                async with session.get(
                    current, allow_redirects=False, headers={"Accept": "image/*"}
                ) as response:
                    if response.status in _REDIRECTS and "Location" in response.headers:
                        current = current.join(URL(response.headers["Location"]))
                        continue
                    return await self._read(response, tally or _Tally())
            except aiohttp.ClientConnectorError as error:
                if isinstance(error.os_error, _Refused):
                    raise self._refused(str(error.os_error)) from None
                raise FetchError(f"cannot connect to {current.host}") from None
            except aiohttp.ClientError as error:
                raise FetchError(f"{type(error).__name__} from {current.host}") from None
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    def _check_url(self, url: URL) -> None:
        if url.scheme not in ("http", "https") or not url.host:
            raise FetchError(f"only http and https URLs are fetched, not {url.scheme}:")
        try:
            address = ipaddress.ip_address(url.host.strip("[]"))
        except ValueError:
            return  # a name: the guarded resolver checks what it resolves to
        if not self.allow_private and not is_public(address):
            raise self._refused(f"{address} is not a public address")

    def _refused(self, reason: str) -> FetchError:
        self.refused += 1
        return FetchError(f"refused, {reason}; set media.allow_private_urls to allow it")

    async def _read(self, response: aiohttp.ClientResponse, tally: _Tally) -> tuple[bytes, str]:
        if response.status != 200:
            raise FetchError(f"{response.url.host} answered {response.status}")
        declared = response.headers.get("Content-Type", "none").split(";")[0].strip().lower()
        if not declared.startswith("image/") and declared != "application/octet-stream":
            raise FetchError(f"the server sent Content-Type {declared}, not an image")
        too_large = f"it is larger than {self.max_bytes / 2**20:g} MB (media.max_image_mb)"
        if (response.content_length or 0) > self.max_bytes:
            raise FetchError(too_large)
        self._take(tally, response.content_length or 0, counted=False)
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > self.max_bytes:
                raise FetchError(too_large)
            self._take(tally, len(chunk))
        return bytes(body), declared

    def _take(self, tally: _Tally, size: int, counted: bool = True) -> None:
        """Count ``size`` more bytes against the request's and the process's caps
        (with ``counted`` false, only check that they would fit)."""
        if tally.taken + size > self.request_bytes:
            limit = self.request_bytes / 2**20
            raise FetchError(
                f"the request's images add up to more than {limit:g} MB (media.max_request_mb)"
            )
        if self.held + size > self.process_bytes:
            raise GatewayError(
                "overloaded",
                "the gateway is fetching too many images at once (media.max_fetching_mb); "
                "send the request again",
                retryable=True,
                retry_after=1,
            )
        if counted:
            tally.taken += size
            self.held += size


class FetchError(Exception):
    """Why an image URL could not be used; shown to the client (no URL, which may
    carry credentials in its query)."""


def _url_images(request: ChatRequest) -> list[ImagePart]:
    return [part for part in images(request) if (part.url or "").startswith(("http:", "https:"))]
