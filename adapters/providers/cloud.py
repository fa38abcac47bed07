"""What the hosted providers (DashScope, LiblibAI, BFL) share: API key pools, polling with
backoff, retries that honour the provider's limits, and downloading results at once.

Key pools. A provider may hold several keys, each allowed a few tasks at once. A task takes
the least busy key with a free slot (waiting when all are busy) and keeps it until it ends;
the key's *name* (never the key) is stored with the task, so a task resumed after a restart
is polled with the key that submitted it.

Polling. The first poll comes after ``poll_first_s``, and each wait grows by ``poll_factor``
up to ``poll_max_interval_s``: a 10-second job takes about five polls rather than a dozen at
a fixed 0.8 s, and a slow queue costs few requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from bot.config import CloudProviderSection
from bot.errors import FailureClass, ProviderFailure

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key: str
    secret: str
    concurrency: int

    def __repr__(self) -> str:  # never print the key itself
        return f"ApiKey({self.name!r})"


class KeyPool:
    def __init__(self, keys: list[ApiKey]) -> None:
        if not keys:
            raise ValueError("a key pool needs at least one key")
        self.keys = {k.name: k for k in keys}
        self.busy = {k.name: 0 for k in keys}
        self.used = {k.name: 0 for k in keys}  # tasks each key has run (for tests, stats)
        self._changed = asyncio.Condition()

    @classmethod
    def from_config(cls, section: CloudProviderSection) -> KeyPool:
        return cls(
            [
                ApiKey(k.name or f"key{i}", k.key, k.secret, k.concurrency)
                for i, k in enumerate(section.keys, start=1)
            ]
        )

    @property
    def capacity(self) -> int:
        return sum(k.concurrency for k in self.keys.values())

    def _free(self, name: str | None) -> ApiKey | None:
        if name is not None and name in self.keys:
            key = self.keys[name]
            return key if self.busy[name] < key.concurrency else None
        candidates = [k for k in self.keys.values() if self.busy[k.name] < k.concurrency]
        if not candidates:
            return None
        return min(candidates, key=lambda k: (self.busy[k.name] / k.concurrency, self.used[k.name]))

    @contextlib.asynccontextmanager
    async def use(self, name: str | None = None) -> AsyncIterator[ApiKey]:
        """A key with a free slot for the length of one task; ``name`` asks for that key
        (a resumed task must be polled with the key that submitted it)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._free(name) is not None)
            key = self._free(name)
            assert key is not None
            self.busy[key.name] += 1
            self.used[key.name] += 1
        try:
            yield key
        finally:
            async with self._changed:
                self.busy[key.name] -= 1
                self._changed.notify_all()


def poll_delays(section: CloudProviderSection) -> AsyncIterator[int]:
    """Sleep before each poll with a growing interval; yields the poll number (1, 2, ...)."""

    async def gen() -> AsyncIterator[int]:
        wait = section.poll_first_s
        n = 0
        while True:
            await asyncio.sleep(wait * random.uniform(0.9, 1.1))
            n += 1
            yield n
            wait = min(section.poll_max_interval_s, wait * section.poll_factor)

    return gen()


def retry_after_s(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (number or HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


async def with_retries(
    section: CloudProviderSection,
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
) -> T:
    """Run ``call``; a ProviderFailure with ``retry_after`` set (throttling, 5xx, network) is
    retried up to ``max_retries`` times, waiting what the provider asked (or backing off
    with jitter); anything else, or the last failure, is raised."""
    attempt = 0
    while True:
        try:
            return await call()
        except ProviderFailure as exc:
            if exc.retry_after is None or attempt >= section.max_retries:
                raise
            attempt += 1
            wait = max(exc.retry_after, 0.0) or min(30.0, 0.5 * 2**attempt)
            wait *= random.uniform(1.0, 1.2)
            log.info("%s: %r; retry %d in %.1fs", what, exc.message, attempt, wait)
            await asyncio.sleep(wait)


def transport_failure(exc: httpx.HTTPError, what: str) -> ProviderFailure:
    """A network problem or timeout talking to a provider: retryable."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderFailure(FailureClass.PROVIDER_ERROR, f"{what} timed out", retry_after=0.0)
    return ProviderFailure(
        FailureClass.PROVIDER_ERROR,
        f"{what} could not be reached ({type(exc).__name__})",
        retry_after=0.0,
    )


async def download(
    client: httpx.AsyncClient, url: str, *, what: str, max_bytes: int = 50 * 1024 * 1024
) -> bytes:
    """Fetch a result picture now (the provider's URL expires), with a size cap."""
    try:
        # Result links often redirect to a CDN; httpx drops Authorization when it does.
        async with client.stream("GET", url, follow_redirects=True) as response:
            if response.status_code >= 400:
                retry = None if response.status_code in (403, 404, 410) else 0.0
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR,
                    f"{what}: the result picture could not be fetched "
                    f"(HTTP {response.status_code}; its link may have expired)",
                    retry_after=retry,
                )
            chunks = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise ProviderFailure(
                        FailureClass.PROVIDER_ERROR, f"{what}: the result picture is too large"
                    )
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise transport_failure(exc, what) from exc


def http_client(section: CloudProviderSection, **kw: object) -> httpx.AsyncClient:
    """One client per provider: explicit timeouts, a pool sized to its keys, no redirects
    followed silently for API calls."""
    timeout = httpx.Timeout(section.request_timeout_s, connect=10.0)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    return httpx.AsyncClient(timeout=timeout, limits=limits, **kw)  # type: ignore[arg-type]
