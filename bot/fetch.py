"""Fetching an image from a URL someone pasted into a chat, without becoming their proxy.

The bot runs next to things that must not be reachable from a chat message: the database,
a local Stable Diffusion server, cloud metadata at 169.254.169.254. So every hop of a fetch
is checked: the host's addresses are resolved and the fetch is refused if any of them is
not a public address, redirects are followed by hand so each new host is checked too, and
the body is streamed with a hard byte cap and an overall deadline.

Checking a name and then letting the HTTP library resolve it again would leave a gap (DNS
rebinding: public on the first lookup, 127.0.0.1 on the second). Clients made here by
``make_client`` close it by doing the check inside the connection step itself and dialling
the very addresses that passed. A caller-supplied client only gets the per-hop check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
from collections.abc import Awaitable, Callable, Collection, Sequence
from functools import lru_cache
from typing import Any

import httpcore
import httpx

from bot.errors import BadInput
from bot.ids import is_digits

__all__ = [
    "Resolver",
    "fetch_image",
    "is_forbidden_address",
    "make_client",
    "system_resolver",
]

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> IP address strings``; tests pass a fake one to avoid real DNS."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_HEADERS = {
    "User-Agent": "sdhost image fetcher",
    "Accept": "image/png, image/jpeg, image/webp, image/*;q=0.8",
    # Images are already compressed; asking for identity avoids gzip-bomb amplification.
    "Accept-Encoding": "identity",
}
_REFUSED = "refusing to fetch from a private or loopback address"
_PREFIX = "could not fetch the image: "
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


async def fetch_image(
    url: str,
    *,
    client: httpx.AsyncClient | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    timeout: float = 20.0,
    allow_private: bool = False,
    max_redirects: int = 3,
    resolver: Resolver | None = None,
) -> bytes:
    """Download the body at ``url`` and return it, or raise ``BadInput`` saying why not.

    The bytes are not validated as an image here; that is ``bot.imaging``'s job. Messages
    name at most the host, never the path or query, which may carry access tokens.
    """
    resolve = resolver or system_resolver
    target = _parse(url)
    try:
        async with asyncio.timeout(timeout):
            if client is not None:
                return await _fetch(
                    client, target, max_bytes, allow_private, max_redirects, resolve
                )
            async with make_client(
                allow_private=allow_private, resolver=resolve, timeout=timeout
            ) as own:
                return await _fetch(own, target, max_bytes, allow_private, max_redirects, resolve)
    except TimeoutError as exc:
        raise BadInput(f"{_PREFIX}no complete answer within {timeout:g} s") from exc


def make_client(
    *,
    allow_private: bool = False,
    resolver: Resolver | None = None,
    timeout: float = 20.0,
    trusted: Collection[str] = (),
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that refuses to connect to non-public addresses, except the
    IP addresses in ``trusted`` (an operator's explicit choice, e.g. a local mirror).

    Worth sharing across fetches for connection reuse. Its own ``allow_private`` applies on
    top of the one passed to ``fetch_image``. It ignores proxy environment
    variables on purpose: through a proxy the address check would apply to the proxy, not
    to the server actually contacted.
    """
    transport = _GuardedTransport(
        allow_private=allow_private,
        resolver=resolver or system_resolver,
        trusted=frozenset(a for t in trusted if (a := _ip(t)) is not None),
    )
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
    )


