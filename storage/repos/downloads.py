"""Model download tasks: queued, leased by one process, paused, resumed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)

from storage.repos.common import (
    download_tasks,
)
from storage.status import (
    DOWNLOAD_ACTIVE,
    DownloadStatus,
)

# --- model downloads and the model registry ---------------------------------------------------


_DOWNLOAD = select(download_tasks).where(download_tasks.c.id == bindparam("tid"))
_DOWNLOADS_FOR_FILE = (
    select(download_tasks)
    .where(download_tasks.c.version_id == bindparam("vid"))
    .order_by(download_tasks.c.id.desc())
)
_CLAIM_DOWNLOAD = (
    update(download_tasks)
    .where(
        download_tasks.c.id == bindparam("tid"),
        or_(
            download_tasks.c.status == DownloadStatus.QUEUED,
            and_(
                download_tasks.c.status == DownloadStatus.RUNNING,
                or_(
                    download_tasks.c.owner == bindparam("me"),
                    download_tasks.c.updated_at < bindparam("stale_before"),
                ),
            ),
        ),
    )
    .values(
        status=DownloadStatus.RUNNING,
        owner=bindparam("me"),
        error=None,
        started_at=func.coalesce(download_tasks.c.started_at, bindparam("now")),
        updated_at=bindparam("now"),
    )
)
_INTERRUPTED_DOWNLOADS = (
    select(download_tasks.c.id)
    .where(
        or_(
            download_tasks.c.status == DownloadStatus.QUEUED,
            and_(
                download_tasks.c.status == DownloadStatus.RUNNING,
                download_tasks.c.updated_at < bindparam("stale_before"),
            ),
        )
    )
    .order_by(download_tasks.c.id)
)
_ACTIVE_DOWNLOAD_PATHS = select(download_tasks.c.id, download_tasks.c.path).where(
    download_tasks.c.status.in_(DOWNLOAD_ACTIVE), download_tasks.c.path.is_not(None)
)


def insert_download_task(conn: Connection, values: Mapping[str, Any]) -> int:
    """A new download task (``status`` queued unless given); its id."""
    row = {"bytes_done": 0, "attempts": 0, "status": DownloadStatus.QUEUED, "options": {}, **values}
    return int(
        conn.execute(insert(download_tasks).returning(download_tasks.c.id), row).scalar_one()
    )


def get_download_task(conn: Connection, task_id: int) -> Row[Any] | None:
    return conn.execute(_DOWNLOAD, {"tid": task_id}).first()


def download_tasks_for_version(
    conn: Connection, version_id: int, file_id: int | None = None
) -> list[Row[Any]]:
    """Every task for a model version (of one file, if given), newest first."""
    rows = conn.execute(_DOWNLOADS_FOR_FILE, {"vid": version_id}).all()
    return [r for r in rows if file_id is None or r.file_id == file_id]


def list_download_tasks(
    conn: Connection, *, statuses: Sequence[str] | None = None, limit: int = 50
) -> list[Row[Any]]:
    """The newest tasks first, optionally only those in ``statuses``."""
    stmt = select(download_tasks).order_by(download_tasks.c.id.desc()).limit(limit)
    if statuses:
        stmt = stmt.where(download_tasks.c.status.in_(list(statuses)))
    return list(conn.execute(stmt).all())


def claim_download_task(
    conn: Connection, task_id: int, owner: str, now: float, stale_before: float
) -> Row[Any] | None:
    """Make a queued task (or a running one whose owner stopped writing progress before
    ``stale_before``) running under ``owner``; the row, or ``None`` if it was not claimable."""
    claimed = conn.execute(
        _CLAIM_DOWNLOAD, {"tid": task_id, "me": owner, "now": now, "stale_before": stale_before}
    ).rowcount
    return get_download_task(conn, task_id) if claimed else None


def update_download_task(
    conn: Connection,
    task_id: int,
    *,
    if_owner: str | None = None,
    if_status: Sequence[str] | None = None,
    **values: Any,
) -> bool:
    """Set ``values`` on a task; only while it belongs to ``if_owner`` and/or is in one of
    ``if_status`` when those are given. Whether a row changed."""
    stmt = update(download_tasks).where(download_tasks.c.id == task_id)
    if if_owner is not None:
        stmt = stmt.where(download_tasks.c.owner == if_owner)
    if if_status is not None:
        stmt = stmt.where(download_tasks.c.status.in_(list(if_status)))
    return bool(conn.execute(stmt.values(**values)).rowcount)


def interrupted_download_ids(conn: Connection, stale_before: float) -> list[int]:
    """Tasks waiting to run: queued ones, and running ones whose process went quiet."""
    return [
        int(i)
        for i in conn.execute(_INTERRUPTED_DOWNLOADS, {"stale_before": stale_before}).scalars()
    ]


def active_download_paths(conn: Connection) -> dict[str, int]:
    """Target paths of unfinished tasks (queued, running, paused) -> their task id."""
    return {str(path): int(tid) for tid, path in conn.execute(_ACTIVE_DOWNLOAD_PATHS).all()}
