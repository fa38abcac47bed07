"""The wire under :class:`~adapters.civitai.api.client.CivitaiClient`: auth header, retries
with the shared backoff (adapters/http.py), the bounded lookup cache, decoding (a web page
where JSON was expected, error bodies) and cursor/page following.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
from aiolimiter import AsyncLimiter

from adapters.civitai.api.errors import (
    CivitaiBadRequest,
    CivitaiBadResponse,
    CivitaiChallenge,
    CivitaiError,
    CivitaiForbidden,
    CivitaiNotFound,
    CivitaiPagingLimit,
    CivitaiRateLimited,
    CivitaiUnauthorized,
    CivitaiUnavailable,
    _one_line,
    error_message,
)
from adapters.civitai.api.meta import _HASH, _as_int
from adapters.civitai.api.types import Page, PageMetadata, T
from adapters.http import backoff_s, retry_after_s

log = logging.getLogger(__name__)


DEFAULT_BASE_URL = "https://civitai.com"
API_PREFIX = "/api/v1"
USER_AGENT = "sdhost/0.1 (civitai api client)"  # never a browser UA

# The server refuses ``page * limit`` above this with a 429 (deep-paging guard).
MAX_PAGED_ITEMS = 1000
# Lookups (a model, a version, an image, a version by file hash) are kept this long, this many
# at most (least recently used out first), so repeated /civitai lookups and "use" after
# "image" ask Civitai once; Civitai's own edge caches these for 300 s. Listings and the
# harvest are never cached. ``CivitaiClient(cache_ttl_s=0)`` turns it off.
CACHE_TTL_S = 300.0
CACHE_SIZE = 512
IMAGES_MAX_LIMIT = 200
MODELS_MAX_LIMIT = 100
TAGS_MAX_LIMIT = 200
BULK_HASHES_MAX = 100
BULK_HASH_IDS_MAX = 10_000

# --- the client ---------------------------------------------------------------------------------

Params = dict[str, Any]


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _clean(params: Mapping[str, Any]) -> Params:
    """Drop unset values, write booleans as the API reads them; lists become repeated params."""
    out: Params = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            values = [_query_value(v) for v in value if v is not None]
            if values:
                out[key] = values
            continue
        out[key] = _query_value(value)
    return out


def _comma(values: str | int | Iterable[str | int] | None) -> str | None:
    if values is None:
        return None
    if isinstance(values, str | int):
        return str(values)
    joined = ",".join(str(v) for v in values)
    return joined or None


def _listed(values: str | Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]


ORIGINAL = "original"
# Civitai's image CDN and its legacy host (§5 of civitai.md): where pictures come from.
IMAGE_HOSTS = ("image.civitai.com", "imagecache.civitai.com")
PICTURE_MAX_BYTES = 8 * 1024 * 1024  # a preview bigger than this is not worth a chat
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def sized_url(url: str, size: str | int, *, still: bool = False) -> str:
    """``url`` asking the image CDN for ``size``: its params segment (``original=true``,
    ``width=450``, ``anim=false,width=450,optimized=true``: the one before the file name)
    becomes ``original=true`` or ``width=N``; a Civitai URL without one gets one. ``still``
    asks for one frame of a video or an animation (``anim=false``). Other URLs are returned
    unchanged."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    params = "original=true" if size == ORIGINAL else f"width={int(size)}"
    if still:
        params = f"anim=false,{params}"
    if len(segments) >= 3 and "=" in segments[-2]:
        segments[-2] = params
    elif len(segments) == 4 and _UUID.match(segments[2]):  # /<key>/<uuid>/<name>
        segments.insert(3, params)
    else:
        return url
    return urlunsplit(parts._replace(path="/".join(segments)))


def _looks_html(content_type: str, body: bytes) -> bool:
    if "html" in content_type.lower():
        return True
    head = body[:256].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


