"""The first hop of a model download: ``GET /api/download/models/{id}`` on the API host, with
the key and without following the redirect, gives a fresh signed storage link; Civitai's
refusals (login, Early Access, archived, quota, downloads disabled) become their errors.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import httpx

from adapters.civitai.api.errors import (
    CivitaiBadRequest,
    CivitaiBadResponse,
    CivitaiChallenge,
    CivitaiError,
    CivitaiForbidden,
    CivitaiNotFound,
    CivitaiRateLimited,
    CivitaiUnavailable,
    error_message,
)
from adapters.civitai.download.errors import (
    CivitaiArchived,
    CivitaiDownloadsDisabled,
    CivitaiEarlyAccess,
    CivitaiLoginRequired,
    CivitaiQuotaExceeded,
    DownloadError,
    _Transient,
    failure,
)
from adapters.civitai.download.record import DownloadRecord
from adapters.civitai.download.refs import (
    _OPTION_KEYS,
)
from adapters.http import retry_after_s

log = logging.getLogger(__name__)


async def signed_url(
    http: httpx.AsyncClient,
    base_url: str,
    api_key: str | None,
    user_agent: str,
    state: DownloadRecord,
) -> str:
    """A fresh signed storage URL from ``/api/download/models/{id}`` (not followed)."""
    url = f"{base_url}/api/download/models/{state.version_id}"
    if state.file_id is not None:
        params: dict[str, Any] = {"fileId": state.file_id}
    else:
        params = {k: state.options[k] for k in _OPTION_KEYS if state.options.get(k)}
    headers = {"User-Agent": user_agent, "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        response = await http.get(url, params=params, headers=headers)
    except httpx.TimeoutException:
        raise _Transient("Civitai did not answer in time") from None
    except httpx.UnsupportedProtocol:
        raise DownloadError(f"civitai.base_url {base_url!r} is not an http(s) address") from None
    except httpx.TransportError as exc:
        raise _Transient(f"Civitai could not be reached ({type(exc).__name__})") from None
    if response.status_code in (301, 302, 303, 307, 308):
        location = response.headers.get("location")
        if not location:
            raise CivitaiBadResponse("Civitai redirected the download to nowhere")
        target = urllib.parse.urljoin(str(response.url), location)
        where = urllib.parse.urlsplit(target)
        if where.path.startswith("/login"):
            raise login_required(api_key, state)
        if where.scheme not in ("http", "https"):
            raise CivitaiBadResponse(f"Civitai redirected the download to {where.scheme}:")
        return target
    error = api_error(response, state, api_key)
    if error.retryable:
        raise _Transient(str(error), error.retry_after)
    raise error


def login_required(api_key: str | None, state: DownloadRecord) -> CivitaiError:
    if api_key:
        return failure(CivitaiLoginRequired, "dl_login_key", status=401, name=state.label)
    return failure(CivitaiLoginRequired, "dl_login", status=401, name=state.label)


def api_error(response: httpx.Response, state: DownloadRecord, api_key: str | None) -> CivitaiError:
    status = response.status_code
    raw = response.content
    ctype = response.headers.get("content-type", "")
    retry_after = retry_after_s(response) if status in (429, 503) else None
    what = state.label
    if raw and ("html" in ctype.lower() or raw[:64].lstrip().lower().startswith(b"<")):
        message = (
            f"Civitai answered the download of {what} with a web page (HTTP {status}), "
            "probably a Cloudflare check or an outage; try again later"
        )
        if status == 429 or status >= 500:
            return CivitaiUnavailable(
                message, status=status, retry_after=retry_after, retryable=True
            )
        return CivitaiChallenge(message, status=status)
    body: Any = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw[:300].decode("utf-8", "replace")
    detail = error_message(body) or ""
    text = detail.lower()
    if 200 <= status < 300:
        return CivitaiBadResponse(
            f"Civitai answered the download of {what} without sending it elsewhere "
            f"(HTTP {status}); expected a redirect to the file",
            status=status,
        )
    if status == 400:
        return CivitaiBadRequest(
            f"Civitai rejected the download of {what}: {detail or 'bad request'}",
            status=status,
            kind="rejected",
            what=f"the download of {what}",
            detail=detail or "bad request",
        )
    if status == 401:
        if "disabled downloads" in text:
            return failure(CivitaiDownloadsDisabled, "dl_disabled", status=status, name=what)
        return login_required(api_key, state)
    if status == 403:
        if isinstance(body, dict) and str(body.get("error", "")).lower() == "early access":
            deadline = body.get("deadline")
            error = failure(
                CivitaiEarlyAccess,
                "dl_early_access",
                status=status,
                name=what,
                until={"en": f" until {deadline}", "zh": f"（至 {deadline}）"} if deadline else "",
            )
            error.deadline = deadline if isinstance(deadline, str) else None
            return error
        return CivitaiForbidden(
            f"Civitai refused the download of {what}: {detail or 'forbidden'}",
            status=status,
            kind="refused",
            what=f"the download of {what}",
            detail=detail or "forbidden",
        )
    if status == 404:
        asked = ", ".join(f"{k}={state.options[k]}" for k in _OPTION_KEYS if state.options.get(k))
        which = {"en": f" matching {asked}", "zh": f"（符合 {asked}）"} if asked else ""
        return failure(CivitaiNotFound, "dl_no_file", status=status, which=which, name=what)
    if status == 410:
        return failure(CivitaiArchived, "dl_archived", status=status, name=what)
    if status == 429:
        if "unusual amount of downloading" in text or "come back later" in text:
            return failure(CivitaiQuotaExceeded, "dl_quota", status=status)
        wait = f" (retry in {retry_after:g}s)" if retry_after else ""
        return CivitaiRateLimited(
            f"Civitai is rate limiting downloads{wait}",
            status=status,
            retry_after=retry_after,
            retryable=True,
        )
    if status >= 500 or status == 408:
        return CivitaiUnavailable(
            f"Civitai is unavailable (HTTP {status})",
            status=status,
            retry_after=retry_after,
            retryable=True,
        )
    return failure(
        CivitaiError,
        "dl_not_started",
        status=status,
        name=what,
        detail=f": {detail}" if detail else "",
    )