def is_forbidden_address(ip: IPAddress) -> bool:
    """True for anything that is not a plain public unicast address.

    IPv6 forms that embed an IPv4 address (``::ffff:a.b.c.d``, 6to4, Teredo, NAT64) are
    judged by the embedded address too, since they can route to it.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _is_special(ip.ipv4_mapped)  # the v6 form is just how the OS spells the v4 one
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.sixtofour is not None:
            candidates.append(ip.sixtofour)
        if ip.teredo is not None:
            candidates.extend(ip.teredo)
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return any(_is_special(c) for c in candidates)


def _is_special(ip: IPAddress) -> bool:
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global  # also catches shared (CGNAT) space, documentation ranges, ...
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """All addresses the OS resolver returns for ``host``, in its preferred order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _checked_addresses(
    host: str,
    port: int,
    resolver: Resolver,
    allow_private: bool,
    trusted: frozenset[IPAddress] = frozenset(),
) -> list[str]:
    """Resolve ``host`` and refuse if any answer is non-public.

    All answers are checked, not just the first, because the connection may go to any of
    them (and an attacker controls the order).
    """
    literal = _ip(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = list(await resolver(host, port))
        except (OSError, UnicodeError) as exc:
            raise BadInput(f"{_PREFIX}cannot resolve {host}") from exc
        if not addresses:
            raise BadInput(f"{_PREFIX}cannot resolve {host}")
    if not allow_private:
        for address in addresses:
            ip = _ip(address)
            if ip is None or (is_forbidden_address(ip) and ip not in trusted):
                raise BadInput(_REFUSED)
    return addresses


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


def _parse(url: str) -> httpx.URL:
    text = url.strip().strip("<>")  # Discord users wrap links in <> to suppress previews
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise BadInput("that is not a valid URL") from exc
    if parsed.scheme not in ("http", "https"):
        raise BadInput("only http(s) URLs can be fetched")
    if not parsed.raw_host:
        raise BadInput("that is not a valid URL")
    return parsed


async def _fetch(
    client: httpx.AsyncClient,
    target: httpx.URL,
    max_bytes: int,
    allow_private: bool,
    max_redirects: int,
    resolver: Resolver,
) -> bytes:
    for _hop in range(max_redirects + 1):
        host = target.raw_host.decode("ascii")
        port = target.port or (443 if target.scheme == "https" else 80)
        await _checked_addresses(host, port, resolver, allow_private)
        try:
            async with client.stream(
                "GET", target, headers=_HEADERS, follow_redirects=False
            ) as response:
                if response.status_code in _REDIRECT_CODES and "location" in response.headers:
                    target = _redirect_target(response)
                    continue
                return await _read_body(response, max_bytes)
        except httpx.TimeoutException as exc:
            raise BadInput(f"{_PREFIX}{target.host} took too long to answer") from exc
        except httpx.HTTPError as exc:
            raise BadInput(_PREFIX + _reason(exc, target.host)) from exc
    raise BadInput(f"{_PREFIX}more than {max_redirects} redirects")


def _redirect_target(response: httpx.Response) -> httpx.URL:
    try:
        nxt = response.url.join(response.headers["location"])
    except (httpx.InvalidURL, ValueError) as exc:
        raise BadInput(f"{_PREFIX}the server sent a broken redirect") from exc
    if nxt.scheme not in ("http", "https"):
        raise BadInput("only http(s) URLs can be fetched")
    if not nxt.raw_host:
        raise BadInput(f"{_PREFIX}the server sent a broken redirect")
    return nxt


class TooLarge(Exception):
    """A body over the limit; ``size`` is what the server declared, if it did."""

    def __init__(self, size: int | None) -> None:
        super().__init__(size)
        self.size = size


def declared_length(response: httpx.Response) -> int | None:
    """The body size a response declares (``Content-Length``), or None when it declares
    none or something that is not a plain number (``str.isdigit`` passes ``²``, which
    ``int()`` refuses)."""
    declared = response.headers.get("content-length", "").strip()
    return int(declared) if is_digits(declared) else None


async def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """A streamed response's body, refused (:class:`TooLarge`) past ``max_bytes``: by its
    ``Content-Length`` before reading, else as soon as the bytes pass it, so a lying or
    endless server costs at most ``max_bytes`` of memory."""
    declared = declared_length(response)
    if declared is not None and declared > max_bytes:
        raise TooLarge(declared)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(None)
    return bytes(body)


async def _read_body(response: httpx.Response, max_bytes: int) -> bytes:
    if not response.is_success:
        raise BadInput(f"{_PREFIX}HTTP {response.status_code}")
    if response.headers.get("content-type", "").lower().startswith("text/html"):
        raise BadInput("that link is a web page, not an image; link the image file itself")
    try:
        body = await read_capped(response, max_bytes)
    except TooLarge as exc:
        if exc.size is not None:
            raise BadInput(
                f"the image is {_mb(exc.size, up=True)}; the limit is {_mb(max_bytes)}"
            ) from None
        raise BadInput(f"the image is larger than the {_mb(max_bytes)} limit") from None
    if not body:
        raise BadInput(f"{_PREFIX}the server sent an empty response")
    return body


def _reason(exc: httpx.HTTPError, host: str) -> str:
    """A short cause without the URL (httpx messages can include it, query and all)."""
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return f"{host} has an invalid TLS certificate"
        return f"cannot connect to {host}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"{host} sent an invalid response"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "only http(s) URLs can be fetched"
    if isinstance(exc, httpx.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, httpx.DecodingError):
        return f"{host} sent a body that could not be decoded"
    if isinstance(exc, httpx.TransportError):
        return f"the connection to {host} failed"
    return "network error"


def _mb(n: int, *, up: bool = False) -> str:
    value = n / (1024 * 1024)
    if up:
        value = math.ceil(value * 10) / 10  # never show an over-limit size as the limit
    return f"{value:.1f}".removesuffix(".0") + " MB"


# --- the guarded connection layer -------------------------------------------------------


@lru_cache(maxsize=1)
def _ssl_context() -> Any:
    """Loading the CA bundle takes milliseconds; one context serves every client."""
    return httpx.create_ssl_context()


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and dials in one step, so the address checked is the one used."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver,
        trusted: frozenset[IPAddress] = frozenset(),
    ) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private
        self._resolver = resolver
        self._trusted = trusted

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _checked_addresses(
            host, port, self._resolver, self._allow_private, self._trusted
        )
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the connection pool swapped for one on the guarded backend.

    httpx has no public hook for the network backend; ``_pool`` is the one private name we
    rely on, and tests/test_fetch.py fails loudly (the rebinding test) if it changes.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver,
        trusted: frozenset[IPAddress] = frozenset(),
    ) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=20,
            max_keepalive_connections=10,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(
                allow_private=allow_private, resolver=resolver, trusted=trusted
            ),
        )