class CivitaiTransport:
    """Requests, retries, the lookup cache and paging; the endpoints are on the client."""

    _retry_statuses: ClassVar[frozenset[int]] = frozenset(
        {408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}
    )

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        max_retry_after: float = 60.0,
        requests_per_second: float | None = None,
        http: httpx.AsyncClient | None = None,
        user_agent: str = USER_AGENT,
        image_hosts: Iterable[str] = IMAGE_HOSTS,
        cache_ttl_s: float = CACHE_TTL_S,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api_key = (api_key or "").strip() or None
        self.image_hosts = frozenset(h.strip().lower() for h in image_hosts if h.strip())
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = max(0, cache_size)
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._timeout = timeout
        self._pictures: httpx.AsyncClient | None = None  # made on first use
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._limiter = AsyncLimiter(requests_per_second, 1.0) if requests_per_second else None
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            follow_redirects=False,
        )
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}

    def __repr__(self) -> str:
        key = "***" if self._api_key else None
        return f"CivitaiClient(base_url={self.base_url!r}, api_key={key!r})"

    @property
    def has_api_key(self) -> bool:
        return self._api_key is not None

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()
        if self._pictures is not None:
            await self._pictures.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- the wire ---------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _request_headers(self) -> dict[str, str]:
        headers = dict(self._headers)
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """One API call with retries; the decoded JSON, or a :class:`CivitaiError`."""
        url = f"{self.base_url}{API_PREFIX}{path}"
        query = _clean(params or {})
        if "token" in query:  # the key travels in the header only
            raise ValueError("pass the API key to CivitaiClient, not as a token parameter")
        attempt = 0
        while True:
            attempt += 1
            try:
                if self._limiter is not None:
                    await self._limiter.acquire()
                log.debug("civitai: %s %s %s (attempt %d)", method, path, query, attempt)
                response = await self._http.request(
                    method, url, params=query, json=body, headers=self._request_headers()
                )
                return self._decode(response, what)
            except httpx.TimeoutException:
                error: CivitaiError = CivitaiUnavailable(
                    f"Civitai did not answer in time ({what}); try again later",
                    retryable=True,
                    kind="timeout",
                    what=what,
                )
            except httpx.UnsupportedProtocol:
                raise CivitaiError(
                    f"civitai.base_url {self.base_url!r} is not an http(s) address"
                ) from None
            except httpx.TransportError as exc:
                error = CivitaiUnavailable(
                    f"Civitai could not be reached ({what}: {type(exc).__name__}); try again later",
                    retryable=True,
                    kind="unreachable",
                    what=what,
                )
            except CivitaiError as exc:
                error = exc
            if not error.retryable or attempt >= self.max_attempts:
                raise error
            if error.retry_after is not None and error.retry_after > self.max_retry_after:
                raise error  # the server asks for a longer pause than we are allowed to wait
            wait = backoff_s(
                attempt, error.retry_after, base=self.backoff_base, cap=self.backoff_max
            )
            log.info(
                "civitai: %r; retry %d/%d in %.2fs",
                self._redact(str(error)),
                attempt,
                self.max_attempts - 1,
                wait,
            )
            await asyncio.sleep(wait)

    async def _lookup(
        self,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        fresh: bool = False,
    ) -> Any:
        """A GET lookup through the cache (see ``CACHE_TTL_S``): the decoded JSON, kept for
        ``cache_ttl_s``; errors are not kept. Callers parse it afresh each time. ``fresh``
        asks Civitai again (and keeps the new answer): for what must not be minutes old,
        such as the scan verdicts a download is judged by."""
        key = (path, json.dumps(_clean(params or {}), sort_keys=True, default=str))
        now = self._clock()
        hit = None if fresh else self._cache.get(key)
        if hit is not None:
            if hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
            del self._cache[key]
        data = await self._request("GET", path, what=what, params=params)
        if self.cache_ttl_s > 0 and self.cache_size > 0:
            self._cache[key] = (now + self.cache_ttl_s, data)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return data

    def _decode(self, response: httpx.Response, what: str) -> Any:
        status = response.status_code
        content_type = response.headers.get("content-type", "")
        raw = response.content
        retry_after = retry_after_s(response) if status in (429, 503) else None
        retryable = status in self._retry_statuses
        if raw and _looks_html(content_type, raw):
            message = (
                f"Civitai answered {what} with a web page instead of data (HTTP {status}), "
                "probably a Cloudflare check or an outage; try again later"
            )
            if retryable:
                cls = CivitaiRateLimited if status == 429 else CivitaiUnavailable
                raise cls(
                    message,
                    status=status,
                    retry_after=retry_after,
                    retryable=True,
                    kind="web_page",
                    what=what,
                )
            raise CivitaiChallenge(message, status=status, kind="web_page", what=what)
        data: Any = None
        text = ""
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                text = raw[:500].decode("utf-8", "replace")
                if status < 300:
                    raise CivitaiBadResponse(
                        f"Civitai sent {what} a reply that is not JSON "
                        f"(HTTP {status}, {content_type or 'no content type'})",
                        status=status,
                    ) from None
        if 200 <= status < 300:
            return data
        detail = error_message(data) if data is not None else _one_line(text) or None
        suffix = f": {detail}" if detail else ""
        if 300 <= status < 400:
            location = response.headers.get("location", "?")
            raise CivitaiBadResponse(
                f"Civitai redirected {what} to {location}; set civitai.base_url to that host",
                status=status,
            )
        if status == 400 or status == 405 or status == 422:
            raise CivitaiBadRequest(
                f"Civitai rejected {what}{suffix}",
                status=status,
                kind="rejected",
                what=what,
                detail=detail,
            )
        if status == 401:
            if self._api_key:
                message = f"Civitai refused the API key for {what}; check civitai.api_key"
                kind = "key_refused"
            else:
                message = f"Civitai needs an API key for {what}: set civitai.api_key"
                kind = "key_needed"
            raise CivitaiUnauthorized(message, status=status, kind=kind, what=what)
        if status == 403:
            raise CivitaiForbidden(
                f"Civitai refused {what}{suffix}",
                status=status,
                kind="refused",
                what=what,
                detail=detail,
            )
        if status in (404, 410):
            raise CivitaiNotFound(
                f"Civitai has no {what}", status=status, kind="not_found", what=what
            )
        if status == 429:
            if detail and "too many pages" in detail.lower():
                raise CivitaiPagingLimit(
                    f"Civitai refused {what}: too many pages, use cursors instead", status=status
                )
            wait = f" (retry in {retry_after:g}s)" if retry_after else ""
            raise CivitaiRateLimited(
                f"Civitai is rate limiting us{wait}; try again later",
                status=status,
                retry_after=retry_after,
                retryable=True,
                kind="rate_limited",
                what=what,
            )
        if status == 500 and _deterministic(data, detail):
            # the same request fails the same way again: no retry (issue 16)
            raise CivitaiBadRequest(f"Civitai rejected {what} (HTTP 500{suffix})", status=status)
        if status >= 500 or retryable:
            raise CivitaiUnavailable(
                f"Civitai is unavailable (HTTP {status}{suffix}); try again later",
                status=status,
                retry_after=retry_after,
                retryable=retryable,
                kind="unavailable",
                what=what,
                detail=detail,
            )
        raise CivitaiError(
            f"Civitai could not answer {what} (HTTP {status}{suffix})", status=status
        )

    # --- helpers --------------------------------------------------------------------------------

    def _page(
        self,
        data: Any,
        parse: Callable[[dict[str, Any]], T],
        what: str,
        *,
        allowed: Callable[[T], bool] | None = None,
        key: Callable[[T], Any] = lambda item: getattr(item, "id", None),
    ) -> Page[T]:
        if not isinstance(data, Mapping) or not isinstance(data.get("items", []), list):
            raise CivitaiBadResponse(f"Civitai sent {what} a reply without items")
        parsed = [parse(item) for item in data.get("items") or [] if isinstance(item, dict)]
        metadata = data.get("metadata")
        meta = PageMetadata.model_validate(metadata if isinstance(metadata, dict) else {})
        keys = tuple(key(item) for item in parsed)
        kept = [item for item in parsed if allowed is None or allowed(item)]
        return Page(kept, meta, hidden=len(parsed) - len(kept), keys=keys)

    @staticmethod
    def _check_deep_page(page: int | None, limit: int | None, default_limit: int) -> None:
        if page is not None and page * (limit or default_limit) > MAX_PAGED_ITEMS:
            raise CivitaiPagingLimit(
                f"Civitai serves at most {MAX_PAGED_ITEMS} items by page number; "
                "use cursors (iter_images / iter_models) to go further"
            )

    async def _follow(
        self,
        fetch: Callable[[str | None, int | None], Awaitable[Page[T]]],
        *,
        what: str,
        cursor: str | None,
        max_items: int | None,
    ) -> AsyncIterator[T]:
        """Yield items page after page along ``nextCursor`` (or, when a server answers in
        page mode without one, along ``nextPage``'s ``page=``); stop at the end, or (logging
        once) on a cursor or page seen before, a page of repeated ids, an empty page that
        points further, or the deep-paging guard."""
        seen_cursors: set[str] = set() if cursor is None else {cursor}
        seen_keys: set[Any] = set()
        yielded = 0
        pages = 0
        page_no: int | None = None
        while True:
            page = await fetch(cursor, page_no)
            pages += 1
            fresh = any(k is None or k not in seen_keys for k in page.keys)
            for item in page.items:
                k = getattr(item, "id", None)
                if k is not None:
                    if k in seen_keys:
                        continue  # the server sent it before
                    seen_keys.add(k)
                yield item
                yielded += 1
                if max_items is not None and yielded >= max_items:
                    return
            seen_keys.update(k for k in page.keys if k is not None)
            next_cursor = page.next_cursor
            next_page = None if next_cursor is not None else _next_page(page.metadata)
            if isinstance(next_page, str):  # nextPage carries the cursor itself
                next_cursor, next_page = next_page, None
            if next_cursor is None and next_page is None:
                return
            if page.received == 0:
                log.warning(
                    "civitai: %s page %d was empty but carried a next cursor; stopping",
                    what,
                    pages,
                )
                return
            if not fresh:
                log.warning(
                    "civitai: %s page %d repeated only items already seen; stopping", what, pages
                )
                return
            if next_page is not None:  # page mode
                size = page.metadata.page_size or page.received
                if next_page <= (page_no or 1):
                    log.warning(
                        "civitai: %s page %d pointed back to page %d; stopping",
                        what,
                        pages,
                        next_page,
                    )
                    return
                if next_page * size > MAX_PAGED_ITEMS:
                    log.warning(
                        "civitai: %s stops at page %d: Civitai pages no deeper than %d items",
                        what,
                        pages,
                        MAX_PAGED_ITEMS,
                    )
                    return
                cursor, page_no = None, next_page
                continue
            assert next_cursor is not None
            if next_cursor in seen_cursors:
                log.warning(
                    "civitai: %s page %d led back to a cursor seen before (%r); stopping",
                    what,
                    pages,
                    next_cursor,
                )
                return
            seen_cursors.add(next_cursor)
            cursor, page_no = next_cursor, None

    async def _follow_pages(
        self,
        fetch: Callable[[int], Awaitable[Page[T]]],
        *,
        what: str,
        limit: int,
        key: Callable[[T], Any],
        max_items: int | None,
    ) -> AsyncIterator[T]:
        """Page-numbered iteration that stays under the deep-paging guard."""
        seen: set[Any] = set()
        yielded = 0
        page_no = 1
        while True:
            page = await fetch(page_no)
            fresh = [item for item in page.items if key(item) not in seen]
            for item in fresh:
                seen.add(key(item))
                yield item
                yielded += 1
                if max_items is not None and yielded >= max_items:
                    return
            total_pages = page.metadata.total_pages
            if not page.items or (total_pages is not None and page_no >= total_pages):
                return
            if total_pages is None and not page.metadata.next_page:
                return
            if not fresh:
                log.warning("civitai: %s page %d repeated earlier items; stopping", what, page_no)
                return
            if (page_no + 1) * limit > MAX_PAGED_ITEMS:
                log.warning(
                    "civitai: %s stops at %d items: Civitai pages no deeper than %d",
                    what,
                    page_no * limit,
                    MAX_PAGED_ITEMS,
                )
                return
            page_no += 1


