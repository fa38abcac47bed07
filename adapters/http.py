"""What every HTTP adapter needs (Civitai, the hosted providers, AI Horde): Retry-After
parsing, one backoff, one retry loop, a client with explicit timeouts, and the capped body
read.

The capped read lives in the core (bot/fetch.py uses it for the SSRF-guarded picture fetch,
and the core imports nothing from adapters); it is re-exported here so adapters find every
HTTP helper in one place.

Retries are hand-written rather than built on stamina: every caller must wait at least what
the server asked (Retry-After), decide per error whether retrying can succeed, and give up
when the server asks for a longer pause than allowed; stamina computes its waits from the
attempt number alone, so the loop would have been rewritten around it anyway.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from bot.fetch import TooLarge, declared_length, read_capped

__all__ = [
    "TooLarge",
    "backoff_s",
    "declared_length",
    "http_client",
    "read_capped",
    "retry_after_s",
    "with_retries",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


def retry_after_s(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (number or HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time()) if when else None


def backoff_s(
    attempt: int, retry_after: float | None, *, base: float = 0.5, cap: float = 30.0
) -> float:
    """How long to wait before retry number ``attempt`` (1, 2, ...): never sooner than the
    server asked (``retry_after``, plus up to 10% so clients do not return in step), else an
    exponential backoff from ``base`` capped at ``cap``, with jitter in its upper half."""
    if retry_after is not None:
        return max(retry_after, 0.0) * random.uniform(1.0, 1.1)
    ceiling = min(cap, base * 2 ** (max(attempt, 1) - 1))
    return random.uniform(ceiling / 2, ceiling)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    retries: int,
    what: str,
    retry_after: Callable[[BaseException], float | bool | None],
) -> T:
    """Run ``call``; retry up to ``retries`` times while ``retry_after(exc)`` says the
    failure may pass: a number of seconds the server asked for, or True (no hint: back off);
    False or None re-raises at once, as does the last failure."""
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            hint = retry_after(exc)
            if hint is None or hint is False or attempt >= retries:
                raise
            attempt += 1
            asked = None if hint is True or not hint else float(hint)
            wait = backoff_s(attempt, asked)
            log.info("%s: %r; retry %d in %.1fs", what, getattr(exc, "message", exc), attempt, wait)
            await asyncio.sleep(wait)


def http_client(
    timeout_s: float, *, connections: int = 64, keepalive: int = 16, **kw: Any
) -> httpx.AsyncClient:
    """A client with explicit timeouts and a bounded pool; API clients do not follow
    redirects silently (pass ``follow_redirects=True`` for result downloads)."""
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=keepalive)
    return httpx.AsyncClient(timeout=timeout, limits=limits, **kw)
