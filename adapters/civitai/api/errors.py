"""The Civitai API's failures: :class:`CivitaiError` and its kinds (not found, filtered,
forbidden, rate limited, unavailable, bad request, challenge, bad response), each carrying
the HTTP status and whether a retry may succeed, and the reading of an error body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from adapters.civitai.text import localised
from bot import i18n
from bot.errors import BadInput, Forbidden, LimitReached, NotFound, UserError
from bot.text import clean, clip

log = logging.getLogger(__name__)


# --- errors -----------------------------------------------------------------------------------


class CivitaiError(UserError):
    """Something went wrong talking to Civitai. ``kind`` says what (``timeout``,
    ``unreachable``, ``web_page``, ``rate_limited``, ``unavailable``, ``key_refused``,
    ``key_needed``, ``not_found``, ``refused``, ``rejected``, ...) and ``status`` the HTTP
    status; ``str(err)`` is one English line for logs and the command line. A chat says it
    from the catalogue entry ``cv.err.<kind>`` (registered by the command layer) with
    ``what``, ``status``, ``detail`` and ``retry``; without that entry, the English line."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
        kind: str | None = None,
        what: str = "",
        detail: str | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        kw: dict[str, Any] = {
            "what": what,
            "status": status or "",
            "detail": f": {detail}" if detail else "",
            "retry": f" (retry in {retry_after:g}s)" if retry_after else "",
            **(values or {}),
        }
        super().__init__(message, key=f"cv.err.{kind}" if kind else None, kw=kw)
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable
        self.kind = kind or "error"

    def render(self, lang: str) -> str:

        if self.key is None or self.key not in i18n.CATALOG:
            return self.message
        return i18n.t(lang, self.key, **localised(self.kw, lang))


class CivitaiNotFound(CivitaiError, NotFound):
    pass


class CivitaiFiltered(CivitaiNotFound):
    """It exists, but its NSFW level is not allowed here."""


class CivitaiUnauthorized(CivitaiError, Forbidden):
    """401: an API key is needed, or the one configured was refused."""


class CivitaiForbidden(CivitaiError, Forbidden):
    pass


class CivitaiRateLimited(CivitaiError, LimitReached):
    pass


class CivitaiUnavailable(CivitaiError):
    """5xx, timeouts, connection failures, after the retries."""


class CivitaiBadRequest(CivitaiError, BadInput):
    """400: the server rejected a parameter; the message is the server's."""


class CivitaiPagingLimit(CivitaiBadRequest):
    """The deep-paging guard: ``page * limit`` above 1000."""


class CivitaiChallenge(CivitaiError):
    """An HTML page (a Cloudflare check) came back where JSON was expected."""


class CivitaiBadResponse(CivitaiError):
    """A reply we cannot use: not JSON, or not the shape the endpoint returns."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(clean(text, multiline=False).split())
    return clip(text, limit)


def _issues_text(issues: Sequence[Any]) -> str | None:
    parts = []
    for issue in issues:
        if not isinstance(issue, Mapping):
            continue
        message = str(issue.get("message") or issue.get("code") or "invalid")
        path = issue.get("path")
        where = ".".join(str(p) for p in path) if isinstance(path, list) and path else ""
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or None


def error_message(body: Any) -> str | None:
    """The human part of a Civitai error body, whatever its shape: ``{"error": "text"}``,
    ``{"error": <ZodError>}`` (whose ``message`` is the JSON text of its issues),
    ``{"error": ..., "message": ...}``, tRPC's ``{"error": {"json": {"message"}}}``,
    ``{"message": ...}``, a bare string or a list of issues. One line, or ``None``."""
    text = _error_text(body, depth=0)
    return _one_line(text) if text else None


def _error_text(body: Any, depth: int) -> str | None:
    if depth > 4 or body is None:
        return None
    if isinstance(body, str):
        stripped = body.strip()
        if stripped[:1] in "[{":
            try:
                return _error_text(json.loads(stripped), depth + 1) or stripped
            except ValueError:
                pass
        return stripped or None
    if isinstance(body, list):
        return _issues_text(body)
    if not isinstance(body, Mapping):
        return str(body)
    if isinstance(body.get("issues"), list):
        return _issues_text(body["issues"])
    if "json" in body and isinstance(body["json"], Mapping):
        return _error_text(body["json"], depth + 1)
    error = _error_text(body.get("error"), depth + 1)
    message = _error_text(body.get("message"), depth + 1)
    if error and message and error != message:
        if body.get("name") == "ZodError":
            return message
        return f"{error}: {message}"
    return error or message