# 500s that say the request itself cannot be served (a JavaScript URIError on a bad percent
# escape, a validation failure, a tRPC client-side code): retrying sends the same request.
_DETERMINISTIC_500 = re.compile(
    r"URI malformed|URIError|malformed|ZodError|invalid (input|cursor|value|hash|id)", re.I
)
_CLIENT_CODES = frozenset({"BAD_REQUEST", "PARSE_ERROR", "NOT_FOUND", "UNPROCESSABLE_CONTENT"})


def _deterministic(body: Any, detail: str | None) -> bool:
    if isinstance(body, Mapping) and str(body.get("code") or "").upper() in _CLIENT_CODES:
        return True
    return bool(detail and _DETERMINISTIC_500.search(detail))


def _next_page(metadata: PageMetadata) -> int | str | None:
    """Where a page-mode answer (no ``nextCursor``) goes next: the ``cursor=`` or ``page=``
    of ``nextPage``, else ``currentPage + 1`` while under ``totalPages``; ``None`` at the end."""
    if metadata.next_page:
        query = parse_qs(urlsplit(metadata.next_page).query)
        cursor = (query.get("cursor") or [""])[0]
        if cursor:
            return cursor
        number = _as_int((query.get("page") or [""])[0])
        return number if number and number > 0 else None
    current, total = metadata.current_page, metadata.total_pages
    if current is not None and total is not None and current < total:
        return current + 1
    return None


def _checked_hash(hash_: str) -> str:
    wanted = str(hash_).strip().upper()
    if not _HASH.match(wanted):
        raise CivitaiBadRequest(
            f"{_one_line(str(hash_), 80)!r} is not a file hash (AutoV2: 10 hex digits, SHA256: 64)"
        )
    return wanted
