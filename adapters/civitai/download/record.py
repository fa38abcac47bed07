"""A download task's record (a ``download_tasks`` row, or its live state) and the
human-readable sizes and durations it is described with.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from adapters.civitai.text import say_error
from bot.status import DOWNLOAD_TERMINAL, DownloadStatus

log = logging.getLogger(__name__)


# --- views ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class DownloadRecord:
    """A download task: a ``download_tasks`` row as read, or its live state while this
    process runs it (kept up to date in memory). Listeners and callers get a
    :meth:`snapshot`, never the live record."""

    id: int
    version_id: int
    model_id: int | None
    file_id: int | None
    model_name: str | None
    model_type: str | None
    file_name: str | None
    path: str | None
    options: dict[str, Any]
    bytes_total: int | None
    bytes_done: int
    speed: float | None
    eta_s: float | None
    expected_sha256: str | None
    sha256: str | None
    status: str
    error: str | None
    attempts: int
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> DownloadRecord:
        m = dict(row._mapping)
        m.pop("owner", None)
        m["options"] = dict(m.get("options") or {})
        return cls(**m)

    def snapshot(self) -> DownloadRecord:
        """A copy that later progress does not change."""
        return replace(self, options=copy.deepcopy(self.options))

    @property
    def notify(self) -> dict[str, Any] | None:
        """Where a chat shows this download's progress (a ``reply_to``), if one asked."""
        return _notify_of(self.options)

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.options.get("meta")
        return meta if isinstance(meta, dict) else {}

    @property
    def label(self) -> str:
        return self.model_name or self.file_name or f"model version {self.version_id}"

    @property
    def fraction(self) -> float | None:
        if not self.bytes_total:
            return None
        return min(1.0, self.bytes_done / self.bytes_total)

    @property
    def finished(self) -> bool:
        return self.status in DOWNLOAD_TERMINAL

    def describe(self) -> str:
        """One line: ``#3 Photon Realism v2.0: running, 45% of 2.0 GB, 12.3 MB/s, 2m 10s left``."""
        name = self.model_name or self.file_name or f"model version {self.version_id}"
        parts = [self.status]
        if self.status == DownloadStatus.DONE and self.path:
            parts.append(f"{format_bytes(self.bytes_done)} in {self.path}")
        elif self.bytes_total:
            pct = 100 * (self.fraction or 0)
            parts.append(f"{pct:.0f}% of {format_bytes(self.bytes_total)}")
        elif self.bytes_done:
            parts.append(format_bytes(self.bytes_done))
        if self.status == DownloadStatus.RUNNING and self.speed:
            parts.append(f"{format_bytes(self.speed)}/s")
            if self.eta_s is not None:
                parts.append(f"{format_duration(self.eta_s)} left")
        if self.error and self.status in (
            DownloadStatus.FAILED,
            DownloadStatus.RUNNING,
            DownloadStatus.QUEUED,
        ):
            parts.append(say_error(self.error, "en"))
        return f"#{self.id} {name}: " + ", ".join(parts)


def format_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _notify_of(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    target = (options or {}).get("notify")
    return dict(target) if isinstance(target, dict) else None
