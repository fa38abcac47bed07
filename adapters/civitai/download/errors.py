"""Why a model download failed or was refused. Each error carries its kind (its class) and
the HTTP status when there was one; the private exceptions steer the retry loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

from adapters.civitai.api.errors import (
    CivitaiError,
    CivitaiForbidden,
    CivitaiNotFound,
    CivitaiRateLimited,
    CivitaiUnauthorized,
)
from adapters.civitai.text import TEXT, localised, store_error
from bot.errors import BadInput, UserError

log = logging.getLogger(__name__)


# --- errors ---------------------------------------------------------------------------------------


class DownloadError(CivitaiError):
    """A download that cannot go on; the message says why and what to do."""


class DownloadDamaged(DownloadError):
    """The bytes received are not the file Civitai lists (size or hash)."""


class UnsafeModelFile(DownloadError, BadInput):
    """Civitai's pickle or virus scan did not pass the file (``--allow-unsafe`` overrides)."""


class TooBig(DownloadError, BadInput):
    """Over ``civitai.max_download_gb``, or more than the disk has free."""


class NameClash(DownloadError, BadInput):
    """Another file already has the name, and ``civitai.on_name_clash`` is ``refuse``."""


class CivitaiLoginRequired(CivitaiUnauthorized):
    pass


class CivitaiDownloadsDisabled(CivitaiForbidden):
    pass


class CivitaiEarlyAccess(CivitaiForbidden):
    def __init__(self, message: str, *, deadline: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.deadline = deadline


class CivitaiArchived(CivitaiNotFound):
    pass


class CivitaiQuotaExceeded(CivitaiRateLimited):
    """The 24-hour download quota: not worth retrying today."""


_E = TypeVar("_E", bound=CivitaiError)


def failure(cls: type[_E], kind: str, *, status: int | None = None, **values: Any) -> _E:
    """A ``cls`` of ``kind`` with its values: the chat says it from ``cv.err.<kind>`` in its
    language, logs and the command line get the English line made from the same entry."""
    values = {k: v if isinstance(v, int | float | dict) else str(v) for k, v in values.items()}
    english = TEXT[f"cv.err.{kind}"]["en"].format(
        **{"status": status or "", **localised(values, "en")}
    )
    return cls(english, kind=kind, status=status, values=values)


def stored(exc: BaseException) -> str:
    """What the task keeps as its ``error`` for ``exc`` (see ``adapters.civitai.text``)."""
    if isinstance(exc, UserError) and exc.key and exc.key in TEXT:
        kw = {k: v for k, v in exc.kw.items() if isinstance(v, str | int | float | dict)}
        return store_error(exc.key, kw, str(exc))
    return str(exc)


class _Transient(Exception):
    """Worth another attempt (with a fresh signed URL)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _StopRequested(Exception):
    """Someone else (another process, through the database) paused or cancelled the task."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class _AlreadyThere(Exception):
    """The very file is already in place under the chosen name."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path
